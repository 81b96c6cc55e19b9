"""Templates: exact formats, and Python rendering == the saved Jinja chat_template, character for character."""

import pytest

from belle.templates import TEMPLATES, get_template, render_pieces, render_text, to_jinja

SYSTEM = {"role": "system", "content": "你是一个乐于助人的助手。"}
HISTORIES = {
    "one turn": [{"role": "user", "content": "你好"}],
    "answered": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"}],
    "multi-turn": [
        {"role": "user", "content": "Translate 'cat' to Chinese."},
        {"role": "assistant", "content": "猫"},
        {"role": "user", "content": "再翻译 dog\n谢谢"},
        {"role": "assistant", "content": "狗"},
        {"role": "user", "content": "  leading and trailing spaces  "},
    ],
    "quotes and braces": [{"role": "user", "content": 'say "{content}" and {{ x }} {% raw %}'}],
}
CASES = [(name, system) for name in HISTORIES for system in (False, True)]


@pytest.fixture(scope="module")
def saved_tokenizers(tiny_model_dir, tmp_path_factory):
    """Each registered template saved as a chat_template into a tokenizer folder and loaded back."""
    from transformers import AutoTokenizer

    from belle.modeling import load_tokenizer

    loaded = {}
    for name, template in TEMPLATES.items():
        tokenizer = load_tokenizer(tiny_model_dir)
        tokenizer.chat_template = to_jinja(template)
        folder = tmp_path_factory.mktemp(name)
        tokenizer.save_pretrained(folder)
        loaded[name] = AutoTokenizer.from_pretrained(folder)
    return loaded


@pytest.mark.parametrize("template_name", list(TEMPLATES))
@pytest.mark.parametrize("history_name,with_system", CASES)
@pytest.mark.parametrize("generation", [True, False])
def test_saved_chat_template_renders_like_python(saved_tokenizers, template_name, history_name, with_system, generation):
    tokenizer = saved_tokenizers[template_name]
    messages = ([SYSTEM] if with_system else []) + HISTORIES[history_name]
    expected = render_text(TEMPLATES[template_name], messages, generation, tokenizer.bos_token, tokenizer.eos_token)
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation) == expected


def test_belle_format_is_bit_exact():
    messages = HISTORIES["answered"] + [{"role": "user", "content": "再见"}]
    text = render_text(get_template("belle"), messages, True, "<s>", "</s>")
    assert text == "Human: \n你好\n\nAssistant: \n你好！有什么可以帮你？</s>Human: \n再见\n\nAssistant: \n"


def test_belle_pieces_mark_only_replies_and_eos_as_trained():
    pieces = render_pieces(get_template("belle"), HISTORIES["multi-turn"][:4], False, "<s>", "</s>")
    assert pieces == [
        ("Human: \nTranslate 'cat' to Chinese.\n\nAssistant: \n", False),
        ("猫</s>", True),
        ("Human: \n再翻译 dog\n谢谢\n\nAssistant: \n", False),
        ("狗</s>", True),
    ]


def test_generation_prompt_ends_with_reply_header_only_when_asked():
    template = get_template("chatml")
    history = HISTORIES["one turn"]
    assert render_text(template, history, True).endswith("<|im_start|>assistant\n")
    assert render_text(template, history, False).endswith("<|im_end|>\n")


def test_qwen_adds_its_default_system_and_a_given_one_replaces_it():
    template = get_template("qwen")
    assert render_text(template, HISTORIES["one turn"]).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    replaced = render_text(template, [SYSTEM] + HISTORIES["one turn"])
    assert "You are a helpful assistant." not in replaced and SYSTEM["content"] in replaced


def test_llama2_puts_the_system_inside_the_first_user_turn_only():
    text = render_text(get_template("llama2"), [SYSTEM] + HISTORIES["multi-turn"][:3], True, "<s>", "</s>")
    assert text.startswith("<s>[INST] <<SYS>>\n" + SYSTEM["content"] + "\n<</SYS>>\n\nTranslate")
    assert text.count("<<SYS>>") == 1
    assert text.endswith("</s><s>[INST] 再翻译 dog\n谢谢 [/INST] ")


def test_model_template_derives_pieces_from_a_foreign_chat_template(tokenizer):
    """A tokenizer carrying chatml's Jinja gives the same trained spans as our chatml template."""
    foreign = type("Tok", (), {"chat_template": to_jinja(get_template("chatml"))})()
    model = get_template("model", foreign)
    messages = [SYSTEM] + HISTORIES["multi-turn"][:4]
    ours = render_pieces(get_template("chatml"), messages, False, "<s>", "</s>")
    theirs = render_pieces(model, messages, False, "<s>", "</s>")
    assert "".join(t for t, _ in theirs) == "".join(t for t, _ in ours)
    assert [t for t, trained in theirs if trained] == ["猫<|im_end|>\n", "狗<|im_end|>\n"]
    prompt = render_text(model, messages + [{"role": "user", "content": "hi"}], True, "<s>", "</s>")
    assert prompt == render_text(get_template("chatml"), messages + [{"role": "user", "content": "hi"}], True)


def test_model_template_rejects_a_template_that_is_not_prefix_stable():
    # Renders only the last message, so earlier turns vanish as the history grows.
    foreign = type("Tok", (), {"chat_template": "{{ messages[-1]['content'] }}"})()
    with pytest.raises(ValueError, match="growing prefix"):
        render_pieces(get_template("model", foreign), HISTORIES["multi-turn"][:4])


def test_unknown_template_and_model_without_chat_template_are_clear_errors():
    with pytest.raises(ValueError, match="unknown template 'alpaca'.*belle"):
        get_template("alpaca")
    with pytest.raises(ValueError, match="chat_template"):
        get_template("model", type("Tok", (), {"chat_template": None})())


def test_templates_are_frozen():
    with pytest.raises(AttributeError):
        get_template("belle").user = "changed"
