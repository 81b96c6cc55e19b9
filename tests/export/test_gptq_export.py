"""GGUF export of GPTQ folders (`belle.export.gptq_weights`): each GPTQ layer written as the q4_0 /
q4_1 / q8_0 blocks it already is, bit for bit, and the settings that cannot be exact refused.

The fast tests build GPTQ layers by hand (zeros packed as GPTQModel packs them); the slow ones
quantize tiny models of four families with `belle gptq quantize --group-size 32` (a few seconds
each, once per module) and compare the file with gptqmodel's own dequantization of the same
checkpoint. Phi-3 is not among them: `belle gptq quantize` refuses it; Gemma 2 costs ~10 s more.
"""

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from belle.cli import UsageError
from belle.export.gptq_weights import STORED, GptqSettings, GptqState, check_export, encode_exact, gptq_settings

# rotate-half q/k rows; fused qkv with tied embeddings; biases; fused qkv with an untied `embed_out` head
FAMILIES = ["llama", "bloom", "qwen2", "gpt_neox"]


def pack(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words of `values` (0..2**bits-1) along `dim`, lowest bits first, the last word padded
    with zeros, as GPTQ packs them."""
    per_word = 32 // bits
    values = values.to(torch.int64).movedim(dim, 0)
    values = torch.nn.functional.pad(values, (*[0, 0] * (values.ndim - 1), 0, -values.shape[0] % per_word))
    values = values.reshape(values.shape[0] // per_word, per_word, *values.shape[1:])
    words = sum(values[:, i] << (bits * i) for i in range(per_word))
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).movedim(0, dim).contiguous()


def v1_qzeros(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 v2 `qzeros` as GPTQModel 7.6 saves checkpoint_format "gptq" (v1): one constant
    subtracted from each whole int32 word (`convert_gptq_v2_to_v1_format_module`), so a zero of 0
    borrows from its neighbour."""
    words = words.clone()
    words -= {2: 0b01010101010101010101010101010101, 4: 0b00010001000100010001000100010001,
              8: 0b00000001000000010000000100000001}[bits]
    return words


def gptq_tensors(prefix: str, settings: GptqSettings, out: int = 8, columns: int = 64, seed: int = 0,
                 g_idx: torch.Tensor | None = None, zeros: torch.Tensor | None = None):
    """({name: tensor} of a random GPTQ layer `prefix.*`, codes (in, out), zeros (groups, out), fp16
    scales (groups, out)). Asymmetric zeros cover 0..2**bits-1, with a 0 in the first word."""
    generator = torch.Generator().manual_seed(seed)
    levels = 1 << settings.bits
    group = columns if settings.group_size == -1 else settings.group_size
    groups = -(-columns // group)
    codes = torch.randint(0, levels, (columns, out), generator=generator)
    if zeros is None:
        zeros = torch.full((groups, out), levels // 2) if settings.sym else torch.randint(0, levels, (groups, out),
                                                                                          generator=generator)
        if not settings.sym:
            zeros[0, 0] = 0
    scales = (torch.rand(groups, out, generator=generator) * 0.1 + 0.001).half()
    qzeros = pack(zeros, settings.bits, 1)
    if settings.checkpoint_format == "gptq":
        qzeros = v1_qzeros(qzeros, settings.bits)
    tensors = {f"{prefix}.qweight": pack(codes, settings.bits, 0), f"{prefix}.qzeros": qzeros,
               f"{prefix}.scales": scales,
               f"{prefix}.g_idx": (torch.arange(columns) // group if g_idx is None else g_idx).to(torch.int32)}
    return tensors, codes, zeros, scales


def gptq_layer(folder: Path, settings: GptqSettings, out: int = 8, columns: int = 64, seed: int = 0,
               g_idx: torch.Tensor | None = None,
               zeros: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random GPTQ layer `layer.weight` (`gptq_tensors`) written to `folder/model.safetensors`;
    returns its codes (in, out), zeros (groups, out) and fp16 scales (groups, out)."""
    from safetensors.torch import save_file

    tensors, codes, zeros, scales = gptq_tensors("layer", settings, out, columns, seed, g_idx, zeros)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({**tensors, "model.embed_tokens.weight": torch.zeros(4, 4, dtype=torch.bfloat16)},
              str(folder / "model.safetensors"))
    return codes, zeros, scales


def reference(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor) -> np.ndarray:
    """(out, in) float32: GPTQModel's `dequantize_weight`, `scales[g_idx] * (q - zeros[g_idx])`."""
    g_idx = g_idx.long()
    return (scales.float()[g_idx] * (codes - zeros[g_idx]).float()).T.numpy()


@pytest.mark.parametrize("type, bits, sym, format", [
    ("q4_0", 4, True, "gptq"), ("q4_0", 4, True, "gptq_v2"), ("q4_1", 4, False, "gptq"), ("q4_1", 4, True, "gptq"),
    ("q8_0", 8, True, "gptq"),
])
@pytest.mark.parametrize("group_size", [32, 64, -1])
def test_hand_made_layers_are_the_same_ggml_blocks(tmp_path, type, bits, sym, format, group_size):
    from gguf import GGMLQuantizationType, quants

    settings = GptqSettings(bits, group_size, sym, False, format)
    check_export(settings, type, tmp_path)
    codes, zeros, scales = gptq_layer(tmp_path, settings)
    state = GptqState(tmp_path, settings, tied_embeddings=False)
    assert set(state) == {"model.embed_tokens.weight", "layer.weight"}
    stacked = state["layer.weight"].numpy()
    assert np.array_equal(stacked[..., 2], zeros[torch.arange(64) // (64 if group_size == -1 else group_size)].T)
    assert {k: tuple(v.shape) for k, v in state.placeholders().items()} == {k: tuple(state[k].shape) for k in state}
    qtype = GGMLQuantizationType[type.upper()]
    written = quants.dequantize(encode_exact("layer", stacked, qtype), qtype)
    group = codes.shape[0] if group_size == -1 else group_size
    rows = torch.arange(codes.shape[0]) // group
    expected = (scales.float()[rows] * (codes - zeros[rows]).float()).T.numpy()
    if type == "q4_1" and not sym:  # m = -d * zero is rounded to fp16
        d = scales.float()[rows].T.numpy()
        assert (np.abs(written - expected) <= d * 16 * 2**-11).all()
        assert not np.array_equal(written, expected)
    else:
        assert np.array_equal(written, expected)


def test_a_value_off_the_grid_is_an_error_not_re_rounded(tmp_path):
    from gguf import GGMLQuantizationType

    settings = GptqSettings(4, 32, True, False, "gptq")
    gptq_layer(tmp_path, settings)
    stacked = GptqState(tmp_path, settings, tied_embeddings=False)["layer.weight"].numpy().copy()
    stacked[0, 0, 0] += stacked[0, 0, 1] / 3
    with pytest.raises(ValueError, match="not scale"):
        encode_exact("layer", stacked, GGMLQuantizationType.Q4_0)
    stacked[0, 1, 1] *= 2
    with pytest.raises(ValueError, match="more than one"):
        encode_exact("layer", stacked, GGMLQuantizationType.Q4_0)


def test_act_order_g_idx_is_refused_even_without_the_flag(tmp_path):
    settings = GptqSettings(4, 32, True, False, "gptq")
    gptq_layer(tmp_path, settings, g_idx=torch.arange(64).flip(0) // 32)
    with pytest.raises(UsageError, match="g_idx is not column // 32.*--group-size 32"):
        GptqState(tmp_path, settings, tied_embeddings=False)["layer.weight"]


@pytest.mark.parametrize("bits, format", [(4, "gptq"), (8, "gptq"), (2, "gptq"), (4, "gptq_v2")])
def test_v1_zeros_of_zero_borrow_and_are_read_back(tmp_path, bits, format):
    """GPTQModel's v1 subtracts one from each whole word: a zero of 0 borrows from the next value;
    reading adds the word back (per-value `+ 1` would read [0, 5, ...] as [16, 4, ...])."""
    settings = GptqSettings(bits, 32, False, False, format)
    zeros = torch.tensor([[0, 5, 0, 0, 1, 2, 0, 3], [3, 0, 0, 1, 0, 0, 0, 0]]) % (1 << bits)
    codes, zeros, scales = gptq_layer(tmp_path, settings, zeros=zeros)
    stacked = GptqState(tmp_path, settings, tied_embeddings=False, exact=False)["layer.weight"].numpy()
    g_idx = torch.arange(64) // 32
    assert np.array_equal(stacked[..., 2], zeros[g_idx].T.numpy())
    assert np.array_equal(stacked[..., 0], reference(codes, zeros, scales, g_idx))


@pytest.mark.parametrize("settings", [
    GptqSettings(4, 32, True, True, "gptq"), GptqSettings(4, 48, False, False, "gptq"),
    GptqSettings(2, 16, False, False, "gptq"), GptqSettings(8, 32, False, True, "gptq_v2"),
])
def test_float_types_dequantize_by_g_idx_as_gptqmodel_does(tmp_path, settings):
    """desc_act (shuffled g_idx), groups of 48 or 16, 2 bits: no exact blocks, but f32 is exact."""
    group = settings.group_size
    g_idx = torch.arange(96) // group
    if settings.desc_act:
        g_idx = g_idx[torch.randperm(96, generator=torch.Generator().manual_seed(1))]
    check_export(settings, "f32", tmp_path)
    codes, zeros, scales = gptq_layer(tmp_path, settings, columns=96, g_idx=g_idx)
    stacked = GptqState(tmp_path, settings, tied_embeddings=False, exact=False)["layer.weight"].numpy()
    assert np.array_equal(stacked[..., 0], reference(codes, zeros, scales, g_idx))
    if settings.desc_act or group % 32:
        with pytest.raises(UsageError, match="no exact GGUF blocks.*f32/f16/bf16"):
            GptqState(tmp_path, settings, tied_embeddings=False)["layer.weight"]


def rewrite_layer(folder: Path, change) -> None:
    """`folder/model.safetensors` (from `gptq_layer`) with `change(name, tensor)` for each tensor
    (None: the tensor is left out)."""
    from safetensors.torch import load_file, save_file

    file = folder / "model.safetensors"
    changed = {name: change(name, tensor) for name, tensor in load_file(str(file)).items()}
    save_file({name: tensor for name, tensor in changed.items() if tensor is not None}, str(file))


@pytest.mark.parametrize("dtype, stored", [(torch.float32, "F32"), (torch.bfloat16, "BF16")])
def test_scales_other_than_fp16_have_no_exact_type_but_dequantize_exactly(tmp_path, monkeypatch, dtype, stored):
    """GGML's `d` is fp16, which cannot hold fp32 or bf16 scales in general: the exact types refuse
    them from the header, before any layer is unpacked; f32/f16/bf16 dequantize with them as stored."""
    settings = GptqSettings(4, 32, True, False, "gptq")
    codes, zeros, scales = gptq_layer(tmp_path, settings)
    scales = scales.float() * (1 + 2**-13) if dtype == torch.float32 else scales.to(dtype)
    rewrite_layer(tmp_path, lambda name, tensor: scales.to(dtype) if name == "layer.scales" else tensor)
    monkeypatch.setattr(GptqState, "_layer", lambda self, module: pytest.fail("unpacked"))
    with pytest.raises(UsageError, match=f"^{tmp_path}: layer.scales is {stored}, not fp16: .*no exact GGUF "
                                         "blocks \\(--type f32/f16/bf16 take them\\)$"):
        GptqState(tmp_path, settings, tied_embeddings=False)
    monkeypatch.undo()
    stacked = GptqState(tmp_path, settings, tied_embeddings=False, exact=False)["layer.weight"].numpy()
    assert np.array_equal(stacked[..., 0], reference(codes, zeros, scales.to(dtype), torch.arange(64) // 32))


@pytest.mark.parametrize("part, change, message", [
    ("layer.qweight", lambda t: t.to(torch.int64), "layer.qweight is I64; GGUF export reads GPTQ's int32 words"),
    ("layer.qzeros", lambda t: t.to(torch.int16), "layer.qzeros is I16; GGUF export reads GPTQ's int32 words"),
    ("layer.scales", lambda t: t.to(torch.int32), "layer.scales is I32; GPTQ scales are float"),
    ("layer.scales", lambda t: None, "GPTQ layer layer has a qweight but no scales in its safetensors"),
])
def test_layers_the_export_cannot_read_are_refused_from_the_header(tmp_path, part, change, message):
    settings = GptqSettings(4, 32, True, False, "gptq")
    gptq_layer(tmp_path, settings)
    rewrite_layer(tmp_path, lambda name, tensor: change(tensor) if name == part else tensor)
    with pytest.raises(UsageError, match=f"^{tmp_path}: {message}"):
        GptqState(tmp_path, settings, tied_embeddings=False, exact=False)


def test_a_g_idx_outside_the_groups_is_a_usage_error(tmp_path):
    settings = GptqSettings(4, 32, True, False, "gptq")
    gptq_layer(tmp_path, settings, g_idx=torch.arange(64) // 16)
    with pytest.raises(UsageError, match="layer: g_idx does not map its 64 input columns to its 2 groups"):
        GptqState(tmp_path, settings, tied_embeddings=False, exact=False)["layer.weight"]


@pytest.mark.parametrize("type, bits", [("q4_0", 4), ("q8_0", 8)])
def test_a_sym_config_over_asymmetric_zeros_is_a_usage_error(tmp_path, type, bits):
    from gguf import GGMLQuantizationType

    gptq_layer(tmp_path, GptqSettings(bits, 32, False, False, "gptq_v2"))
    said = GptqSettings(bits, 32, True, False, "gptq_v2")
    stacked = GptqState(tmp_path, said, tied_embeddings=False)["layer.weight"].numpy()
    with pytest.raises(UsageError, match=f"^layer: config.json says sym .*zero {1 << bits - 1}.*has zeros 0"):
        encode_exact("layer", stacked, GGMLQuantizationType[type.upper()])


@pytest.mark.parametrize("extra, message", [
    ({"pack_dtype": "int64"}, "packed in int64 words.*int32"),
    ({"pack_dtype": "int16"}, "packed in int16 words"),
    ({"dynamic": {"-:.*mlp.*": {}}}, "per-module settings \\(dynamic"),
])
def test_other_words_and_per_module_overrides_are_refused(tmp_path, extra, message):
    quantization = {"quant_method": "gptq", "bits": 4, "group_size": 32, "pack_dtype": "int32", "dynamic": None}
    gptq_settings(quantization, tmp_path)
    with pytest.raises(UsageError, match=message) as error:
        gptq_settings({**quantization, **extra}, tmp_path)
    assert str(error.value).startswith(str(tmp_path)) and "\n" not in str(error.value)


@pytest.mark.parametrize("settings, type, message", [
    (GptqSettings(3, 32, True, False, "gptq"), "q4_0", "3-bit.*2-, 4- and 8-bit.*--bits 4"),
    (GptqSettings(3, 32, True, False, "gptq"), "f32", "3-bit codes span int32 words"),
    (GptqSettings(2, 32, True, False, "gptq"), "q4_0", "2-bit GPTQ has no exact GGUF type"),
    (GptqSettings(4, 32, True, True, "gptq"), "q4_0", "desc_act.*f32/f16/bf16 dequantize it.*without --desc-act"),
    (GptqSettings(4, 48, True, False, "gptq"), "q4_0", "multiple of 32 or -1.*f32/f16/bf16 take any.*--group-size 32"),
    (GptqSettings(4, 32, False, False, "gptq"), "q4_0", "would re-round.*exactly to --type q4_1"),
    (GptqSettings(4, 32, True, False, "gptq"), "q5_0", "would re-round.*exactly to q4_0"),
    (GptqSettings(4, 32, True, False, "gptq"), "q4_k_m", "would re-round"),
    (GptqSettings(4, 32, True, False, "gptq"), "q8_0", "exactly to --type q4_0.*--bits 8"),
    (GptqSettings(8, 32, False, False, "gptq"), "q8_0", "no exact GGUF type"),
    (GptqSettings(4, 32, True, False, "marlin"), "q4_0", "checkpoint_format 'marlin'"),
])
def test_settings_that_cannot_be_exact_are_refused_with_a_recipe(settings, type, message, tmp_path):
    with pytest.raises(UsageError, match=message) as error:
        check_export(settings, type, tmp_path)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("settings", [
    GptqSettings(4, 128, True, False, "gptq"), GptqSettings(8, -1, True, False, "gptq_v2"),
    GptqSettings(4, 128, True, True, "gptq"), GptqSettings(2, 48, False, False, "gptq"),
])
@pytest.mark.parametrize("type", ["f32", "f16", "bf16"])
def test_float_types_take_any_block_aligned_folder(settings, type, tmp_path):
    check_export(settings, type, tmp_path)


@pytest.mark.slow  # imports transformers (seconds alone)
@pytest.mark.parametrize("quantization, message", [
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True},
     "GPTQ 4-bit group size 128 with desc_act: its groups are not runs of 32 columns"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": False},
     "GPTQ 4-bit group size 128 asymmetric: --type q4_0 would re-round GPTQ's weights (this folder exports exactly "
     "to --type q4_1)"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128}, "a awq-quantized model (quantization_config"),
])
def test_cli_refuses_before_reading_weights(belle_main, tmp_path, quantization, message):
    from tests.export.test_export_cli import error_line

    folder = tmp_path / "quantized"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": quantization}))
    line = error_line(belle_main("export", "gguf", "--model", folder, "--out", tmp_path / "m.gguf", "--type", "q4_0"))
    assert line.split(" error: ", 1)[1].startswith(f"{folder}: {message}"), line


@pytest.fixture(scope="module")
def gptq_folder(arch_model, tmp_path_factory):
    """`gptq_folder("bloom")`: that family's tiny model quantized by `belle gptq quantize --bits 4
    --group-size 32` on the CPU (8 windows of 64 tokens), once per module; `sym=False`: `--no-sym`."""
    from belle.gptq.quantize import quantize
    from belle.models.tiny import tiny_corpus_text

    root = tmp_path_factory.mktemp("gptq_export")
    calibration = root / "calibration.txt"
    calibration.write_text(tiny_corpus_text()[:40000], encoding="utf-8")
    built: dict[tuple[str, bool], Path] = {}

    def get(arch: str, sym: bool = True) -> Path:
        if (arch, sym) not in built:
            out = root / f"{arch}{'' if sym else '-asym'}"
            with contextlib.chdir(root):
                quantize(model=arch_model(arch), out=out, bits=4, group_size=32, sym=sym, calibration=[calibration],
                         nsamples=8, seqlen=64, device="cpu")
            built[arch, sym] = out
        return built[arch, sym]

    return get


@pytest.fixture(scope="module")
def gptq_export(gptq_folder, tmp_path_factory):
    """`gptq_export("llama", "q4_0")`: the `ExportReport` of that GPTQ folder in that type."""
    from belle.export import export_gguf

    done = {}

    def get(arch: str, type: str):
        if (arch, type) not in done:
            out = tmp_path_factory.mktemp(f"gptq_gguf_{arch}") / f"{arch}-{type}.gguf"
            done[arch, type] = export_gguf(gptq_folder(arch), out, type=type)
        return done[arch, type]

    return get


def folder_matrices(folder: Path, config) -> dict[str, tuple[torch.Tensor, str]]:
    """{GGUF name: (tensor as stored, its GGML type by `STORED`)} of the matrices in the GPTQ
    folder's safetensors that GPTQ did not quantize (no `.qweight`), the LM head left out when the
    embeddings are tied."""
    from safetensors import safe_open

    from belle.export.arches import GGUF_ARCHES

    arch = GGUF_ARCHES[config.model_type]
    name_map = arch.name_map(config)
    matrices = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            keys = set(handle.keys())
            for key in keys:
                tensor = handle.get_tensor(key)
                module = key.removesuffix(".weight")
                if tensor.ndim < 2 or key.endswith((".qweight", ".qzeros", ".scales")) or f"{module}.qweight" in keys:
                    continue
                name = arch.tensor_name(key, config, name_map)
                if name:
                    matrices[name] = tensor, STORED[handle.get_slice(key).get_dtype()]
    return matrices


def gptqmodel_weights(folder: Path) -> tuple[dict[str, np.ndarray], object, dict[str, np.ndarray]]:
    """{HF weight name: (out, in) float32} of every GPTQ layer as gptqmodel dequantizes it (the model
    loaded through transformers, v1 zeros converted by gptqmodel itself), the config, and each
    layer's per-element scale (out, in). The scales go to float32 first, so the products are not
    rounded to fp16 (GGML, too, multiplies its fp16 d in float32)."""
    from belle.modeling import load_model

    model = load_model(folder, dtype="float32", device="cpu")
    weights, scales = {}, {}
    for name, module in model.named_modules():
        if hasattr(module, "dequantize_weight"):
            module.scales = module.scales.float()
            weights[f"{name}.weight"] = module.dequantize_weight().T.float()
            scales[f"{name}.weight"] = module.scales[module.g_idx.long()].T
    assert weights
    return weights, model.config, scales


@pytest.mark.slow
@pytest.mark.parametrize("arch", FAMILIES)
def test_q4_0_file_holds_exactly_gptqs_weights(arch, gptq_folder, gptq_export, llama):
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader, quants

    from belle.export.arches import GGUF_ARCHES

    report = gptq_export(arch, "q4_0")
    tensors = {t.name: t for t in GGUFReader(report.out).tensors}
    weights, config, _ = gptqmodel_weights(gptq_folder(arch))
    expected = dict(GGUF_ARCHES[config.model_type].tensors(weights, config))
    assert len(expected) == len(weights)
    for name, weight in expected.items():
        tensor = tensors[name]
        assert tensor.tensor_type == T.Q4_0, name
        written = quants.dequantize(np.asarray(tensor.data), T.Q4_0).reshape(weight.shape)
        assert np.array_equal(written, weight), name
    assert report.fallback_tensors == 0
    kept = folder_matrices(gptq_folder(arch), config)
    assert set(report.gptq_kept) == set(kept) and "token_embd.weight" in kept
    assert ("output.weight" in kept) == (not config.tie_word_embeddings)
    for name, (stored, dtype) in kept.items():  # what GPTQ left unquantized, in the folder's dtype, value for value
        tensor = tensors[name]
        assert tensor.tensor_type == T[dtype.upper()], name
        written = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(stored.shape)
        assert np.array_equal(written, stored.float().numpy()), name
    context = llama(report.out)
    logits = context.prefill([1, 5, 9, 13])
    assert np.isfinite(logits).all()
    assert len([context.step(int(np.argmax(logits))) for _ in range(4)]) == 4


@pytest.mark.slow
def test_f32_from_gptq_decodes_as_transformers_does(gptq_folder, gptq_export, llama):
    """The f32 file holds the dequantized weights: llama.cpp's greedy tokens equal transformers' on
    the GPTQ model. Its logits differ only by float error: transformers' GPTQ kernel on the CPU
    dequantizes to fp16 (embeddings, norms: bf16 in the file, float32 in both)."""
    from belle.modeling import load_model
    from tests.export.test_export import hf_greedy, hf_logits, llama_greedy, llama_logits

    ids = [1, 20, 33, 47, 58, 71, 90, 102, 130, 145, 160, 171]
    model = load_model(gptq_folder("llama"), dtype="float32", device="cpu").eval()
    context = llama(gptq_export("llama", "f32").out)
    reference = hf_logits(model, ids)
    got = llama_logits(context, ids)
    assert np.linalg.norm(got - reference) / np.linalg.norm(reference) < 1e-2
    assert llama_greedy(context, ids, 8) == hf_greedy(model, ids, 8)


@pytest.mark.slow
def test_q4_0_from_gptq_is_closer_to_gptq_than_rounding_the_float_model(gptq_folder, gptq_export, exported, llama):
    """The calibrated q4_0 file decodes nearer the GPTQ model (its f32 file) than round-to-nearest q4_0 of
    the float model does. Not zero although the weights are the same: llama.cpp's q4_0 kernels round
    the activations to 8 bits."""
    from tests.export.test_export import llama_logits

    ids = list(range(3, 40))
    reference = llama_logits(llama(gptq_export("llama", "f32").out), ids)
    calibrated = llama_logits(llama(gptq_export("llama", "q4_0").out), ids)
    rounded = llama_logits(llama(exported("llama", "q4_0").out), ids)
    error = lambda got: np.linalg.norm(got - reference) / np.linalg.norm(reference)  # noqa: E731
    assert error(calibrated) < 0.7 * error(rounded)


@pytest.mark.slow
def test_embedding_type_flag_overrides_the_folders_dtype(gptq_folder, tmp_path, llama):
    """`--embedding-type q8_0` (the smaller file): token_embd q8_0; the output matrix keeps its bf16."""
    from belle.export import export_gguf
    from tests.export.test_head_types import matrix_types

    report = export_gguf(gptq_folder("llama"), tmp_path / "m.gguf", type="q4_0", embedding_type="q8_0")
    types = matrix_types(report.out)
    assert types["token_embd.weight"] == "q8_0" and types["blk.0.attn_q.weight"] == "q4_0"
    assert report.gptq_kept == ("output.weight",) and types["output.weight"] == report.output_type
    assert report.output_type in ("bf16", "f16", "f32")
    assert len(llama(report.out).prefill([1, 5, 9])) > 0


def test_tied_embeddings_missing_lm_head_reads_the_embeddings(tmp_path):
    settings = GptqSettings(4, 32, True, False, "gptq")
    gptq_layer(tmp_path, settings)
    state = GptqState(tmp_path, settings, tied_embeddings=True)
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    assert state["lm_head.weight"].dtype == torch.float32
    assert state.stored_types() == {"model.embed_tokens.weight": "bf16", "lm_head.weight": "bf16"}


@pytest.mark.slow
def test_asymmetric_gptq_is_q4_1_with_gptqmodels_codes_and_each_layer_read_once(gptq_folder, tmp_path, llama,
                                                                                 monkeypatch):
    """`--no-sym` (v1 zeros, saved by GPTQModel): each q4_1 block holds GPTQ's fp16 scale as `d`, and
    `d * (q - zero)` is gptqmodel's dequantized weight exactly, with one integer zero per block and
    `m = -d * zero` rounded to fp16. The export unpacks each GPTQ layer once."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader

    from belle.export import export_gguf
    from belle.export.arches import GGUF_ARCHES

    folder = gptq_folder("llama", sym=False)
    reads: dict[str, int] = {}
    layer = GptqState._layer
    monkeypatch.setattr(GptqState, "_layer", lambda self, m: reads.update({m: reads.get(m, 0) + 1}) or layer(self, m))
    report = export_gguf(folder, tmp_path / "asym.gguf", type="q4_1")
    monkeypatch.undo()
    tensors = {t.name: t for t in GGUFReader(report.out).tensors}
    weights, config, scales = gptqmodel_weights(folder)
    assert reads == {name.removesuffix(".weight"): 1 for name in weights}
    arch = GGUF_ARCHES[config.model_type]
    expected, expected_scales = dict(arch.tensors(weights, config)), dict(arch.tensors(scales, config))
    for name, weight in expected.items():
        assert tensors[name].tensor_type == T.Q4_1, name
        rows, columns = weight.shape
        raw = np.asarray(tensors[name].data).reshape(rows, columns // 32, 20)
        d, m = (raw[..., i:i + 2].copy().view(np.float16)[..., 0].astype(np.float32) for i in (0, 2))
        q = np.concatenate([raw[..., 4:] & 15, raw[..., 4:] >> 4], axis=-1).astype(np.float32)
        assert np.array_equal(d, expected_scales[name].reshape(rows, -1, 32)[..., 0]), name
        zero = q - weight.reshape(rows, -1, 32) / d[..., None]
        assert np.array_equal(zero, np.rint(zero)) and (zero == zero[..., :1]).all(), name
        assert np.array_equal(m, (-d * zero[..., 0]).astype(np.float16).astype(np.float32)), name
    assert np.isfinite(llama(report.out).prefill([1, 5, 9, 13])).all()


@pytest.mark.slow
def test_a_folder_with_fp32_scales_is_refused_for_q4_0_and_exported_to_f32(gptq_folder, gptq_export, tmp_path,
                                                                            belle_main):
    """The same GPTQ folder with its fp16 scales stored as fp32: `--type q4_0` is one error line,
    no file left; its f32 file holds the same tensors as the fp16 folder's."""
    from gguf import GGUFReader
    from safetensors import safe_open
    from safetensors.torch import save_file

    from belle.export import export_gguf
    from tests.export.test_export_cli import error_line

    folder = tmp_path / "fp32-scales"
    shutil.copytree(gptq_folder("llama"), folder)
    (file,) = folder.glob("*.safetensors")
    with safe_open(str(file), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    save_file({key: t.float() if key.endswith(".scales") else t for key, t in tensors.items()}, str(file),
              metadata={"format": "pt"})
    line = error_line(belle_main("export", "gguf", "--model", folder, "--out", tmp_path / "m.gguf", "--type", "q4_0"))
    assert "scales is F32, not fp16" in line and "--type f32/f16/bf16 take them" in line, line
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".m.gguf*"))
    got = {t.name: t for t in GGUFReader(export_gguf(folder, tmp_path / "m.gguf", type="f32").out).tensors}
    expected = {t.name: t for t in GGUFReader(gptq_export("llama", "f32").out).tensors}
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert tensor.tensor_type == got[name].tensor_type and np.array_equal(tensor.data, got[name].data), name


@pytest.mark.slow
def test_a_lora_adapter_on_a_gptq_folder_is_refused(gptq_folder, tmp_path):
    from belle.export import export_gguf

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(gptq_folder("llama")),
                                                             "peft_type": "LORA"}))
    with pytest.raises(UsageError, match=f"^{adapter}: a LoRA adapter on the GPTQ model .*merge it"):
        export_gguf(adapter, tmp_path / "m.gguf", type="q4_0")
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".m.gguf*"))


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["output_type", "embedding_type"])
def test_flags_that_would_re_round_a_gptq_lm_head_are_refused(gptq_folder, tmp_path_factory, flag):
    """A folder whose LM head GPTQ quantized (GPTQModel's `lm_head=True`, an untied head): the head
    is written exactly; `--output-type` would re-round it and is refused; `--embedding-type` names
    token_embd only, and the head stays q4_0. (A tied head is never a GPTQ layer in the file:
    llama.cpp reads it from token_embd, embeddings GPTQ does not quantize.)"""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from belle.export import export_gguf

    folder = tmp_path_factory.mktemp("gptq_head") / "model"
    shutil.copytree(gptq_folder("llama"), folder)
    (file,) = folder.glob("*.safetensors")
    with safe_open(str(file), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    rows, columns = tensors.pop("lm_head.weight").shape
    head, *_ = gptq_tensors("lm_head", GptqSettings(4, 32, True, False, "gptq"), out=rows, columns=columns)
    save_file({**tensors, **head}, str(file), metadata={"format": "pt"})
    out = folder.parent / "m.gguf"
    if flag == "output_type":
        with pytest.raises(UsageError, match="its LM head is a GPTQ layer; --output-type would re-round it"):
            export_gguf(folder, out, type="q4_0", output_type="q8_0")
    else:  # untied: --embedding-type names token_embd only, and the GPTQ head stays exact
        report = export_gguf(folder, out, type="q4_0", embedding_type="q8_0")
        from gguf import GGUFReader

        types = {t.name: t.tensor_type.name for t in GGUFReader(report.out).tensors}
        assert types["output.weight"] == "Q4_0" and types["token_embd.weight"] == "Q8_0"
