"""The model families belle is tested on, and what differs between them.

One `Family` per Hugging Face `model_type` of the architecture matrix: how to build a tiny random
model of it (for tests and `belle model tiny --arch`), and the facts jobs need before loading a
model, e.g. whether packed samples stay apart. A model type not listed here is still loaded and
trained; belle then checks what it can at run time (see `belle.train.packing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TinySizes:
    """Sizes of a tiny random model: about 0.5M parameters besides the embeddings at the defaults."""

    vocab_size: int
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048


@dataclass(frozen=True)
class Family:
    """One architecture: its `model_type`, the name users know it by, and how to build a tiny one."""

    model_type: str
    name: str
    config_kwargs: Any
    """`TinySizes -> dict` of arguments for the family's config class (`AutoConfig.for_model`)."""
    pack_refusal: str | None = None
    """Why `position_ids` cannot keep packed samples apart in this family; None where they do."""
    gptq_refusal: str | None = None
    """Why `belle gptq quantize` refuses this family; None where GPTQModel quantizes it."""


def _decoder(s: TinySizes) -> dict[str, Any]:
    """The LLaMA-style names most families share."""
    return dict(
        vocab_size=s.vocab_size,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        max_position_embeddings=s.max_position_embeddings,
    )


def _gemma2(s: TinySizes) -> dict[str, Any]:
    # A sliding window shorter than the test rows, so its local layers really slide.
    return {**_decoder(s), "head_dim": s.hidden_size // s.num_heads, "sliding_window": 64,
            "query_pre_attn_scalar": s.hidden_size // s.num_heads}


def _qwen3(s: TinySizes) -> dict[str, Any]:
    return {**_decoder(s), "head_dim": s.hidden_size // s.num_heads}


def _bloom(s: TinySizes) -> dict[str, Any]:
    return dict(vocab_size=s.vocab_size, hidden_size=s.hidden_size, n_layer=s.num_layers, n_head=s.num_heads)


def _gpt_neox(s: TinySizes) -> dict[str, Any]:
    """LLaMA's names without grouped-query attention, rotary on a quarter of each head as in Pythia."""
    kwargs = _decoder(s)
    del kwargs["num_key_value_heads"]
    return {**kwargs, "rotary_pct": 0.25}


ALIBI = ("ALiBi attention takes each token's position from the attention mask, not from position_ids, "
         "so samples packed into one row would attend to each other")

PHI3_GPTQ = ("GPTQModel 7.6 quantizes Phi-3's fused gate_up_proj as two layers, gate_proj and up_proj, and saves "
             "them so, which transformers and vLLM cannot load (the MLP would get random weights)")

FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("llama", "LLaMA", _decoder),
        Family("mistral", "Mistral", _decoder),
        Family("qwen2", "Qwen2", _decoder),
        Family("qwen3", "Qwen3", _qwen3),
        Family("gemma2", "Gemma 2", _gemma2),
        Family("phi3", "Phi-3", _decoder, gptq_refusal=PHI3_GPTQ),
        Family("bloom", "BLOOM", _bloom, pack_refusal=ALIBI),
        Family("gpt_neox", "GPT-NeoX", _gpt_neox),
    )
}


def tiny_config(model_type: str, sizes: TinySizes, **token_ids: int | None) -> Any:
    """The transformers config of a tiny `model_type` model, with `bos/eos/pad_token_id` set."""
    from transformers import AutoConfig

    family = FAMILIES[model_type]
    return AutoConfig.for_model(model_type, **family.config_kwargs(sizes), **token_ids)


def family_of(model_config: Any) -> Family | None:
    """The `Family` of a loaded config (or config.json as a dict), None for a model type not in the matrix."""
    model_type = model_config.get("model_type") if isinstance(model_config, dict) else getattr(model_config, "model_type", None)
    return FAMILIES.get(model_type)


@dataclass(frozen=True)
class MatrixRow:
    """One row of the architecture matrix: a family, built with one of `belle.models.tiny.TOKENIZER_KINDS`."""

    id: str
    name: str
    model_type: str
    tokenizer_kind: str = "bpe"


@dataclass(frozen=True)
class Job:
    """One column of the architecture matrix: a `belle` command run on every row's tiny model."""

    id: str
    command: str
    """What the cell runs, after `belle` (stage sft and method full unless named), as the table's heading."""


MATRIX_ROWS: tuple[MatrixRow, ...] = (
    *(MatrixRow(f.model_type, f.name, f.model_type) for f in FAMILIES.values()),
    MatrixRow("llama-sentencepiece", "LLaMA, SentencePiece tokenizer", "llama", "sentencepiece"),
)

JOBS: tuple[Job, ...] = (
    Job("sft", "train"),
    Job("sft-packed", "train data.pack=true"),
    Job("lora-merge", "train method=lora, train merge"),
    Job("pt", "train stage=pt"),
    Job("dpo", "train stage=dpo"),
    Job("chat", "chat --cli"),
    Job("serve", "serve"),
    Job("eval-generate", "eval generate"),
    Job("gptq", "gptq quantize"),
    Job("vocab-extend", "vocab extend"),
    Job("export-gguf", "export gguf"),
)


def refusal(row: MatrixRow, job: Job) -> str | None:
    """Why belle refuses `job` on `row`'s family (the reason its error message gives), None where it runs."""
    family = FAMILIES[row.model_type]
    if job.id == "export-gguf":
        return gguf_refusal(row.model_type)
    return {"sft-packed": family.pack_refusal, "gptq": family.gptq_refusal}.get(job.id)


def gguf_refusal(model_type: str) -> str | None:
    """Why `belle export gguf` refuses `model_type` (its error message), None where it exports."""
    from belle.export.arches import GGUF_ARCHES

    if model_type in GGUF_ARCHES:
        return None
    return f"GGUF export supports {', '.join(GGUF_ARCHES)}; not {model_type}"


def matrix_markdown() -> str:
    """The architecture matrix as a Markdown table (family x job: works, or refused with a numbered
    reason listed under the table; stage pt on a family that cannot pack trains each chunk in its own
    row), as train/README.md and the docs show it."""
    reasons: dict[str, list[str]] = {}  # reason -> the "family: job" cells refused for it
    lines = ["| family | " + " | ".join(f"`{job.command}`" for job in JOBS) + " |",
             "|---|" + "---|" * len(JOBS)]
    for row in MATRIX_ROWS:
        cells = []
        for job in JOBS:
            reason, outcome = refusal(row, job), "refused"
            if reason is None and job.id == "pt":
                reason, outcome = FAMILIES[row.model_type].pack_refusal, "works, unpacked"
            if reason is None:
                cells.append("works")
                continue
            reasons.setdefault(reason, []).append(f"{row.name} `{job.command}`")
            cells.append(f"{outcome} ({list(reasons).index(reason) + 1})")
        lines.append(f"| {row.name} (`{row.model_type}`) | " + " | ".join(cells) + " |")
    notes = [f"{i}. {', '.join(cells)}: {reason}." for i, (reason, cells) in enumerate(reasons.items(), 1)]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
