"""Other trainers' names for `belle train` keys: Hugging Face `TrainingArguments` and TRL, LLaMA-Factory,
axolotl. `belle train cfg.yaml --learning_rate 1e-4` sets `training.learning_rate` and logs once that
it did; the same names work at the top level of the YAML file. Only names with one clear meaning in
belle are here; the rest are unknown keys, reported with the nearest belle key.
"""

from __future__ import annotations

from typing import Any

from belle.config import Alias


def _precision(name: str):
    """`bf16: true` -> `training.precision=bf16`; `bf16: false` sets nothing."""

    def convert(value: Any) -> str | None:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}; or set training.precision={name}")
        return name if value else None

    return convert


def _module_list(value: Any) -> list[str]:
    """LLaMA-Factory's `lora_target: q_proj,v_proj` (or `all`) as a list of module names."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ValueError(f"expected module names such as q_proj,v_proj, got {value!r}")
    names = [n.strip() for n in value if n.strip()]
    return ["all-linear" if n == "all" else n for n in names]


def _all_linear(value: Any) -> list[str] | None:
    """axolotl's `lora_target_linear: true`: adapters on every linear layer."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return ["all-linear"] if value else None


ALIASES: dict[str, Alias] = {
    # model
    "model_name_or_path": Alias("model.path"),  # HF, LLaMA-Factory
    "base_model": Alias("model.path"),  # axolotl
    "template": Alias("model.template"),  # LLaMA-Factory
    "chat_template": Alias("model.template"),  # axolotl
    "trust_remote_code": Alias("model.trust_remote_code"),
    "attn_implementation": Alias("model.attn_implementation"),
    # method and data
    "finetuning_type": Alias("method"),  # LLaMA-Factory: full, lora
    "adapter": Alias("method"),  # axolotl: lora, qlora
    "train_file": Alias("data.train_files"),  # HF run_clm
    "validation_file": Alias("data.validation_files"),
    "val_size": Alias("data.validation_split"),  # LLaMA-Factory
    "val_set_size": Alias("data.validation_split"),  # axolotl
    "cutoff_len": Alias("data.max_length"),  # LLaMA-Factory
    "max_seq_length": Alias("data.max_length"),  # TRL
    "sequence_len": Alias("data.max_length"),  # axolotl
    "max_length": Alias("data.max_length"),  # TRL
    "packing": Alias("data.pack"),  # TRL, LLaMA-Factory
    "sample_packing": Alias("data.pack"),  # axolotl
    "preprocessing_num_workers": Alias("data.num_proc"),  # LLaMA-Factory
    "dataset_num_proc": Alias("data.num_proc"),  # TRL
    # training (HF TrainingArguments)
    "num_train_epochs": Alias("training.epochs"),
    "num_epochs": Alias("training.epochs"),  # axolotl
    "max_steps": Alias("training.max_steps"),
    "per_device_train_batch_size": Alias("training.batch_size"),
    "micro_batch_size": Alias("training.batch_size"),  # axolotl
    "gradient_accumulation_steps": Alias("training.gradient_accumulation_steps"),
    "learning_rate": Alias("training.learning_rate"),
    "lr": Alias("training.learning_rate"),  # torchtune, litgpt (optimizer.lr, train.lr)
    "lr_scheduler_type": Alias("training.lr_scheduler"),
    "lr_scheduler": Alias("training.lr_scheduler"),  # axolotl
    "warmup_ratio": Alias("training.warmup_ratio"),
    "weight_decay": Alias("training.weight_decay"),
    "max_grad_norm": Alias("training.max_grad_norm"),
    "optim": Alias("training.optim"),
    "optimizer": Alias("training.optim"),  # axolotl
    "bf16": Alias("training.precision", _precision("bf16"), switch=True),
    "fp16": Alias("training.precision", _precision("fp16"), switch=True),
    "gradient_checkpointing": Alias("training.gradient_checkpointing"),
    "seed": Alias("training.seed"),
    "logging_steps": Alias("training.logging_steps"),
    "save_steps": Alias("training.save_steps"),
    "save_total_limit": Alias("training.save_total_limit"),
    "eval_steps": Alias("training.eval_steps"),
    "deepspeed": Alias("training.deepspeed"),
    "report_to": Alias("training.report_to"),
    "ddp_timeout": Alias("training.ddp_timeout"),
    # LoRA
    "lora_rank": Alias("lora.r"),  # LLaMA-Factory
    "lora_r": Alias("lora.r"),  # axolotl
    "lora_alpha": Alias("lora.alpha"),
    "lora_dropout": Alias("lora.dropout"),
    "lora_target": Alias("lora.target_modules", _module_list),  # LLaMA-Factory: q_proj,v_proj or all
    "lora_target_modules": Alias("lora.target_modules", _module_list),  # axolotl
    "lora_target_linear": Alias("lora.target_modules", _all_linear, switch=True),  # axolotl
    "additional_target": Alias("lora.modules_to_save", _module_list),  # LLaMA-Factory
    "lora_modules_to_save": Alias("lora.modules_to_save", _module_list),  # axolotl
    # DPO
    "pref_beta": Alias("dpo.beta"),  # LLaMA-Factory
    "beta": Alias("dpo.beta"),  # TRL
    "pref_loss": Alias("dpo.loss_type"),  # LLaMA-Factory
    "loss_type": Alias("dpo.loss_type"),  # TRL
    # KTO
    "desirable_weight": Alias("kto.desirable_weight"),  # TRL
    "undesirable_weight": Alias("kto.undesirable_weight"),  # TRL
    "kto_chosen_weight": Alias("kto.desirable_weight"),  # LLaMA-Factory
    "kto_rejected_weight": Alias("kto.undesirable_weight"),  # LLaMA-Factory
    # GRPO, RLOO
    "num_generations": Alias("rl.num_generations"),  # TRL
    "max_completion_length": Alias("rl.max_new_tokens"),  # TRL
    "reward_model": Alias("reward.model"),  # LLaMA-Factory
}
