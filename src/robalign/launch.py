"""`accelerate launch --cpu --num_processes N robalign train …` really runs N processes.

accelerate 1.x sends `--cpu` to its simple launcher, which starts ONE process (with MASTER_ADDR and
MASTER_PORT set) unless an MPI hostfile is configured; the N is dropped on the floor. A user who asked
for N CPU processes would silently get one. When robalign finds itself in exactly that situation it
reads N from the accelerate command line of its parent process and starts the N workers itself through
torch's elastic launcher (what torchrun uses), with the same arguments; every worker then sees the
usual RANK / WORLD_SIZE environment and the run is an ordinary gloo data-parallel run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from robalign.errors import UserError

# Set by a real multi-process launcher (torchrun / accelerate's GPU launchers, mpirun): nothing to do.
_WORKER_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _flag(tokens: list[str], name: str) -> str | None:
    """The value of `--name V` / `--name=V` in an argv, None when absent."""
    for k, tok in enumerate(tokens):
        if tok == name and k + 1 < len(tokens):
            return tokens[k + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def requested_processes(env: dict, parent_argv: list[str]) -> int:
    """How many processes `accelerate launch --cpu` was asked for when it started just this one (else 1)."""
    cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if not cpu or "MASTER_PORT" not in env or any(v in env for v in _WORKER_VARS):
        return 1
    if not any("accelerate" in Path(t).name for t in parent_argv[:3]):
        return 1
    raw = _flag(parent_argv, "--num_processes")
    machines = _flag(parent_argv, "--num_machines")
    try:
        n = int(raw) if raw is not None else 1
        m = int(machines) if machines is not None else 1
    except ValueError:
        return 1
    if m > 1 and n > 1:
        raise UserError("accelerate launch --cpu over several machines needs MPI (--mpirun_hostfile); robalign "
                        "can start several CPU processes on one machine only. On each node run: torchrun "
                        "--nnodes M --node_rank R --nproc_per_node N --rdzv_endpoint HOST:PORT -m robalign.cli …")
    return max(n, 1)


def _parent_argv() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [t.decode(errors="replace") for t in raw.split(b"\0") if t]


def run_workers(n: int, argv: list[str]) -> int:
    """Runs `python -m robalign.cli *argv` as n local workers (torch elastic, static rendezvous)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), os.environ["MASTER_PORT"]
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id="robalign", rdzv_backend="static",
                          rdzv_endpoint=f"{addr}:{port}", rdzv_configs={"rank": 0}, max_restarts=0)
    print(f"robalign: accelerate's --cpu launcher started one process; starting the {n} requested workers",
          file=sys.stderr)
    try:
        elastic_launch(config, sys.executable)("-m", "robalign.cli", *argv)
    except ChildFailedError as err:
        codes = [f.exitcode for f in err.failures.values()]
        return next((c for c in codes if c not in (0, None)), 1)
    return 0


def relaunch_if_needed(argv: list[str]) -> int | None:
    """Exit code of the n workers when this process should fan out (see the module docstring), else None."""
    n = requested_processes(dict(os.environ), _parent_argv())
    return run_workers(n, argv) if n > 1 else None
