"""Fixtures of the gptq tests: GPTQModel on at most 2 CPU threads (the trained tiny model is in tests/conftest.py)."""

import os

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
