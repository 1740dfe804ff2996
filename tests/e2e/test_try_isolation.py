"""What `try` gives a unit on trial: a network of its own, and no log left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portable_service.harness import nspawn, roots
from tests.e2e.conftest import RELEASES

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("suite", RELEASES)
def test_private_network_and_no_log_left(release_roots: dict[str, Path], suite: str) -> None:
    release = roots.RELEASES[suite]
    with nspawn.booted(release, release_roots[suite], private_network=True) as c:
        log = c.log
        assert os.readlink(f"/proc/{c.init_pid}/ns/net") != os.readlink("/proc/self/ns/net")
        links = c.run("cat", "/proc/net/dev").stdout
        names = {line.split(":")[0].strip() for line in links.splitlines() if ":" in line}
        assert names == {"lo"}, links
        assert log.exists()
    assert not log.exists(), "the console log outlived a good run"


@pytest.mark.parametrize("suite", RELEASES[:1])
def test_host_network_when_asked(release_roots: dict[str, Path], suite: str) -> None:
    release = roots.RELEASES[suite]
    with nspawn.booted(release, release_roots[suite]) as c:
        assert os.readlink(f"/proc/{c.init_pid}/ns/net") == os.readlink("/proc/self/ns/net")


CHILD = """
import sys
from pathlib import Path
from portable_service.harness import nspawn, roots
release = roots.RELEASES[sys.argv[1]]
with nspawn.booted(release, Path(sys.argv[2])) as c:
    print(c.name, c.nspawn.pid, c.init_pid, flush=True)
    import time
    time.sleep(600)
"""


def test_a_killed_run_takes_its_container_along(release_roots: dict[str, Path]) -> None:
    """SIGKILL of the process running a container: nspawn and the container die with it,
    and the next run removes the cgroups it left."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    suite = RELEASES[0]
    child = subprocess.Popen([sys.executable, "-c", CHILD, suite, str(release_roots[suite])],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert child.stdout is not None
    name, nspawn_pid, init_pid = child.stdout.readline().split()
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(
            Path(f"/proc/{p}").exists() for p in (nspawn_pid, init_pid)):
        time.sleep(0.1)
    assert not Path(f"/proc/{nspawn_pid}").exists(), "nspawn outlived its parent"
    assert not Path(f"/proc/{init_pid}").exists(), "the container outlived its parent"
    left = [d for d in nspawn._cgroup_dirs(name) if d.exists()]
    removed = nspawn.remove_stale()
    assert all(d in removed for d in left)
    assert not any(d.exists() for d in nspawn._cgroup_dirs(name))

