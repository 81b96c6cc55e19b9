"""`export_gguf`: a belle model folder (full, LoRA adapter, or `belle vocab extend` output) as one
GGUF file for llama.cpp, Ollama and LM Studio.

The model is loaded once in float32 on the CPU (an adapter merged into its base), or, for a GPTQ
folder, read tensor by tensor from its safetensors (`belle.export.gptq_weights`: each GPTQ layer is
written as the GGUF blocks it already is, q4_0/q4_1/q8_0, with no re-rounding, and every matrix
GPTQ left unquantized, embeddings and LM head, in the dtype the folder stores it in: the file is
exactly the GPTQ model). Tensors go
to the file one at a time: a first pass over the state dict records each tensor's name, shape and
type, a second converts and writes it, so the export needs the model's memory plus one tensor.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from belle.cli import UsageError
from belle.export.arches import GgufArch, gguf_arch
from belle.export.gptq_weights import (
    FLOAT_TYPES, GptqSettings, GptqState, check_export, encode_exact, gptq_settings, vocab_rows,
)
from belle.export.quantize import (
    GGUF_TYPES, HEADS, K_QUANTS, TensorType, check_head_type, check_type, encode, file_type, head_types, k_quant_types,
    llama_quantize, needs_gguf, needs_llama_cpp, tensor_bytes, tensor_type,
)

logger = logging.getLogger(__name__)

__all__ = ["GGUF_TYPES", "ExportReport", "export_gguf"]


@dataclass(frozen=True)
class ExportReport:
    """What `export_gguf` wrote: `architecture` is the GGUF name (`llama` for Mistral too),
    `fallback_tensors` the matrices written in another type than `type` asked (their rows do not
    split into whole blocks), `file_bytes` the file's size, `seconds` the wall time of the export.
    `embedding_type` and `output_type` are the GGML types `token_embd.weight` and `output.weight`
    were written in (`output_type` None: tied embeddings, llama.cpp reuses `token_embd.weight`);
    `gptq_kept` names the matrices of a GPTQ folder written in its own dtype (GPTQ left them unquantized)."""

    out: Path
    type: str
    architecture: str
    tensors: int
    fallback_tensors: int
    file_bytes: int
    seconds: float
    embedding_type: str = ""
    output_type: str | None = None
    gptq_kept: tuple[str, ...] = ()


@dataclass
class _Loaded:
    """A model ready to write, from a float model folder (loaded by transformers, an adapter merged)
    or a GPTQ folder (read from its safetensors, `gptq` set): `state` maps HF names to tensors
    (`GptqState` for GPTQ), `vocab_size` is the rows of the input embeddings, `eos_ids` the ids
    that end a reply."""

    name: str
    state: Mapping[str, Any]
    config: Any
    vocab_size: int
    eos_ids: list[int]
    tokenizer: Any
    template: Any  # belle.templates.Template
    arch: GgufArch
    name_map: Any  # gguf.TensorNameMap of `arch` for `config` (`GgufArch.name_map`)
    generation_config: str
    gptq: GptqSettings | None = None
    stored_types: dict[str, str] | None = None  # GPTQ: {GGUF name: dtype} of the matrices GPTQ left unquantized
    gptq_names: frozenset[str] = frozenset()  # GPTQ: GGUF names of its quantized layers


def export_gguf(model: Path, out: Path, *, type: str = "f16", base: Path | None = None,
                template: str | None = None, overwrite: bool = False, trust_remote_code: bool = False,
                embedding_type: str | None = None, output_type: str | None = None) -> ExportReport:
    """Write the model folder `model` to the GGUF file `out` with tensors of `type` (one of
    `GGUF_TYPES`); `token_embd.weight` in `embedding_type`, `output.weight` in `output_type` when
    given (`belle.export.quantize.head_types`). From a GPTQ folder, the matrices GPTQ left
    unquantized keep the folder's dtype unless a flag names them. The file is written as the hidden
    `.OUT.PID.tmp` beside it and renamed when complete (a K-quant first writes `.OUT.PID.f32.tmp`);
    both are removed if the export fails. An existing `out` is replaced only with `overwrite`. Every user error is a `UsageError`."""
    start = time.monotonic()
    model, out = Path(model), Path(out)
    check_type(type)
    check_head_type("--embedding-type", embedding_type, type)
    check_head_type("--output-type", output_type, type)
    needs_gguf()
    if type in K_QUANTS:
        needs_llama_cpp(type)
    if out.is_dir():
        raise UsageError(f"{out}: a folder where the GGUF file is needed")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: no such folder for --out")
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: already exists; pass --overwrite to replace it")
    loaded = _load(model, base, template, trust_remote_code, type)
    architecture, output_name = loaded.arch.name, loaded.arch.output_name(loaded.config)
    chosen = head_types(output_name, embedding_type, output_type)
    if output_name in loaded.gptq_names and output_name in chosen:
        raise UsageError(f"{model}: its LM head is a GPTQ layer; --{'output' if output_type else 'embedding'}-type "
                         "would re-round it (leave the flag out: it is written exactly)")
    kept = () if type in FLOAT_TYPES else tuple(sorted((n for n in loaded.stored_types or {} if n not in chosen),
                                                       key=lambda n: (n != "token_embd.weight", n)))
    if kept:
        chosen = {**{n: loaded.stored_types[n] for n in kept}, **chosen}
    temporary = [temporary_path(out), temporary_path(out, ".f32")]
    try:
        if type in K_QUANTS:
            types, shapes = _write(loaded, temporary[1], "f32")
            del loaded  # llama.cpp reads the f32 file: the transformers model's memory goes back first
            chosen, head_fallbacks = _fit(chosen, shapes)
            logger.info("quantizing to %s with llama.cpp", type)
            llama_quantize(temporary[1], temporary[0], type, chosen)
            fallbacks, heads = k_quant_types(temporary[0], chosen)
            fallbacks += head_fallbacks
        else:
            types, _ = _write(loaded, temporary[0], type, chosen)
            fallbacks = sum(t.fallback for t in types.values())
            heads = {name: types[name].qtype.name.lower() for name in HEADS if name in types}
        os.replace(temporary[0], out)
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)
    return ExportReport(out, type, architecture, len(types), fallbacks, out.stat().st_size,
                        round(time.monotonic() - start, 2), heads.get("token_embd.weight", ""),
                        heads.get("output.weight"), kept)


def _fit(chosen: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, str], int]:
    """`chosen` ({GGUF name: type}) with f16 for a matrix whose rows (`shapes`) do not split into the
    blocks of its type (llama.cpp's quantizer fails on such a chosen type), and how many those are."""
    gguf = needs_gguf()
    fitted = {name: "f16" if shapes[name][-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[value.upper()]][0]
              else value for name, value in chosen.items() if name in shapes}
    return fitted, sum(fitted[name] != chosen[name] for name in fitted)


def temporary_path(out: Path, tag: str = "") -> Path:
    """Where `out` is written before it is complete: hidden, and named by this process (as
    `belle.records.writing.atomic_output` names its files), so it never is a user's file."""
    return out.with_name(f".{out.name}.{os.getpid()}{tag}.tmp")


def _load(path: Path, base: Path | None, template: str | None, trust_remote_code: bool, type: str) -> _Loaded:
    """Read `path` (and `base`) for `type`: a float model in float32 on the CPU, an adapter merged
    (`_load_float`); a GPTQ folder straight from its safetensors (`_load_gptq`), never through a
    quantized model."""
    from belle.modeling import (
        ModelFolderError, check_model_path, load_tokenizer, model_type, read_checkpoint_info, reply_end_ids,
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
        config, gptq = _check_config(model_dir, arch, trust_remote_code, type)
        if gptq is not None and adapter is not None:
            raise UsageError(f"{path}: a LoRA adapter on the GPTQ model {model_dir}; merge it into the float model, "
                             "export that, or quantize the merged model with belle gptq quantize first")
        tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else model_dir
        tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code=trust_remote_code)
        try:
            resolved = resolve_template(model_dir, tokenizer, template or read_checkpoint_info(path).get("template"))
        except ValueError as e:
            raise UsageError(str(e)) from None
        generation = next((d / "generation_config.json" for d in (path, model_dir)
                           if (d / "generation_config.json").is_file()), None)
        generation_config = read_json_object(generation, ModelFolderError) if generation else {}
        name_map = arch.name_map(config)
        if gptq is not None:
            weights = _load_gptq(model_dir, config, gptq, arch, name_map, type, generation_config)
        else:
            weights = _load_float(path, model_dir, adapter, tokenizer, trust_remote_code)
    except ModelFolderError as e:
        raise UsageError(str(e)) from None
    eos_ids = sorted(reply_end_ids(tokenizer, resolved, weights.eos_token_id))
    return _Loaded(path.resolve().name, weights.state, weights.config, weights.vocab_size, eos_ids, tokenizer, resolved,
                   arch, name_map, json.dumps(generation_config, ensure_ascii=False), gptq, weights.stored_types,
                   weights.gptq_names)


@dataclass(frozen=True)
class _Weights:
    """What `_load_gptq` or `_load_float` read: `state` maps HF names to tensors, `vocab_size` is
    the rows of the input embeddings, `eos_token_id` the model's configured end id(s)."""

    state: Mapping[str, Any]
    config: Any
    vocab_size: int
    eos_token_id: Any
    stored_types: dict[str, str] | None = None
    gptq_names: frozenset[str] = frozenset()


def _load_gptq(model_dir: Path, config: Any, gptq: GptqSettings, arch: GgufArch, name_map: Any, type: str,
               generation_config: dict[str, Any]) -> _Weights:
    """A GPTQ folder's weights as a lazy `GptqState` (its headers checked, nothing unpacked), with
    the GGUF names of its quantized layers and the dtypes of the matrices GPTQ left unquantized;
    the end ids of generation_config.json (a dict), else config.json's."""
    logger.info("reading the GPTQ weights of %s", model_dir)
    state = GptqState(model_dir, gptq, bool(getattr(config, "tie_word_embeddings", False)),
                      exact=type not in FLOAT_TYPES)
    names = {hf: arch.tensor_name(hf, config, name_map) for hf in state}
    stored_types = {names[hf]: dtype for hf, dtype in state.stored_types().items() if names[hf]}
    gptq_names = frozenset(names[f"{m}.weight"] for m in state.quantized if names.get(f"{m}.weight"))
    eos = generation_config.get("eos_token_id", getattr(config, "eos_token_id", None))
    return _Weights(state, config, vocab_rows(state), eos, stored_types, gptq_names)


def _load_float(path: Path, model_dir: Path, adapter: Path | None, tokenizer: Any, trust_remote_code: bool) -> _Weights:
    """A float model (`model_dir`, the LoRA adapter `adapter` merged in) loaded by transformers in
    float32 on the CPU."""
    from belle.modeling import load_model

    logger.info("loading %s in float32", path)
    model = load_model(model_dir, dtype="float32", device="cpu", adapter=adapter, tokenizer=tokenizer,
                       trust_remote_code=trust_remote_code)
    if adapter is not None:
        model = model.merge_and_unload()
    model.eval()
    return _Weights(model.state_dict(), model.config, model.get_input_embeddings().num_embeddings,
                    model.generation_config.eos_token_id)


def _check_config(model_dir: Path, arch: GgufArch, trust_remote_code: bool,
                  type: str) -> tuple[Any, GptqSettings | None]:
    """Refuse, from config.json alone, what the export would refuse only after reading the weights:
    a quantized model other than a GPTQ folder that is exactly `type` (`gptq_weights.check_export`)
    and variants of the architecture llama.cpp cannot run (`GgufArch.check_config`). Returns the
    transformers config and the GPTQ settings (None for a float model)."""
    from transformers import AutoConfig

    from belle.modeling import ModelFolderError

    try:
        config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{model_dir}: cannot read config.json: {str(e).strip().splitlines()[0]}") from None
    quantization = getattr(config, "quantization_config", None)
    gptq = None
    if quantization:
        if not isinstance(quantization, dict):
            quantization = quantization.to_dict()
        gptq = gptq_settings(quantization, model_dir)
        check_export(gptq, type, model_dir)
    arch.check_config(config)
    return config, gptq


def _write(loaded: _Loaded, path: Path, type: str,
           chosen: dict[str, str] | None = None) -> tuple[dict[str, TensorType], dict[str, tuple[int, ...]]]:
    """Write the GGUF file `path` in `type` (a direct type), the matrices `chosen` names ({GGUF
    name: type}) in theirs; returns the type and the shape of each tensor written, by GGUF name."""
    import numpy as np

    gguf = needs_gguf()
    from belle.export.vocab import add_vocab
    from belle.templates import to_jinja

    config, arch, state, vocab_size = loaded.config, loaded.arch, loaded.state, loaded.vocab_size
    writer = gguf.GGUFWriter(None, arch.name)
    writer.add_name(loaded.name)
    writer.add_file_type(file_type(type))
    if type not in ("f32", "f16", "bf16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    arch.write_hparams(writer, config, arch.context_length(config))
    writer.add_vocab_size(vocab_size)
    add_vocab(writer, loaded.tokenizer, vocab_size, to_jinja(loaded.template))
    writer.add_string("belle.template", loaded.template.name)
    writer.add_key_value("belle.eos_token_ids", loaded.eos_ids, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT32)
    writer.add_string("belle.generation_config", loaded.generation_config)

    output_name, gptq_names, name_map = arch.output_name(config), loaded.gptq_names, loaded.name_map
    types, shapes = {}, {}
    shaped = state.placeholders() if isinstance(state, GptqState) else state  # GPTQ: no layer unpacked twice
    for name, array in arch.tensors(shaped, config, name_map):
        if name in gptq_names:  # (weight, scale, zero) per element
            array = array[..., 0]
        if name in gptq_names and type not in FLOAT_TYPES:
            types[name] = TensorType(gguf.GGMLQuantizationType[type.upper()])
        else:
            types[name] = tensor_type(type, name, array.shape, output_name, chosen)
        shapes[name] = array.shape
        writer.add_tensor_info(name, array.shape, np.dtype(np.float32),
                               tensor_bytes(types[name].qtype, array.shape), raw_dtype=types[name].qtype)
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, array in arch.tensors(state, config, name_map):
            if name not in gptq_names:
                writer.write_tensor_data(encode(array, types[name].qtype))
            elif type in FLOAT_TYPES:
                writer.write_tensor_data(encode(np.ascontiguousarray(array[..., 0]), types[name].qtype))
            else:
                writer.write_tensor_data(encode_exact(name, array, types[name].qtype))
    finally:
        writer.close()
    return types, shapes
