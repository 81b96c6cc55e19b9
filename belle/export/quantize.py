"""Which GGML type each tensor gets, and llama.cpp's quantizer for the K-quants.

Direct types (`DIRECT_TYPES`) are written by gguf-py (`gguf.quants.quantize`) tensor by tensor;
K-quants (`K_QUANTS`) are made by llama.cpp itself (`llama_cpp.llama_model_quantize`) from an f32
GGUF, so their tensor mix is exactly `llama-quantize`'s.

`--embedding-type` and `--output-type` (llama-quantize's `--token-embedding-type` and
`--output-tensor-type`) choose the type of `token_embd.weight` and `output.weight` (`head_types`):
a direct type for every export, a K type (`K_TYPES`) too for K-quant exports. With tied embeddings
llama.cpp runs without `output.weight` and `token_embd.weight` is the output matrix: it takes
`--embedding-type`, else `--output-type`, as llama-quantize does (with no `output.weight` it gives
`--output-tensor-type` to `token_embd.weight`, and `--token-embedding-type` overrides it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from belle.cli import UsageError
from belle.hardware import usable_cpus

DIRECT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
K_TYPES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")  # GGML types of K-quant blocks, for --embedding/--output-type
K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
GGUF_TYPES = DIRECT_TYPES + K_QUANTS

# --type -> llama.cpp's LlamaFileType (general.file_type), by member name of gguf.LlamaFileType.
FILE_TYPES = {"f32": "ALL_F32", **{t: f"MOSTLY_{t.upper()}" for t in GGUF_TYPES if t != "f32"}}
# Low-bit direct types whose output matrix llama-quantize keeps at higher precision (see `tensor_type`).
_LOW_BIT = ("q4_0", "q4_1", "q5_0", "q5_1")
HEADS = ("token_embd.weight", "output.weight")  # the GGUF names --embedding-type and --output-type set


def needs_gguf() -> Any:
    """The `gguf` module, or a `UsageError` saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise UsageError("GGUF export needs the gguf package: pip install 'belle[gguf]'") from None
    return gguf


def needs_llama_cpp(type: str) -> Any:
    """The `llama_cpp` module, or a `UsageError` saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise UsageError(f"--type {type} needs llama-cpp-python (llama.cpp's quantizer): "
                         "pip install 'belle[gguf]'") from None
    return llama_cpp


def check_type(type: str) -> None:
    if type not in GGUF_TYPES:
        raise UsageError(f"unknown --type {type!r}; choose from {', '.join(GGUF_TYPES)}")


def check_head_type(flag: str, value: str | None, type: str) -> None:
    """Refuse a `--embedding-type`/`--output-type` (`flag`) `value` the export to `type` cannot write."""
    if value is None or value in DIRECT_TYPES or (value in K_TYPES and type in K_QUANTS):
        return
    if value in K_TYPES:
        raise UsageError(f"{flag} {value} needs a K-quant --type ({', '.join(K_QUANTS)}): gguf-py cannot write "
                         f"K blocks; with --type {type} choose from {', '.join(DIRECT_TYPES)}")
    raise UsageError(f"unknown {flag} {value!r}; choose from {', '.join(DIRECT_TYPES)}"
                     f"{', ' + ', '.join(K_TYPES) if type in K_QUANTS else ''}")


def head_types(output_name: str, embedding_type: str | None, output_type: str | None) -> dict[str, str]:
    """{GGUF name: type} the flags ask for: `token_embd.weight` takes `embedding_type`; the output
    matrix (`output_name`) `output_type`, but when it is `token_embd.weight` (tied embeddings)
    `embedding_type` wins."""
    chosen = {"output.weight": output_type} if output_name == "output.weight" else {"token_embd.weight": output_type}
    chosen["token_embd.weight"] = embedding_type or chosen.get("token_embd.weight")
    return {name: value for name, value in chosen.items() if value}


def file_type(type: str) -> int:
    """`general.file_type` of `type` (llama.cpp's `llama_ftype`)."""
    return int(needs_gguf().LlamaFileType[FILE_TYPES[type]])


@dataclass(frozen=True)
class TensorType:
    """The GGML type one tensor is written in; `fallback` when a whole-block type did not fit its rows."""

    qtype: Any  # gguf.GGMLQuantizationType
    fallback: bool = False


def tensor_type(type: str, name: str, shape: tuple[int, ...], output_name: str,
                chosen: dict[str, str] | None = None) -> TensorType:
    """The GGML type of tensor `name` (GGUF name, numpy `shape`) in a direct-type export; a matrix
    named in `chosen` ({GGUF name: type}: the flags, a GPTQ folder's unquantized matrices) gets that type.

    As llama.cpp's own tools do: 1-D tensors (norms, biases) stay f32 for every type, as
    `convert_hf_to_gguf.py --outtype` writes them; f16, bf16 and q8_0 put every matrix in that type
    (as `convert_hf_to_gguf.py --outtype q8_0` does). For q4_0, q4_1, q5_0 and q5_1, as
    `llama-quantize` does, the output matrix (`output_name`: `output.weight`, or `token_embd.weight`
    when the embeddings are tied) is kept at higher precision: `llama-quantize` uses q6_K, which
    gguf-py cannot write, so it is q8_0 here. A matrix whose rows (`shape[-1]` values) do not split
    into whole blocks of its type is written in f16, as `convert_hf_to_gguf.py` does, and counted.
    """
    gguf = needs_gguf()
    kinds = gguf.GGMLQuantizationType
    if len(shape) <= 1:
        return TensorType(kinds.F32)
    wanted = (chosen or {}).get(name) or ("q8_0" if type in _LOW_BIT and name == output_name else type)
    qtype = kinds[wanted.upper()]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        return TensorType(kinds.F16, fallback=True)
    return TensorType(qtype)


def tensor_bytes(qtype: Any, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of numpy `shape` in GGML type `qtype`."""
    import math

    gguf = needs_gguf()
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * (shape[-1] // block) * size


def encode(array: Any, qtype: Any) -> Any:
    """`array` (float32 numpy) in GGML type `qtype`: a float array, or the quantized bytes (uint8)."""
    return needs_gguf().quants.quantize(array, qtype)


def llama_quantize(source: Path, target: Path, type: str, chosen: dict[str, str] | None = None) -> None:
    """Quantize the f32 GGUF `source` into `target` with llama.cpp's quantizer (`llama-quantize TYPE`),
    `token_embd.weight` and `output.weight` in the types `chosen` names (their rows must split into
    the type's blocks: llama.cpp fails on a chosen type that does not fit); a `UsageError` if it fails."""
    llama_cpp = needs_llama_cpp(type)
    kinds = needs_gguf().GGMLQuantizationType
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{FILE_TYPES[type]}")
    chosen = chosen or {}
    if "token_embd.weight" in chosen:
        params.token_embedding_type = int(kinds[chosen["token_embd.weight"].upper()])
    if "output.weight" in chosen:
        params.output_tensor_type = int(kinds[chosen["output.weight"].upper()])
    params.nthread = usable_cpus()
    llama_log = logging.getLogger("llama-cpp-python")  # llama.cpp's log, one line per tensor: errors only
    level = llama_log.level
    llama_log.setLevel(logging.ERROR)
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    finally:
        llama_log.setLevel(level)
    if status != 0:
        raise UsageError(f"llama.cpp's quantizer could not make {type} from {source} (status {status}; "
                         "llama.cpp's log above says why)")


def k_quant_types(path: Path, chosen: dict[str, str]) -> tuple[int, dict[str, str]]:
    """(fallbacks, {`token_embd.weight`/`output.weight`: type}) of the K-quant file `path`: fallbacks
    are the matrices llama.cpp wrote in a non-K type that `chosen` did not ask for (their rows do not
    split into 256-value super-blocks: llama-quantize falls back to q4_0...q8_0 for them)."""
    gguf = needs_gguf()
    kinds = gguf.GGMLQuantizationType
    k_types = {kinds[t.upper()] for t in K_TYPES}
    reader = gguf.GGUFReader(path)
    fallbacks = sum(1 for t in reader.tensors
                    if len(t.shape) > 1 and t.tensor_type not in k_types and t.name not in chosen)
    heads = {t.name: t.tensor_type.name.lower() for t in reader.tensors if t.name in HEADS}
    return fallbacks, heads

