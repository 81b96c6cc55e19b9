"""`belle eval webui`: the scoring page, a Gradio app in the spirit of BELLE's single-case page.

"Single question": pick a class and a question (or shuffle one), read it with its reference answer,
paste a model's answer (or, with `--model DIR`, generate one), and get the judge's score and reason.
"Answers file": upload an answers file (the format of `belle.eval.answers`), judge every answer
into a fresh run folder under the working folder with a progress bar, and read and download the
report (report.json, report.md, report.png) and judgments.jsonl.

The judge's model and base URL start as the `--judge-*` flags and can be edited in the page. An
API key typed into the page's key field serves that one request: it is handed to the client in
memory and never written to a run folder, a log or the page's run history (turned off). With the
field empty, the key comes from the environment variable `--judge-api-key-env` names, and goes only
to the base URL the page was started with (`judge_options` enforces it for every request, raw
POSTs included). Nothing under the working folder is served: downloads are copies in Gradio's cache.

The judge's message format (`--judge-format`, a dropdown in the page) is "delimited" or
"belle-page" (BELLE's own page's message, see `belle.eval.judging.judge_messages`).

Scripts score one answer through the named API endpoint `/score` (`score_endpoint`), with
`gradio_client`: `Client(url).predict(question, answer, api_name="/score")` -> (score or None,
reason, raw reply). It follows the page's key rule; every other handler of the page is private.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from belle.cli import UsageError
from belle.eval.answers import EVAL_DECODING, EVAL_SAMPLING, read_answers, stream_answer
from belle.eval.evalset import EvalItem, default_eval_set_path, read_eval_set
from belle.eval.judging import JUDGE_FORMATS, JudgeFormat, default_judge_prompts_path, missing_prompts, read_judge_prompts
from belle.eval.report import JUDGMENTS, build_report, class_order, report_markdown, write_report
from belle.eval.scoring import check_judge_format, check_prompts, file_sha1, judge_answer, judge_params, score_answers
from belle.generation import EngineOptions, GenerationParams, LoadOptions, PromptTooLong, SamplingOptions
from belle.llm import LLMClient, LLMError, LLMOptions, OPENAI_BASE_URL, redact_url
from belle.records import DataError

if TYPE_CHECKING:  # gradio takes seconds to import: only the page itself loads it
    import gradio as gr

    from belle.chat.backends import ChatBackend

logger = logging.getLogger(__name__)

TITLE = "belle eval"
ALL = "all classes"  # the class dropdown's value for the whole set
PREVIEW_CHARS = 40  # characters of a question shown in the question dropdown
MAX_SAMPLES = 10
MAX_LISTED_FAILURES = 10
REPORT_FILES = ("report.json", "report.md", "report.png", JUDGMENTS)
MAX_UPLOAD_MB = 50.0  # MiB: the largest answers file the page accepts


# ---------------------------------------------------------------------------------------------
# Questions


def class_choices(items: Sequence[EvalItem]) -> list[tuple[str, str]]:
    """(label, value) of the class dropdown: `ALL` first, then every class of `items` in
    BELLE's order, each labelled with its number of questions ("open qa (7)")."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.klass] = counts.get(item.klass, 0) + 1
    return [(f"{ALL} ({len(items)})", ALL)] + [(f"{k} ({counts[k]})", k) for k in class_order(counts)]


def items_of_class(items: Sequence[EvalItem], klass: str) -> list[EvalItem]:
    """The items of class `klass` in file order; every item for `ALL`."""
    return list(items) if klass == ALL else [item for item in items if item.klass == klass]


def question_label(item: EvalItem) -> str:
    """The question dropdown's label: the id, then the first turn's start ("(2 turns)" for more)."""
    text = " ".join(item.turns[0].split())
    preview = text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"
    turns = f" ({len(item.turns)} turns)" if len(item.turns) > 1 else ""
    return f"{item.id} · {preview}{turns}"


def question_choices(items: Sequence[EvalItem]) -> list[tuple[str, str]]:
    """(label, id) of the question dropdown."""
    return [(question_label(item), item.id) for item in items]


def shuffle_pick(items: Sequence[EvalItem], klass: str, current: str | None, rng: random.Random) -> EvalItem:
    """A random item of class `klass` (`ALL`: of the whole set), other than `current` when the
    class has another one. Raises `ValueError` when the class has no items."""
    pool = items_of_class(items, klass)
    if not pool:
        raise ValueError(f"no questions of class {klass!r}")
    others = [item for item in pool if item.id != current]
    return rng.choice(others or pool)


def find_question(items: Sequence[EvalItem], question: str) -> EvalItem:
    """The item whose id is `question`, else the one whose question is exactly `question` (the
    text of a single-turn item, or `question_text` of a multi-turn one). Raises `UsageError`
    naming `question` when no item, or more than one, has that text."""
    for item in items:
        if item.id == question:
            return item
    found = [item for item in items if question in (item.turns[0] if len(item.turns) == 1 else None,
                                                    question_text(item))]
    if len(found) == 1:
        return found[0]
    shown = question if len(question) <= 80 else question[:80] + "…"
    if not found:
        raise UsageError(f"no question with id or text {shown!r} in this page's eval set")
    raise UsageError(f"{len(found)} questions have the text {shown!r} (ids {', '.join(i.id for i in found)}); "
                     "pass the id instead")


def question_text(item: EvalItem) -> str:
    """The question as the page shows it: the text of a single-turn item; the numbered user turns
    of a multi-turn one ("[Turn 1] ...", blank line, "[Turn 2] ..."), judged on the last reply."""
    if len(item.turns) == 1:
        return item.turns[0]
    return "\n\n".join(f"[Turn {i}] {turn}" for i, turn in enumerate(item.turns, start=1))


# ---------------------------------------------------------------------------------------------
# Generating an answer


def earlier_replies_text(replies: Sequence[str]) -> str:
    """The replies to every turn but the last, numbered as `question_text` numbers the turns."""
    return "\n\n".join(f"[Turn {i}] {reply}" for i, reply in enumerate(replies, start=1))


# ---------------------------------------------------------------------------------------------
# Judging


def judge_options(base: LLMOptions, model: str, base_url: str, api_key: str = "") -> LLMOptions:
    """`base` with the page's judge model and base URL (empty: OpenAI's), for a request made with
    `api_key` (the page's key field; empty: the operator's key, from `base.api_key_env`).

    The operator's key only ever goes to the operator's base URL (`base.base_url`, OpenAI's when
    unset), typed whole or as the page shows it, redacted. Any other URL needs a key typed in the
    page: without one this raises `UsageError` before a client exists; with one, the options name
    no environment variable, so nothing can fall back on the operator's key."""
    operator = (base.base_url or OPENAI_BASE_URL).rstrip("/")
    wanted = base_url.strip().rstrip("/") or OPENAI_BASE_URL
    if wanted in (operator, redact_url(operator)):
        return dataclasses.replace(base, model=model.strip())
    if not api_key.strip():
        raise UsageError(f"the judge base URL {redact_url(wanted)} is not the one this page was started with, "
                         f"so it needs your own API key: type it in the API key field (this server's key "
                         f"is only sent to {redact_url(operator)})")
    return dataclasses.replace(base, model=model.strip(), base_url=wanted, api_key_env="")


def judge_one(item: EvalItem, answer: str, prompts: dict[str, str], options: LLMOptions,
              api_key: str | None = None, *, max_tokens: int | None = None,
              judge_format: str = "delimited") -> dict[str, Any]:
    """The judge's one judgment of `answer` (a record of `belle.eval.scoring.judge_answer`), asked
    in `judge_format` with at most `max_tokens` (default: the format's, see `judge_params`).

    `api_key` (the page's key field) is used for this request only; None: the environment
    variable `options.api_key_env`. Raises `LLMError` (also for options the client refuses) and
    `KeyError` when the class has no judge prompt."""

    async def ask() -> list[dict[str, Any]]:
        try:
            client = LLMClient(options, api_key=api_key)
        except ValueError as e:  # invalid options: an empty model name, ...
            raise LLMError(str(e), "bad_request") from None
        async with client:
            return await judge_answer(client, item, answer, prompts, samples=1, judge_format=judge_format,
                                      params=judge_params(1, None, max_tokens, judge_format))

    return asyncio.run(ask())[0]


def fenced(text: str) -> str:
    """`text` as a markdown code block, its fence longer than any run of backticks inside."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def verdict_markdown(record: dict[str, Any], judge: str) -> str:
    """The page's verdict on one judgment record: the score (0..1) and the judge's reason; or,
    when the reply held no readable score, that it is a parse failure (never a 0) and the raw reply."""
    source = "from the cache" if record.get("cached") else \
        f"{record.get('prompt_tokens', 0):,} + {record.get('completion_tokens', 0):,} tokens"
    footer = f"\n\n<small>Judge: {judge} · {source}</small>"
    if record["score"] is None:
        return ("### No score\n\nThe judge's reply holds no score this page could read. A scoring run counts "
                "this as a parse failure, never as 0.\n\n**The judge's reply**\n\n" + fenced(record["raw"]) + footer)
    reason = record.get("reason") or "(the judge gave no reason)"
    return f"### Score: {record['score']:.2f}\n\n**Reason**\n\n{reason}{footer}"


def error_markdown(message: str) -> str:
    return "### Error\n\n" + fenced(message)


def llm_error_message(error: LLMError, key_from_field: bool) -> str:
    """What the page says about a failed judge call. A refused key typed in the page is named as
    such (the client's own message names the environment variable)."""
    if error.kind == "auth" and key_from_field:
        status = f" (HTTP {error.status})" if error.status else ""
        return f"the judge endpoint refused the API key typed in the page{status}"
    return str(error)


# ---------------------------------------------------------------------------------------------
# Scoring an answers file


@dataclass
class FileRun:
    """What scoring one answers file produced: the run folder, the page's status line (markdown),
    the report's markdown, the bar chart and the files to download (paths); no report, chart or
    files when no answer was judged."""

    run_dir: Path
    status: str
    report: str = ""
    chart: Path | None = None
    files: list[Path] = dataclasses.field(default_factory=list)


def new_run_dir(workdir: Path, answers_name: str) -> Path:
    """A fresh folder `WORKDIR/YYYYmmdd-HHMMSS-STEM-XXXX` for one scoring run."""
    stem = re.sub(r"[^\w.-]+", "_", Path(answers_name).stem)[:40] or "answers"
    workdir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}-", dir=workdir))


def score_file(path: Path, prompts: dict[str, str], options: LLMOptions, workdir: Path, *, samples: int = 1,
               judge_format: str = "delimited", api_key: str | None = None, prompts_sha1: str = "",
               answers_name: str | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> FileRun:
    """Judge every answer of the answers file `path` `samples` times into a new run folder under
    `workdir`, then write its report there. `answers_name`: the file's name as uploaded.

    Raises `DataError` (a bad answers file), `UsageError` (bad settings, a class with no prompt)
    and `LLMError` (the judge refused the key or does not exist)."""
    if not 1 <= samples <= MAX_SAMPLES:
        raise UsageError(f"samples must be between 1 and {MAX_SAMPLES}, not {samples}")
    check_judge_format(judge_format)
    answered = read_answers(path)
    check_prompts(answered, prompts)  # before the run folder is made
    name = answers_name or path.name
    run_dir = new_run_dir(workdir, name)
    result = score_answers(answered, prompts, options, run_dir, samples=samples, judge_format=judge_format,
                           api_key=api_key, prompts_sha1=prompts_sha1, on_progress=on_progress, show_progress=False)
    lines = [f"Scored **{name}** ({len(answered)} answers, {samples} sample{'s' if samples > 1 else ''} each) "
             f"into `{run_dir}`: {result.judged} judged, {len(result.failed)} failed, "
             f"{result.parse_failures} sample(s) without a readable score."]
    for item_id, why in list(result.failed.items())[:MAX_LISTED_FAILURES]:
        lines.append(f"- `{item_id}`: {why}")
    if len(result.failed) > MAX_LISTED_FAILURES:
        lines.append(f"- ... and {len(result.failed) - MAX_LISTED_FAILURES} more")
    if not result.judged:
        return FileRun(run_dir, "\n".join(lines) + "\n\nNo answer was judged, so there is no report.")
    report = build_report(run_dir)
    write_report([report], run_dir)
    return FileRun(run_dir, "\n".join(lines), report_markdown([report]), run_dir / "report.png",
                   [run_dir / name for name in REPORT_FILES])


def staged(run: FileRun) -> FileRun:
    """`run` with its chart and files copied into a fresh folder under the system's temp folder,
    for Gradio to take into its cache: the run folder stays where the page never serves from."""
    if not run.files:
        return run
    folder = Path(tempfile.mkdtemp(prefix="belle-eval-webui-download-"))
    files = [Path(shutil.copyfile(path, folder / path.name)) for path in run.files]
    return dataclasses.replace(run, chart=run.chart and folder / run.chart.name, files=files)


# ---------------------------------------------------------------------------------------------
# The page


def build_app(items: Sequence[EvalItem], prompts: dict[str, str], judge: LLMOptions, *, workdir: Path,
              backend: ChatBackend | None = None, params: GenerationParams = EVAL_DECODING, prompts_sha1: str = "",
              source: str = "", rng: random.Random | None = None, judge_format: str = "delimited") -> gr.Blocks:
    """The scoring page over the eval set `items`, judged with `prompts` through `judge` in
    `judge_format` (its model, base URL and format are the page's starting values), with the named
    API endpoint `/score` (`score_endpoint`). With `backend`, a Generate button answers the shown
    question with its first model using `params`, as `belle eval generate` would. Answers files are
    scored into run folders under `workdir`. `source` is a line about where the set and prompts come from."""
    import gradio as gr

    check_judge_format(judge_format)
    default_format = judge_format  # score_endpoint's own parameter has the name
    items = list(items)
    by_id = {item.id: item for item in items}
    rng = rng or random.Random()
    key_env = judge.api_key_env
    key_note = f"${key_env}" + ("" if os.environ.get(key_env) else " (not set)")
    first = items[0]
    model_name = backend.names[0] if backend is not None else None

    def show(item_id: str) -> tuple[str, str, str, Any, str]:
        """Question, reference, an empty answer, the earlier-replies box, an empty verdict."""
        item = by_id.get(item_id)
        if item is None:
            return "", "", "", gr.update(value="", visible=False), ""
        reference = item.std_answer or "(this question has no reference answer: the judge uses its rubric alone)"
        multi_turn = backend is not None and len(item.turns) > 1
        return question_text(item), reference, "", gr.update(value="", visible=multi_turn), ""

    def pick_class(klass: str) -> Any:
        pool = items_of_class(items, klass)
        return gr.update(choices=question_choices(pool), value=pool[0].id if pool else None)

    def shuffle(klass: str, current: str | None) -> Any:
        pool = items_of_class(items, klass)
        item = shuffle_pick(items, klass, current, rng)
        return gr.update(choices=question_choices(pool), value=item.id)

    def generate(item_id: str) -> Iterator[tuple[str, str]]:
        """(answer, earlier replies) as the model writes them."""
        item = by_id[item_id]
        try:
            for replies in stream_answer(backend, model_name, item, params):
                last = len(replies) == len(item.turns)
                yield (replies[-1] if last else ""), earlier_replies_text(replies if not last else replies[:-1])
        except PromptTooLong as e:
            raise gr.Error(f"cannot answer: {e}") from None

    def score(item_id: str, answer: str, model: str, base_url: str, api_key: str, fmt: str | None = None) -> str:
        item = by_id.get(item_id)
        if item is None:
            return error_markdown("choose a question first")
        if not answer.strip():
            return error_markdown("paste or generate an answer first")
        key = api_key.strip() or None
        try:
            fmt = fmt or default_format
            check_judge_format(fmt)
            options = judge_options(judge, model, base_url, api_key)
            record = judge_one(item, answer, prompts, options, key, judge_format=fmt)
        except UsageError as e:
            return error_markdown(str(e))
        except KeyError as e:
            return error_markdown(str(e.args[0]))
        except LLMError as e:
            return error_markdown(llm_error_message(e, key is not None))
        return verdict_markdown(record, options.model)

    def score_endpoint(question: str, answer: str, judge_model: str = "", judge_base_url: str = "",
                       api_key: str = "", judge_format: str = "") -> tuple[float | None, str, str]:
        """Score `answer` to one question of the page's eval set: (score 0..1 or None when the
        reply held none, the judge's reason, its raw reply).

        question: the question's id, or its exact text. judge_model, judge_base_url, judge_format:
        empty for the page's starting ones. api_key: your key, for this request only; empty: the
        server's, which goes only to the page's starting base URL. Bad input is an error naming it."""
        try:
            item = find_question(items, question)
            if not answer.strip():
                raise UsageError("the answer is empty")
            fmt = judge_format.strip() or default_format
            check_judge_format(fmt)
            options = judge_options(judge, judge_model.strip() or judge.model,
                                    judge_base_url.strip() or redact_url(judge.base_url) or "", api_key)
            record = judge_one(item, answer, prompts, options, api_key.strip() or None, judge_format=fmt)
        except UsageError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except KeyError as e:
            raise gr.Error(str(e.args[0]), print_exception=False) from None
        except LLMError as e:
            raise gr.Error(llm_error_message(e, bool(api_key.strip())), print_exception=False) from None
        return record["score"], record["reason"], record["raw"]

    # gr.api derives the endpoint's types from the signature, which this module's string annotations hide
    score_endpoint.__signature__ = inspect.signature(score_endpoint, eval_str=True)  # type: ignore[attr-defined]

    def score_upload(upload: str | None, samples: float | None, model: str, base_url: str, api_key: str,
                     fmt: str | None = None, progress: gr.Progress = gr.Progress()) -> tuple[str, str, Any, Any]:
        """(status, report markdown, chart, downloads)."""
        if not upload:
            return error_markdown("upload an answers file first"), "", None, None
        key = api_key.strip() or None
        progress((0, None), desc="Judging", unit="answers")
        try:
            options = judge_options(judge, model, base_url, api_key)
            run = score_file(Path(upload), prompts, options, workdir, judge_format=fmt or default_format,
                             samples=1 if samples is None else int(samples), api_key=key, prompts_sha1=prompts_sha1,
                             answers_name=Path(upload).name,
                             on_progress=lambda done, total: progress((done, total), desc="Judging", unit="answers"))
        except (DataError, UsageError) as e:
            return error_markdown(str(e)), "", None, None
        except LLMError as e:
            return error_markdown(llm_error_message(e, key is not None)), "", None, None
        run = staged(run)
        return run.status, run.report, run.chart and str(run.chart), [str(path) for path in run.files] or None

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}: scoring page\n\n{source}")
        with gr.Accordion("Judge", open=True):
            with gr.Row():
                judge_model = gr.Textbox(judge.model, label="Judge model", elem_id="judge-model")
                judge_url = gr.Textbox(redact_url(judge.base_url) or "", label="Base URL", placeholder=OPENAI_BASE_URL,
                                       info="empty: OpenAI's; another URL than this one needs your own key",
                                       elem_id="judge-url")
                judge_key = gr.Textbox("", type="password", label="API key", elem_id="judge-key",
                                       info=f"used for each request only, never stored; "
                                            f"empty: {key_note}, for the starting base URL only")
                judge_format_box = gr.Dropdown(list(JUDGE_FORMATS), value=judge_format, label="Judge format",
                                               elem_id="judge-format",
                                               info="delimited: belle's own; belle-page: BELLE's page's message")
        with gr.Tabs():
            with gr.Tab("Single question", id="single"):
                with gr.Row(equal_height=True):
                    klass = gr.Dropdown(class_choices(items), value=ALL, label="Class", elem_id="class", scale=1)
                    question = gr.Dropdown(question_choices(items), value=first.id, label="Question",
                                           elem_id="question", scale=3)
                    shuffle_button = gr.Button("Shuffle", elem_id="shuffle", scale=0, min_width=100)
                with gr.Row():
                    shown, reference, *_ = show(first.id)
                    question_box = gr.Textbox(shown, label="Question", lines=4, interactive=False,
                                              elem_id="question-text")
                    reference_box = gr.Textbox(reference, label="Reference answer", lines=4, interactive=False,
                                               elem_id="reference")
                earlier = gr.Textbox("", label=f"{model_name or 'Model'}'s replies to the earlier turns",
                                     lines=4, interactive=False, visible=False, elem_id="earlier")
                answer = gr.Textbox("", label="Answer (to the last turn)", lines=6, elem_id="answer",
                                    placeholder="Paste the model's answer here" + (", or generate one" if backend else ""))
                with gr.Row():
                    if backend is not None:
                        generate_button = gr.Button(f"Generate with {model_name}", elem_id="generate")
                    score_button = gr.Button("Score", variant="primary", elem_id="score")
                verdict = gr.Markdown("", elem_id="verdict")

                klass.change(pick_class, klass, question, api_visibility="private")
                question.change(show, question, [question_box, reference_box, answer, earlier, verdict],
                                api_visibility="private")
                shuffle_button.click(shuffle, [klass, question], question, api_visibility="private")
                if backend is not None:
                    generate_button.click(generate, question, [answer, earlier], api_visibility="private")
                score_button.click(score, [question, answer, judge_model, judge_url, judge_key, judge_format_box],
                                   verdict, api_visibility="private", api_name="page_score")  # "score": the API's
                answer.change(None, None, verdict, js="() => ''")  # a verdict goes stale with its answer

            with gr.Tab("Answers file", id="file"):
                gr.Markdown("An answers file is a JSON-lines eval set with each item's `answer` "
                            "(what `belle eval generate` writes). Each upload is scored into a new run folder.")
                with gr.Row():
                    upload = gr.File(label="Answers file (.jsonl)", file_types=[".jsonl", ".json"],
                                     elem_id="answers-file", scale=3)
                    with gr.Column(scale=1):
                        samples = gr.Number(1, label="Samples per answer", precision=0, minimum=1,
                                            maximum=MAX_SAMPLES, elem_id="samples",
                                            info="the judge is asked this many times; the scores are averaged")
                        score_file_button = gr.Button("Score the file", variant="primary", elem_id="score-file")
                status = gr.Markdown("", elem_id="status")
                report = gr.Markdown("", elem_id="report")
                chart = gr.Image(label="Score per class", type="filepath", interactive=False, elem_id="chart")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
                score_file_button.click(score_upload,
                                        [upload, samples, judge_model, judge_url, judge_key, judge_format_box],
                                        [status, report, chart, downloads], api_visibility="private")
                upload.change(None, None, [status, report, chart, downloads], js="() => ['', '', null, null]")
        gr.api(score_endpoint, api_name="score")
    return app


def serve(app: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7861, share: bool = False,
          max_upload_mb: float = MAX_UPLOAD_MB) -> tuple[str, str | None]:
    """Start serving the page at http://HOST:PORT without blocking; (its local URL, its public
    gradio.live URL with `share`, else None). Uploads above `max_upload_mb` MiB get HTTP 413.

    No folder is handed to Gradio's file route: the page's downloads are copies Gradio keeps in
    its cache, under names derived from a per-process secret, so a visitor can fetch the files
    their own session produced and nothing of the working folder. Gradio's run history is off:
    it would keep every request's inputs, the key field's too."""
    import gradio as gr

    # fonts the browser already has: the default theme's Google Fonts are unreachable on closed networks
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    app.queue(default_concurrency_limit=1)
    _, local_url, share_url = app.launch(server_name=host, server_port=port, share=share, theme=theme, quiet=True,
                                         prevent_thread_lock=True, run_history=False, allowed_paths=[],
                                         max_file_size=upload_limit_bytes(max_upload_mb))
    return local_url, share_url


def upload_limit_bytes(max_upload_mb: float) -> int:
    """`max_upload_mb` MiB in bytes; `UsageError` unless it is above 0."""
    if not (math.isfinite(max_upload_mb) and max_upload_mb > 0):
        raise UsageError(f"--max-upload-mb must be above 0, not {max_upload_mb}")
    return max(1, int(max_upload_mb * 2**20))


def launch(app: gr.Blocks, *, workdir: Path, host: str = "127.0.0.1", port: int = 7861, share: bool = False,
           max_upload_mb: float = MAX_UPLOAD_MB) -> None:
    """Serve the page (see `serve`) until interrupted."""
    local_url, share_url = serve(app, host=host, port=port, share=share, max_upload_mb=max_upload_mb)
    print(f"belle eval webui: {local_url}" + (f" (public link: {share_url})" if share_url else "")
          + f"; run folders go to {workdir}", flush=True)
    app.block_thread()


def webui(
    *,
    judge: LLMOptions,
    eval_set: Path | None = None,
    prompts: Path | None = None,
    judge_format: JudgeFormat = "delimited",
    model: Path | None = None,
    sampling: SamplingOptions = EVAL_SAMPLING,
    engine: EngineOptions = EngineOptions(),
    load: LoadOptions = LoadOptions(),
    workdir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 7861,
    share: bool = False,
    max_upload_mb: float = MAX_UPLOAD_MB,
) -> int:
    """Open the scoring page: judge one question's answer, or a whole answers file, in the browser.

    The judge's model and base URL start as --judge-model and --judge-base-url and can be edited in
    the page, and so can its API key, which the page never stores (left empty, the key comes from the
    variable --judge-api-key-env names, and is sent only to the base URL the page started with).

    Args:
        judge: the judge endpoint.
        eval_set: the eval set to browse; default: the sample set shipped with belle.
        prompts: the judge prompts, one per class; default: belle's own.
        judge_format: the judge's message format the page starts with: delimited (belle's own) or belle-page
            (BELLE's scoring page's message, byte for byte); also a field of the page and of its /score endpoint.
        model: a model folder (full, LoRA adapter or GPTQ) to answer questions with a Generate button.
        workdir: folder for the run folders of scored answers files; default: a new temporary folder.
        host: address the page binds; 0.0.0.0 exposes it to the network.
        port: port the page binds.
        share: also open a public gradio.live link (off unless asked).
        max_upload_mb: the largest answers file the page accepts, in MiB; a larger upload gets HTTP 413.
    """
    upload_limit_bytes(max_upload_mb)
    eval_set = eval_set or default_eval_set_path()
    prompts = prompts or default_judge_prompts_path()
    items = read_eval_set(eval_set)
    judge_prompts = read_judge_prompts(prompts)
    missing = missing_prompts(items, judge_prompts)
    if missing:
        logger.warning("no judge prompt for class(es) %s: their answers cannot be scored", ", ".join(missing))
    params = sampling.params()
    backend = None
    if model is not None:
        from belle.chat.backends import LocalBackend
        from belle.chat.engines import load_engines

        backend = LocalBackend(load_engines([str(model)], **dataclasses.asdict(engine), **dataclasses.asdict(load)))
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="belle-eval-webui-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = (f"Eval set `{eval_set}` ({len(items)} questions) · judge prompts `{prompts}`"
              + (f" · model `{model}`" if model else ""))
    app = build_app(items, judge_prompts, judge, workdir=workdir, backend=backend, params=params,
                    prompts_sha1=file_sha1(prompts), source=source, judge_format=judge_format)
    launch(app, workdir=workdir, host=host, port=port, share=share, max_upload_mb=max_upload_mb)
    return 0
