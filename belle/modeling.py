"""Loading models and tokenizers, `belle.json` checkpoint info, and the tiny model for tests.

`load_model` loads a full model, a base plus LoRA adapter (or an adapter folder alone), or a GPTQ
folder, always through safetensors and with `trust_remote_code` off unless asked. `build_tiny_model`
makes a small random model of any family in `belle.architectures` and a tokenizer trained on our
bundled Chinese and English text, saved as a normal Hugging Face folder, in seconds and without any
download.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from belle import __version__
from belle.conversation import DataError
from belle.data.outputs import write_text_atomic
from belle.templates import Template, get_template, to_jinja

logger = logging.getLogger(__name__)

BELLE_JSON = "belle.json"
DTYPES = ("auto", "float32", "bfloat16", "float16")

# Markers of the chatml/qwen and llama3 templates, so every template tokenizes them as one token.
TINY_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
                       "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


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
    return read_json_object(path) if path.is_file() else {}


def read_json_object(path: Path) -> dict[str, Any]:
    """A model folder's JSON file (config.json, belle.json, ...) as a dict; `ModelFolderError` naming
    the file when it is not UTF-8 JSON holding an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(value, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def model_type(model_dir: str | Path) -> str | None:
    """The `model_type` in a model folder's config.json; None when the folder has no config.json."""
    path = Path(model_dir) / "config.json"
    return read_json_object(path).get("model_type") if path.is_file() else None


def write_checkpoint_info(model_dir: str | Path, template: str, **extra: Any) -> None:
    info = {"belle_version": __version__, "template": template, **extra}
    write_text_atomic(Path(model_dir) / BELLE_JSON, json.dumps(info, ensure_ascii=False, indent=2))


def resolve_template(model_dir: str | Path, tokenizer: Any, name: str | None = None) -> Template:
    """The template to use with a model: `name` if given, else `belle.json`'s, else the tokenizer's own."""
    name = name or read_checkpoint_info(model_dir).get("template")
    if name is None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{model_dir}: no belle.json and no chat_template in the tokenizer; name a template")
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
    quantization = read_json_object(config_path).get("quantization_config") or {}
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
        recorded = read_json_object(path / "adapter_config.json").get("base_model_name_or_path")
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


def tiny_corpus_text() -> str:
    """Our bundled Chinese and English corpus (about 50 KB), paragraphs separated by blank lines."""
    return resources.files("belle").joinpath("assets/tiny_corpus.txt").read_text(encoding="utf-8")


def tiny_corpus_lines() -> list[str]:
    """The non-empty lines of the bundled corpus."""
    return [line for line in tiny_corpus_text().splitlines() if line.strip()]


def tiny_corpus_documents() -> list[str]:
    """Pairs of consecutive paragraphs, so a tokenizer trained on them learns newline merges too."""
    paragraphs = [p.strip() for p in tiny_corpus_text().split("\n\n") if p.strip()]
    return ["\n\n".join(paragraphs[i : i + 2]) for i in range(0, len(paragraphs), 2)]


def train_bpe_tokenizer(lines: list[str], vocab_size: int, special_tokens: list[str]) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained on `lines` (no normalizer, no prefix space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer


TOKENIZER_KINDS = ("bpe", "sentencepiece")


def train_sentencepiece_tokenizer(lines: list[str], vocab_size: int) -> Any:
    """A LLaMA-style `tokenizers.Tokenizer`: BPE over `▁`-prefixed words with byte fallback, BOS
    added in front, and no pad token, the shape of the SentencePiece tokenizer BELLE-LLaMA uses.

    As in LLaMA's vocabulary, `<unk>`, `<s>` and `</s>` take ids 0-2 and are the only special
    tokens; the 256 byte pieces `<0x00>` ... `<0xFF>` take ids 3-258 as ordinary pieces (so
    `decode(..., skip_special_tokens=True)` keeps the characters they spell), and no text is unknown.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<unk>", "<s>", "</s>"]
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(bytes_), min_frequency=2, special_tokens=specials,
                                  show_progress=False)
    trained.train_from_iterator(lines, trainer)
    spec = json.loads(trained.to_str())["model"]
    pieces = list(dict.fromkeys([*specials, *bytes_, *sorted(spec["vocab"], key=spec["vocab"].get)]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tokenizer = Tokenizer(models.BPE({piece: i for i, piece in enumerate(pieces)}, merges, unk_token="<unk>",
                                     byte_fallback=True, fuse_unk=True))
    tokenizer.add_special_tokens(specials)
    tokenizer.pre_tokenizer = trained.pre_tokenizer
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return tokenizer


def _tiny_tokenizer(kind: str, vocab_size: int, max_length: int) -> Any:
    """The tiny model's tokenizer: byte-level BPE with a distinct pad and the chat markers as single
    tokens (`bpe`), or LLaMA's shape without a pad (`sentencepiece`)."""
    from transformers import PreTrainedTokenizerFast

    if kind == "sentencepiece":
        backend = train_sentencepiece_tokenizer(tiny_corpus_documents(), vocab_size)
        return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                       model_max_length=max_length)
    backend = train_bpe_tokenizer(tiny_corpus_documents(), vocab_size, TINY_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=TINY_SPECIAL_TOKENS[4:],
        model_max_length=max_length,
    )


def build_tiny_model(
    out_dir: str | Path,
    vocab_size: int = 4096,
    hidden_size: int = 128,
    intermediate_size: int = 384,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 2048,
    template: str = "belle",
    seed: int = 0,
    arch: str = "llama",
    tokenizer_kind: str = "bpe",
) -> Path:
    """Build and save a small random model of family `arch` (see `belle.architectures.FAMILIES`)
    with a tokenizer trained on the bundled corpus (`tokenizer_kind`: one of `TOKENIZER_KINDS`).

    The defaults give a LLaMA of about 1.3M parameters (embeddings 2 x 3471 x 128: the bundled
    corpus runs out of BPE merges at 3,471 pieces, below `vocab_size`; two layers), which trains on
    a laptop CPU at hundreds of steps per minute. Families with tied embeddings (BLOOM, Gemma 2)
    keep them tied, as their real checkpoints do. Returns `out_dir`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from belle.architectures import TinySizes, tiny_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer(tokenizer_kind, vocab_size, max_position_embeddings)
    tokenizer.chat_template = to_jinja(get_template(template))
    tokenizer.save_pretrained(out)
    sizes = TinySizes(len(tokenizer), hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads,
                      max_position_embeddings)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
    config = tiny_config(arch, sizes, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=pad_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(out, safe_serialization=True)
    write_checkpoint_info(out, template, built_by="belle model tiny", seed=seed)
    return out


def tiny_split_at() -> int:
    """Where the held-out tail of the bundled corpus begins: its last 10%, in characters."""
    text = tiny_corpus_text()
    return len(text) - len(text) // 10


def tiny_heldout_text() -> str:
    """The last 10% (by characters) of the bundled corpus, which `train_tiny_model` never sees."""
    return tiny_corpus_text()[tiny_split_at() :]


def train_tiny_model(
    model_dir: str | Path,
    *,
    steps: int = 300,
    seq_len: int = 128,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
) -> Path:
    """Train the tiny model in place on the first 90% of the bundled corpus, so quantization error matters.

    A plain causal-LM loop in float32 on the CPU: AdamW, linear warmup (10% of `steps`) and cosine
    decay, each step `batch_size` random windows of `seq_len` tokens. The defaults read 300 x 8 x
    128 = 307k tokens, about 24 passes over the 12.7k training tokens (15 s on 2 cores): the model
    learns its training text by heart (perplexity about 3 in 128-token windows) but not the language
    (about 5,000 on `tiny_heldout_text()`, the held-out tail). Positions past `seq_len` are never
    trained, so evaluate it with windows of at most `seq_len` tokens. Saves safetensors over the
    random weights, notes the run in `belle.json`, and returns `model_dir`.
    """
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    text = tiny_corpus_text()[: tiny_split_at()]
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]  # (n_tokens,)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    for step in range(steps):
        starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=generator)
        batch = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])  # (batch_size, seq_len)
        loss = model(input_ids=batch, labels=batch).loss  # transformers shifts labels by one
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            logger.info("train_tiny_model step %d/%d loss %.3f", step + 1, steps, loss.item())
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    info = read_checkpoint_info(model_dir)
    info["trained_by"] = f"belle.modeling.train_tiny_model steps={steps} seq_len={seq_len} batch_size={batch_size}"
    write_text_atomic(model_dir / BELLE_JSON, json.dumps(info, ensure_ascii=False, indent=2))
    return model_dir
