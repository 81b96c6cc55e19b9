"""The training config: one small dataclass per concern, loaded from YAML with `key=value` overrides.

`problems()` checks what can be judged from the config alone (types are checked by the loader);
`belle.train.preflight` then checks files, hardware and the DeepSpeed config, all before any model
is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from belle.conversation import Format
from belle.templates import TEMPLATE_NAMES
from belle.tokenization import Overlong

Stage = Literal["sft", "pt", "dpo", "rm", "grpo", "rloo", "kto"]
Method = Literal["full", "lora", "qlora"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
RESUME_MODES = ("auto", "never", "force")
RL_STAGES = ("grpo", "rloo")
PPO_REFUSAL = ("TRL 1.x no longer ships PPOTrainer; BELLE's ppo stage maps to `stage=grpo` (or rloo) with "
               "`reward.weights={model: 1}` and `reward.model=RM_FOLDER`")
STAGE_READS = {
    "dpo": '{"prompt", "chosen", "rejected"} pairs',
    "rm": 'preference pairs ({"prompt", "chosen", "rejected"} or BELLE\'s {"chosen", "rejected"})',
    "kto": '{"prompt", "completion", "label"} records or preference pairs',
    "grpo": "prompts ({\"prompt\"} records, instructions or conversations)",
    "rloo": "prompts ({\"prompt\"} records, instructions or conversations)",
}
"""What each stage that trains on whole, unpacked records reads (for the message refusing data.pack and data.format)."""

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
class RLConfig:
    """Online RL from prompts, used when `stage` is grpo or rloo: `rl.*`."""

    num_generations: int = 8
    """Completions sampled per prompt (the group their rewards are compared within)."""
    max_new_tokens: int = 256
    """Completion length cap, tokens; the prompt gets data.max_length minus this."""
    temperature: float = 1.0
    """Sampling temperature of the completions."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p."""
    beta: float = 0.04
    """KL coefficient towards the reference model (the starting policy); 0 loads no reference."""
    num_iterations: int = 1
    """Policy updates per batch of generations (TRL's mu)."""
    epsilon: float = 0.2
    """Clip range of the policy ratio, as in PPO."""

    def problems(self) -> list[str]:
        problems = []
        if self.num_generations < 2:
            problems.append(f"num_generations: {self.num_generations} must be at least 2 (rewards are compared within a prompt's group)")
        for name in ("max_new_tokens", "num_iterations"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be at least 1, not {getattr(self, name)}")
        if self.temperature <= 0:
            problems.append(f"temperature: {self.temperature} must be positive")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p: {self.top_p} must be in (0, 1]")
        if self.beta < 0:
            problems.append(f"beta: {self.beta} must be 0 or more")
        if self.epsilon <= 0:
            problems.append(f"epsilon: {self.epsilon} must be positive")
        return problems


@dataclass
class JudgeRewardConfig:
    """The LLM judge reward source: `reward.judge.*`."""

    model: str = ""
    """The judge model the endpoint serves."""
    base_url: str | None = None
    """OpenAI-compatible endpoint root ending in /v1; default: OpenAI's."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the endpoint's key."""
    concurrency: int = 8
    """Judge requests in flight at once."""
    max_retries: int = 5
    """Retries of one request on 429, 5xx, timeouts and malformed replies."""
    timeout: float = 120.0
    """Seconds for one attempt."""
    cache: str = "default"
    """SQLite cache of judge replies: off, default ($XDG_CACHE_HOME/belle/llm.sqlite) or a path."""
    prompts: str | None = None
    """Per-class judge prompts (BELLE's eval_prompt.json format); default: belle's own."""
    default_class: str = "generation"
    """Judge prompt class for prompt records without a `class` field."""

    def options(self) -> Any:
        """The `belle.llm.LLMOptions` for an `LLMClient` that calls this judge."""
        from belle.llm import LLMOptions

        return LLMOptions(
            model=self.model, base_url=self.base_url, api_key_env=self.api_key_env, concurrency=self.concurrency,
            max_retries=self.max_retries, timeout=self.timeout, cache=self.cache,
        )


@dataclass
class RewardConfig:
    """Where the rewards of stages grpo and rloo come from: `reward.*`. Source names, weights, the model
    folder, the pattern and the judge are checked by `belle.train.rewards.reward_problems` before any
    model loads."""

    weights: dict[str, float] = field(default_factory=dict)
    """Reward source -> weight; the reward is their weighted sum. Sources: model (the reward model
    reward.model), judge (an LLM judge's score in [0, 1], reward.judge.*), math_answer (1 when the final
    answer equals the record's reference), format (1 when reward.format_pattern matches), length (0 up to
    reward.length_target tokens, then down to -1), eos (1 when the completion ended on its own)."""
    model: str | None = None
    """Reward model folder (a stage rm output) for the model source."""
    format_pattern: str | None = None
    """Python regular expression searched in each completion, for the format source."""
    length_target: int = 256
    """Tokens a completion may take before the length source penalises it."""
    judge: JudgeRewardConfig = field(default_factory=JudgeRewardConfig)


@dataclass
class KtoConfig:
    """Kahneman-Tversky optimization on unpaired good and bad answers, used when `stage` is kto: `kto.*`."""

    beta: float = 0.1
    """Strength of the KL penalty towards the reference model."""
    desirable_weight: float = 1.0
    """Loss weight of the good answers (raise it when they are fewer than the bad ones)."""
    undesirable_weight: float = 1.0
    """Loss weight of the bad answers."""

    def problems(self) -> list[str]:
        return [f"{name}: {getattr(self, name)} must be positive"
                for name in ("beta", "desirable_weight", "undesirable_weight") if getattr(self, name) <= 0]


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
    """sft: conversations, loss on assistant tokens; pt: plain text; dpo: preference pairs; rm: a reward
    model on preference pairs; grpo, rloo: online RL from prompts with rewards from reward.*; kto:
    unpaired good and bad answers. (No ppo: TRL 1.x dropped PPOTrainer; use grpo with reward.weights={model: 1}.)"""
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
    rl: RLConfig = field(default_factory=RLConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    kto: KtoConfig = field(default_factory=KtoConfig)

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
        for section, what, stages, default in (("rl", "RL", RL_STAGES, RLConfig()), ("reward", "reward", RL_STAGES, RewardConfig()),
                                               ("kto", "KTO", ("kto",), KtoConfig())):
            if self.stage not in stages and getattr(self, section) != default:
                problems.append(f"{section}: {what} options are set but stage is {self.stage}; "
                                f"set stage={' or '.join(stages)} or remove them")
        problems += self._stage_problems()
        if self.stage != "sft" and self.data.overlong != "truncate":
            problems.append(f"data.overlong: only applies to stage sft, not {self.stage}")
        return problems

    def _stage_problems(self) -> list[str]:
        """What the stages beyond sft and pt refuse or need, judged from the config alone."""
        problems = []
        if self.stage in STAGE_READS:
            keys = [f"data.{k}" for k, on in (("pack", self.data.pack), ("format", self.data.format is not None)) if on]
            if self.stage == "rm" and self.data.pack:
                problems.append("data.pack: stage rm scores each sequence at its last token, so a packed row of several "
                                "pairs would get one score; remove data.pack")
                keys.remove("data.pack")
            if keys:
                shown = "data.pack, data.format" if self.stage == "dpo" else ", ".join(keys)
                problems.append(f"{shown}: stage {self.stage} reads {STAGE_READS[self.stage]} unpacked; remove them")
        if self.stage in RL_STAGES:
            if not self.reward.weights:
                problems.append("reward.weights: name at least one reward source: reward.weights={math_answer: 1.0}, "
                                "or {model: 1.0} with reward.model=RM_FOLDER (sources: model, judge, math_answer, "
                                "format, length, eos)")
            if self.rl.max_new_tokens >= self.data.max_length:
                problems.append(f"rl.max_new_tokens: {self.rl.max_new_tokens} leaves no room for the prompt in "
                                f"data.max_length {self.data.max_length} (prompt and completion share it)")
        if self.stage == "rm" and self.method == "qlora":
            problems.append("method: stage rm saves a plain model with the LoRA adapter merged in, which a 4-bit base "
                            "cannot give; use method=lora or full")
        if self.stage == "kto" and self.training.batch_size < 2:
            problems.append("training.batch_size: stage kto needs at least 2 samples per micro-batch (its KL estimate "
                            "pairs each answer with another sample's prompt); set training.batch_size=2 or more")
        return problems
