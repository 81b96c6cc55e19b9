"""Encoding with loss masks (equal to BELLE's reference), truncation, packing, and packed attention."""

import json
import random

import pytest
import torch

from belle.conversation import read_conversations, to_belle
from belle.templates import get_template, render_pieces
from belle.tokenization import (
    encode_document_columns,
    DROP_NO_TRAINED,
    DROP_TOO_LONG,
    IGNORE_INDEX,
    collate,
    encode_batch,
    pack,
    pack_columns,
)

BELLE = get_template("belle")
TRICKY = [
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "\n\n好的，下面是代码："}],
    [{"role": "user", "content": "Say hi "}, {"role": "assistant", "content": " Hi there!  "}],
    [{"role": "user", "content": "emoji 🙂?"}, {"role": "assistant", "content": "🙂🙂 yes"},
     {"role": "user", "content": "Assistant: trick"}, {"role": "assistant", "content": "Human: \nno"}],
    [{"role": "user", "content": "生僻字：龘、鱻、靐 🦄"}, {"role": "assistant", "content": "  龘🦄鱻 ok  "}],
]


def belle_reference(conversation: dict, tokenizer) -> tuple[list[int], list[int]]:
    """BELLE's reference tokenization (its `sft_sample_to_ids`), restated: every `from` other than
    human is trained; a human turn is wrapped in the prompt format; each turn is encoded alone without
    special tokens; EOS follows every trained turn, in both ids and labels."""
    input_ids, labels = [], []
    for turn in conversation["conversations"]:
        human = turn["from"].lower() == "human"
        text = "Human: \n" + turn["value"] + "\n\nAssistant: \n" if human else turn["value"]
        ids = tokenizer.encode(text, add_special_tokens=False)
        input_ids += ids
        labels += [IGNORE_INDEX] * len(ids) if human else ids
        if not human:
            input_ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
    return input_ids, labels


@pytest.fixture(scope="module")
def metaspace_tokenizer(tmp_path_factory):
    """The tokenizer `belle model tiny --tokenizer sentencepiece` ships, loaded as belle loads it:
    LLaMA's shape (`▁` word prefix, byte fallback, BOS added, no pad of its own)."""
    from belle.modeling import load_tokenizer
    from belle.models.tiny import build_tiny_model

    return load_tokenizer(build_tiny_model(tmp_path_factory.mktemp("sp") / "model", tokenizer_kind="sentencepiece"))


def sample_conversations(samples_dir) -> list[list[dict]]:
    convs = list(read_conversations(samples_dir / "belle_conversations.jsonl", policy="strict"))
    convs += list(read_conversations(samples_dir / "multiturn_chat.jsonl", policy="strict"))
    return [c.messages for c in convs] + TRICKY


@pytest.fixture(scope="module")
def samples_dir():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "data" / "samples"


@pytest.mark.parametrize("which", ["byte-level", "metaspace"])
def test_belle_template_equals_belle_reference_tokenization(which, tokenizer, metaspace_tokenizer, samples_dir):
    tok = tokenizer if which == "byte-level" else metaspace_tokenizer
    conversations = sample_conversations(samples_dir)
    encoded = encode_batch(conversations, tok, BELLE)
    for messages, ours in zip(conversations, encoded):
        reference = belle_reference(to_belle(type("C", (), {"id": "x", "messages": messages})()), tok)
        assert (ours.input_ids, ours.labels) == reference
        assert tok.unk_token_id not in ours.input_ids


def test_sentencepiece_spells_rare_characters_in_bytes_and_keeps_them_when_decoding(metaspace_tokenizer):
    tok = metaspace_tokenizer
    sample = encode_batch(TRICKY[-1:], tok, BELLE)[0]
    pieces = tok.convert_ids_to_tokens(sample.input_ids)
    assert {"<0xF0>", "<0x9F>", "<0xA6>", "<0x84>", "<0xE9>"} <= set(pieces)  # 🦄 is F0 9F A6 84; 龘 E9 BE 98
    reply = [t for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX]
    assert tok.decode(reply, skip_special_tokens=True) == " 龘🦄鱻 ok  "  # the decoder strips one leading space


def test_whole_string_tokenization_differs_from_pieces_and_we_use_pieces(metaspace_tokenizer):
    """BELLE issue 337: tokenizing the rendered text as one string gives other tokens at turn starts."""
    tok = metaspace_tokenizer
    messages = [{"role": "user", "content": "今天天气怎么样？"}, {"role": "assistant", "content": "今天是晴天。"}]
    pieces = render_pieces(BELLE, messages, False, tok.bos_token, tok.eos_token)
    by_piece = [i for text, _ in pieces for i in tok.encode(text, add_special_tokens=False)]
    whole = tok.encode("".join(text for text, _ in pieces), add_special_tokens=False)
    assert whole != by_piece
    first_diff = next(i for i, (a, b) in enumerate(zip(whole, by_piece)) if a != b)
    prompt_length = len(tok.encode(pieces[0][0], add_special_tokens=False))
    assert first_diff == prompt_length  # exactly where the reply starts
    assert tok.convert_ids_to_tokens(by_piece[first_diff]).startswith("▁")
    assert encode_batch([messages], tok, BELLE)[0].input_ids == by_piece


def test_every_assistant_turn_and_its_eos_are_trained_and_nothing_else(tokenizer):
    messages = [
        {"role": "system", "content": "简短回答。"},
        {"role": "user", "content": "一加一等于几？"},
        {"role": "assistant", "content": "二。"},
        {"role": "user", "content": "再加一呢？"},
        {"role": "assistant", "content": "三。"},
    ]
    for name in ("belle", "chatml", "llama3", "llama2"):
        sample = encode_batch([messages], tokenizer, get_template(name))[0]
        trained = [i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX]
        assert all(sample.labels[i] == sample.input_ids[i] for i in trained)
        text = tokenizer.decode([sample.input_ids[i] for i in trained])
        end = {"belle": "</s>", "chatml": "<|im_end|>", "llama3": "<|eot_id|>", "llama2": " </s>"}[name]
        assert text == f"二。{end}三。{end}", name
        masked = tokenizer.decode([t for t, label in zip(sample.input_ids, sample.labels) if label == IGNORE_INDEX])
        assert "简短回答。" in masked and "一加一等于几？" in masked and "再加一呢？" in masked


def test_eos_after_each_reply_is_the_eos_id(tokenizer):
    messages = TRICKY[2]
    sample = encode_batch([messages], tokenizer, BELLE)[0]
    assert sample.input_ids.count(tokenizer.eos_token_id) == 2
    assert sample.input_ids[-1] == sample.labels[-1] == tokenizer.eos_token_id


def three_turns(tokenizer):
    messages = []
    for i in range(3):
        messages += [{"role": "user", "content": f"第{i}个问题是什么？"}, {"role": "assistant", "content": f"这是第{i}个回答，内容比较长一些。"}]
    full = encode_batch([messages], tokenizer, BELLE)[0]
    ends = [i + 1 for i, t in enumerate(full.input_ids) if t == tokenizer.eos_token_id]
    return messages, full, ends


def test_overlong_sample_is_cut_after_the_last_whole_turn_that_fits(tokenizer):
    messages, full, ends = three_turns(tokenizer)
    cut = encode_batch([messages], tokenizer, BELLE, max_length=ends[2] - 1)[0]
    assert cut.drop == ""
    assert cut.input_ids == full.input_ids[: ends[1]] and cut.labels == full.labels[: ends[1]]
    exact = encode_batch([messages], tokenizer, BELLE, max_length=ends[2])[0]
    assert exact.input_ids == full.input_ids


def test_overlong_sample_is_dropped_with_a_reason(tokenizer):
    messages, _, ends = three_turns(tokenizer)
    assert encode_batch([messages], tokenizer, BELLE, max_length=ends[2] - 1, overlong="drop")[0].drop == DROP_TOO_LONG
    assert encode_batch([messages], tokenizer, BELLE, max_length=ends[0] - 1)[0].drop == DROP_TOO_LONG


def test_sample_without_trained_tokens_is_dropped_not_patched(tokenizer):
    sample = encode_batch([[{"role": "user", "content": "只有问题"}]], tokenizer, BELLE)[0]
    assert sample.drop == DROP_NO_TRAINED and sample.input_ids == []


def test_best_fit_packing_places_every_sample_once_without_overflow():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(1, 200))]
        rows = pack(lengths, 64)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
        assert len(rows) <= -(-sum(lengths) * 11 // 9) // 64 + 1  # within ~11/9 of the optimum


def test_best_fit_finds_the_perfect_packing_of_complementary_lengths():
    lengths = [3, 7, 5, 5, 9, 1, 6, 4, 2, 8]
    rows = pack(lengths, 10)
    assert len(rows) == 5 and all(sum(lengths[i] for i in row) == 10 for row in rows)


def test_packing_rejects_a_sample_longer_than_a_row():
    with pytest.raises(ValueError, match="more than max_length"):
        pack([3, 11], 10)


def test_packed_rows_restart_positions_and_list_their_samples():
    batch = {"id": ["a", "b", "c"], "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]], "labels": [[-100, 2, 3], [4, 5], [-100, -100, 8, 9]]}
    rows = pack_columns(batch, 7)
    assert rows["ids"] == [["c", "a"], ["b"]]
    assert rows["input_ids"] == [[6, 7, 8, 9, 1, 2, 3], [4, 5]]
    assert rows["labels"] == [[-100, -100, 8, 9, -100, 2, 3], [4, 5]]
    assert rows["position_ids"] == [[0, 1, 2, 3, 0, 1, 2], [0, 1]]


def test_collate_pads_unpacked_rows_with_a_mask():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_token_id=0, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert "use_cache" not in batch


@pytest.fixture(scope="module")
def packed_case(tiny_model_dir, tokenizer, samples_dir):
    from belle.modeling import load_model

    model = load_model(tiny_model_dir, dtype="float32", device="cpu", attn_implementation="sdpa")
    messages = sample_conversations(samples_dir)[:6]
    encoded = encode_batch(messages, tokenizer, BELLE)
    batch = {"id": [str(i) for i in range(6)], "input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]}
    rows = pack_columns(batch, max(len(e.input_ids) for e in encoded) + 40)
    rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
    return model, batch, rows


def test_packed_logits_equal_each_sample_run_alone(packed_case, tokenizer):
    model, batch, rows = packed_case
    padded = collate(rows, tokenizer.pad_token_id, pad_to_multiple_of=64)
    assert padded["use_cache"] is False and "attention_mask" not in padded
    with torch.no_grad():
        logits = model(**{k: v for k, v in padded.items() if k != "labels"}).logits
        for r, row in enumerate(rows):
            start = 0
            for sample_id in row["ids"]:
                ids = batch["input_ids"][int(sample_id)]
                alone = model(torch.tensor([ids]), use_cache=False).logits[0]
                torch.testing.assert_close(logits[r, start : start + len(ids)], alone, rtol=1e-4, atol=1e-4)
                start += len(ids)


def test_packed_forward_with_the_default_cache_attends_across_samples(packed_case, tokenizer):
    """transformers builds the block-diagonal mask from position_ids only without a KV cache; this
    shows what goes wrong if a packed batch reaches the model without `use_cache=False`."""
    model, batch, rows = packed_case
    row = next(r for r in rows if len(r["ids"]) > 1)
    padded = collate([row], tokenizer.pad_token_id)
    second = batch["input_ids"][int(row["ids"][1])]
    start = len(batch["input_ids"][int(row["ids"][0])])
    with torch.no_grad():
        leaky = model(input_ids=padded["input_ids"], position_ids=padded["position_ids"]).logits[0, start : start + len(second)]
        alone = model(torch.tensor([second]), use_cache=False).logits[0]
    assert not torch.allclose(leaky, alone, atol=1e-3)


def test_encoded_samples_serialise_as_json(tokenizer):
    sample = encode_batch(TRICKY[:1], tokenizer, BELLE)[0]
    assert json.loads(json.dumps({"input_ids": sample.input_ids, "labels": sample.labels}))["labels"] == sample.labels


def test_documents_end_with_eos_and_are_chunked_without_losing_a_token(tokenizer):
    """Continued pretraining: every token of a long text and its EOS land in chunks of at most
    max_length, all trained, in order."""
    text = "早晨的菜市场是城市里最有生活气息的地方。" * 20
    batch = {"id": ["doc"], "messages": [[{"role": "assistant", "content": text}]]}
    out = encode_document_columns(batch, tokenizer, max_length=16)
    expected = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(out["input_ids"]) == -(-len(expected) // 16) > 1
    assert all(len(chunk) <= 16 for chunk in out["input_ids"])
    assert [t for chunk in out["input_ids"] for t in chunk] == expected
    assert out["labels"] == out["input_ids"]
    assert out["id"] == [f"doc#{k}" for k in range(len(out["input_ids"]))]
