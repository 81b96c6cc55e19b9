"""What every benchmark reports: where it ran (CPU, cores, GPU, library versions) and its verdict."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_info() -> dict[str, Any]:
    import datasets
    import tokenizers
    import torch
    import transformers

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "datasets": datasets.__version__,
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "(unset)"),
    }


def finish(results: dict[str, Any], passed: bool, json_path: str | None) -> int:
    """Print the verdict, write `results` as JSON if asked; the exit code is 0 only if every goal passed."""
    results["passed"] = passed
    print(f"\noverall: {'PASS' if passed else 'FAIL'}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
        print(f"results written to {json_path}")
    return 0 if passed else 1


def start_stub(latency: float, reply: str) -> tuple[subprocess.Popen, str]:
    """The scripted OpenAI-compatible server (`belle.testing.openai_stub`) in a subprocess, so its
    threads never compete with the client for the benchmark's GIL; returns it and its URL."""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "belle.testing.openai_stub", "--latency", str(latency), "--reply", reply],
                            stdout=subprocess.PIPE, text=True, cwd=str(repo))
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"the stub server did not start (printed {url!r}, exit status {proc.poll()})")
    return proc, url


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    return "\n".join([*lines, *(fmt.format(*r) for r in rows)])
