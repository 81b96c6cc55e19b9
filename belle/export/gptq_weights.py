"""A GPTQ folder's weights as GGUF blocks, exactly: no re-rounding.

GPTQ (GPTQModel checkpoint_format "gptq" or "gptq_v2", int32 words) stores each Linear weight as
`w = scale * (q - zero)`, one fp16 `scale` and integer `zero` per group of input columns (`g_idx`
names each column's group), `q` in 0..2**bits-1. GGML's block types store `w = d * (q - 8)` (q4_0),
`w = d * q + m` (q4_1) and `w = d * q` with int8 q (q8_0) per 32 input columns, `d` and `m` fp16.
So when each group is a run of whole 32-column blocks (desc_act off, group size a multiple of 32
or -1), a GPTQ layer is a GGML tensor with the same `d` and `q`: a symmetric 4-bit layer is q4_0
exactly (zero 8), an 8-bit symmetric one q8_0 exactly (int8 `q - 128`), a 4-bit layer is q4_1
with `d = scale` and `m = -scale * zero` rounded to fp16 (exact for a symmetric layer, within half
an fp16 step of `m` for an asymmetric one). fp32 or bf16 scales have no fp16 `d` in general, so
such a folder has no exact type. f32/f16/bf16 take any 2-, 4- or 8-bit folder with any float
scales, dequantized as GPTQModel does; 3-bit codes straddle words and are refused.

`GptqState` reads the folder's safetensors lazily (no transformers or gptqmodel model is built);
each quantized weight comes as a float32 `[out, in, 3]` tensor stacking the dequantized weight,
its per-element scale and per-element zero, so `GgufArch.tensors` reorders all three rows alike
(q/k permutation, fused-qkv order). `encode_exact` turns such an array into the GGML bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from belle.cli import UsageError

RECIPE = "belle gptq quantize --bits 4 --group-size 32 (or 64, 128, -1) without --desc-act"
# GGUF type -> (bits, symmetric) of the GPTQ folders that are exactly that type; q4_1 also takes a
# symmetric 4-bit one (`check_export`), the other types need exactly these settings.
EXACT_TYPES = {"q4_0": (4, True), "q4_1": (4, False), "q8_0": (8, True)}
UNPACKED_BITS = (2, 4, 8)  # bit widths whose codes sit whole in int32 words
FLOAT_TYPES = ("f32", "f16", "bf16")
BLOCK = 32


@dataclass(frozen=True)
class GptqSettings:
    """The `quantization_config` of a GPTQ folder: `group_size` -1 is one group per row;
    `checkpoint_format` "gptq" stores zeros minus one (GPTQ v1), "gptq_v2" stores them as they are."""

    bits: int
    group_size: int
    sym: bool
    desc_act: bool
    checkpoint_format: str


def gptq_settings(quantization: dict[str, Any], model_dir: Path) -> GptqSettings:
    """`GptqSettings` of config.json's `quantization_config`, or a `UsageError` for another method,
    for words other than int32 (GPTQModel's `pack_dtype`) and for per-module `dynamic` overrides."""
    method = quantization.get("quant_method", "unknown")
    if method != "gptq":
        raise UsageError(f"{model_dir}: a {method}-quantized model (quantization_config in config.json); "
                         f"GGUF export reads GPTQ folders ({RECIPE}) or float models")
    pack_dtype = str(quantization.get("pack_dtype") or "int32").removeprefix("torch.")
    if pack_dtype != "int32":
        raise UsageError(f"{model_dir}: GPTQ packed in {pack_dtype} words (pack_dtype in config.json); "
                         f"GGUF export reads int32 words, GPTQModel's default ({RECIPE})")
    if quantization.get("dynamic"):
        raise UsageError(f"{model_dir}: GPTQ with per-module settings (dynamic in config.json); GGUF export reads "
                         f"folders with one bits/group size for every layer ({RECIPE})")
    return GptqSettings(int(quantization.get("bits", 4)), int(quantization.get("group_size", 128)),
                        bool(quantization.get("sym", True)), bool(quantization.get("desc_act", False)),
                        str(quantization.get("checkpoint_format") or quantization.get("format") or "gptq"))


def check_export(settings: GptqSettings, type: str, model_dir: Path) -> None:
    """Refuse, from the settings alone, a GPTQ folder whose layers cannot be `type` without re-rounding.
    f32/f16/bf16 take any 2-, 4- or 8-bit folder (dequantized by its `g_idx`, as GPTQModel does)."""
    where = f"{model_dir}: GPTQ {settings.bits}-bit group size {settings.group_size}" + \
        ("" if settings.sym else " asymmetric")
    if settings.bits not in UNPACKED_BITS:
        raise UsageError(f"{where}: GGUF export reads 2-, 4- and 8-bit GPTQ folders (3-bit codes span int32 "
                         f"words); for q4_0 {RECIPE}")
    if settings.checkpoint_format not in ("gptq", "gptq_v2"):
        raise UsageError(f"{where}, checkpoint_format {settings.checkpoint_format!r}: GGUF export reads "
                         f"checkpoint_format gptq or gptq_v2 (what {RECIPE} writes)")
    if type in FLOAT_TYPES:
        return
    wanted = exact_type(settings)
    if settings.desc_act:
        raise UsageError(f"{where} with desc_act: its groups are not runs of 32 columns, so it has no exact "
                         f"q4_0/q4_1/q8_0 form (--type f32/f16/bf16 dequantize it); {RECIPE}")
    if settings.group_size != -1 and settings.group_size % BLOCK:
        raise UsageError(f"{where}: GGUF blocks are 32 columns, so an exact q4_0/q4_1/q8_0 needs a group size that "
                         f"is a multiple of 32 or -1 (--type f32/f16/bf16 take any); {RECIPE}")
    if type not in EXACT_TYPES:
        raise UsageError(f"{where}: --type {type} would re-round GPTQ's weights; a GPTQ folder exports exactly to "
                         f"{wanted or 'q4_1'} (or f32/f16/bf16, dequantized); for --type {type} "
                         "export the float model it was quantized from")
    bits, sym_only = EXACT_TYPES[type]
    if settings.bits != bits or (sym_only and not settings.sym):
        fits = f"this folder exports exactly to --type {wanted}" if wanted else \
            f"{'asymmetric ' if not settings.sym else ''}{settings.bits}-bit GPTQ has no exact GGUF type"
        raise UsageError(f"{where}: --type {type} would re-round GPTQ's weights ({fits}); for {type} quantize with "
                         f"belle gptq quantize --bits {bits}{' (symmetric, the default)' if sym_only else ''} "
                         "--group-size 32")


def exact_type(settings: GptqSettings) -> str | None:
    """The GGUF type a GPTQ folder with `settings` is exactly (`EXACT_TYPES`), or None."""
    return next((type for type, (bits, sym) in EXACT_TYPES.items()
                 if bits == settings.bits and sym == settings.sym), None)


def _v2_zeros(packed: Any, bits: int) -> Any:
    """GPTQ v1 `qzeros` (int32 words) as v2 (the zeros themselves). GPTQModel writes v1 by
    subtracting 0x11111111 (4-bit; 0x01010101 8-bit) from each whole word, so a zero of 0 borrows
    from the next value: adding the word back, modulo 2**32, undoes it exactly."""
    import torch

    ones = sum(1 << shift for shift in range(0, 32, bits))
    words = (packed.to(torch.int64) + ones) & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack(packed: Any, bits: int, dim: int) -> Any:
    """int32 `packed` with 32/bits values per word (lowest bits first) unpacked along `dim` (0 or 1)."""
    import torch

    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    if dim == 0:
        values = (packed.unsqueeze(1) >> shifts.view(1, -1, 1)) & ((1 << bits) - 1)
        return values.reshape(packed.shape[0] * per_word, packed.shape[1])
    values = (packed.unsqueeze(2) >> shifts.view(1, 1, -1)) & ((1 << bits) - 1)
    return values.reshape(packed.shape[0], packed.shape[1] * per_word)


class GptqState(Mapping):
    """The state dict of the GPTQ folder `model_dir` (HF names), read from its safetensors one
    tensor at a time: float tensors (bf16/fp16 in the file) as float32, each quantized Linear as
    `<module>.weight`, a float32 `[out, in, 3]` tensor of (weight, scale, zero) per element. With
    tied embeddings and no `lm_head.weight` in the file, `lm_head.weight` is the embeddings.
    `exact`: the layers are for `encode_exact`, so a layer whose groups are not runs of whole
    32-column blocks, or whose scales are not fp16, is a `UsageError` (False: f32/f16/bf16, any
    `g_idx`, any float scales). Each layer's parts are checked from the headers when the state is made."""

    def __init__(self, model_dir: Path, settings: GptqSettings, tied_embeddings: bool, exact: bool = True) -> None:
        from safetensors import safe_open

        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise UsageError(f"{model_dir}: no .safetensors weights (GGUF export reads GPTQ folders in safetensors)")
        self.settings, self.exact = settings, exact
        self._where: dict[str, Any] = {}
        for file in files:
            handle = safe_open(str(file), "pt")
            for key in handle.keys():
                self._where[key] = handle
        self.quantized = sorted(k.removesuffix(".qweight") for k in self._where if k.endswith(".qweight"))
        for module in self.quantized:
            self._check_header(module, model_dir)
        parts = (".qweight", ".qzeros", ".scales", ".g_idx")
        self._keys = [k for k in self._where if not k.endswith(parts)] + [f"{m}.weight" for m in self.quantized]
        self._alias: dict[str, str] = {}
        if tied_embeddings and "lm_head.weight" not in self._where:
            embeddings = next((k for k in self._where if k.endswith(_EMBEDDINGS)), None)
            if embeddings is not None:
                self._alias["lm_head.weight"] = embeddings
                self._keys.append("lm_head.weight")

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __getitem__(self, key: str) -> Any:
        module = key.removesuffix(".weight")
        if key.endswith(".weight") and module in self.quantized:
            return self._layer(module)
        key = self._alias.get(key, key)
        if key not in self._where:
            raise KeyError(key)
        return self._where[key].get_tensor(key).float()

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape `self[key]` has (`[out, in, 3]` for a GPTQ layer), from the file's headers alone."""
        module = key.removesuffix(".weight")
        if key.endswith(".weight") and module in self.quantized:
            rows = self._shape(f"{module}.qweight")[0] * (32 // self.settings.bits)
            return self._shape(f"{module}.scales")[1], rows, 3
        return self._shape(self._alias.get(key, key))

    def placeholders(self) -> dict[str, Any]:
        """{HF name: float32 tensor of `shape(name)`} that hold no memory (one zero, broadcast): for
        passes over the state that need only names and shapes."""
        import torch

        zero = torch.zeros(())
        return {key: zero.expand(self.shape(key)) for key in self._keys}

    def stored_types(self) -> dict[str, str]:
        """{HF name: "bf16", "f16" or "f32"} of the matrices GPTQ left unquantized (embeddings, an
        unquantized LM head), in the dtype the folder's safetensors hold them (another float dtype: "f32")."""
        types = {}
        for key in self._keys:
            source = self._alias.get(key, key)
            if source not in self._where or key.removesuffix(".weight") in self.quantized:
                continue
            if len(self._shape(source)) >= 2:
                types[key] = STORED.get(self._dtype(source), "f32")
        return types

    def _check_header(self, module: str, model_dir: Path) -> None:
        """A `UsageError`, from the safetensors header alone, for a GPTQ layer `module` this export
        cannot read: a missing part, words other than int32, or (for `exact`) scales other than fp16,
        which GGML's fp16 `d` cannot hold in general (f32/f16/bf16 take any float scales)."""
        missing = [part for part in ("qzeros", "scales") if f"{module}.{part}" not in self._where]
        if missing:
            raise UsageError(f"{model_dir}: GPTQ layer {module} has a qweight but no {' or '.join(missing)} "
                             "in its safetensors")
        for part in ("qweight", "qzeros"):
            dtype = self._dtype(f"{module}.{part}")
            if dtype != "I32":
                raise UsageError(f"{model_dir}: {module}.{part} is {dtype}; GGUF export reads GPTQ's int32 words "
                                 f"({RECIPE})")
        dtype = self._dtype(f"{module}.scales")
        if dtype not in STORED:
            raise UsageError(f"{model_dir}: {module}.scales is {dtype}; GPTQ scales are float (F16, BF16 or F32)")
        if self.exact and dtype != "F16":
            raise UsageError(f"{model_dir}: {module}.scales is {dtype}, not fp16: GGML's q4_0/q4_1/q8_0 blocks hold "
                             "fp16 scales, so its layers have no exact GGUF blocks (--type f32/f16/bf16 take them)")

    def _dtype(self, key: str) -> str:
        """The safetensors dtype of `key` ("F16", "I32", ...), from the header."""
        return self._where[key].get_slice(key).get_dtype()

    def _shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key].get_slice(key).get_shape())

    def _layer(self, module: str) -> Any:
        """`[out, in, 3]` float32: dequantized weight, scale and zero of each element, as GPTQModel's
        `dequantize_weight` computes them (`scales[g_idx] * (q - zeros[g_idx])`)."""
        import torch

        bits = self.settings.bits

        def tensor(part: str) -> Any:
            return self._where[f"{module}.{part}"].get_tensor(f"{module}.{part}")

        q = _unpack(tensor("qweight"), bits, 0)  # [in, out]
        scales = tensor("scales").float()  # [groups, out]
        packed_zeros = tensor("qzeros")
        if self.settings.checkpoint_format == "gptq":
            packed_zeros = _v2_zeros(packed_zeros, bits)
        zeros = _unpack(packed_zeros, bits, 1)[:, :scales.shape[1]]
        columns = q.shape[0]
        group = self.settings.group_size if self.settings.group_size != -1 else columns
        contiguous = torch.arange(columns) // group
        g_idx = tensor("g_idx").long() if f"{module}.g_idx" in self._where else contiguous
        if g_idx.shape != (columns,) or g_idx.min() < 0 or g_idx.max() >= scales.shape[0]:
            raise UsageError(f"{module}: g_idx does not map its {columns} input columns to its "
                             f"{scales.shape[0]} groups of scales")
        if self.exact and not torch.equal(g_idx, contiguous):
            raise UsageError(f"{module}: g_idx is not column // {group} (act-order or reordered groups): its groups "
                             f"are not runs of 32 columns, so it has no exact GGUF blocks (--type f32/f16/bf16 "
                             f"dequantize it); {RECIPE}")
        if self.exact and (columns % BLOCK or group % BLOCK):
            raise UsageError(f"{module}: {columns} input columns in groups of {group}: not whole 32-column GGUF "
                             "blocks, so it has no exact GGUF blocks (--type f32/f16/bf16 dequantize it)")
        scale = scales[g_idx].T  # [out, in]
        zero = zeros[g_idx].T.float()
        weight = scale * (q.T.float() - zero)
        return torch.stack([weight, scale, zero], dim=-1)


STORED = {"BF16": "bf16", "F16": "f16", "F32": "f32"}  # safetensors dtype -> GGML type
_EMBEDDINGS = ("embed_tokens.weight", "word_embeddings.weight", "embed_in.weight", "wte.weight")


def vocab_rows(state: GptqState) -> int:
    """Rows of the input embeddings in `state` (the vocabulary the file is written for)."""
    key = next((k for k in state if k.endswith(_EMBEDDINGS)), None)
    if key is None:
        raise UsageError("GPTQ folder: no input embeddings (embed_tokens.weight) in its safetensors")
    return int(state.shape(key)[0])


def _fp16(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16)


def _check_zeros(name: str, zero: np.ndarray, middle: int, bits: str) -> None:
    """A `UsageError` unless every zero of the layer `name` is `middle`, as a symmetric GPTQ folder's are."""
    if not (zero == middle).all():
        found = sorted({int(z) for z in np.unique(zero)} - {middle})[:3]
        raise UsageError(f"{name}: config.json says sym (symmetric {bits}-bit GPTQ, zero {middle}), but this layer "
                         f"has zeros {', '.join(map(str, found))}: the folder's quantization_config does not match "
                         "its weights")


def encode_exact(name: str, stacked: np.ndarray, qtype: Any) -> np.ndarray:
    """The GGML bytes (uint8, `[out, in // 32 * block bytes]`) of a GPTQ layer in `qtype` (Q4_0,
    Q4_1 or Q8_0), from `stacked` `[out, in, 3]` (weight, scale, zero). A `ValueError` if a block
    mixes scales or a value is not its scale times an integer (a bug, never re-rounded); a
    `UsageError` if a symmetric type meets zeros other than the middle one (the folder's config lies)."""
    import gguf

    weight, scale, zero = (stacked[..., i].astype(np.float32) for i in range(3))
    rows, columns = weight.shape
    blocks = columns // BLOCK
    scale_blocks = scale.reshape(rows, blocks, BLOCK)
    d = scale_blocks[..., 0]
    if not (scale_blocks == d[..., None]).all() or not (_fp16(d).astype(np.float32) == d).all():
        raise ValueError(f"{name}: a 32-column block holds more than one fp16 GPTQ scale")
    code = weight / np.where(scale == 0, 1, scale) + zero
    q = np.rint(code)
    if not (code == q).all():
        raise ValueError(f"{name}: GPTQ weights are not scale * (q - zero) with integer q")
    q = q.reshape(rows, blocks, BLOCK)
    zero = zero.reshape(rows, blocks, BLOCK)
    kinds = gguf.GGMLQuantizationType
    head = _fp16(d)[..., None].view(np.uint8)  # [rows, blocks, 2]
    if qtype == kinds.Q8_0:
        _check_zeros(name, zero, 128, "8")
        body = (q - 128).astype(np.int8).view(np.uint8)
        return np.concatenate([head, body], axis=-1).reshape(rows, -1)
    nibbles = q.astype(np.uint8)
    packed = nibbles[..., :16] | (nibbles[..., 16:] << 4)
    if qtype == kinds.Q4_0:
        _check_zeros(name, zero, 8, "4")
        return np.concatenate([head, packed], axis=-1).reshape(rows, -1)
    if qtype == kinds.Q4_1:
        if not (zero == zero[..., :1]).all():
            raise ValueError(f"{name}: a 32-column block holds more than one GPTQ zero")
        m = _fp16(-d * zero[..., 0])[..., None].view(np.uint8)
        return np.concatenate([head, m, packed], axis=-1).reshape(rows, -1)
    raise ValueError(f"{name}: no exact GGUF form of a GPTQ layer in {qtype.name}")
