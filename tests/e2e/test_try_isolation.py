"""What `try` gives a unit on trial: a network of its own, and no log left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2e.conftest import RELEASES
from portable_service.harness import nspawn, roots

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
