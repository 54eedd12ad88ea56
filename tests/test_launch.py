"""When `accelerate launch --cpu --num_processes N` started one process, robalign knows N (else 1)."""

import pytest

from robalign.errors import UserError
from robalign.launch import requested_processes

ACC_ENV = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
PARENT = ["/venv/bin/python3", "/venv/bin/accelerate", "launch", "--num_processes", "3", "--cpu", "-m",
          "robalign.cli", "train"]


def test_accelerate_cpu_launcher_with_n_processes_is_detected():
    assert requested_processes(ACC_ENV, PARENT) == 3
    eq = [*PARENT[:3], "--num_processes=4", *PARENT[5:]]
    assert requested_processes(ACC_ENV, eq) == 4


@pytest.mark.parametrize("env,parent", [
    ({**ACC_ENV, "WORLD_SIZE": "2", "RANK": "0"}, PARENT),  # already a worker of a real launcher
    ({k: v for k, v in ACC_ENV.items() if k != "MASTER_PORT"}, PARENT),  # accelerate said: one process
    ({**ACC_ENV, "ACCELERATE_USE_CPU": "False"}, PARENT),  # not the --cpu launcher
    (ACC_ENV, ["/usr/bin/bash", "-c", "robalign train"]),  # not started by accelerate
    (ACC_ENV, [*PARENT[:3], "--cpu", "-m", "robalign.cli"]),  # no --num_processes
    ({}, []),
])
def test_everything_else_is_one_process(env, parent):
    assert requested_processes(env, parent) == 1


def test_several_cpu_machines_are_refused_with_what_to_do():
    with pytest.raises(UserError, match="torchrun"):
        requested_processes(ACC_ENV, [*PARENT, "--num_machines", "2"])
