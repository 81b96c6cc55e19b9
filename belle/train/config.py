"""The training config: one small dataclass per concern, loaded from YAML with `key=value` overrides.

`problems()` checks what can be judged from the config alone (types are checked by the loader);
`belle.train.preflight` then checks files, hardware and the DeepSpeed config, all before any model
is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from belle.conversation import Format
from belle.templates import TEMPLATE_NAMES
from belle.tokenization import Overlong

Stage = Literal["sft", "pt", "dpo"]
Method = Literal["full", "lora", "qlora"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
RESUME_MODES = ("auto", "never", "force")

@dataclass
class ModelConfig:
    """The model to start from: `model.*`."""

    path: str = ""
    """Folder of the model to train (a Hugging Face folder with safetensors weights)."""
    template: str | None = None
    """Prompt template; default: the one in the folder's belle.json, else the tokenizer's own."""
    attn_implementation: str | None = None
    """`sdpa`, `flash_attention_2` or `eager`; default: transformers' choice (sdpa)."""
    trust_remote_code: bool = False
    """Run Python code shipped in the model folder (off unless you trust it)."""

    def problems(self) -> list[str]:
        problems = []
        if not self.path:
            problems.append("path: name the model folder to train (model.path=DIR)")
        if self.template is not None and self.template not in TEMPLATE_NAMES:
            problems.append(f"template: {self.template!r} is not one of {', '.join(TEMPLATE_NAMES)}")
        return problems


@dataclass
class DataConfig:
    """What to train on and how it becomes token rows: `data.*`."""

    train_files: list[str] = field(default_factory=list)
    """Files or folders of training records (for `dpo`: `prompt`, `chosen`, `rejected`)."""
    validation_files: list[str] = field(default_factory=list)
    """Files or folders of held-out records for eval loss."""
    validation_split: float = 0.0
    """Fraction of the training samples held out for eval loss when no validation files are given."""
    format: Format | None = None
    """Force one conversation format instead of detecting it per record (sft only)."""
    max_length: int = 1024
    """Tokens per sample (per packed row when packing)."""
    pack: bool = False
    """Pack whole samples into rows of `max_length` tokens (sft; pt packs its chunks, except on architectures that cannot: BLOOM)."""
    overlong: Overlong = "truncate"
    """Samples longer than max_length: cut at the last whole assistant turn, or drop."""
    strict: bool = False
    """Stop at the first bad record instead of skipping and counting it."""
    num_proc: int | None = None
    """Processes for tokenization; default: one."""

    def problems(self) -> list[str]:
        problems = []
        if not self.train_files:
            problems.append("train_files: give at least one training file or folder (data.train_files=[a.jsonl])")
        if not 0 <= self.validation_split < 1:
            problems.append(f"validation_split: {self.validation_split} must be in [0, 1)")
        if self.validation_split and self.validation_files:
            problems.append("validation_split: set either validation_files or validation_split, not both")
        if self.max_length < 8:
            problems.append(f"max_length: {self.max_length} is too short; use at least 8 tokens")
        return problems


@dataclass
class LoraConfig:
    """LoRA adapters, used when `method` is lora or qlora: `lora.*`."""

    r: int = 16
    """Rank of each adapter."""
    alpha: int = 32
    """Scale: the adapter's update is multiplied by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapter's input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Layers that get adapters, by the last part of their module name (q_proj), checked against the
    model before it loads; all-linear: every linear layer of the blocks, not the LM head (LLaMA: q, k,
    v, o, gate, up, down_proj, as BELLE's lora_config_llama.json; BLOOM: query_key_value, dense*)."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full beside the adapters, e.g. [embed_tokens, lm_head] after extending the vocabulary."""

    def problems(self) -> list[str]:
        problems = []
        if self.r < 1:
            problems.append(f"r: the rank must be at least 1, not {self.r}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout: {self.dropout} must be in [0, 1)")
        if not self.target_modules:
            problems.append("target_modules: name at least one module to adapt")
        return problems


@dataclass
class DpoConfig:
    """Direct preference optimization, used when `stage` is dpo: `dpo.*`."""

    beta: float = 0.1
    """Strength of the KL penalty towards the reference model."""
    loss_type: str = "sigmoid"
    """TRL's DPO loss: sigmoid (the paper's), ipo, hinge, ..."""

    def problems(self) -> list[str]:
        return [] if self.beta > 0 else [f"beta: {self.beta} must be positive"]


@dataclass
class TrainingConfig:
    """The optimization: `training.*`, passed on to transformers' `TrainingArguments`."""

    epochs: float = 1.0
    """Passes over the training data (fractions allowed)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: int = 1
    """Samples (packed rows) per device per micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; the global batch is batch_size x this x processes."""
    learning_rate: float = 2e-5
    """Peak learning rate."""
    lr_scheduler: str = "cosine"
    """transformers' scheduler name: cosine, linear, constant, ..."""
    warmup_ratio: float = 0.0
    """Fraction of the steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this norm."""
    optim: str = "adamw_torch"
    """transformers' optimizer name: adamw_torch, adamw_torch_fused, adafactor, paged_adamw_8bit, ..."""
    precision: Precision = "auto"
    """auto: bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for about one more forward pass of time."""
    seed: int = 42
    """Seed for initialization, shuffling and dropout."""
    logging_steps: int = 10
    """Log loss and learning rate every N optimizer steps."""
    save_steps: int = 500
    """Save a checkpoint every N optimizer steps (and once at the end)."""
    save_total_limit: int | None = None
    """Keep only the newest N complete checkpoints."""
    eval_steps: int | None = None
    """Default: save_steps."""
    deepspeed: str | None = None
    """A DeepSpeed JSON config, e.g. train/configs/ds_zero3.json."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where transformers sends metrics besides metrics.json: tensorboard, wandb, none, ..."""
    ddp_timeout: int = 1800
    """Seconds a rank waits for the others (long tokenization or ZeRO-3 saves of big models need more)."""

    def problems(self) -> list[str]:
        problems = []
        for name in ("batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be at least 1, not {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps: must be at least 1, not {self.max_steps}")
        if self.epochs <= 0 and self.max_steps is None:
            problems.append(f"epochs: must be positive, not {self.epochs}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate: must be positive, not {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio: {self.warmup_ratio} must be in [0, 1)")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            problems.append(f"save_total_limit: must be at least 1, not {self.save_total_limit}")
        from transformers import SchedulerType
        from transformers.training_args import OptimizerNames

        for name, allowed in (("lr_scheduler", [s.value for s in SchedulerType]), ("optim", [o.value for o in OptimizerNames])):
            if getattr(self, name) not in allowed:
                problems.append(f"{name}: {getattr(self, name)!r} is not one of transformers' {', '.join(allowed)}")
        return problems


@dataclass
class TrainConfig:
    """A training run: the top-level keys."""

    output_dir: str = ""
    """Where the run writes: checkpoints, logs, the final model, summary.md and loss.png."""
    stage: Stage = "sft"
    """sft: conversations, loss on assistant tokens; pt: plain text; dpo: preference pairs."""
    method: Method = "full"
    """full fine-tuning, lora, or qlora (LoRA on a 4-bit base; needs a CUDA GPU)."""
    resume: str = "auto"
    """auto: continue from the newest complete checkpoint in output_dir, refused when output_dir holds
    a run with other data or settings; force: the same, even then; never: start over; or a checkpoint folder."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)

    def problems(self) -> list[str]:
        problems = []
        if not self.output_dir:
            problems.append("output_dir: say where the run writes (output_dir=runs/NAME)")
        if self.method == "full" and self.lora != LoraConfig():
            problems.append("lora: LoRA options are set but method is full; set method=lora or remove them")
        if self.stage != "dpo" and self.dpo != DpoConfig():
            problems.append(f"dpo: DPO options are set but stage is {self.stage}; set stage=dpo or remove them")
        if self.stage == "pt" and self.data.format not in (None, "text"):
            problems.append(f"data.format: stage pt reads {{\"text\"}} records, not {self.data.format}")
        if self.stage == "dpo" and (self.data.pack or self.data.format is not None):
            problems.append("data.pack, data.format: stage dpo reads {\"prompt\", \"chosen\", \"rejected\"} pairs unpacked; remove them")
        if self.stage != "sft" and self.data.overlong != "truncate":
            problems.append(f"data.overlong: only applies to stage sft, not {self.stage}")
        return problems
