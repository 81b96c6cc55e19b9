"""`belle gptq eval`: perplexity windows, perplexity against a direct computation, and the verb end to end."""

import json
import math
import re
import shutil

import pytest

from belle.cli import run_verbs
from belle.gptq.evaluate import _output_files, eval_, perplexity, score_ids, windows
from belle.modeling import load_model, load_tokenizer, tiny_corpus_text, tiny_heldout_text, weights_bytes


def run_eval(*args) -> int:
    return run_verbs([eval_], ["eval", *map(str, args)], "belle gptq")


@pytest.fixture(scope="module")
def trained(trained_tiny_dir):
    return load_model(trained_tiny_dir, device="cpu").eval(), load_tokenizer(trained_tiny_dir)


def direct_perplexity(model, ids) -> float:
    """exp of the mean NLL of ids[1:], from one forward pass over all of ids."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()  # (n - 1, vocab)
    nll = -logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])
    return math.exp(nll.mean().item())


@pytest.mark.parametrize(("n_tokens", "seqlen", "stride"), [(2, 8, None), (9, 8, None), (10, 8, None), (100, 8, None),
                                                             (100, 8, 3), (100, 8, 1), (37, 16, 16), (37, 64, 5)])
def test_windows_score_every_token_but_the_first_once_with_context(n_tokens, seqlen, stride):
    cut = windows(n_tokens, seqlen, stride)
    targets = [t for w in cut for t in range(w.first, w.stop)]
    assert targets == list(range(1, n_tokens))
    assert len(cut) == math.ceil((n_tokens - 1) / (stride or seqlen))
    for w in cut:
        assert 1 <= w.stop - 1 - w.begin <= seqlen  # inputs fit one window
        assert w.begin <= w.first - 1  # the first target's logits are in the window
        assert w.begin == 0 or w.first - w.begin >= seqlen - (stride or seqlen) + 1  # least context of any target


def test_stride_must_lie_between_one_and_seqlen():
    with pytest.raises(ValueError, match="stride"):
        windows(10, 4, 5)


def test_perplexity_of_a_text_in_one_window_equals_a_direct_computation(trained):
    model, tokenizer = trained
    text = tiny_heldout_text()[:400]
    ids = tokenizer(text)["input_ids"]
    expected = direct_perplexity(model, ids)
    assert perplexity(model, tokenizer, text) == pytest.approx(expected, rel=1e-4)
    assert perplexity(model, tokenizer, text, seqlen=len(ids) - 1) == pytest.approx(expected, rel=1e-4)  # just fits
    assert perplexity(model, tokenizer, text, seqlen=len(ids) - 1, stride=7) == pytest.approx(expected, rel=1e-4)


def test_a_long_text_is_scored_token_by_token_once(trained):
    model, tokenizer = trained
    ids = tokenizer(tiny_heldout_text())["input_ids"]
    for stride, passes in [(None, math.ceil((len(ids) - 1) / 128)), (64, math.ceil((len(ids) - 1) / 64))]:
        score = score_ids(model, ids, seqlen=128, stride=stride)
        assert (score.tokens, score.windows) == (len(ids) - 1, passes)
        assert math.isfinite(score.perplexity)


def test_sliding_windows_match_scoring_each_token_alone_with_its_context(trained):
    """Token t of block k = (t - 1) // stride is predicted from ids[max(0, stop_k - 1 - seqlen) : t]."""
    import torch

    model, tokenizer = trained
    ids = tokenizer(tiny_corpus_text()[:400])["input_ids"][:90]
    seqlen, stride = 32, 12
    nll = 0.0
    with torch.inference_mode():
        for t in range(1, len(ids)):
            stop = min(1 + ((t - 1) // stride + 1) * stride, len(ids))
            logits = model(input_ids=torch.tensor([ids[max(0, stop - 1 - seqlen) : t]])).logits[0, -1]
            nll -= logits.float().log_softmax(-1)[ids[t]].item()
    score = score_ids(model, ids, seqlen=seqlen, stride=stride)
    assert score.nll == pytest.approx(nll, rel=1e-4)
    assert score.perplexity == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)


def test_a_random_model_is_near_uniform_and_the_trained_one_far_better(tiny_model_dir, trained):
    random_model, tokenizer = load_model(tiny_model_dir, device="cpu").eval(), load_tokenizer(tiny_model_dir)
    text = tiny_corpus_text()[:3000]  # text the trained model learned
    vocab = random_model.config.vocab_size
    random_ppl = perplexity(random_model, tokenizer, text, seqlen=128)
    trained_ppl = perplexity(*trained, text, seqlen=128)
    assert vocab / 2 < random_ppl < 2 * vocab
    assert trained_ppl < random_ppl / 10


def test_eval_compares_the_gptq_model_with_its_reference(tiny_model_dir, tiny_gptq_dir, tmp_path, capsys):
    text = tmp_path / "heldout.txt"
    text.write_text(tiny_heldout_text(), encoding="utf-8")
    out = tmp_path / "report"
    assert run_eval("--model", tiny_gptq_dir, "--reference", tiny_model_dir, "--text", text, "--max-chars", 2000,
                    "--seqlen", 256, "--gen-tokens", 16, "--device", "cpu", "--output", out) == 0
    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    reference, quantized = report["models"]
    assert (reference["role"], reference["path"]) == ("reference", str(tiny_model_dir))
    assert (quantized["role"], quantized["path"]) == ("model", str(tiny_gptq_dir))
    assert report["text"]["chars"] == 2000 and report["settings"]["seqlen"] == 256
    assert quantized["quantization"]["bits"] == 4 and quantized["weights"] == "4-bit g128 gptq"
    assert reference["quantization"] is None and reference["weights"] == "float32"
    assert quantized["weights_bytes"] == weights_bytes(tiny_gptq_dir) < reference["weights_bytes"] / 2
    assert quantized["size_ratio"] == pytest.approx(quantized["weights_bytes"] / reference["weights_bytes"])
    for row in report["models"]:
        assert row["tokens_scored"] == report["text"]["tokens"] - 1
        assert row["generated_tokens"] == 16 and row["tokens_per_s"] > 0 and row["prefill_s"] > 0
        assert row["memory"] == "cpu peak RSS"
        assert row["peak_memory_mb"] >= row["load_peak_memory_mb"] > row["baseline_memory_mb"] > 0
    # The random tiny model is near uniform, so 4-bit weights barely move its perplexity.
    assert quantized["perplexity"] == pytest.approx(reference["perplexity"], rel=0.05)
    assert quantized["perplexity_change"] == pytest.approx(quantized["perplexity"] - reference["perplexity"])
    table = (out / "eval.md").read_text(encoding="utf-8")
    assert f"`{tiny_model_dir}`" in table and f"`{tiny_gptq_dir}`" in table and "4-bit g128 gptq" in table
    assert table in capsys.readouterr().out


def test_output_names_a_folder_or_the_report_files(tmp_path):
    assert _output_files(tmp_path / "runs") == (tmp_path / "runs" / "eval.json", tmp_path / "runs" / "eval.md")
    assert _output_files(tmp_path / "q4.md") == (tmp_path / "q4.json", tmp_path / "q4.md")


def test_weights_bytes_counts_weight_files_only(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "training_args.bin").write_bytes(b"x" * 100)
    (folder / "extra.bin").write_bytes(b"x" * 10)
    assert weights_bytes(folder) == (tiny_model_dir / "model.safetensors").stat().st_size + 10


@pytest.fixture(scope="module")
def no_weights_dir(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("no_weights") / "model"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder


@pytest.mark.parametrize(("case", "message"), [
    ("missing model", "--model .*: no such folder"),
    ("missing reference", "--reference .*: no such folder"),
    ("not a model", "not a model folder \\(no config.json\\)"),
    ("no weights", "no weight files"),
    ("missing text", "--text .*: no such file"),
    ("blank text", "--text .*: no text"),
    ("one token", "1 token\\(s\\) long; perplexity needs at least 2"),
    ("max chars", "--max-chars must be at least 1"),
    ("stride", "--stride must be between 1 and --seqlen"),
    ("gen tokens", "--gen-tokens 2048 leaves no room"),
])
def test_bad_inputs_are_clear_errors(case, message, tiny_model_dir, no_weights_dir, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("你好，世界。Hello, world.", encoding="utf-8")
    args = {"--model": tiny_model_dir, "--text": text}
    extra = {
        "missing model": {"--model": tmp_path / "nowhere"},
        "missing reference": {"--reference": tmp_path / "nowhere"},
        "not a model": {"--model": tmp_path},
        "no weights": {"--model": no_weights_dir},
        "missing text": {"--text": tmp_path / "none.txt"},
        "blank text": {"--text": text.with_name("blank.txt")},
        "one token": {"--text": text.with_name("one.txt")},
        "max chars": {"--max-chars": 0},
        "stride": {"--seqlen": 16, "--stride": 17},
        "gen tokens": {"--gen-tokens": 2048},
    }[case]
    text.with_name("blank.txt").write_text(" \n\n ", encoding="utf-8")
    text.with_name("one.txt").write_text("a", encoding="utf-8")
    argv = [str(part) for flag, value in {**args, **extra}.items() for part in (flag, value)]
    assert run_eval(*argv, "--output", tmp_path / "out") == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
