"""Loading models and tokenizers, and `belle.json` checkpoint info.

`load_model` loads a full model, a base plus LoRA adapter (or an adapter folder alone), or a GPTQ
folder, always through safetensors and with `trust_remote_code` off unless asked. The tiny model
for tests and the quick start is built by `belle.models.tiny`.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any

from belle import __version__
from belle.records import DataError, read_json_object, write_text_atomic
from belle.templates import Template, get_template

logger = logging.getLogger(__name__)

BELLE_JSON = "belle.json"
DTYPES = ("auto", "float32", "bfloat16", "float16")

# Files of which a tokenizer folder holds at least one.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelFolderError(DataError):
    """A path given as a model or tokenizer that is not one: the message names the path and what is missing."""


def check_model_path(path: str | Path, needs: tuple[str, ...] = ("config.json",), what: str = "model") -> None:
    """Raise `ModelFolderError` if `path` is a local file, a folder holding none of the files `needs`,
    or missing and not shaped like a Hub id (`org/name`), so that loading it fails in one sentence."""
    local = Path(path)
    if local.is_dir():
        if not any((local / name).is_file() for name in needs):
            raise ModelFolderError(f"{path}: not a {what} folder (it has no {' or '.join(needs)})")
    elif local.exists():
        raise ModelFolderError(f"{path}: a file, not a {what} folder")
    elif not _HUB_ID.match(str(path)):
        raise ModelFolderError(f"{path}: no such {what} folder")


def _from_pretrained(load: Any, path: str | Path, what: str, **kwargs: Any) -> Any:
    """`load(str(path), **kwargs)`, with transformers' OSError for a path it cannot find or fetch
    (a Hub id offline, a missing weight file) turned into a one-line `ModelFolderError`."""
    try:
        return load(str(path), **kwargs)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFolderError(f"{path}: cannot load the {what}: {first}") from e


def read_checkpoint_info(model_dir: str | Path) -> dict[str, Any]:
    """The folder's `belle.json` (template name, training config), or `{}` if it has none."""
    path = Path(model_dir) / BELLE_JSON
    return read_json_object(path, ModelFolderError) if path.is_file() else {}


def model_type(model_dir: str | Path) -> str | None:
    """The `model_type` in a model folder's config.json; None when the folder has no config.json."""
    path = Path(model_dir) / "config.json"
    return read_json_object(path, ModelFolderError).get("model_type") if path.is_file() else None


def write_checkpoint_info(model_dir: str | Path, template: str, **extra: Any) -> None:
    info = {"belle_version": __version__, "template": template, **extra}
    write_text_atomic(Path(model_dir) / BELLE_JSON, json.dumps(info, ensure_ascii=False, indent=2))


def resolve_template(model_dir: str | Path, tokenizer: Any, name: str | None = None) -> Template:
    """The template to use with a model: `name` if given, else `belle.json`'s, else the tokenizer's own."""
    name = name or read_checkpoint_info(model_dir).get("template")
    if name is None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{model_dir}: no template recorded (belle.json, or a GGUF file's belle.template) and no "
                             "chat_template in the tokenizer; name a template")
        name = "model"
    return get_template(name, tokenizer)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, padding_side: str = "right") -> Any:
    """Load a tokenizer whose pad token differs from EOS.

    A model trained with pad == EOS never learns to stop, since EOS positions look like padding
    (BELLE's FAQ). When they coincide or pad is missing, `<unk>` becomes pad if it exists (LLaMA's
    SentencePiece tokenizer, which has no pad: the embeddings keep their size, and byte fallback means
    no text encodes to `<unk>`, so pad never stands for text), else a new `<pad>` token is added;
    `load_model(..., tokenizer=...)` then grows the embeddings to match.
    """
    from transformers import AutoTokenizer

    check_model_path(path, TOKENIZER_FILES, "tokenizer")
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, path, "tokenizer", trust_remote_code=trust_remote_code)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            logger.warning("%s: added a <pad> token distinct from EOS; the embeddings grow by one row", path)
    return tokenizer


def resolve_dtype(dtype: str = "auto") -> Any:
    """`auto` is bfloat16 on a GPU that supports it, float16 on other GPUs, float32 on CPU."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(
    path: str | Path,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
    adapter: str | Path | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load a causal LM: a full model, a GPTQ folder, or a base plus LoRA `adapter`.

    Args:
        path: a model folder, or a LoRA adapter folder whose config names its base model.
        dtype: one of `DTYPES`; ignored for GPTQ weights, which keep their own.
        device: `cpu`, `cuda`, `cuda:N` or `auto` (spread over GPUs); default: `cuda` if present, else `cpu`.
        attn_implementation: `sdpa`, `flash_attention_2`, `eager`, ...; default: transformers' choice.
        adapter: a LoRA adapter folder to apply on top of `path`.
        tokenizer: if it has more tokens than the model's embeddings (a pad token was added), grow them.
    """
    import torch
    from transformers import AutoModelForCausalLM

    check_model_path(path, ("config.json", "adapter_config.json"))
    path, found = split_adapter(path)
    adapter = adapter or found
    check_model_path(path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with warnings.catch_warnings():  # transformers warns that _cpu_gptq_kernel's override overrides
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        model = _from_pretrained(
            AutoModelForCausalLM.from_pretrained,
            path,
            "model",
            dtype=resolve_dtype(dtype),
            device_map=device,
            attn_implementation=attn_implementation,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **_cpu_gptq_kernel(path, device),
        )
    if tokenizer is not None:
        grow_embeddings(model, tokenizer)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model


def _cpu_gptq_kernel(path: Path, device: str) -> dict[str, Any]:
    """`quantization_config` for a 4-bit GPTQ folder on the CPU whose groups GPTQModel's CPU
    kernel cannot take (it takes 32 to 256 weights; -1, one group per row, is common): transformers'
    plain torch GPTQ kernel instead. Empty for every other model and device."""
    config_path = path / "config.json"
    if device != "cpu" or not config_path.is_file():
        return {}
    quantization = read_json_object(config_path, ModelFolderError).get("quantization_config") or {}
    if quantization.get("quant_method") != "gptq" or quantization.get("bits") != 4 \
            or quantization.get("group_size") in (32, 64, 128, 256):
        return {}
    from transformers import GPTQConfig

    return {"quantization_config": GPTQConfig(bits=4, backend="torch")}


def split_adapter(path: str | Path, base: str | Path | None = None) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None): a LoRA adapter folder (no config.json) stands on
    `base`, or else on the base model its `adapter_config.json` names."""
    path = Path(path)
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        recorded = read_json_object(path / "adapter_config.json", ModelFolderError).get("base_model_name_or_path")
        if not (base or recorded):
            raise ModelFolderError(f"{path / 'adapter_config.json'}: names no base model (base_model_name_or_path)")
        return Path(base or recorded), path
    return path, None


def grow_embeddings(model: Any, tokenizer: Any) -> None:
    """Give the model an embedding row for every token of the tokenizer (a pad token was added)."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))


def weights_bytes(model_dir: str | Path) -> int:
    """Bytes of a model folder's weight files (`*.safetensors`, `*.bin`, `*.pt`), not counting
    subfolders, the tokenizer, configs or `training_args.bin`."""
    return sum(
        path.stat().st_size
        for path in Path(model_dir).iterdir()
        if path.is_file() and path.suffix in (".safetensors", ".bin", ".pt") and path.name != "training_args.bin"
    )


def reply_end_ids(tokenizer: Any, template: Template, configured: int | list[int] | None = None) -> frozenset[int]:
    """The ids that end a reply: the tokenizer's EOS, `configured` (a generation config's
    `eos_token_id`: one id, a list or None; llama.cpp's EOS and EOT for a GGUF file) and the
    template's turn-end token if it is one token."""
    ids = {tokenizer.eos_token_id}
    ids.update(configured if isinstance(configured, (list, tuple, set, frozenset)) else [configured])
    end = template.assistant_end.replace("{eos}", tokenizer.eos_token or "").strip()
    if end:
        end_ids = tokenizer(end, add_special_tokens=False)["input_ids"]
        if len(end_ids) == 1:
            ids.add(end_ids[0])
    ids.discard(None)
    return frozenset(ids)
