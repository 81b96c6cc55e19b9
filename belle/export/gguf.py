"""`export_gguf`: a belle model folder (full, LoRA adapter, or `belle vocab extend` output) as one
GGUF file for llama.cpp, Ollama and LM Studio.

The model is loaded once in float32 on the CPU (an adapter merged into its base) and its tensors go
to the file one at a time: a first pass over the state dict records each tensor's name, shape and
type, a second converts and writes it, so the export needs the model's memory plus one tensor.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from belle.cli import UsageError
from belle.export.arches import GgufArch, gguf_arch
from belle.export.quantize import (
    GGUF_TYPES, K_QUANTS, check_type, encode, file_type, k_quant_fallbacks, llama_quantize, needs_gguf,
    needs_llama_cpp, tensor_bytes, tensor_type,
)

logger = logging.getLogger(__name__)

__all__ = ["GGUF_TYPES", "ExportReport", "export_gguf"]


@dataclass(frozen=True)
class ExportReport:
    """What `export_gguf` wrote: `architecture` is the GGUF name (`llama` for Mistral too),
    `fallback_tensors` the matrices written in another type than `type` asked (their rows do not
    split into whole blocks), `file_bytes` the file's size, `seconds` the wall time of the export."""

    out: Path
    type: str
    architecture: str
    tensors: int
    fallback_tensors: int
    file_bytes: int
    seconds: float


@dataclass
class _Loaded:
    """A model ready to write: the merged transformers model and what the metadata needs."""

    name: str
    model: Any
    tokenizer: Any
    template: Any  # belle.templates.Template
    arch: GgufArch
    generation_config: str


def export_gguf(model: Path, out: Path, *, type: str = "f16", base: Path | None = None,
                template: str | None = None, overwrite: bool = False,
                trust_remote_code: bool = False) -> ExportReport:
    """Write the model folder `model` to the GGUF file `out` with tensors of `type` (one of
    `GGUF_TYPES`). The file is written as the hidden `.OUT.PID.tmp` beside it and renamed when
    complete (a K-quant first writes `.OUT.PID.f32.tmp`); both are removed if the export fails. An
    existing `out` is replaced only with `overwrite`. Every user error is a `UsageError`."""
    start = time.monotonic()
    model, out = Path(model), Path(out)
    check_type(type)
    needs_gguf()
    if type in K_QUANTS:
        needs_llama_cpp(type)
    if out.is_dir():
        raise UsageError(f"{out}: a folder where the GGUF file is needed")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: no such folder for --out")
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: already exists; pass --overwrite to replace it")
    loaded = _load(model, base, template, trust_remote_code)
    architecture = loaded.arch.name
    temporary = [temporary_path(out), temporary_path(out, ".f32")]
    try:
        if type in K_QUANTS:
            count, _ = _write(loaded, temporary[1], "f32")
            del loaded  # llama.cpp reads the f32 file: the transformers model's memory goes back first
            logger.info("quantizing to %s with llama.cpp", type)
            llama_quantize(temporary[1], temporary[0], type)
            fallbacks = k_quant_fallbacks(temporary[0])
        else:
            count, fallbacks = _write(loaded, temporary[0], type)
        os.replace(temporary[0], out)
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)
    return ExportReport(out, type, architecture, count, fallbacks, out.stat().st_size,
                        round(time.monotonic() - start, 2))


def temporary_path(out: Path, tag: str = "") -> Path:
    """Where `out` is written before it is complete: hidden, and named by this process (as
    `belle.records.writing.atomic_output` names its files), so it never is a user's file."""
    return out.with_name(f".{out.name}.{os.getpid()}{tag}.tmp")


def _load(path: Path, base: Path | None, template: str | None, trust_remote_code: bool) -> _Loaded:
    """Load `path` (and `base`) in float32 on the CPU, merge an adapter, resolve the template."""
    from belle.modeling import (
        ModelFolderError, check_model_path, load_model, load_tokenizer, model_type, read_checkpoint_info,
        resolve_template, split_adapter,
    )
    from belle.records import read_json_object

    if not path.exists():
        raise UsageError(f"{path}: no such model folder")
    try:
        check_model_path(path, ("config.json", "adapter_config.json"))
        model_dir, adapter = split_adapter(path, base)
        check_model_path(model_dir, what="base model" if adapter else "model")
        arch = gguf_arch(model_type(model_dir))
        _check_config(model_dir, arch, trust_remote_code)
        tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else model_dir
        tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code=trust_remote_code)
        try:
            resolved = resolve_template(model_dir, tokenizer, template or read_checkpoint_info(path).get("template"))
        except ValueError as e:
            raise UsageError(str(e)) from None
        generation = next((d / "generation_config.json" for d in (path, model_dir)
                           if (d / "generation_config.json").is_file()), None)
        generation_config = read_json_object(generation, ModelFolderError) if generation else {}
        logger.info("loading %s in float32", path)
        model = load_model(model_dir, dtype="float32", device="cpu", adapter=adapter, tokenizer=tokenizer,
                           trust_remote_code=trust_remote_code)
    except ModelFolderError as e:
        raise UsageError(str(e)) from None
    if adapter is not None:
        model = model.merge_and_unload()
    model.eval()
    return _Loaded(path.resolve().name, model, tokenizer, resolved, arch,
                   json.dumps(generation_config, ensure_ascii=False))


def _check_config(model_dir: Path, arch: GgufArch, trust_remote_code: bool) -> None:
    """Refuse, from config.json alone, what the export would refuse only after loading the weights:
    a quantized model (GPTQ: its packed `qweight` tensors have no GGUF form here) and variants of
    the architecture llama.cpp cannot run (`GgufArch.check_config`)."""
    from transformers import AutoConfig

    from belle.modeling import ModelFolderError

    try:
        config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{model_dir}: cannot read config.json: {str(e).strip().splitlines()[0]}") from None
    quantization = getattr(config, "quantization_config", None)
    if quantization:
        if not isinstance(quantization, dict):
            quantization = quantization.to_dict()
        method = quantization.get("quant_method", "unknown")
        raise UsageError(f"{model_dir}: a quantized model (quantization_config in config.json, quant_method {method}); "
                         "export the float model it was quantized from")
    arch.check_config(config)


def _write(loaded: _Loaded, path: Path, type: str) -> tuple[int, int]:
    """Write the GGUF file `path` in `type` (a direct type); returns (tensors, fallback tensors)."""
    import numpy as np

    gguf = needs_gguf()
    from belle.export.vocab import add_vocab
    from belle.modeling import reply_end_ids
    from belle.templates import to_jinja

    model, config, arch = loaded.model, loaded.model.config, loaded.arch
    state = model.state_dict()
    vocab_size = model.get_input_embeddings().num_embeddings
    writer = gguf.GGUFWriter(None, arch.name)
    writer.add_name(loaded.name)
    writer.add_file_type(file_type(type))
    if type not in ("f32", "f16", "bf16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    arch.write_hparams(writer, config, arch.context_length(config))
    writer.add_vocab_size(vocab_size)
    add_vocab(writer, loaded.tokenizer, vocab_size, to_jinja(loaded.template))
    writer.add_string("belle.template", loaded.template.name)
    eos_ids = sorted(reply_end_ids(loaded.tokenizer, loaded.template, model.generation_config.eos_token_id))
    writer.add_key_value("belle.eos_token_ids", eos_ids, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT32)
    writer.add_string("belle.generation_config", loaded.generation_config)

    output_name = arch.output_name(config)
    types = {}
    for name, array in arch.tensors(state, config):
        types[name] = tensor_type(type, name, array.shape, output_name)
        writer.add_tensor_info(name, array.shape, np.dtype(np.float32),
                               tensor_bytes(types[name].qtype, array.shape), raw_dtype=types[name].qtype)
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, array in arch.tensors(state, config):
            writer.write_tensor_data(encode(array, types[name].qtype))
    finally:
        writer.close()
    return len(types), sum(t.fallback for t in types.values())
