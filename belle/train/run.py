"""One training run: check inputs, build the data, load the model, train with the Trainer, save.

The order matters: every check that can fail runs before the model is loaded, and the
`TrainingArguments` exist before the model does, so that under ZeRO-3 transformers partitions the
weights while loading them instead of materialising the whole model on every rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from belle.cli import UsageError
from belle.config import config_to_dict, save_config
from belle.dataset import TokenizeStats, load_conversations, rejected_lines, tokenize_dataset
from belle.modeling import grow_embeddings, load_tokenizer, resolve_template, write_checkpoint_info
from belle.records import DataError, report_rejects
from belle.templates import Template, to_jinja
from belle.tokenization import collate
from belle.train.checkpoints import CheckpointCallback, foreign_checkpoints, remove_incomplete, resolve_resume
from belle.train.config import TrainConfig
from belle.train.fingerprint import differences, read_fingerprint, run_fingerprint, write_fingerprint
from belle.train.lora import adapter_report, describe, resolve_targets, target_problems
from belle.train.merge import write_generation_config
from belle.train.packing import check_packing, pt_unpacked_notice
from belle.train.preflight import check_run, resolve_precision
from belle.train.report import ThroughputCallback, write_report

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class TrainData:
    train: Any
    eval: Any
    stats: dict[str, Any]
    rejected: list[str]


def train(config: TrainConfig) -> Path:
    """Run the whole job described by `config`; returns the folder of the final model."""
    problems = check_run(config)
    if problems:
        raise UsageError(f"{len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    precision = resolve_precision(config.training.precision)
    output_dir = Path(config.output_dir)
    args = training_arguments(config, precision)
    tokenizer = load_tokenizer(config.model.path, config.model.trust_remote_code)
    template = resolve_template(config.model.path, tokenizer, config.model.template)
    if template.name != "model":
        tokenizer.chat_template = to_jinja(template)
    with args.main_process_first(desc="preparing data"):
        data = prepare_data(config, tokenizer, template)
    if args.process_index == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
        _record_fingerprint(config)
        report_rejects(data.rejected, output_dir / "data")
    model = load_for_training(config, precision, tokenizer)
    check_packing(model, config)
    trainer, throughput = build_trainer(config, args, model, tokenizer, data)
    with args.main_process_first(desc="finding the checkpoint to resume from"):
        resume_from = resolve_resume(output_dir, config.resume)
        if args.process_index == 0:
            for path in remove_incomplete(output_dir):
                logger.warning("removed %s: it was never completed (a run stopped while saving it)", path)
            for _, path in foreign_checkpoints(output_dir):
                logger.warning("left %s alone: it has no belle marker (belle train did not write it), so this run "
                               "neither resumes from it nor removes it", path)
    if resume_from:
        logger.info("resuming from %s", resume_from)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    eval_metrics = _final_eval(trainer) if data.eval is not None else None
    save_final(trainer, config, template, tokenizer, precision)
    if trainer.is_world_process_zero():
        train_metrics = {**result.metrics, **(throughput.totals if throughput else {})}
        metrics = {
            "train": train_metrics,
            "eval": eval_metrics,
            "global_step": trainer.state.global_step,
            "log_history": trainer.state.log_history,
            "data": data.stats,
            "lora": adapter_report(model) if config.method != "full" else None,
        }
        write_report(output_dir, config_to_dict(config), metrics)
        print((output_dir / "summary.md").read_text(encoding="utf-8"))
    return output_dir


def _record_fingerprint(config: TrainConfig) -> None:
    """Store what defines this run in its folder; under resume=force, say what changed first."""
    new = run_fingerprint(config)
    old = read_fingerprint(config.output_dir)
    if old is not None and old != new:
        logger.warning("resume=force: continuing %s with other data or settings:\n  %s",
                       config.output_dir, "\n  ".join(differences(old, new)))
    write_fingerprint(config.output_dir, new)


def _final_eval(trainer: Any) -> dict[str, Any]:
    """The eval metrics at the last step: logged already when the run ended on an eval step."""
    last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), {})
    if last.get("step") == trainer.state.global_step:
        return {k: v for k, v in last.items() if k.startswith("eval_")}
    return trainer.evaluate()


def training_arguments(config: TrainConfig, precision: str) -> Any:
    """transformers' (or TRL's) arguments from our config; checkpoint rotation is ours (see
    `CheckpointCallback`), so the Trainer's own `save_total_limit` stays off."""
    import torch

    from belle.train.distributed import ensure_single_process_world

    t = config.training
    ensure_single_process_world(t.deepspeed)
    has_eval = bool(config.data.validation_files or config.data.validation_split)
    kwargs: dict[str, Any] = dict(
        output_dir=config.output_dir,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=t.gradient_checkpointing,
        seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps or t.save_steps,
        report_to=t.report_to or "none",
        deepspeed=t.deepspeed,
        ddp_find_unused_parameters=False,
        ddp_timeout=t.ddp_timeout,
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if config.stage == "dpo":
        from trl import DPOConfig

        args = DPOConfig(
            **kwargs,
            beta=config.dpo.beta,
            loss_type=[config.dpo.loss_type],
            max_length=config.data.max_length,
            dataset_num_proc=config.data.num_proc,
        )
    else:
        from transformers import TrainingArguments

        args = TrainingArguments(**kwargs, remove_unused_columns=False)
    if args.deepspeed and args.use_cpu and args.world_size > 1:
        # On CPU, accelerate sets up the gloo process group but not DeepSpeed's view of it, and
        # DeepSpeed would size its batch for one process.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    return args


def prepare_data(config: TrainConfig, tokenizer: Any, template: Template) -> TrainData:
    """Read, split and encode the data; raise `UsageError` for data that cannot train anything."""
    d = config.data
    policy = "strict" if d.strict else "skip"
    try:
        if config.stage == "dpo":
            return _preference_data(config, policy)
        format = "text" if config.stage == "pt" else d.format
        train_records = load_conversations(d.train_files, format, policy)
        eval_records = load_conversations(d.validation_files, format, policy) if d.validation_files else None
    except DataError as e:
        raise UsageError(str(e)) from None
    rejected = rejected_lines(train_records) + (rejected_lines(eval_records) if eval_records is not None else [])
    if d.validation_split:
        train_records, eval_records = _split(train_records, d.validation_split, config.training.seed, d.train_files)
    unpacked = pt_unpacked_notice(config)
    encode = dict(
        tokenizer=tokenizer, template=template, max_length=d.max_length, overlong=d.overlong,
        pack=d.pack or (config.stage == "pt" and not unpacked), num_proc=d.num_proc, documents=config.stage == "pt",
    )
    train_set, stats = tokenize_dataset(train_records, **encode)
    if unpacked:
        logger.warning("%s", unpacked)
        stats.notes.append(unpacked)
    _require_samples(stats, "data.train_files", d.train_files, d.max_length)
    eval_set, eval_stats = tokenize_dataset(eval_records, **encode) if eval_records is not None else (None, None)
    if eval_stats is not None:
        eval_key, eval_files = ("data.validation_files", d.validation_files) if d.validation_files else ("data.validation_split", d.train_files)
        _require_samples(eval_stats, eval_key, eval_files, d.max_length)
    logger.info("training data:\n%s", stats.summary())
    summary = {**stats.to_dict(), "eval": eval_stats.to_dict() if eval_stats else None}
    return TrainData(train_set, eval_set, summary, rejected)


def _split(records: Any, fraction: float, seed: int, files: list[str]) -> tuple[Any, Any]:
    """(train, held out) records; too few records to hold any out is a usage error."""
    if len(records) == 0:
        raise UsageError(f"data.train_files ({', '.join(files)}): no sample to train on: the files hold no records")
    try:
        split = records.train_test_split(test_size=fraction, seed=seed)
    except ValueError as e:
        raise UsageError(f"data.validation_split: {fraction} of {len(records)} records leaves no record on one side ({e})") from None
    return split["train"], split["test"]


def _require_samples(stats: TokenizeStats, key: str, files: list[str], max_length: int) -> None:
    """One sentence naming the files and why each record was left out, when none is left."""
    if stats.samples:
        return
    where = f"{key} ({', '.join(files)})"
    if stats.records == 0:
        raise UsageError(f"{where}: no sample to train on: the files hold no records")
    why = "; ".join(f"{kind} {sum(counts.values())} ({', '.join(f'{r}: {n}' for r, n in counts.items())})"
                    for kind, counts in (("rejected", stats.rejected), ("dropped", stats.dropped)) if counts)
    raise UsageError(f"{where}: no sample to train on at max_length {max_length}: of {stats.records} records, {why}")


def _preference_data(config: TrainConfig, policy: str) -> TrainData:
    from belle.train.preference import load_preference_pairs

    d = config.data
    train_set, report = load_preference_pairs(d.train_files, policy)
    if len(train_set) == 0:
        raise UsageError(f"data.train_files ({', '.join(d.train_files)}): no usable preference pair ({report.summary()})")
    eval_set, rejected = None, list(report.lines)
    if d.validation_files:
        eval_set, eval_report = load_preference_pairs(d.validation_files, policy)
        rejected += eval_report.lines
    elif d.validation_split:
        split = train_set.train_test_split(test_size=d.validation_split, seed=config.training.seed)
        train_set, eval_set = split["train"], split["test"]
    stats = {"records": len(train_set) + report.total, "rejected": dict(report.counts), "pairs": len(train_set)}
    return TrainData(train_set, eval_set, stats, rejected)


def load_for_training(config: TrainConfig, precision: str, tokenizer: Any) -> Any:
    """The model in the dtype its training needs, wrapped with LoRA for lora and qlora.

    Full fine-tuning without DeepSpeed keeps fp32 weights and lets autocast compute in bf16/fp16, so
    small updates are not rounded away; DeepSpeed keeps its own fp32 master copy, and LoRA freezes
    the base, so those load in the compute dtype.
    """
    import torch
    from transformers import AutoModelForCausalLM

    keeps_fp32 = config.method == "full" and not config.training.deepspeed
    dtype = getattr(torch, TORCH_DTYPES["fp32" if keeps_fp32 else precision])
    kwargs: dict[str, Any] = {}
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(
        config.model.path,
        dtype=dtype,
        attn_implementation=config.model.attn_implementation,
        use_safetensors=True,
        trust_remote_code=config.model.trust_remote_code,
        **kwargs,
    )
    grow_embeddings(model, tokenizer)
    if config.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.method == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora = config.lora
    problems = target_problems(lora.target_modules, model)
    if problems:
        raise UsageError(problems[0])
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=resolve_targets(lora.target_modules, model),
        modules_to_save=list(lora.modules_to_save) or None,
    )
    model = get_peft_model(model, peft_config)
    logger.info("%s", describe(adapter_report(model)))
    return model


def build_trainer(config: TrainConfig, args: Any, model: Any, tokenizer: Any, data: TrainData) -> tuple[Any, ThroughputCallback | None]:
    checkpoints = CheckpointCallback(config.training.save_total_limit)
    if config.stage == "dpo":
        from trl import DPOTrainer

        trainer = DPOTrainer(
            model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
            processing_class=tokenizer, callbacks=[checkpoints],
        )
        return trainer, None
    import torch
    from transformers import Trainer

    collator = partial(collate, pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
    throughput = ThroughputCallback(tokenizer.pad_token_id)
    trainer = Trainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
        data_collator=collator, processing_class=tokenizer, callbacks=[checkpoints],
    )
    # First, so the progress bar and TensorBoard see the throughput it adds to each log line.
    trainer.callback_handler.callbacks.insert(0, throughput)
    return trainer, throughput


def save_final(trainer: Any, config: TrainConfig, template: Template, tokenizer: Any, precision: str) -> None:
    """The final model (or adapter) in `output_dir`, with its tokenizer, `belle.json` and a
    `generation_config.json` whose end ids match the template.

    Under ZeRO-3 every rank takes part in gathering the 16-bit weights. A full model trained in
    fp32 master weights with bf16/fp16 autocast is saved in that 16-bit dtype, as BELLE releases are.
    """
    import torch

    model = trainer.model
    model.config.use_cache = True
    if config.method == "full" and not config.training.deepspeed and precision != "fp32":
        model.to(getattr(torch, TORCH_DTYPES[precision]))
    trainer.save_model(config.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(config.output_dir)
        write_checkpoint_info(config.output_dir, template.name, config=config_to_dict(config), trained_by="belle train")
        write_generation_config(Path(config.output_dir), model, tokenizer, template)
