"""The docs site stays true: it builds in strict mode, every ```bash block of a page runs as written
(the walkthrough and one guide per job, on the tiny default), every `belle` command shown in any
block parses, the reference pages match the code, and the data format examples read as their format."""

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from belle.cli import JOBS, job_parsers
from belle.conversation import FORMATS, detect_format, read_conversations
from belle.data.dialogue import read_chat_seeds
from belle.data.selfinstruct import read_seed_tasks
from belle.eval.answers import read_answers
from belle.eval.evalset import read_eval_set
from belle.eval.judging import read_judge_prompts
from belle.train import cli as train_cli
from belle.train.preference import load_kto_examples, load_preference_pairs
from belle.train.prompts import load_prompts
from tests.conftest import REPO
from tests.helpers import free_port

DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
# Pages whose ```bash blocks run, and files each must leave under $RUNS.
RUNNABLE = {
    "walkthrough.md": ["sft/model.safetensors", "lora/adapter_model.safetensors", "eval/compare/report.md",
                       "sft-gptq4/quantize.json", "sft-gptq4/eval.md"],
    "guides/data.md": ["data/train.jsonl.rejected.txt", "data/train.jsonl.stats.json", "data/packed.jsonl.stats.json",
                       "generated/selfinstruct.jsonl.summary.md", "generated/dialogues.jsonl", "clean/train.jsonl"],
    "guides/train.md": ["sft/checkpoint-15/COMPLETE", "sft/loss.png", "lora-merged/model.safetensors",
                        "tiny-600-zh/vocab_report.json", "zh-pt/adapter_model.safetensors", "dpo/adapter_model.safetensors",
                        "rm/model.safetensors", "grpo/adapter_model.safetensors", "grpo/loss.png", "kto/adapter_model.safetensors"],
    "guides/eval.md": ["eval/sft/judgments.jsonl", "eval/sft/run.json", "eval/sft/report.png", "eval/tiny/report.json",
                       "eval/compare/report.md", "eval/pairwise/pairwise.md"],
    "guides/gptq.md": ["sft-gptq4/quantize_config.json", "sft-gptq4/eval.md", "sft-rtn4/quantize.json", "sft-rtn4/eval.md",
                       "sft-q4_0.gguf", "sft-q4_k_m.gguf"],
    "guides/chat.md": ["lora/adapter_model.safetensors", "answers.jsonl"],
}
BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::(\w+))?"$', re.M)
SHELLS = ("bash", "sh", "console")
IMAGE_REPO = Path("/opt/belle")  # where docker/Dockerfile.* copy the repository


def page_text(page: Path) -> str:
    """The page as the site shows it: each `--8<-- "FILE[:SECTION]"` line replaced by what it includes."""

    def include(match: re.Match) -> str:
        text = (REPO / match[1]).read_text(encoding="utf-8")
        if match[2]:
            text = text.split(f"[start:{match[2]}] -->", 1)[1].split(f"<!-- --8<-- [end:{match[2]}]", 1)[0]
        return text

    return SNIPPET.sub(include, page.read_text(encoding="utf-8"))


def code_blocks(page: Path, languages: tuple[str, ...]) -> list[str]:
    return [body for language, body in BLOCK.findall(page_text(page)) if language in languages]


def page_script(page: Path) -> str:
    """The page's ```bash blocks, in order, as one script."""
    return "\n".join(code_blocks(page, ("bash",)))


def belle_commands(script: str) -> list[list[str]]:
    """The arguments of every `belle ...`, `python -m belle.JOB ...` and `torchrun ... -m belle.JOB ...` in
    `script`, as `[JOB, ARG, ...]`, with shell variables replaced by a number (it parses as a path too)."""
    script = re.sub(r"\\\n", " ", script)
    script = re.sub(r"\$\{[^}]*\}|\$\([^)]*\)|\$\w+", "8000", script)
    modules = {module.removesuffix(".cli"): job for job, module in JOBS.items()}
    commands = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        try:
            tokens = list(lexer)
        except ValueError:  # not shell: a line of a here-document, such as Python with an apostrophe
            assert "belle " not in line, f"cannot split {line!r}"
            continue
        segment: list[str] = []
        for token in tokens + [";"]:
            if token.strip("|&;<>()"):
                segment.append(token)
                continue
            while segment and re.match(r"^\w+=", segment[0]):
                segment.pop(0)
            if segment and (segment[0] == "belle" or segment[0].endswith("/belle")):
                commands.append(segment[1:])
            elif "-m" in segment[:-1] and segment[segment.index("-m") + 1] in modules:
                at = segment.index("-m")
                commands.append([modules[segment[at + 1]], *segment[at + 2:]])
            segment = []
    return commands


def load_module(path: Path) -> ModuleType:
    """Import a script that is not in a package (the docs hook, the reference generator)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_command(parsers: dict, words: list[str]) -> None:
    """Parse `belle JOB [VERB] ARGS` as the CLI would, without running it; `belle train` loads its config."""
    job, *rest = words
    if rest and f"belle {job} {rest[0]}" in parsers:
        parsers[f"belle {job} {rest[0]}"].parse_args(rest[1:])
        return
    if job != "train":
        parsers[f"belle {job}"].parse_args(rest)
        return
    args = train_cli.parse_args(rest)
    config = args.config
    if config and config.is_relative_to(IMAGE_REPO):
        config = config.relative_to(IMAGE_REPO)
    train_cli.load_train_config(REPO / config if config else None, args.overrides)


# ---- the site -----------------------------------------------------------------------------------

def build_site(root: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2, printed on every build
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path):
    done = build_site(REPO, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-5000:]
    for page in ("index.html", "getting-started/index.html", "reference/config/index.html", "findings/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    benchmarks = (tmp_path / "site" / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "--8&lt;--" not in benchmarks and "tokens/s" in benchmarks  # the snippets were included


@pytest.mark.slow
def test_a_broken_link_fails_the_build(tmp_path):
    """In a copy of the repository (docs copied, the rest linked), one bad link stops the build."""
    root = tmp_path / "repo"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in ("docs", ".venv", ".git", "site", "runs"):
            (root / entry.name).symlink_to(entry)
    shutil.copytree(DOCS, root / "docs")
    assert build_site(root, tmp_path / "ok").returncode == 0
    start = root / "docs" / "getting-started.md"
    for bad, named in (("[gone](no-such-page.md)", "no-such-page.md"), ("[gone](../train/no_such.yaml)", "no_such.yaml")):
        start.write_text(start.read_text(encoding="utf-8") + f"\n\nSee {bad}.\n", encoding="utf-8")
        done = build_site(root, tmp_path / "bad")
        assert done.returncode != 0 and named in done.stderr, done.stderr[-3000:]
        shutil.copy(DOCS / "getting-started.md", start)


def test_links_to_repository_files_become_their_paths():
    on_page_markdown = load_module(DOCS / "hooks.py").on_page_markdown
    page = SimpleNamespace(file=SimpleNamespace(abs_src_path=str(DOCS / "guides" / "train.md"), src_uri="guides/train.md"))
    markdown = ("[train/README.md](../../train/README.md), [the configs](../../train/configs/), [eval](eval.md), "
                "[site](https://example.com/x.md), `[code](../../x.md)`")
    assert on_page_markdown(markdown, page, {"docs_dir": str(DOCS)}, None) == (
        "`train/README.md`, the configs (`train/configs/`), [eval](eval.md), [site](https://example.com/x.md), "
        "`[code](../../x.md)`")


# ---- pages run and parse as written -------------------------------------------------------------

def test_every_runnable_page_is_listed():
    """A page with ```bash blocks is one the tests run; a command that cannot run here goes in ```sh."""
    with_bash = {page.relative_to(DOCS).as_posix() for page in PAGES if page_script(page).strip()}
    assert with_bash == set(RUNNABLE)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_the_page_runs_as_written(name, tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "RUNS": str(runs), "JUDGE_PORT": str(free_port()), "SERVE_PORT": str(free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONIOENCODING": "utf-8"}
    script = "set -euo pipefail\n" + page_script(DOCS / name)
    done = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    for output in RUNNABLE[name]:
        assert (runs / output).exists(), output


def test_the_command_extractor_finds_every_form():
    script = ('HF_HUB_OFFLINE=1 belle data stats "$RUNS/a.jsonl"  # a comment\n'
              "printf 'hi\\n' | belle chat --cli --model x\n"
              "torchrun --nproc_per_node 2 -m belle.train --config c.yaml \\\n    lora.r=8\n"
              "python -m belle.chat.serve --model m & python -m belle.testing.openai_stub --port 1\n"
              "print(\"it's python in a here-document\")\n")
    assert belle_commands(script) == [["data", "stats", "8000/a.jsonl"], ["chat", "--cli", "--model", "x"],
                                      ["train", "--config", "c.yaml", "lora.r=8"], ["serve", "--model", "m"]]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(DOCS).as_posix())
def test_every_shown_command_parses(page):
    parsers = job_parsers()
    for words in belle_commands("\n".join(code_blocks(page, SHELLS))):
        try:
            parse_command(parsers, words)
        except SystemExit as e:
            assert e.code == 0, f"{page.name}: belle {' '.join(words)}"


def test_a_wrong_flag_or_key_is_caught():
    parsers = job_parsers()
    with pytest.raises(SystemExit):
        parse_command(parsers, ["data", "convert", "--inputs", "a.jsonl", "--output", "b.jsonl"])
    with pytest.raises(Exception, match="lora.rank"):
        parse_command(parsers, ["train", "--config", "train/configs/quickstart.yaml", "lora.rank=8"])


# ---- generated and checked content --------------------------------------------------------------

def test_the_reference_pages_match_the_code():
    for path, text in load_module(REPO / "scripts" / "docs_reference.py").pages().items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run python scripts/docs_reference.py"


def read_example(kind: str, path: Path) -> list:
    """Read an example file with the function the job reading that kind of file uses."""
    if kind in FORMATS:
        return list(read_conversations([str(path)], format=kind, policy="strict"))
    if kind in ("dpo", "rm"):
        return list(load_preference_pairs([str(path)], policy="strict")[0])
    if kind == "kto":
        return list(load_kto_examples([str(path)], policy="strict")[0])
    if kind == "rl_prompt":
        return list(load_prompts([str(path)], policy="strict")[0])
    readers = {"seed": read_seed_tasks, "chat_seed": read_chat_seeds, "eval": read_eval_set,
               "judge_prompt": read_judge_prompts, "answers": read_answers}
    return list(readers[kind](path))


def test_the_format_examples_read_as_their_format(tmp_path):
    """Each ```json title="KIND" example in formats.md is one record, detected as KIND when it is a
    conversation format, and read without complaint by the reader of its kind of file (a preference
    pair or RL prompt into a prompt that ends with a user turn)."""
    examples = re.findall(r'^```json title="(\w+)"\n(.*?)^```', page_text(DOCS / "formats.md"), re.S | re.M)
    assert {kind for kind, _ in examples} == {*FORMATS, "dpo", "rm", "kto", "rl_prompt", "seed", "chat_seed", "eval",
                                               "judge_prompt", "answers"}
    for kind, body in examples:
        record = json.loads(body)
        if kind in FORMATS:
            assert detect_format(record) == kind
        path = tmp_path / f"{kind}.jsonl"
        path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
        rows = read_example(kind, path)
        assert len(rows) == 1, kind
        if kind == "rm":
            assert "prompt" not in record  # BELLE's RM pairs: the prompt is what chosen and rejected share
        if kind in ("dpo", "rm", "kto", "rl_prompt"):
            assert rows[0]["prompt"][-1]["role"] == "user", kind
