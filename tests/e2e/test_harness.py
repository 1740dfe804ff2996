"""The harness leaves nothing behind: processes, cgroups, loop devices, also on errors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from portable_service.harness import nspawn, roots
from tests.e2e.conftest import LOG_DIR, RELEASES, require_e2e
from tests.e2e.lib import build_image, unit

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text(
    ).split(")")[-1].split()[0]


def _assert_gone(seen: dict) -> None:
    assert not _alive(seen["init"]), "the container's systemd survived"
    assert not _alive(seen["nspawn"]), "systemd-nspawn survived"
    for d in seen["cgroups"]:
        assert not d.exists(), f"cgroup {d} was left behind"
    assert nspawn.loops_in_use(seen["copied"]) == []


@pytest.mark.parametrize("suite", RELEASES)
@pytest.mark.parametrize("how", ["normal", "exception", "sigint"])
def test_teardown_always_cleans_up(suite, how, psdemo, tmp_path):
    require_e2e()
    release = roots.RELEASES[suite]
    image = build_image(tmp_path, {
        "pname": "td", "version": "1",
        "units": [unit("td.service", "[Service]\nExecStart=/usr/bin/psdemo serve 18141 td\n")],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}]})
    seen: dict = {}

    def body() -> None:
        with nspawn.booted(release, roots.ensure_root(release), log_dir=LOG_DIR) as c:
            seen.update(init=c.init_pid, nspawn=c.nspawn.pid, copied=c.copied,
                        cgroups=nspawn._cgroup_dirs(c.name))
            assert c.attach(image).ok
            assert c.start("td.service").ok  # a running service with the image mounted
            assert nspawn.cgroup_pids(seen["cgroups"])
            if how == "exception":
                raise RuntimeError("a test failed half-way")
            if how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in a terminal

    if how == "normal":
        body()
    elif how == "exception":
        with pytest.raises(RuntimeError):
            body()
    else:
        with pytest.raises(KeyboardInterrupt):
            body()
    _assert_gone(seen)


def test_cached_root_is_not_written(psdemo, tmp_path):
    """--volatile=overlay: what happens inside stays inside."""
    require_e2e()
    release = roots.RELEASES[roots.DEFAULT_RELEASE]
    root = roots.ensure_root(release)
    marker = "/var/lib/portable-service-harness-marker"
    with nspawn.booted(release, root, log_dir=LOG_DIR) as c:
        c.run("touch", marker, check=True)
        assert (c.root / marker.lstrip("/")).exists()
    assert not (root / marker.lstrip("/")).exists()
    assert roots.is_ready(release)
