"""The tokenizer inside a GGUF: llama.cpp, reading only the vocabulary we wrote, tokenizes as transformers does.

Each tokenizer (belle's byte-level BPE, a SentencePiece-style one, and both after `belle vocab extend`)
is written into a vocab-only GGUF once per module and loaded once with `llama_cpp.Llama(vocab_only=True)`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from belle.cli import UsageError

MIXED = [
    "你好，世界！今天天气很好。",
    "Hello, world! It's a fine day, isn't it? We'll see.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "emoji 🦄🙂 family 👨‍👩‍👧 flag 🇨🇳",
    "double  spaces   and\ttabs",
    "trailing space ",
    "\n\nstarts with newlines\n",
    "digits 1234567890 and 3.14159, 2024年10月1日",
    "rare 龘 and 𠀀 characters",
    "我们用 Python 3.11 训练模型，loss 从 2.5 降到了 1.8。",
    "special </s> strings <s> and <unk> inside",
    "Human: \n你好\n\nAssistant: \n你好！</s>",
    "  two leading spaces",
    " 世界  double  spaces ",
]
BPE_ONLY = ["<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"]
HISTORY = [
    {"role": "user", "content": "你好，请介绍一下你自己。"},
    {"role": "assistant", "content": "我是 BELLE，一个中文对话模型。"},
    {"role": "user", "content": "Write a haiku about rain 🌧"},
]


def corpus() -> list[str]:
    from belle.models.tiny import tiny_corpus_lines

    return MIXED + tiny_corpus_lines()


def chinese_lines() -> list[str]:
    from belle.models.tiny import tiny_corpus_lines

    return [line for line in tiny_corpus_lines() if re.search("[\u4e00-\u9fff]", line)]


def write_vocab(tokenizer, path: Path, vocab_size: int | None = None):
    """A GGUF holding only the architecture key and the vocabulary, which llama.cpp opens with
    `vocab_only=True` (it reads no hyper-parameter then)."""
    import gguf

    from belle.export.vocab import add_vocab
    from belle.templates import get_template, to_jinja

    writer = gguf.GGUFWriter(str(path), "llama")
    info = add_vocab(writer, tokenizer, vocab_size or len(tokenizer), to_jinja(get_template("belle")))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return info


def load(path: Path):
    from llama_cpp import Llama

    return Llama(str(path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def tokenizers(tokenizer, arch_model):
    """name -> HF tokenizer: belle's tiny BPE (the session tiny model's), the SentencePiece-style one
    of the tiny LLaMA-SentencePiece model, and smaller ones of both kinds extended."""
    from transformers import AutoTokenizer

    from belle.models.tiny import _tiny_tokenizer
    from belle.vocab.extend import extend_tokenizer

    sp = AutoTokenizer.from_pretrained(arch_model("llama", tokenizer_kind="sentencepiece"))
    bpe_ext, _ = extend_tokenizer(_tiny_tokenizer("bpe", 600, 2048), chinese_lines(), 900)
    sp_ext, _ = extend_tokenizer(_tiny_tokenizer("sentencepiece", 700, 2048), chinese_lines(), 2000)
    return {"bpe": tokenizer, "sentencepiece": sp, "bpe-extended": bpe_ext, "sentencepiece-extended": sp_ext}


@pytest.fixture(scope="module")
def ggufs(tokenizers, tmp_path_factory):
    """name -> (VocabInfo, path, llama_cpp.Llama); the BPE one has its rows padded to a multiple of 64."""
    folder = tmp_path_factory.mktemp("vocab")
    out = {}
    for name, tok in tokenizers.items():
        path = folder / f"{name}.gguf"
        rows = -(-len(tok) // 64) * 64 if name == "bpe" else None
        out[name] = (write_vocab(tok, path, rows), path, load(path))
    yield out
    for _, _, llm in out.values():
        llm.close()


def is_sentencepiece(name: str) -> bool:
    return name.startswith("sentencepiece")


def fragments(tok, text: str) -> list[str]:
    """`text` split around the special tokens that transformers splits out before tokenizing."""
    specials = sorted(tok.all_special_tokens, key=len, reverse=True)
    return [part for part in re.split("(" + "|".join(map(re.escape, specials)) + ")", text) if part]


def sentencepiece_ids(tok, text: str) -> list[int]:
    """SentencePiece's convention, which llama.cpp follows: `▁` before the text and before the text
    after each special token, even when the text already starts with a space."""
    specials = set(tok.all_special_tokens)
    ids: list[int] = []
    for part in fragments(tok, text):
        ids += tok(" " + part if part not in specials else part, add_special_tokens=False)["input_ids"]
    return ids


def agrees_with_transformers(tok, text: str) -> bool:
    """Whether Metaspace(prepend_scheme="first") and SentencePiece prefix `text` alike: it does not
    start with a space and no text follows a special token."""
    parts = fragments(tok, text)
    specials = set(tok.all_special_tokens)
    return not text.startswith(" ") and all(part in specials for part in parts[1:])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bpe", "sentencepiece", "bpe-extended", "sentencepiece-extended"])
def test_llama_cpp_tokenizes_as_transformers(ggufs, tokenizers, name):
    tok, (_, _, llm) = tokenizers[name], ggufs[name]
    texts = corpus() + ([] if is_sentencepiece(name) else BPE_ONLY)
    checked = 0
    for text in texts:
        got = llm.tokenize(text.encode(), add_bos=False, special=True)
        hf = tok(text, add_special_tokens=False)["input_ids"]
        if not is_sentencepiece(name) or agrees_with_transformers(tok, text):
            assert got == hf, text
            checked += 1
        else:
            assert got == sentencepiece_ids(tok, text) != hf, text
    assert checked > len(texts) // 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bpe", "sentencepiece", "bpe-extended", "sentencepiece-extended"])
def test_detokenize_round_trips(ggufs, tokenizers, name):
    tok, (_, _, llm) = tokenizers[name], ggufs[name]
    for text in corpus():
        if is_sentencepiece(name) and not agrees_with_transformers(tok, text):
            continue
        ids = tok(text, add_special_tokens=False)["input_ids"]
        pieces = llm.detokenize(ids, special=True).decode()
        if is_sentencepiece(name):  # the pieces keep the `▁` put before the text; llama.cpp drops it
            assert (pieces, llama_detokenize(llm, ids)) == (" " + text, text), text
        else:
            assert pieces == text, text


def llama_detokenize(llm, ids: list[int]) -> str:
    """llama.cpp's own `llama_detokenize`, special tokens rendered (llama-cpp-python's `detokenize`
    joins the pieces instead; for byte-level BPE llama.cpp would also clean spaces before punctuation)."""
    import ctypes

    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    tokens = (llama_cpp.llama_token * len(ids))(*ids)
    buffer = ctypes.create_string_buffer(16 * len(ids) + 16)
    n = llama_cpp.llama_detokenize(vocab, tokens, len(ids), buffer, len(buffer), False, True)
    assert n >= 0
    return buffer.raw[:n].decode()


@pytest.mark.slow
def test_vocab_info_special_ids_and_token_types(ggufs, tokenizers):
    import gguf

    expected = {"bpe": ("gpt2", "gpt-2"), "bpe-extended": ("gpt2", "gpt-2"),
                "sentencepiece": ("llama", None), "sentencepiece-extended": ("llama", None)}
    for name, (info, path, llm) in ggufs.items():
        tok = tokenizers[name]
        assert (info.model, info.pre) == expected[name]
        assert llm.n_vocab() == info.tokens
        assert llm.token_eos() == tok.eos_token_id and llm.token_bos() == tok.bos_token_id
        fields = gguf.GGUFReader(path).fields
        types = list(fields["tokenizer.ggml.token_type"].contents())
        assert types[tok.eos_token_id] == gguf.TokenType.CONTROL
        assert fields["tokenizer.ggml.add_bos_token"].contents() is is_sentencepiece(name)
        assert fields["tokenizer.ggml.add_eos_token"].contents() is False
        if is_sentencepiece(name):
            assert types[tok.unk_token_id] == gguf.TokenType.UNKNOWN
            assert types[tok.convert_tokens_to_ids("<0x0A>")] == gguf.TokenType.BYTE
            assert llm.tokenize(b"hi", add_bos=True)[0] == tok.bos_token_id
            assert gguf.Keys.Tokenizer.PAD_ID not in fields
        else:
            assert fields[gguf.Keys.Tokenizer.PAD_ID].contents() == tok.pad_token_id
    info, path, llm = ggufs["bpe"]
    rows, size = info.tokens, len(tokenizers["bpe"])
    assert rows % 64 == 0 and rows > size
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.ggml.tokens"].contents()[size:] == [f"[PAD{i}]" for i in range(size, rows)]
    assert set(fields["tokenizer.ggml.token_type"].contents()[size:]) == {gguf.TokenType.UNUSED}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bpe", "sentencepiece"])
def test_embedded_chat_template_renders_belle_prompt(ggufs, tokenizers, name):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from belle.templates import get_template, render_text
    from belle.tokenization import encode_prompt

    tok, (_, _, llm) = tokenizers[name], ggufs[name]
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
        bos_token=llm.detokenize([llm.token_bos()], special=True).decode(),
    )
    belle = get_template("belle")
    for history in (HISTORY[:1], HISTORY):
        prompt = formatter(messages=history).prompt
        assert prompt == render_text(belle, history, True, tok.bos_token, tok.eos_token)
        if name == "bpe":  # SentencePiece puts `▁` before each separately tokenized piece
            assert prompt == tok.decode(encode_prompt(history, tok, belle))
    assert prompt == "Human: \n你好，请介绍一下你自己。\n\nAssistant: \n我是 BELLE，一个中文对话模型。</s>" \
                     "Human: \nWrite a haiku about rain 🌧\n\nAssistant: \n"


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from belle.export.vocab import add_vocab

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    with pytest.raises(UsageError, match="pre-tokenizer Whitespace"):
        add_vocab(object(), tok, 1, None)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(r"\p{N}{1,2}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    with pytest.raises(UsageError, match=r"Split\(.*N\}\{1,2\}.*\+ ByteLevel"):
        add_vocab(object(), PreTrainedTokenizerFast(tokenizer_object=backend), 1, None)


def test_non_bpe_tokenizer_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from belle.export.vocab import add_vocab

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]")))
    with pytest.raises(UsageError, match="this one is WordPiece"):
        add_vocab(object(), tok, 1, None)


@pytest.mark.parametrize(("pre", "regex", "normalizer", "expected"), [
    ("llama3", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
     None, "llama-bpe"),
    ("qwen2", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
     "NFC", "qwen2"),
])
def test_llama3_and_qwen2_pre_tokenizers_are_named(pre, regex, normalizer, expected):
    """LLaMA 3's and Qwen2's `tokenizer.json` shape: a Split regex, then ByteLevel without its own regex."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    from belle.export.vocab import _kind

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    if normalizer:
        backend.normalizer = normalizers.NFC()
    assert _kind(json.loads(backend.to_str())) == ("gpt2", expected, False)
    backend.normalizer = normalizers.NFKC()
    with pytest.raises(UsageError, match="NFKC normalizer"):
        _kind(json.loads(backend.to_str()))
