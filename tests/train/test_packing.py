"""Packing is exact on every family of the architecture matrix, or refused before it can train.

`belle.architectures.FAMILIES` says which families cannot keep packed samples apart; the first test
measures it on tiny random models of every family, so the table cannot drift from reality.
"""

import pytest

from belle.architectures import FAMILIES
from belle.cli import UsageError
from belle.cli import main as belle
from belle.config import load_config
from belle.models.tiny import build_tiny_model
from belle.train.config import TrainConfig
from belle.train.packing import check_packing, packed_logit_gap, packing_problems, pt_unpacked_notice
from tests.train.helpers import REPO, SAMPLES, files_list, read_metrics, train_overrides

ZERO3 = REPO / "train" / "configs" / "ds_zero3.json"
BLOOM_REFUSAL = "BLOOM (model_type bloom) cannot pack samples: ALiBi attention"


def load(model_dir, dtype="float32"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))


def random_samples(lengths, vocab, seed=0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(vocab, (n,), generator=generator).tolist() for n in lengths]


def run_config(model_dir, *overrides):
    return load_config(TrainConfig, None, [f"model.path={model_dir}", "output_dir=unused",
                                                 f"data.train_files={files_list(SAMPLES / 'pretrain.jsonl')}", *overrides])


@pytest.fixture
def bloom_dir(tmp_path):
    return build_tiny_model(tmp_path / "bloom", arch="bloom")


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_packed_logits_equal_per_sample_logits_exactly_where_the_family_says_so(tmp_path, arch):
    """Samples 70, 50 and 20 tokens long, best-fit packed into rows of 96 ([70, 20] and [50]) and
    collated as the Trainer does (padded to a multiple of 8: 6 and 46 pad tokens, no cache): every
    real token's fp32 logits equal those of its sample alone where `pack_refusal` is None, and
    differ where it is set. The 70-token sample is longer than Gemma 2's 64-token sliding window."""
    model = load(build_tiny_model(tmp_path / arch, arch=arch))
    samples = random_samples((70, 50, 20), model.get_input_embeddings().num_embeddings)
    gap, scale = packed_logit_gap(model, samples, max_length=96, pad_to_multiple_of=8)
    assert scale > 0.1
    if FAMILIES[arch].pack_refusal is None:
        assert gap < 1e-5, f"{arch}: packed logits differ from per-sample ones by {gap:.2e}"
    else:
        assert gap > 1e-3, f"{arch}: said to mix packed samples, yet packed logits match ({gap:.2e})"


def test_bloom_sft_with_pack_is_refused_before_the_model_loads(bloom_dir, tmp_path, capsys):
    """The weights are unreadable: only a refusal before loading exits 2 instead of crashing."""
    (bloom_dir / "model.safetensors").write_bytes(b"not a safetensors file" * 64)
    out = tmp_path / "run"
    code = belle(["train", *train_overrides(bloom_dir, out, "data.pack=true",
                                            f"data.train_files={files_list(SAMPLES / 'belle_conversations.jsonl')}")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert BLOOM_REFUSAL in err and "set data.pack=false to train each sample in its own padded row" in err
    assert not out.exists()


def test_data_tokenize_pack_is_refused_for_bloom(bloom_dir, tmp_path, capsys):
    out = tmp_path / "tokens.jsonl"
    code = belle(["data", "tokenize", "--model", str(bloom_dir), "--input", str(SAMPLES / "belle_conversations.jsonl"),
                  "--output", str(out), "--max-length", "256", "--pack"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert BLOOM_REFUSAL in err and "leave out --pack" in err
    assert not out.exists()


@pytest.mark.slow
def test_bloom_pt_trains_each_chunk_in_its_own_row_with_a_notice(bloom_dir, tmp_path, caplog):
    """Stage pt packs its chunks, except on BLOOM: there each chunk is one padded row, and the run says so."""
    out = tmp_path / "run"
    code = belle(["train", *train_overrides(bloom_dir, out, "stage=pt", "data.max_length=64", "training.max_steps=2",
                                            "training.batch_size=2",
                                            f"data.train_files={files_list(SAMPLES / 'pretrain.jsonl')}")])
    assert code == 0
    data = read_metrics(out)["data"]
    assert data["rows"] is None and data["packing_efficiency"] is None, data
    assert len(data["notes"]) == 1 and data["notes"][0].startswith(f"stage pt: {BLOOM_REFUSAL}")
    assert "each chunk trains in its own padded row" in data["notes"][0]
    assert any(data["notes"][0] == r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_probe_refuses_a_model_type_outside_the_matrix_whose_packing_mixes_samples(bloom_dir, monkeypatch, dtype):
    monkeypatch.delitem(FAMILIES, "bloom")
    config = run_config(bloom_dir, "data.pack=true")
    assert packing_problems(config) == []  # unknown before loading: the probe decides
    with pytest.raises(UsageError, match=r"data\.pack: model_type bloom \(not in belle's architecture matrix\) lets "
                                         r"samples packed into one row attend to each other.*set data\.pack=false"):
        check_packing(load(bloom_dir, dtype), config)
    with pytest.raises(UsageError, match=r"stage pt: model_type bloom .* add bloom to belle\.architectures\.FAMILIES"):
        check_packing(load(bloom_dir, dtype), run_config(bloom_dir, "stage=pt"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_probe_accepts_a_model_type_outside_the_matrix_that_packs_exactly(tmp_path, monkeypatch, caplog, dtype):
    llama_dir = build_tiny_model(tmp_path / "llama")
    monkeypatch.delitem(FAMILIES, "llama")
    caplog.set_level("INFO", logger="belle.train.packing")
    check_packing(load(llama_dir, dtype), run_config(llama_dir, "data.pack=true"))
    assert "packing checked on model_type llama: packed logits equal per-sample ones" in caplog.text
    assert dtype in caplog.text


def test_zero3_on_a_model_type_outside_the_matrix_refuses_sft_packing_and_unpacks_pt(tmp_path, monkeypatch):
    """ZeRO-3 partitions the weights at load, so the probe cannot run: sft packing is refused, pt trains unpacked."""
    llama_dir = build_tiny_model(tmp_path / "llama")
    monkeypatch.delitem(FAMILIES, "llama")
    sft = run_config(llama_dir, "data.pack=true", f"training.deepspeed={ZERO3}")
    assert packing_problems(sft) == [
        "data.pack: model_type llama is not in belle's architecture matrix, and DeepSpeed ZeRO-3 partitions its "
        "weights at load, so belle cannot check that samples packed into one row stay apart; set data.pack=false "
        "to train each sample in its own padded row"
    ]
    assert pt_unpacked_notice(run_config(llama_dir, "stage=pt", f"training.deepspeed={ZERO3}")).startswith(
        "stage pt: model_type llama is not in belle's architecture matrix")
    assert pt_unpacked_notice(run_config(llama_dir, "stage=pt")) is None
    assert packing_problems(run_config(llama_dir, "data.pack=true")) == []
