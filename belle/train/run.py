"""One training run: check inputs, build the data, load the model, train with the Trainer, save.

The order matters: every check that can fail runs before the model is loaded, and the
`TrainingArguments` exist before the model does, so that under ZeRO-3 transformers partitions the
weights while loading them instead of materialising the whole model on every rank.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from belle.cli import UsageError
from belle.config import config_to_dict, save_config
from belle.dataset import TokenizeStats, load_conversations, rejected_lines, tokenize_dataset
from belle.modeling import grow_embeddings, load_tokenizer, reply_end_ids, resolve_template, write_checkpoint_info
from belle.records import DataError, report_rejects
from belle.templates import Template, to_jinja
from belle.tokenization import collate
from belle.train.checkpoints import CheckpointCallback, foreign_checkpoints, remove_incomplete, resolve_resume
from belle.train.config import RL_STAGES, TrainConfig
from belle.train.distributed import world_size
from belle.train.fingerprint import differences, read_fingerprint, run_fingerprint, write_fingerprint
from belle.train.lora import adapter_report, describe, resolve_targets, target_problems
from belle.train.merge import write_generation_config
from belle.train.packing import check_packing, pt_unpacked_notice
from belle.train.preflight import check_run, resolve_precision
from belle.train.report import ThroughputCallback, write_report

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
SCORE_HEADS = ("score", "classifier")
"""Names of the head of transformers' sequence-classification models (the reward model's score)."""
TRL_STAGES = ("dpo", "rm", "kto", *RL_STAGES)
"""Stages trained by a TRL trainer; sft and pt use transformers' `Trainer` with belle's own encoding."""


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
        save_config(saved_config(config), output_dir / "config.yaml")
        _record_fingerprint(config)
        report_rejects(data.rejected, output_dir / "data")
    model = load_for_training(config, precision, tokenizer)
    check_packing(model, config)
    if config.stage in RL_STAGES:
        set_reply_ends(model, tokenizer, template)
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
        trainer.args.eval_on_start = False  # the eval before the first step is in the checkpoint's log already
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    eval_metrics = _final_eval(trainer) if data.eval is not None else None
    lora_report = adapter_report(model) if config.method != "full" else None
    save_final(trainer, config, template, tokenizer, precision)
    if trainer.is_world_process_zero():
        train_metrics = {**result.metrics, **(throughput.totals if throughput else {})}
        metrics = {
            "train": train_metrics,
            "eval": eval_metrics,
            "global_step": trainer.state.global_step,
            "log_history": trainer.state.log_history,
            "data": data.stats,
            "lora": lora_report,
        }
        write_report(output_dir, config_to_dict(saved_config(config)), metrics)
        print((output_dir / "summary.md").read_text(encoding="utf-8"))
    return output_dir


def saved_config(config: TrainConfig) -> TrainConfig:
    """`config` as a run's files keep it (config.yaml, belle.json, summary.md): the judge's base URL
    without its secrets (`belle.llm.redact_url`)."""
    from belle.llm import redact_url

    judge = config.reward.judge
    if redact_url(judge.base_url) == judge.base_url:
        return config
    judge = dataclasses.replace(judge, base_url=redact_url(judge.base_url))
    return dataclasses.replace(config, reward=dataclasses.replace(config.reward, judge=judge))


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
    if config.stage in TRL_STAGES:
        args = trl_arguments(config, kwargs)
    else:
        from transformers import TrainingArguments

        args = TrainingArguments(**kwargs, remove_unused_columns=False)
    if args.deepspeed and args.use_cpu and args.world_size > 1:
        # On CPU, accelerate sets up the gloo process group but not DeepSpeed's view of it, and
        # DeepSpeed would size its batch for one process.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    return args


def trl_arguments(config: TrainConfig, kwargs: dict[str, Any]) -> Any:
    """TRL's config of the stage's trainer: `kwargs` (the `TrainingArguments` all stages share) and the
    stage's own settings. Trainers that load a reference model themselves load it with the policy's
    `trust_remote_code`. For grpo and rloo the batch sizes count completions, `rl.num_generations` of
    them per prompt (see `rl_eval_batch_size`)."""
    d, t = config.data, config.training
    kwargs = {**kwargs, "trust_remote_code": config.model.trust_remote_code}
    if config.stage == "dpo":
        from trl import DPOConfig

        return DPOConfig(**kwargs, beta=config.dpo.beta, loss_type=[config.dpo.loss_type], max_length=d.max_length,
                         dataset_num_proc=d.num_proc)
    if config.stage == "rm":
        from trl import RewardConfig

        # An eval before the first step gives the accuracy to beat: chance, for a new score head.
        return RewardConfig(**kwargs, max_length=d.max_length, dataset_num_proc=d.num_proc,
                            eval_on_start=kwargs["eval_strategy"] != "no")
    if config.stage == "kto":
        from trl import KTOConfig

        k = config.kto
        return KTOConfig(**kwargs, beta=k.beta, desirable_weight=k.desirable_weight, undesirable_weight=k.undesirable_weight,
                         max_length=d.max_length, dataset_num_proc=d.num_proc)
    from trl import GRPOConfig, RLOOConfig

    rl = config.rl
    kwargs["per_device_eval_batch_size"] = rl_eval_batch_size(t.batch_size, rl.num_generations, world_size())
    return (GRPOConfig if config.stage == "grpo" else RLOOConfig)(
        **kwargs,
        num_generations=rl.num_generations,
        max_completion_length=rl.max_new_tokens,
        temperature=rl.temperature,
        top_p=rl.top_p,
        beta=rl.beta,
        num_iterations=rl.num_iterations,
        epsilon=rl.epsilon,
        reward_weights=[float(w) for w in config.reward.weights.values()],
        log_completions=False,
    )


def rl_eval_batch_size(batch_size: int, num_generations: int, processes: int) -> int:
    """Completions per process in one eval batch of grpo or rloo: the smallest multiple of
    num_generations / gcd(num_generations, processes) that is at least `batch_size`, so that the
    processes together hold whole groups (TRL requires the global eval batch to be a multiple of
    num_generations)."""
    step = num_generations // math.gcd(num_generations, processes)
    return -(-batch_size // step) * step


def prepare_data(config: TrainConfig, tokenizer: Any, template: Template) -> TrainData:
    """Read, split and encode the data; raise `UsageError` for data that cannot train anything."""
    d = config.data
    policy = "strict" if d.strict else "skip"
    try:
        if config.stage in ("dpo", "rm", "kto"):
            return _preference_data(config, tokenizer)
        if config.stage in RL_STAGES:
            return _prompt_data(config, tokenizer)
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


PAIR_RENDERINGS = (("prompt", "chosen"), ("prompt", "rejected"))
"""What TRL's RewardTrainer tokenizes of a pair (and drops when either is over max_length)."""
KTO_RENDERINGS = (("prompt", "completion"),)
"""What TRL's KTOTrainer tokenizes of an example (and cuts at max_length)."""


def _read_files(config: TrainConfig, read: Any, what: str, fit: Any) -> tuple[Any, Any, dict[str, Any], list[str]]:
    """(train rows, validation rows or None, stats, rejected lines) of the data files, each set read
    with `read(files, policy)`, refused when it holds no usable row, then passed through
    `fit(rows, where) -> (rows, dropped counts | None)`; a validation split is made last."""
    d = config.data
    policy = "strict" if d.strict else "skip"
    splits, rejected, stats = {}, [], {}
    for key, files in (("data.train_files", d.train_files), ("data.validation_files", d.validation_files)):
        if not files:
            continue
        rows, report = read(files, policy)
        rejected += report.lines
        where = f"{key} ({', '.join(files)})"
        if len(rows) == 0:
            raise UsageError(f"{where}: no usable {what} ({report.summary()})")
        rows, dropped = fit(rows, where)
        if key == "data.train_files":
            stats.update(records=report.records, rejected=dict(report.counts))
        if dropped is not None:
            stats["dropped" if key == "data.train_files" else "eval_dropped"] = dropped
        splits[key] = rows
    return splits["data.train_files"], splits.get("data.validation_files"), stats, rejected


def _preference_data(config: TrainConfig, tokenizer: Any) -> TrainData:
    """Preference pairs (dpo, rm) or good and bad answers (kto: shuffled, since TRL's KTO reads them in
    order and pairs each example with its neighbour's prompt for the KL estimate).

    For rm and kto, a row longer than data.max_length tokens as TRL renders it (prompt + chosen and
    prompt + rejected; prompt + completion) is dropped and counted here, before TRL would drop it
    uncounted (rm) or cut off the answer it is about (kto). dpo keeps TRL's truncation."""
    from belle.train.preference import load_kto_examples, load_preference_pairs

    d = config.data
    read, what = (load_kto_examples, "example") if config.stage == "kto" else (load_preference_pairs, "preference pair")
    renderings = {"rm": PAIR_RENDERINGS, "kto": KTO_RENDERINGS}.get(config.stage)

    def fit(rows: Any, where: str) -> tuple[Any, dict[str, int] | None]:
        if not renderings:
            return rows, None
        return _keep_fitting(rows, tokenizer, d.max_length, renderings, False, d.num_proc, where, f"{what}s",
                             "raise data.max_length or shorten the data")

    train_set, eval_set, stats, rejected = _read_files(config, read, what, fit)
    if d.validation_split:
        train_set, eval_set = _split(train_set, d.validation_split, config.training.seed, d.train_files)
    if config.stage == "kto":
        train_set = train_set.shuffle(seed=config.training.seed)
        desirable = sum(train_set["label"])
        stats.update(examples=len(train_set), desirable=desirable, undesirable=len(train_set) - desirable)
    else:
        stats["pairs"] = len(train_set)
    return TrainData(train_set, eval_set, stats, rejected)


def _prompt_data(config: TrainConfig, tokenizer: Any) -> TrainData:
    """Prompts for grpo and rloo. A prompt longer than data.max_length - rl.max_new_tokens tokens, as the
    template renders it for generation, leaves no room for its completion: it is dropped and counted.
    The math_answer source needs prompts with a reference: a run where none has one is refused."""
    from belle.train.prompts import load_prompts

    d = config.data
    room = d.max_length - config.rl.max_new_tokens

    def fit(rows: Any, where: str) -> tuple[Any, dict[str, int]]:
        return _keep_fitting(rows, tokenizer, room, (("prompt",),), True, d.num_proc, where, "prompts",
                             "raise data.max_length or lower rl.max_new_tokens",
                             limit_name="data.max_length - rl.max_new_tokens")

    train_set, eval_set, stats, rejected = _read_files(config, load_prompts, "prompt", fit)
    stats["with_reference"] = sum(1 for reference in train_set["reference"] if reference)
    if "math_answer" in config.reward.weights and not stats["with_reference"]:
        raise UsageError(f"data.train_files ({', '.join(d.train_files)}): math_answer needs references: none of the "
                         f"{len(train_set)} prompts has one (a reference, answer, output or std_answer field, or the "
                         f"reply after a conversation's last user turn); add them, or use other reward sources")
    if d.validation_split:
        train_set, eval_set = _split(train_set, d.validation_split, config.training.seed, d.train_files)
    stats["prompts"] = len(train_set)
    return TrainData(train_set, eval_set, stats, rejected)


def _keep_fitting(rows: Any, tokenizer: Any, limit: int, renderings: tuple[tuple[str, ...], ...], generation_prompt: bool,
                  num_proc: int | None, where: str, what: str, fix: str, limit_name: str = "data.max_length") -> tuple[Any, dict[str, int]]:
    """The rows of `rows` whose every rendering takes at most `limit` tokens, and the count of those
    dropped (`{"longer than N tokens": k}`, logged as a warning when k > 0).

    Each rendering names the columns (lists of messages) joined into one conversation, which the
    tokenizer's chat template renders as TRL does (`add_generation_prompt=generation_prompt`).
    Raises `UsageError` naming `where`, the limit and `fix` when no row fits.
    """
    def fits(batch: dict[str, list]) -> list[bool]:
        keep = [True] * len(batch[renderings[0][0]])
        for columns in renderings:
            conversations = [sum((batch[c][i] for c in columns), []) for i in range(len(keep))]
            ids = tokenizer.apply_chat_template(conversations, add_generation_prompt=generation_prompt, tokenize=True,
                                                return_dict=True)["input_ids"]
            keep = [k and len(row) <= limit for k, row in zip(keep, ids)]
        return keep

    kept = rows.filter(fits, batched=True, num_proc=num_proc, desc=f"measuring {what}")
    dropped = len(rows) - len(kept)
    if not len(kept):
        raise UsageError(f"{where}: none of the {len(rows)} {what} fits: all are longer than {limit_name} = {limit} "
                         f"tokens; {fix}")
    if dropped:
        logger.warning("%s: dropped %d of %d %s longer than %s = %d tokens", where, dropped, len(rows), what, limit_name, limit)
    return kept, {f"longer than {limit} tokens": dropped}


def load_for_training(config: TrainConfig, precision: str, tokenizer: Any) -> Any:
    """The model in the dtype its training needs, wrapped with LoRA for lora and qlora.

    Full fine-tuning without DeepSpeed keeps fp32 weights and lets autocast compute in bf16/fp16, so
    small updates are not rounded away; DeepSpeed keeps its own fp32 master copy, and LoRA freezes
    the base, so those load in the compute dtype.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    keeps_fp32 = config.method == "full" and not config.training.deepspeed
    dtype = getattr(torch, TORCH_DTYPES["fp32" if keeps_fp32 else precision])
    kwargs: dict[str, Any] = {}
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    if config.stage == "rm":
        from transformers import set_seed

        kwargs["num_labels"] = 1
        set_seed(config.training.seed)  # the new score head's initial weights
    model = (AutoModelForSequenceClassification if config.stage == "rm" else AutoModelForCausalLM).from_pretrained(
        config.model.path,
        dtype=dtype,
        attn_implementation=config.model.attn_implementation,
        use_safetensors=True,
        trust_remote_code=config.model.trust_remote_code,
        **kwargs,
    )
    grow_embeddings(model, tokenizer)
    if config.stage == "rm":
        # The score is read at the last token that is not padding.
        model.config.pad_token_id = tokenizer.pad_token_id
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
    targets = resolve_targets(lora.target_modules, model)
    if config.stage == "rm":
        # peft trains the score head in full (task type SEQ_CLS puts it in modules_to_save), so no adapter on it.
        targets = [name for name in targets if name not in SCORE_HEADS]
    peft_config = LoraConfig(
        task_type="SEQ_CLS" if config.stage == "rm" else "CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=list(lora.modules_to_save) or None,
    )
    model = get_peft_model(model, peft_config)
    logger.info("%s", describe(adapter_report(model)))
    return model


def build_trainer(config: TrainConfig, args: Any, model: Any, tokenizer: Any, data: TrainData) -> tuple[Any, ThroughputCallback | None]:
    """The stage's trainer; every one keeps the Trainer's own checkpoint rotation off and belle's
    `CheckpointCallback` on. grpo and rloo sample with `model.generation_config` (see `set_reply_ends`)."""
    checkpoints = CheckpointCallback(config.training.save_total_limit)
    common = dict(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval, processing_class=tokenizer,
                  callbacks=[checkpoints])
    if config.stage in TRL_STAGES:
        import trl

        if config.stage in RL_STAGES:
            from belle.train.rewards import build_rewards

            # Their weights are in args already; `eos` rewards the ids generation stops on (`set_reply_ends`).
            reward_funcs = build_rewards(config.reward, model.generation_config.eos_token_id)
            trainer_class = trl.GRPOTrainer if config.stage == "grpo" else trl.RLOOTrainer
            return trainer_class(reward_funcs=reward_funcs, **common), None
        trainer_class = {"dpo": trl.DPOTrainer, "rm": trl.RewardTrainer, "kto": trl.KTOTrainer}[config.stage]
        return trainer_class(**common), None
    import torch
    from transformers import Trainer

    collator = partial(collate, pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
    throughput = ThroughputCallback(tokenizer.pad_token_id)
    trainer = Trainer(data_collator=collator, **common)
    # First, so the progress bar and TensorBoard see the throughput it adds to each log line.
    trainer.callback_handler.callbacks.insert(0, throughput)
    return trainer, throughput


def set_reply_ends(model: Any, tokenizer: Any, template: Template) -> None:
    """Make generation stop where the template ends a reply (EOS, the generation config's ends, and the
    template's own end-of-turn token): TRL's grpo and rloo stop at the ids in `model.generation_config`."""
    model.generation_config.eos_token_id = sorted(reply_end_ids(tokenizer, template, model.generation_config.eos_token_id))


def save_final(trainer: Any, config: TrainConfig, template: Template, tokenizer: Any, precision: str) -> None:
    """The final model (or adapter) in `output_dir`, with its tokenizer, `belle.json` and a
    `generation_config.json` whose end ids match the template.

    Under ZeRO-3 every rank takes part in gathering the 16-bit weights. A full model trained in
    fp32 master weights with bf16/fp16 autocast is saved in that 16-bit dtype, as BELLE releases are.
    A reward model (stage rm) is always saved as a full sequence-classification model: a LoRA one is
    merged into its base first, its score head as trained, so transformers loads it alone.
    """
    import torch

    model = trainer.model
    model.config.use_cache = True
    unwrapped = trainer.accelerator.unwrap_model(model)
    if "ref" in getattr(unwrapped, "peft_config", {}):
        # TRL's frozen copy of the starting adapter (the reference of dpo, grpo, rloo), not a result.
        unwrapped.delete_adapter("ref")
    if config.stage == "rm" and config.method != "full":
        model = unwrapped.merge_and_unload()
    if config.method == "full" and not config.training.deepspeed and precision != "fp32":
        model.to(getattr(torch, TORCH_DTYPES[precision]))
    if model is trainer.model:
        trainer.save_model(config.output_dir)
    elif trainer.is_world_process_zero():
        model.save_pretrained(config.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(config.output_dir)
        write_checkpoint_info(config.output_dir, template.name, config=config_to_dict(saved_config(config)), trained_by="belle train")
        if config.stage != "rm":
            write_generation_config(Path(config.output_dir), model, tokenizer, template)
