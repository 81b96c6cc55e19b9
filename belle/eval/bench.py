"""`belle eval bench`: standard benchmarks (C-Eval, CMMLU, MMLU, any lm-evaluation-harness task)
run in process on a belle model: a full, LoRA adapter or GPTQ folder loaded the way `belle chat`
loads it and handed to lm-eval's `HFLM` as an instance; a GGUF file runs on llama.cpp through
`belle.eval.lm_models.EngineLM` (the same tokenization and scores as HFLM, from llama.cpp's logits).

Chat template: loglikelihood tasks (multiple choice, like ceval-valid, cmmlu and mmlu) run on the
raw few-shot prompt, as lm-eval and LLaMA-Factory report them; generative tasks (`generate_until`)
get the model's template (belle.json's, else the tokenizer's own), each few-shot example as a turn.
`--apply-chat-template` / `--no-apply-chat-template` forces either way for every task.

The run folder gets bench.json (`read_bench`), bench.md and the printed table. Each named task is
evaluated on its own and saved as soon as it finishes; a re-run skips the tasks already in bench.json
(whose settings, lm-eval version and loaded dtype and device must match), so a killed run loses at most
the task in progress. A group without an aggregate score of its own is shown as its subtasks; a tag
(a list of tasks that lm-eval scores one by one) is refused: name its tasks.

A run folder holds one model: bench refuses a folder whose run.json names another model's answers
(compared by name: `--name`, default the folder's name or the .gguf file's stem, as `belle eval generate`
names answers). Every input is checked before the model loads: the task names, every task's dataset
(a dataset missing offline, or one that still needs a loading script, which datasets 4+ no longer runs)
and the --output folder.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from belle.cli import UsageError
from belle.generation import LoadOptions
from belle.records import DataError, read_json_object, write_text_atomic

logger = logging.getLogger(__name__)

BENCH = "bench.json"
BENCH_MD = "bench.md"
LOCAL_TASKS = Path(__file__).resolve().parent.parent / "assets" / "lm_eval_tasks"
MIN_LM_EVAL = "0.4.12"
"""The first lm-eval release with `TaskManager.load` (flat dicts of tasks and groups), which bench uses."""
INSTALL_HINT = f"`belle eval bench` needs lm-evaluation-harness: pip install 'belle[eval]' (or pip install 'lm-eval>={MIN_LM_EVAL}')"
OFFLINE_HINT = ("on a machine with internet, download it once (e.g. `hf download --repo-type dataset ceval/ceval-exam`, "
                "or `python -c \"import lm_eval.tasks as t; t.TaskManager().load(['TASK'])\"`), copy ~/.cache/huggingface "
                "here and set HF_DATASETS_OFFLINE=1; see eval/README.md")


def bench(*, model: Path, tasks: list[str], output: Path, limit: int | None = None, num_fewshot: int | None = None,
          batch_size: int = 8, include_path: list[Path] | None = None, template: str | None = None,
          apply_chat_template: bool | None = None, base: Path | None = None, name: str | None = None,
          load: LoadOptions = LoadOptions()) -> int:
    """Run lm-evaluation-harness benchmarks (ceval-valid, cmmlu, mmlu, ...) on a model, in process.

    Writes OUTPUT/bench.json and bench.md and prints the table; `belle eval report OUTPUT` shows the
    figures beside the judge scores. Tasks already in bench.json with the same settings are not rerun.
    Datasets come from the local Hugging Face cache (offline: see eval/README.md); belle's own
    offline task is belle_zh_mc.

    Args:
        model: model folder, LoRA adapter folder, GPTQ folder or .gguf file (run by llama.cpp on the CPU).
        tasks: lm-eval task or group names, comma- or space-separated (ceval-valid,cmmlu,mmlu).
        output: run folder for bench.json and bench.md.
        limit: evaluate only the first N documents of each task (a quick check; not a comparable score).
        num_fewshot: few-shot examples per prompt; default: the task's own, else 0 (ceval-valid and cmmlu set none: 0-shot).
        batch_size: prompts scored or generated together (a GGUF file takes them one after another).
        include_path: extra folders of lm-eval task YAML files; belle's own tasks are always included.
        template: prompt template for generative tasks; default: the model's belle.json, else its chat_template.
        apply_chat_template: wrap prompts in the template; default: only for generative tasks.
        base: base model folder for a LoRA adapter whose recorded base path is elsewhere.
        name: the model's name, checked against the answers' in OUTPUT/run.json (a run folder holds one model);
            default: the folder's name, or the .gguf file's stem, as `belle eval generate` names answers.
    """
    names = [name for entry in tasks for name in entry.split(",") if name.strip()]
    names = list(dict.fromkeys(name.strip() for name in names))
    if not names:
        raise UsageError("--tasks names no task; e.g. --tasks belle_zh_mc or --tasks ceval-valid,cmmlu")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be 0 or more, not {num_fewshot}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
    if not Path(model).exists():
        raise UsageError(f"{model}: no such model folder or .gguf file")
    _check_output(output)
    name = name or model_name(model)
    _check_run_model(output, name)
    lm_eval = _import_lm_eval()
    settings = {"model": str(model), "base": None if base is None else str(base), "limit": limit,
                "num_fewshot": num_fewshot, "template": template, "apply_chat_template": apply_chat_template,
                "include_path": [str(p) for p in include_path or []], "dtype": load.dtype, "device": load.device}
    done = {**_resume(output, settings, lm_eval_version()), "name": name}
    pending = [task for task in names if task not in done["tasks"]]
    for task in names:
        if task in done["tasks"]:
            print(f"{task}: already in {output / BENCH}, not rerun")
    if pending:
        manager = task_manager(include_path or [])
        _check_names(manager, pending)
        loaded_tasks = {task: _load_task(manager, task) for task in pending}  # datasets read before the model loads
        lm = load_lm(model, batch_size=batch_size, template=template, base=base, load=load)
        try:
            loaded_as = _loaded_as(lm)
            if done["tasks"] and done.get("loaded", loaded_as) != loaded_as:
                raise UsageError(f"{output / BENCH}: its tasks ran on {_describe(done['loaded'])}, this model loads "
                                 f"on {_describe(loaded_as)}; give --dtype and --device to match, or another --output")
            done["loaded"] = loaded_as
            for task, loaded in loaded_tasks.items():
                chat = apply_chat_template if apply_chat_template is not None else _generative(loaded)
                results = lm_eval.simple_evaluate(model=lm, tasks=_top_level(loaded, task), task_manager=manager,
                                                  limit=limit, num_fewshot=num_fewshot, apply_chat_template=chat,
                                                  fewshot_as_multiturn=chat, batch_size=batch_size)
                done["tasks"][task] = task_metrics(results["results"][task])
                done["subtasks"][task] = {sub: task_metrics(figures) for sub, figures in results["results"].items()
                                          if sub != task}
                done["chat_template"][task] = chat
                done["n_samples"][task] = results.get("n-samples", {}).get(task, {}).get("effective")
                _save(output, done)
        finally:
            if hasattr(lm, "close"):
                lm.close()
    table = bench_markdown(done)
    write_text_atomic(output / BENCH_MD, table)
    print(table)
    print(f"wrote {BENCH} and {BENCH_MD} to {output}")
    return 0


def load_lm(model: Path, *, batch_size: int = 8, template: str | None = None, base: Path | None = None,
            load: LoadOptions = LoadOptions()) -> Any:
    """An lm-eval `LM` over a belle model: `HFLM` around a model folder's loaded model and tokenizer
    (chat_template set to the resolved belle template); `EngineLM` over llama.cpp for a .gguf file."""
    from belle.generation import load_engine
    from belle.llamacpp import is_gguf
    from belle.templates import to_jinja

    try:
        engine = load_engine(model, base=base, template=template, batching=False, **asdict(load))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if is_gguf(model):
        from belle.eval.lm_models import EngineLM

        return EngineLM(engine, batch_size=batch_size)
    from lm_eval.models.huggingface import HFLM

    engine.tokenizer.chat_template = to_jinja(engine.template)
    return HFLM(pretrained=engine.model, tokenizer=engine.tokenizer, batch_size=batch_size,
                max_length=engine.context_length)


def task_manager(include_path: Sequence[Path | str] = ()) -> Any:
    """lm-eval's `TaskManager` over its own tasks, belle's (`LOCAL_TASKS`) and `include_path`'s folders.
    Indexing lm-eval's task YAMLs takes seconds: build one per `bench` call and pass it down."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(LOCAL_TASKS), *map(str, include_path)])


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def task_metrics(figures: dict[str, Any]) -> dict[str, float]:
    """lm-eval's figures of one task (`{"acc,none": 0.3, "acc_stderr,none": 0.15, "alias": ...}`) as
    `{"acc": 0.3, "acc_stderr": 0.15}`; a filter other than `none` stays in the name (`exact_match,flexible-extract`);
    "N/A" stderrs and non-numbers are left out."""
    metrics = {}
    for key, value in figures.items():
        metric, _, where = key.partition(",")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not where:
            continue
        metrics[metric if where == "none" else key] = float(value)
    return metrics


def read_bench(run_dir: Path) -> dict[str, Any] | None:
    """RUN_DIR/bench.json (`{"model", "tasks": {task: {metric: value}}, "lm_eval_version", "settings", ...}`), or None if absent."""
    path = Path(run_dir) / BENCH
    if not path.is_file():
        return None
    data = read_json_object(path, DataError)
    if not isinstance(data.get("tasks"), dict):
        raise DataError(f"{path}: no \"tasks\" object; it was not written by `belle eval bench`")
    return data


def shown_tasks(data: dict[str, Any]) -> dict[str, tuple[str, dict[str, float]]]:
    """Label -> (the named task, figures) of what bench.json shows: each named task or group with figures
    of its own; a group without an aggregate score as its subtasks, labelled `"GROUP/SUBTASK"`."""
    shown = {}
    for task, metrics in data["tasks"].items():
        if metrics:
            shown[task] = (task, metrics)
            continue
        for sub, figures in (data.get("subtasks") or {}).get(task, {}).items():
            if figures:
                shown[f"{task}/{sub}"] = (task, figures)
    return shown


def bench_rows(data: dict[str, Any]) -> dict[str, float]:
    """Row label -> value for the report: `"TASK METRIC"` for every metric but the stderrs, tagged when
    the run was not a task's full default (`"cmmlu acc (limit 4, 5-shot)"`), so such a figure gets a row
    of its own rather than one beside full runs'."""
    tag = settings_tag(data.get("settings") or {})
    return {f"{label} {metric}{tag}": value for label, (_, metrics) in shown_tasks(data).items()
            for metric, value in metrics.items() if not metric.endswith("_stderr")}


def settings_tag(settings: dict[str, Any]) -> str:
    """`" (limit N, K-shot)"` for a run with --limit and --num-fewshot, either alone, or "" for neither."""
    parts = [f"limit {settings['limit']}"] if settings.get("limit") is not None else []
    parts += [f"{settings['num_fewshot']}-shot"] if settings.get("num_fewshot") is not None else []
    return f" ({', '.join(parts)})" if parts else ""


def model_name(model: Path | str) -> str:
    """The name `belle eval generate` gives a model's answers by default: a .gguf file's stem, a folder's name."""
    from belle.llamacpp import is_gguf

    path = Path(model).resolve()
    return path.stem if is_gguf(path) else path.name


def bench_markdown(data: dict[str, Any]) -> str:
    """bench.md: one row per task and metric, value ± stderr."""
    loaded = f"; loaded as {_describe(data['loaded'])}" if data.get("loaded") else ""
    lines = [f"# Benchmarks: {data['model']}", "", f"lm-eval {data['lm_eval_version']}{loaded}; settings: "
             + ", ".join(f"{k}={v}" for k, v in data["settings"].items() if k != "model"), "",
             "| task | metric | value | ± stderr | chat template |", "|---|---|---|---|---|"]
    for label, (task, metrics) in shown_tasks(data).items():
        for metric, value in metrics.items():
            if metric.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{metric}_stderr")
            lines.append(f"| {label} | {metric} | {value:.4f} | {'—' if stderr is None else f'{stderr:.4f}'} | "
                         f"{'yes' if data['chat_template'].get(task) else 'no'} |")
    return "\n".join(lines) + "\n"


def _import_lm_eval() -> Any:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    if not hasattr(TaskManager, "load"):
        raise UsageError(f"`belle eval bench` needs lm-eval {MIN_LM_EVAL} or newer, not {lm_eval_version()}: "
                         f"pip install -U 'lm-eval>={MIN_LM_EVAL}'")
    return lm_eval


def _check_names(manager: Any, names: list[str]) -> None:
    """UsageError for a name lm-eval does not know, or a tag (lm-eval reports no figure under a tag's name)."""
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise UsageError("; ".join(_unknown_message(name, manager.all_tasks) for name in unknown))
    tags = set(manager.all_tags)
    for name in names:
        if name in tags:
            members = sorted(manager.task_index[name].tags)  # a tag's index entry lists its tasks
            listed = ", ".join(members[:8]) + (f" and {len(members) - 8} more" if len(members) > 8 else "")
            raise UsageError(f"{name}: an lm-eval tag, a list of tasks with no score of its own; "
                             f"name its tasks instead ({listed})")


def _unknown_message(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return (f"{name}: not an lm-eval task or group" + (f" (did you mean {', '.join(close)}?)" if close else "")
            + "; `lm-eval ls tasks` lists them, --include-path adds folders of task YAML files")


def _load_task(manager: Any, name: str) -> dict[str, Any]:
    """lm-eval's load of one task, group or tag (which reads its dataset); a dataset missing offline, or
    one that needs a loading script, is a UsageError."""
    try:
        return manager.load([name])
    except Exception as e:  # datasets raises many kinds (ConnectionError, DatasetNotFoundError, FileNotFoundError, ...)
        if isinstance(e, RuntimeError) and "Dataset scripts are no longer supported" in str(e):
            task, dataset = _failed_load(e)
            raise UsageError(f"{name}: {'' if task in (None, name) else f'its task {task}: '}its dataset "
                             f"{dataset or '(unnamed)'} needs a loading script, which datasets 4 and later no longer run; "
                             "give a converted copy (parquet or json files) through a task YAML in --include-path "
                             "with dataset_path and data_files; see eval/README.md") from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"{name}: cannot load its dataset ({type(e).__name__}: {first[:200]}); "
                         + OFFLINE_HINT.replace("TASK", name)) from None


def _failed_load(error: BaseException) -> tuple[str | None, str | None]:
    """(the lm-eval task, the dataset path) whose `datasets.load_dataset` call raised `error`, read from
    its traceback's frames; None for what they do not show."""
    task = dataset = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        module = frame.f_globals.get("__name__", "")
        if module == "datasets.load" and frame.f_code.co_name == "load_dataset" and dataset is None:
            dataset = str(frame.f_locals.get("path"))
        config = getattr(frame.f_locals.get("self"), "config", None)
        if module.startswith("lm_eval") and isinstance(getattr(config, "task", None), str):
            task = config.task
    return task, dataset


def _check_output(output: Path) -> None:
    """UsageError unless `output` is a folder, or can become one, that this user may write in."""
    existing = next(p for p in (output, *output.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise UsageError(f"--output {output}: {existing} is a file, not a folder; give a run folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--output {output}: cannot write in {existing}")


def _check_run_model(output: Path, name: str) -> None:
    """UsageError when OUTPUT/run.json names another model's answers than `name`."""
    from belle.eval.report import RUN_INFO, read_run_info

    theirs = read_run_info(output).get("model") if (output / RUN_INFO).is_file() else None
    if theirs is not None and str(theirs) != name:
        raise UsageError(f"{output / RUN_INFO}: the run's answers are {theirs!r}'s, this model is {name!r}; a run "
                         "folder holds one model: give another --output, or --name if it is the same model")


def _generative(loaded: dict[str, Any]) -> bool:
    return any(task.get_config("output_type") == "generate_until" for task in loaded["tasks"].values())


def _top_level(loaded: dict[str, Any], name: str) -> list[Any]:
    """The built group, or the task of a task name, to hand to `simple_evaluate`."""
    return [loaded["groups"][name]] if name in loaded["groups"] else list(loaded["tasks"].values())


def _loaded_as(lm: Any) -> dict[str, str]:
    """The dtype and device the model's weights were loaded in (`HFLM`), or a GGUF file's (`EngineLM`)."""
    model = getattr(lm, "model", None)
    if model is None or not hasattr(model, "dtype"):
        return {"dtype": "GGUF (as exported)", "device": "cpu (llama.cpp)"}
    return {"dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device)}


def _describe(loaded: dict[str, str]) -> str:
    return f"{loaded.get('dtype')} on {loaded.get('device')}"


def _resume(output: Path, settings: dict[str, Any], lm_eval: str) -> dict[str, Any]:
    """bench.json so far, or a fresh one; UsageError if it was written with other settings or another lm-eval."""
    fresh = {"model": settings["model"], "tasks": {}, "lm_eval_version": lm_eval, "settings": settings,
             "chat_template": {}, "n_samples": {}, "subtasks": {}}
    previous = read_bench(output)
    if previous is None:
        return fresh
    if previous.get("lm_eval_version") != lm_eval:
        raise UsageError(f"{output / BENCH}: written with lm-eval {previous.get('lm_eval_version')}, this is {lm_eval}; "
                         "give another --output to run with this version")
    if previous.get("settings") != settings:
        differ = sorted(k for k in settings.keys() | (previous.get("settings") or {}).keys()
                        if settings.get(k) != (previous.get("settings") or {}).get(k))
        raise UsageError(f"{output / BENCH}: written with other settings ({', '.join(differ)}); "
                         "give another --output, or the same settings to add tasks to it")
    return {**fresh, **{k: v for k, v in previous.items() if k not in ("settings", "lm_eval_version")}}


def _save(output: Path, data: dict[str, Any]) -> None:
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / BENCH, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
