"""docs/walkthrough.md runs as written: its bash block, the whole loop from data to serving on the
tiny default, with the scripted judge on 127.0.0.1, so the walkthrough cannot rot."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.chat.conftest import free_port
from tests.conftest import REPO

WALKTHROUGH = REPO / "docs" / "walkthrough.md"


def bash_block(page: Path) -> str:
    (block,) = re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    return block


def test_the_walkthrough_runs_as_written(tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "RUNS": str(runs), "JUDGE_PORT": str(free_port()), "SERVE_PORT": str(free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run(["bash", "-c", bash_block(WALKTHROUGH)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert (runs / "sft" / "model.safetensors").is_file() and (runs / "lora" / "adapter_model.safetensors").is_file()
    assert (runs / "eval" / "compare" / "report.md").is_file()
    assert (runs / "sft-gptq4" / "quantize.json").is_file() and (runs / "sft-gptq4" / "eval.md").is_file()
    assert '"chat.completion"' in done.stdout
