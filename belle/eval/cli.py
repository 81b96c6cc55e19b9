"""`belle eval` (also `python -m belle.eval`): answer an eval set with a model (`generate`), have an
LLM judge score the answers (`score`), report the scores (`report`), or all three (`run`); compare
two models answer by answer (`pairwise`) or two judges on the same answers (`agree`); score single
answers in the browser (`webui`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Sequence

from tqdm import tqdm

from belle.cli import UsageError, run_verbs
from belle.eval.agreement import agree
from belle.eval.answers import EVAL_SAMPLING, AnswerRun, answer_locally, answer_remotely, pending_items, read_answers
from belle.eval.bench import bench
from belle.eval.evalset import EvalItem, default_eval_set_path, read_eval_set
from belle.eval.judging import JudgeFormat, default_judge_prompts_path, read_judge_prompts
from belle.eval.pairwise import pairwise
from belle.eval.report import agree_hints, build_report, write_report
from belle.eval.scoring import file_sha1, score_answers
from belle.eval.webui import webui
from belle.generation import EngineOptions, LoadOptions, SamplingOptions
from belle.llm import LLMFatalError, LLMOptions, resume_message

ANSWERS = "answers.jsonl"


@dataclass
class AnswerOptions:
    """The model that answers: a local folder (--model) or an OpenAI-compatible endpoint (--api-model)."""

    FLAT: ClassVar[bool] = True

    model: Path | None = None
    """Model folder, LoRA adapter folder, GPTQ folder or .gguf file to load here."""
    api_model: str | None = None
    """Instead, the model name an OpenAI-compatible endpoint serves (vLLM, `belle serve`, a hosted model)."""
    api_base: str | None = None
    """That endpoint's root ending in /v1; default: OpenAI's."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding that endpoint's key."""
    concurrency: int = 8
    """Endpoint requests in flight at once."""
    name: str | None = None
    """The model's name in answers and reports; default: the folder's or --api-model."""
    system: str = ""
    """System prompt for every question; default: none."""
    batch_size: int = 8
    """Questions generated together (left-padded) by a local model."""

    def problems(self) -> list[str]:
        """What is wrong with these options; empty when they are usable."""
        found = []
        if (self.model is None) == (self.api_model is None):
            found.append("give either --model DIR (a local model) or --api-model NAME (an OpenAI-compatible endpoint)")
        if self.batch_size < 1:
            found.append(f"--batch-size must be at least 1, not {self.batch_size}")
        return found


def generate(*, options: AnswerOptions, output: Path, eval_set: Path | None = None, limit: int | None = None,
             sampling: SamplingOptions = EVAL_SAMPLING, engine: EngineOptions = EngineOptions(),
             load: LoadOptions = LoadOptions()) -> int:
    """Answer every question of an eval set with a model, into an answers file a judge can score.

    Appends one line per item to OUTPUT (the eval record plus "answer", "model" and token counts);
    a re-run skips the items already there, so a killed run resumes.

    Args:
        output: answers JSON-lines file to write (appended to).
        eval_set: eval set in BELLE's format (question, std_answer, class); default: belle's own Chinese sample set.
        limit: answer only this many items, spread over the classes (a quick check).
    """
    items = _load_items(eval_set, limit)
    run = _answer(options, sampling, engine, load, items, output)
    return 1 if run.skipped else 0


def score(*, answers: Path, judge: LLMOptions, output: Path, prompts: Path | None = None, samples: int = 1,
          temperature: float | None = None, max_tokens: int | None = None,
          judge_format: JudgeFormat = "delimited") -> int:
    """Have an LLM judge score every answer of an answers file, one prompt per class.

    Appends the judge's verdicts to OUTPUT/judgments.jsonl item by item (a killed run resumes; a
    finished one asks nothing) and prints Score and Score_w/o_others; `belle eval report OUTPUT`
    writes the tables and the chart.

    Args:
        answers: answers JSON-lines file (from `belle eval generate`, or any BELLE eval record with an "answer").
        output: run folder for judgments.jsonl and run.json.
        prompts: judge prompts, one {"class", "prompt"} per line (BELLE's eval_prompt.json works); default: belle's own.
        samples: ask the judge this many times per answer and average the scores.
        temperature: judge sampling temperature; default 0 for one sample, 0.7 for several.
        max_tokens: the longest judge reply, in tokens; default 1024, 3000 with --judge-format belle-page.
        judge_format: the judge's messages: delimited (ours: the class prompt as system message, the question,
            reference and answer in marked blocks, a closing score line) or belle-page (BELLE's scoring page's
            one user message, temperature 0, max_tokens 3000: for scores set beside BELLE's tables; byte for byte
            for one-line answers, since the page's answer box holds no line breaks and belle sends a multi-line
            answer as it is).
    """
    answered = read_answers(answers)
    prompts_path = prompts or default_judge_prompts_path()
    judge_prompts = read_judge_prompts(prompts_path)
    try:
        result = score_answers(answered, judge_prompts, judge, output, samples=samples, temperature=temperature,
                               max_tokens=max_tokens, judge_format=judge_format,
                               prompts_sha1=file_sha1(prompts_path))
    except LLMFatalError as e:
        raise UsageError(resume_message(e, "the judgments so far", output)) from None
    print(f"judged {result.judged} answers now, {result.skipped} had all {samples} sample(s) already"
          + (f"; {result.parse_failures} judge replies had no readable score" if result.parse_failures else ""))
    if result.usage:
        print(f"judge: {result.usage.summary()}")
    if result.failed:
        first = next(iter(result.failed.items()))
        print(f"{len(result.failed)} answers were not judged (first: {first[0]}: {first[1]}); a re-run retries them")
    summary = build_report(output, bootstrap=0)
    print(f"Score {_f(summary.score)}, Score_w/o_others {_f(summary.score_wo_others)} over {summary.items} items "
          f"({summary.parse_failures} unscored)")
    if summary.sample_sd is not None:
        print(f"judge samples: mean per-item SD {summary.sample_sd:.3f}, {summary.sample_disagree:.1%} of "
              f"{summary.spread_items} items disagree by more than 0.2")
    return 1 if result.failed else 0


def report(run_dirs: list[Path], *, output: Path | None = None, bootstrap: int = 1000, seed: int = 0,
           confidence: float = 0.95) -> int:
    """Report scored runs: per-class means with bootstrap intervals, Score, Score_w/o_others, parse
    failures, judge tokens and cost; several runs side by side.

    Writes report.json, report.md and report.png (per-class bars) and prints the table. Runs that
    judged the same answers get a line pointing to `belle eval agree` for their judges' agreement.

    Args:
        run_dirs: run folders written by `belle eval score` (each with judgments.jsonl).
        output: folder for the report files; default: the first run folder.
        bootstrap: resamples for each class's interval; 0 for none.
        seed: seed of the resampling, so intervals are reproducible.
        confidence: level of the intervals, in (0, 1).
    """
    if not 0 < confidence < 1:
        raise UsageError(f"--confidence must be in (0, 1), not {confidence}")
    if bootstrap < 0:
        raise UsageError(f"--bootstrap must be 0 or more, not {bootstrap}")
    reports = [build_report(run_dir, bootstrap=bootstrap, seed=seed, confidence=confidence) for run_dir in run_dirs]
    out_dir = output or run_dirs[0]
    write_report(reports, out_dir, agree_hints(run_dirs))
    print((out_dir / "report.md").read_text(encoding="utf-8"))
    print(f"wrote report.json, report.md and report.png to {out_dir}")
    return 0


def run(*, options: AnswerOptions, judge: LLMOptions, output: Path, eval_set: Path | None = None,
        limit: int | None = None, prompts: Path | None = None, samples: int = 1,
        judge_temperature: float | None = None, judge_max_tokens: int | None = None,
        judge_format: JudgeFormat = "delimited",
        sampling: SamplingOptions = EVAL_SAMPLING, engine: EngineOptions = EngineOptions(),
        load: LoadOptions = LoadOptions()) -> int:
    """Generate answers, score them and write the report, all in one run folder.

    OUTPUT gets answers.jsonl, judgments.jsonl, run.json and report.{json,md,png}; every step
    resumes, so re-running a killed run finishes it.

    Args:
        output: run folder.
        eval_set: eval set in BELLE's format; default: belle's own Chinese sample set.
        limit: use only this many items, spread over the classes (a quick check).
        prompts: judge prompts file; default: belle's own.
        samples: judge samples per answer, averaged.
        judge_temperature: judge sampling temperature; default 0 for one sample, 0.7 for several.
        judge_max_tokens: the longest judge reply, in tokens; default 1024, 3000 with --judge-format belle-page.
        judge_format: the judge's messages: delimited (ours) or belle-page (BELLE's scoring page's; byte for byte
            for one-line answers, a multi-line answer is sent as it is, line breaks the page cannot hold included).
    """
    items = _load_items(eval_set, limit)
    answers = output / ANSWERS
    answered = _answer(options, sampling, engine, load, items, answers)
    if answered.skipped:
        print(f"scoring the {len(items) - len(answered.skipped)} answered items; a re-run answers the rest")
    status = score(answers=answers, judge=judge, output=output, prompts=prompts, samples=samples,
                   temperature=judge_temperature, max_tokens=judge_max_tokens, judge_format=judge_format)
    report([output])
    return 1 if answered.skipped else status


def _load_items(eval_set: Path | None, limit: int | None) -> list[EvalItem]:
    items = read_eval_set(eval_set or default_eval_set_path())
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit must be at least 1, not {limit}")
        items = spread_over_classes(items, limit)
    return items


def spread_over_classes(items: list[EvalItem], limit: int) -> list[EvalItem]:
    """The first `limit` items taking one of each class in turn (classes in order of first
    appearance, items in file order), so a small limit still covers every class."""
    by_class: dict[str, list[EvalItem]] = {}
    for item in items:
        by_class.setdefault(item.klass, []).append(item)
    chosen: list[EvalItem] = []
    for rank in range(max(len(group) for group in by_class.values())):
        chosen += [group[rank] for group in by_class.values() if rank < len(group)]
    keep = {item.id for item in chosen[:limit]}
    return [item for item in items if item.id in keep]


def _answer(options: AnswerOptions, sampling: SamplingOptions, engine: EngineOptions, load: LoadOptions,
            items: list[EvalItem], output: Path) -> AnswerRun:
    """Answer the items not yet in `output`; print what was done and what was skipped."""
    params = sampling.params()
    pending, already = pending_items(items, output)
    if not pending:
        print(f"all {len(items)} items are already answered in {output}")
        return AnswerRun()
    print(f"answering {len(pending)} items ({already} already in {output})")
    with tqdm(total=len(pending), desc="answering", unit="item", dynamic_ncols=True) as bar:
        if options.api_model:
            llm = LLMOptions(model=options.api_model, base_url=options.api_base, api_key_env=options.api_key_env,
                             concurrency=options.concurrency)
            try:
                answered = answer_remotely(llm, pending, output, params, name=options.name, system=options.system,
                                           on_item=bar.update)
            except LLMFatalError as e:
                raise UsageError(resume_message(e, "the answers so far", output)) from None
        else:
            from belle.chat.engines import load_engines

            spec = f"{options.name}={options.model}" if options.name else str(options.model)
            (local,) = load_engines([spec], **asdict(engine), **asdict(load)).values()
            try:
                answered = answer_locally(local, pending, output, params, batch_size=options.batch_size,
                                          system=options.system, on_item=bar.update)
            finally:
                local.close()
    print(f"wrote {answered.answered} answers to {output}")
    for item_id, why in list(answered.skipped.items())[:10]:
        print(f"skipped {item_id}: {why}")
    if answered.skipped:
        print(f"{len(answered.skipped)} items skipped; a re-run tries them again")
    return answered


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


VERBS = [generate, score, report, run, pairwise, agree, webui, bench]


def main(argv: Sequence[str] | None = None, prog: str = "python -m belle.eval") -> int:
    return run_verbs(VERBS, argv, prog)
