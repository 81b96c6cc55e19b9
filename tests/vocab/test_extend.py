"""Vocabulary extension on the tiny model: ids kept, embeddings grown to the mean, Chinese compressed better."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from belle.cli import UsageError
from belle.modeling import load_tokenizer
from belle.models.tiny import build_tiny_model, tiny_corpus_lines
from belle.vocab.extend import chars_per_token, extend, extend_tokenizer, resize_embeddings
from tests.helpers import run_module

REPO = Path(__file__).resolve().parents[2]
HELDOUT_ZH = REPO / "data/samples/heldout_zh.txt"
ENGLISH = "Cooking rice on the stove is a small skill that pays off every day."
MIXED = "我们用 Python 3.11 训练模型，loss 从 2.5 降到了 1.8。"


def chinese_lines() -> list[str]:
    return [line for line in tiny_corpus_lines() if re.search("[\u4e00-\u9fff]", line)]


def split_lines() -> tuple[list[str], list[str]]:
    """(training lines, held-out lines): `heldout_zh.txt` when present, else the last tenth of the corpus."""
    lines = chinese_lines()
    if HELDOUT_ZH.is_file():
        return lines, [line for line in HELDOUT_ZH.read_text(encoding="utf-8").splitlines() if line.strip()]
    cut = len(lines) - len(lines) // 10
    return lines[:cut], lines[cut:]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("base"), vocab_size=600)


@pytest.fixture(scope="module")
def extended(base_dir):
    """(base tokenizer, new tokenizer, added pieces, base model, model resized to the new tokenizer)."""
    from transformers import AutoModelForCausalLM

    base = load_tokenizer(base_dir)
    new, added = extend_tokenizer(base, split_lines()[0], 900)
    base_model = AutoModelForCausalLM.from_pretrained(str(base_dir), use_safetensors=True)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), use_safetensors=True)
    resize_embeddings(model, len(new))
    return base, new, added, base_model, model


@pytest.fixture(scope="module")
def cli_out(base_dir, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    folder = tmp_path_factory.mktemp("cli")
    corpus = folder / "zh.txt"
    corpus.write_text("\n".join(chinese_lines()) + "\n", encoding="utf-8")
    out = folder / "out"
    result = run_cli("--base", base_dir, "--corpus", corpus, "--vocab-size", "900", "--out", out)
    return result, out


def run_cli(*args) -> subprocess.CompletedProcess:
    return run_module("belle.vocab", "extend", *args, timeout=300)


def test_existing_ids_and_special_tokens_are_unchanged(extended):
    base, new, added, _, _ = extended
    assert len(base) == 600
    assert len(added) > 0
    assert len(new) == len(base) + len(added)
    new_vocab = new.get_vocab()
    assert all(new_vocab[token] == i for token, i in base.get_vocab().items())
    assert [new_vocab[piece] for piece in added] == list(range(len(base), len(new)))
    assert new.all_special_tokens == base.all_special_tokens
    assert new.all_special_ids == base.all_special_ids
    for name in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id"):
        assert getattr(new, name) == getattr(base, name)
    assert new.chat_template == base.chat_template


def test_base_merges_come_first_and_every_merge_is_buildable(extended):
    base, new, _, _, _ = extended
    base_merges = json.loads(base.backend_tokenizer.to_str())["model"]["merges"]
    model = json.loads(new.backend_tokenizer.to_str())["model"]
    assert model["merges"][: len(base_merges)] == base_merges
    assert all(a in model["vocab"] and b in model["vocab"] and a + b in model["vocab"] for a, b in model["merges"])


def test_english_tokenization_is_unchanged(extended):
    base, new, _, _, _ = extended
    assert new(ENGLISH)["input_ids"] == base(ENGLISH)["input_ids"]


def test_new_embedding_rows_are_the_mean_of_the_old_rows(extended):
    import torch

    _, new, _, base_model, model = extended
    old = base_model.get_input_embeddings().num_embeddings
    assert model.get_input_embeddings().num_embeddings == len(new) == model.config.vocab_size
    assert model.get_output_embeddings().weight.shape[0] == len(new)
    for get in ("get_input_embeddings", "get_output_embeddings"):
        before, after = getattr(base_model, get)().weight, getattr(model, get)().weight
        assert torch.equal(after[:old], before)
        assert torch.allclose(after[old:], before.mean(dim=0).expand(len(new) - old, -1), atol=1e-6)


def test_chinese_takes_fewer_tokens(extended):
    base, new, _, _, _ = extended
    heldout = split_lines()[1]
    assert chars_per_token(new, heldout) > chars_per_token(base, heldout)


@pytest.mark.parametrize("text", [ENGLISH, MIXED, *split_lines()[1][:3]])
def test_text_round_trips(extended, text):
    _, new, _, _, _ = extended
    ids = new(text, add_special_tokens=False)["input_ids"]
    assert new.decode(ids, clean_up_tokenization_spaces=False) == text


def test_merges_as_strings_and_added_tokens_above_the_model_vocab():
    """A LLaMA 3 style base: legacy "a b" merges and special tokens with ids above the BPE vocab."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from belle.models.tiny import train_bpe_tokenizer

    spec = json.loads(train_bpe_tokenizer([ENGLISH] * 3, 300, []).to_str())
    size = len(spec["model"]["vocab"])
    spec["model"]["merges"] = [f"{a} {b}" for a, b in spec["model"]["merges"]]
    spec["added_tokens"] = [
        {"id": size + i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, content in enumerate(["<|begin_of_text|>", "<|eot_id|>"])
    ]
    base = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
    )
    new, added = extend_tokenizer(base, chinese_lines(), 600)
    assert len(base) == size + 2
    assert len(new) == len(base) + len(added)
    assert new.convert_tokens_to_ids(["<|begin_of_text|>", "<|eot_id|>"]) == [size, size + 1]
    assert sorted(new.get_vocab().values()) == list(range(len(new)))
    new.add_tokens(["<extra>"], special_tokens=True)
    assert new.convert_tokens_to_ids("<extra>") == len(new) - 1 == len(base) + len(added)
    assert new.decode(new(MIXED)["input_ids"]) == MIXED


def test_llama2_style_byte_fallback_base_gains_chinese_characters():
    """LLaMA 1/2 style (what BELLE-LLaMA-EXT extended): Metaspace BPE, bytes for missing characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    backend.train_from_iterator([ENGLISH] * 3, trainer)
    spec = json.loads(backend.to_str())
    vocab = spec["model"]["vocab"]
    vocab.update({f"<0x{byte:02X}>": len(vocab) + byte for byte in range(256)})
    base = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    lines = chinese_lines()
    new, added = extend_tokenizer(base, lines, 3000)
    assert "一" not in base.get_vocab() and "一" in added
    assert len(new) == len(base) + len(added)
    assert base.tokenize("一")[1:] == ["<0xE4>", "<0xB8>", "<0x80>"]
    assert chars_per_token(new, lines) > 2 * chars_per_token(base, lines)
    for text in (MIXED, ENGLISH):
        assert new.decode(new(text)["input_ids"]) == text


def test_unigram_tokenizer_is_rejected():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0)], 0, False))
    with pytest.raises(UsageError, match="only BPE-based fast tokenizers"):
        extend_tokenizer(PreTrainedTokenizerFast(tokenizer_object=backend), chinese_lines(), 100)


def test_vocab_size_too_small_for_any_merge(extended):
    base = extended[0]
    with pytest.raises(UsageError, match="no room for merges"):
        extend_tokenizer(base, chinese_lines(), 200)


def test_bad_paths_are_usage_errors(base_dir, tmp_path):
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(chinese_lines()), encoding="utf-8")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    cases = [
        (dict(base=tmp_path / "nobase", corpus=[corpus]), "nobase"),
        (dict(base=base_dir, corpus=[corpus], out=tmp_path / "full"), "not empty"),
        (dict(base=base_dir, corpus=[corpus], out=base_dir), "must differ"),
        (dict(base=base_dir, corpus=[tmp_path / "latin1.txt"]), "not UTF-8"),
        (dict(base=base_dir, corpus=[corpus], heldout=tmp_path / "nothere.txt"), "nothere.txt"),
    ]
    for kwargs, message in cases:
        kwargs = {"vocab_size": 900, "out": tmp_path / "out", **kwargs}
        with pytest.raises(UsageError, match=message):
            extend(**kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_end_to_end(cli_out, base_dir):
    result, out = cli_out
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "vocab_report.json").read_text(encoding="utf-8"))
    assert report["base_vocab_size"] == 600
    assert report["trained_vocab_size"] == 900
    assert report["added"] > 0
    assert report["new_vocab_size"] == 600 + report["added"]
    assert report["heldout"] == "last 10% of corpus lines"
    assert report["heldout_lines"] == len(chinese_lines()) // 10
    assert report["chars_per_token"]["extended"] > report["chars_per_token"]["base"]
    assert "chars/token" in result.stdout
    info = json.loads((out / "belle.json").read_text(encoding="utf-8"))
    assert info["template"] == "belle"
    extension = {"base": str(base_dir), "added": report["added"], "vocab_size": report["new_vocab_size"]}
    assert info["vocab_extension"] == extension
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_saved_folder_loads_and_generates(cli_out):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, out = cli_out
    assert result.returncode == 0, result.stderr
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), use_safetensors=True)
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings == model.config.vocab_size
    assert tokenizer.chat_template
    inputs = tokenizer("今天天气很好", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


def test_cli_missing_corpus_file(base_dir, tmp_path, belle_main):
    missing = tmp_path / "missing_corpus.txt"
    result = belle_main("vocab", "extend", "--base", base_dir, "--corpus", missing, "--vocab-size", "900", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_extends_a_sentencepiece_llama_as_belle_llama_ext_did(tmp_path, capsys):
    """`belle model tiny --tokenizer sentencepiece` (LLaMA's shape) extended through the CLI: new
    pieces are Metaspace pieces, byte fallback still spells what no piece covers, old ids are unchanged."""
    from belle.cli import main

    base_dir = build_tiny_model(tmp_path / "base", vocab_size=600, tokenizer_kind="sentencepiece")
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(chinese_lines()) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["vocab", "extend", "--base", str(base_dir), "--corpus", str(corpus), "--vocab-size", "2500", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "chars/token" in printed.out, printed
    report = json.loads((out / "vocab_report.json").read_text(encoding="utf-8"))
    assert report["chars_per_token"]["extended"] > 1.1 * report["chars_per_token"]["base"]
    base, new = load_tokenizer(base_dir), load_tokenizer(out)
    assert report["added"] > 0 and len(new) == len(base) + report["added"]
    assert all(new.get_vocab()[token] == i for token, i in base.get_vocab().items())
    added = new.convert_ids_to_tokens(list(range(len(base), len(new))))
    assert any(piece.startswith("▁") for piece in added) and not any(" " in piece or "Ġ" in piece for piece in added)
    assert new.pad_token == "<unk>" and new.pad_token_id != new.eos_token_id
    assert new.tokenize("龘🦄") == base.tokenize("龘🦄") == ["▁", "<0xE9>", "<0xBE>", "<0x98>", "<0xF0>", "<0x9F>", "<0xA6>", "<0x84>"]
    for text in (MIXED, "  两个空格 and 🦄"):
        ids = new(text, add_special_tokens=False)["input_ids"]
        assert new.decode(ids) == base.decode(base(text, add_special_tokens=False)["input_ids"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out), use_safetensors=True)
    assert model.get_input_embeddings().num_embeddings == len(new)
