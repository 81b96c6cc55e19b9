#!/usr/bin/env python
"""Judge scoring speed: `belle eval`'s score step on 1,000 answers against a judge of fixed latency.

Method: an answers file of N items is made from belle's sample eval set (its questions repeated
with numbered answers, so every judge request differs; classes as in the set). The scripted
OpenAI-compatible stub (`python -m belle.testing.openai_stub --latency L`) runs in a subprocess and
answers every request after exactly L seconds with a reply ending in `得分: 0.8`. Then
`belle.eval.scoring.score_answers` (what `belle eval score` runs: judge prompts, the shared client
at concurrency C, parsing, appending judgments.jsonl, the progress bar off) scores the file three
times, timed from the call to its return:

    fresh:        a new run folder and a new cache file: N judge calls;
    cached:       another new run folder on the same cache: every reply from the cache, no call;
    finished:     the fresh run's folder again: nothing left to judge, no call;
    cached, CLI:  `python -m belle eval score` into another new folder on the same cache, timed
                  as a user waits for it: start-up and imports included.

The lower bound of the fresh run is N * L / C seconds. Goal (issue 6): fresh <= 1.2 x N * L / C
(with the defaults N = 1,000, L = 0.3 s, C = 32: 11.25 s against a bound of 9.375 s); the cached
re-run under 5 s with no call. Every run's judgments are checked: N lines, every score 0.8.

Usage:
    python benchmarks/bench_eval.py                      # the issue's goal, about 20 s
    python benchmarks/bench_eval.py --items 3000 --latency 0.1 --concurrency 64 --json bench_eval.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_common import finish, machine_info, markdown_table, process_cpu_seconds, start_stub  # noqa: E402

from belle.eval.answers import read_answers  # noqa: E402
from belle.eval.evalset import default_eval_set_path, read_eval_set  # noqa: E402
from belle.eval.judging import default_judge_prompts_path, read_judge_prompts  # noqa: E402
from belle.eval.report import read_judgments  # noqa: E402
from belle.eval.scoring import score_answers  # noqa: E402
from belle.llm import LLMOptions  # noqa: E402

SLACK = 1.2
CACHED_GOAL = 5.0  # seconds
REPLY = "回答切题，内容基本准确，表达清楚。\n得分: 0.8"
KEY_ENV = "BELLE_BENCH_EVAL_KEY"  # unset: the stub is on 127.0.0.1, so the client sends no key


def write_answers(path: Path, n: int) -> None:
    items = read_eval_set(default_eval_set_path())
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            item = items[i % len(items)]
            record = {"id": f"{item.id}-{i}", "class": item.klass,
                      "question": item.turns[0] if len(item.turns) == 1 else list(item.turns),
                      "std_answer": item.std_answer, "answer": f"第{i}个回答：这是模型给出的答案。", "model": "bench"}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def score_once(answers: Any, prompts: dict[str, str], options: LLMOptions, run_dir: Path, n: int) -> dict[str, Any]:
    cpu, start = time.process_time(), time.perf_counter()
    result = score_answers(answers, prompts, options, run_dir, show_progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    judgments = read_judgments(run_dir / "judgments.jsonl")
    return {"wall_seconds": wall, "client_cpu_seconds": cpu, "judged": result.judged, "skipped": result.skipped,
            "failed": len(result.failed), "calls": result.usage.calls if result.usage else 0,
            "correct": len(judgments) == n and all(r["score"] == 0.8 for r in judgments)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000, help="answers to score")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds the judge waits before each answer")
    parser.add_argument("--concurrency", type=int, default=32, help="judge requests in flight")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.items < 1 or args.latency < 0 or args.concurrency < 1:
        parser.error("--items and --concurrency must be at least 1, --latency 0 or more")

    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores; python {info['python']}; load average {os.getloadavg()[0]:.2f}")
    bound = args.items * args.latency / args.concurrency
    goal = SLACK * bound
    print(f"{args.items:,} answers, judge latency {args.latency:g} s, concurrency {args.concurrency}: "
          f"lower bound {bound:.2f} s, goal <= {goal:.2f} s; cached re-run goal < {CACHED_GOAL:g} s")
    prompts = read_judge_prompts(default_judge_prompts_path())
    results: dict[str, Any] = {"machine": info, "args": vars(args), "lower_bound_seconds": bound,
                               "goal_seconds": goal, "cached_goal_seconds": CACHED_GOAL, "runs": {}}
    proc, url = start_stub(args.latency, REPLY)
    try:
        with tempfile.TemporaryDirectory(prefix="belle-bench-eval-") as tmp:
            answers_path = Path(tmp) / "answers.jsonl"
            write_answers(answers_path, args.items)
            answers = read_answers(answers_path)
            options = LLMOptions(model="stub-model", base_url=url, api_key_env=KEY_ENV, concurrency=args.concurrency,
                                 cache=f"{tmp}/llm.sqlite")
            for name, run_dir in (("fresh", "run"), ("cached", "run-cached"), ("finished", "run")):
                server_cpu = process_cpu_seconds(proc.pid)
                run = score_once(answers, prompts, options, Path(tmp) / run_dir, args.items)
                run["server_cpu_seconds"] = process_cpu_seconds(proc.pid) - server_cpu
                results["runs"][name] = run
                print(f"  {name}: {run['wall_seconds']:.2f} s, {run['calls']} calls", flush=True)
            children, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "belle", "eval", "score", "--answers", str(answers_path),
                                   "--output", f"{tmp}/run-cli", "--judge-model", "stub-model", "--judge-base-url", url,
                                   "--judge-api-key-env", KEY_ENV, "--judge-cache", f"{tmp}/llm.sqlite"],
                                  cwd=REPO, capture_output=True, text=True)
            wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
            judgments = read_judgments(Path(tmp) / "run-cli" / "judgments.jsonl") if done.returncode == 0 else []
            results["runs"]["cached, CLI"] = {
                "wall_seconds": wall, "client_cpu_seconds": after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, "server_cpu_seconds": 0.0,
                "judged": len(judgments), "skipped": 0, "failed": 0 if done.returncode == 0 else 1,
                "calls": 0 if ", 0 calls," in done.stdout else -1,
                "correct": len(judgments) == args.items and all(r["score"] == 0.8 for r in judgments)}
            print(f"  cached, CLI: {wall:.2f} s (exit status {done.returncode})", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)

    rows, ok = [], True
    for name, run in results["runs"].items():
        if name == "fresh":
            passed, target = run["wall_seconds"] <= goal and run["calls"] == args.items, f"<= {goal:.2f} s"
        else:
            passed, target = run["wall_seconds"] < CACHED_GOAL and run["calls"] == 0, f"< {CACHED_GOAL:g} s, 0 calls"
        passed &= run["correct"] and run["failed"] == 0
        ok &= passed
        rows.append((name, f"{run['wall_seconds']:.2f}", f"{args.items / run['wall_seconds']:,.0f}",
                     f"{run['wall_seconds'] / bound:.3f}x" if name == "fresh" else "-", f"{run['calls']:,}",
                     f"{run['judged']:,} / {run['skipped']:,}", "yes" if run["correct"] else "NO",
                     f"{run['client_cpu_seconds']:.1f} / {run['server_cpu_seconds']:.1f}", target,
                     "PASS" if passed else "FAIL"))
    print("\n" + markdown_table(("run", "wall s", "items/s", "vs bound", "judge calls", "judged / skipped",
                                 "judgments right", "CPU s client / server", "goal", "result"), rows))
    return finish(results, ok, args.json)


if __name__ == "__main__":
    sys.exit(main())
