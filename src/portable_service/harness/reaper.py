"""Tear down a container whose owner died without tearing it down (SIGKILL, OOM).

``python -m portable_service.harness.reaper PID CGROUP...`` waits for process PID to end,
then kills every process left in the cgroups and removes them. :func:`nspawn.booted` starts
one beside each container and stops it after an orderly teardown; nspawn itself dies with
its owner (PR_SET_PDEATHSIG), but the container's processes would live on.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from portable_service.harness.nspawn import kill_cgroups, remove_cgroups
from portable_service.run import pid_alive


def reap(owner: int, dirs: list[Path], poll: float = 0.5) -> None:
    while pid_alive(owner):
        time.sleep(poll)
    kill_cgroups(dirs)
    remove_cgroups(dirs)


if __name__ == "__main__":
    reap(int(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
