"""The distributed environment a run needs when no launcher set one up.

`torchrun`, `accelerate launch` and the `deepspeed` launcher export RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT to every process. A plain `belle train` has none of them, and DeepSpeed,
finding no launcher's variables, falls back to discovering the world through MPI (and needs mpi4py).
A run of one process with a DeepSpeed config therefore gets the one-process world a launcher would
have given it.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import MutableMapping

from belle.cli import UsageError

logger = logging.getLogger(__name__)

LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def world_size(env: MutableMapping[str, str] = os.environ) -> int:
    """Processes of this run, as torchrun, accelerate and the deepspeed launcher announce them (1
    without a launcher)."""
    try:
        return max(int(env.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ensure_single_process_world(deepspeed: str | None, env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """With a DeepSpeed config and no launcher, set the one-process world of rank 0 in `env`.

    MASTER_ADDR and MASTER_PORT already set (e.g. a port the user chose) are kept. A launcher's
    environment that lacks some of its variables is a `UsageError`: DeepSpeed would fall back to MPI.
    Returns the variables set, empty when nothing was needed.
    """
    if not deepspeed:
        return {}
    launched = [k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if k in env]
    if launched:
        missing = [k for k in LAUNCHER_VARIABLES if k not in env]
        if missing:
            raise UsageError(
                f"training.deepspeed: {', '.join(launched)} set but {', '.join(missing)} not, so DeepSpeed cannot join the "
                f"processes; start the run with torchrun, deepspeed or accelerate launch, or unset {', '.join(launched)} "
                f"to train on one process"
            )
        return {}
    added = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    added |= {"MASTER_ADDR": "127.0.0.1"} if "MASTER_ADDR" not in env else {}
    if "MASTER_PORT" not in env:
        added["MASTER_PORT"] = str(free_port(added.get("MASTER_ADDR", env.get("MASTER_ADDR", "127.0.0.1"))))
    env.update(added)
    logger.info("training.deepspeed on one process without a launcher: DeepSpeed runs as a world of one (%s); "
                "use torchrun --nproc_per_node N for more processes",
                " ".join(f"{k}={env[k]}" for k in LAUNCHER_VARIABLES))
    return added
