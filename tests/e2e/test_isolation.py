"""What a `try` container may open: its own loop devices, no one else's, no host disk.

The host binds a loop device to a file holding a secret (before the boot, and again
after it); neither the container's root (``Container.run``) nor a unit under the
"trusted" profile (which binds the container's /run, and with it the devtmpfs at
/run/harness-dev) can open it, nor a host disk; the image's own loop device works.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portable_service.harness import devices, nspawn, roots
from portable_service.run import run
from tests.conftest import REPO, require, require_tool
from tests.e2e.conftest import LOG_DIR, RELEASES, require_e2e
from tests.e2e.lib import attached, build_image, port_closed, tcp_get, unit
from tests.e2e.test_ddi import DDI_RELEASES, PORT, build_ddi, settings

pytestmark = pytest.mark.e2e
SECRET = "TOPSECRET-on-a-host-loop-device"
REFUSED = "Operation not permitted"


@contextlib.contextmanager
def host_loop(path: Path, *, partitions: bool = False) -> Iterator[str]:
    """``losetup --find --show -r``: a loop device the host bound (to a file holding a
    secret, or with ``partitions`` to a disk image, scanning its partition table)."""
    require_tool("losetup")
    if not partitions:
        path.write_text((SECRET + "\n") * 1000)
    dev = run(["losetup", "--find", "--show", "-r", *["-P"] * partitions, str(path)]
              ).stdout.decode().strip()
    try:
        yield dev
    finally:
        run(["losetup", "-d", dev], check=False)


def host_disk() -> str:
    """A disk of the host (no loop device) that the host itself can open (a sandbox's own
    device policy may refuse it some: then the container's refusal would prove nothing)."""
    for p in sorted(Path("/sys/block").iterdir()):
        if p.name.startswith("loop"):
            continue
        with contextlib.suppress(OSError), open(f"/dev/{p.name}", "rb"):
            return p.name
    require(False, "the host has no disk it can read but loop devices")
    raise AssertionError("unreachable")


def _partition(dev: str) -> str:
    """The first partition of a host loop device (``loopNp1``). This kernel makes none for
    our small DDIs when it scans (``losetup -P``), so they are added as systemd adds them
    itself, with BLKPG (``partx -a``)."""
    require_tool("partx")
    name = Path(dev).name
    if not sorted(Path("/sys/block", name).glob(f"{name}p*")):
        run(["partx", "-a", dev])
    return sorted(Path("/sys/block", name).glob(f"{name}p*"))[0].name


def _numbers(disk: str) -> str:
    return Path(f"/sys/block/{disk}/dev").read_text().strip()


def require_policy() -> None:
    require_e2e()
    require(devices.available(), "no cgroup v1 devices controller on this host")


def probe_image(tmp_path: Path, psdemo: Path, name: str, nodes: list[str]) -> Path:
    return build_image(tmp_path / name, {
        "pname": name, "version": "1",
        "units": [unit(f"{name}.service",
                       "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                       f"ExecStart=/usr/bin/psdemo probe {' '.join(nodes)}\n")],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}]})


@pytest.mark.parametrize("suite", RELEASES)
def test_host_loop_devices_and_disks_are_refused(release_roots, psdemo, tmp_path, suite):
    require_policy()
    release = roots.RELEASES[suite]
    disk = host_disk()
    ddi = build_ddi(tmp_path / "ddi", settings(psdemo, "mksquashfs", "host"))
    with host_loop(tmp_path / "before") as before, \
            nspawn.booted(release, release_roots[suite], log_dir=LOG_DIR) as c:
        assert c.policy is not None
        with host_loop(tmp_path / "after") as after, \
                host_loop(ddi, partitions=True) as parted:
            part = _partition(parted)
            c.policy.sync()  # the watcher's next look, now
            nodes = [before, f"{nspawn.HOST_DEV}/{Path(before).name}", after,
                     f"{nspawn.HOST_DEV}/{Path(after).name}", f"{nspawn.HOST_DEV}/{disk}",
                     f"/dev/{part}", f"{nspawn.HOST_DEV}/{part}"]
            for node in nodes:
                # the control: the host reads them (its devtmpfs is /dev)
                with open(f"/dev/{Path(node).name}", "rb") as f:
                    assert len(f.read(512)) == 512 or node.endswith(disk)
                got = c.run("dd", f"if={node}", "of=/dev/null", "count=1", "status=none")
                assert (got.returncode, got.output) == (
                    1, f"dd: failed to open '{node}': {REFUSED}")
            # the container's root mounts the devices hierarchy (its cgroup namespace is
            # rooted at payload/) and tries to allow the host disk: the kernel refuses, the
            # limit is on payload/'s parent
            got = c.run("sh", "-c", "mkdir -p /tmp/cg && mount -t cgroup -o devices none "
                        f"/tmp/cg && echo 'b {_numbers(disk)} rw' > /tmp/cg/devices.allow")
            assert got.returncode != 0 and got.output.endswith("I/O error"), got.output
            got = c.run("dd", f"if={nspawn.HOST_DEV}/{disk}", "of=/dev/null", "count=1",
                        "status=none")
            assert got.output == f"dd: failed to open '{nspawn.HOST_DEV}/{disk}': {REFUSED}"
            # a unit under the trusted profile: the image's own loop device works (it is
            # mounted as the unit's root), the host's do not
            image = probe_image(tmp_path, psdemo, "devprobe", nodes)
            with attached(c, image, profile="trusted"):
                assert c.start("devprobe.service").ok, c.journal("devprobe.service")
                journal = c.journal("devprobe.service")
                assert "psdemo: cwd=/" in journal, journal  # it ran, from its image
                for node in nodes:
                    assert f"psdemo: {node}: open: {REFUSED}" in journal, journal
                assert SECRET not in journal


def test_two_containers_each_open_only_their_own(release_roots, psdemo, tmp_path):
    """Two containers at once: both attach and serve; neither can open the other's."""
    require_policy()
    release = roots.RELEASES[roots.DEFAULT_RELEASE]
    images = [build_image(tmp_path / f"two{i}", {
        "pname": f"two{i}", "version": "1",
        "units": [unit(f"two{i}.service",
                       f"[Service]\nExecStart=/usr/bin/psdemo serve {18150 + i} two{i}\n")],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}]}) for i in (0, 1)]
    with nspawn.booted(release, release_roots[release.suite], log_dir=LOG_DIR) as a, \
            nspawn.booted(release, release_roots[release.suite], log_dir=LOG_DIR) as b:
        assert a.policy is not None and b.policy is not None
        with attached(a, images[0]), attached(b, images[1]):
            assert a.start("two0.service").ok and b.start("two1.service").ok
            assert tcp_get(18150) == "two0\n" and tcp_get(18151) == "two1\n"
            a.policy.sync()
            b.policy.sync()
            mine, theirs = a.policy.ours(), b.policy.ours()
            assert mine and theirs and not mine & theirs
            for n in theirs:
                assert f"b 7:{n} rw" not in a.policy.allowed()
                got = a.run("dd", f"if=/dev/loop{n}", "of=/dev/null", "count=1", "status=none")
                assert (got.returncode, got.output) == (
                    1, f"dd: failed to open '/dev/loop{n}': {REFUSED}")
            for n in mine:
                assert a.run("dd", f"if=/dev/loop{n}", "of=/dev/null", "count=1").ok


def refuse_free_loops(policy: devices.DevicePolicy) -> None:
    """As if every free loop device had just been freed elsewhere and the watcher had not
    seen it yet: refused, and allowed again by the policy's next look. (The watcher is
    stopped first, so that next look is the harness's own.)"""
    policy.stop()
    with policy._lock:
        for node in [n for n in policy._allowed if n.major == 7]:
            if node.minor not in policy._ours:
                for cgroup in (policy.payload, policy.top):
                    (cgroup / "devices.deny").write_text(node.rule())
                policy._allowed.discard(node)


@pytest.mark.parametrize("suite", RELEASES)
def test_a_device_freed_elsewhere_and_not_yet_allowed_is_retried(release_roots, psdemo,
                                                                  tmp_path, suite):
    """Attach and start lost the race for a loop device (their first try is refused
    whichever device they take): each is retried once and works, and `try` never
    judges the unit by the harness's race."""
    require_policy()
    release = roots.RELEASES[suite]
    image = build_image(tmp_path, {
        "pname": "raced", "version": "1",
        "units": [unit("raced.service", "[Service]\nRestart=on-failure\n"
                                        "ExecStart=/usr/bin/psdemo serve 18160 raced\n")],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}]})
    with nspawn.booted(release, release_roots[suite], log_dir=LOG_DIR) as c:
        assert c.policy is not None
        refuse_free_loops(c.policy)
        widened = c.policy.widened
        with attached(c, image) as name:
            assert c.policy.widened > widened, "the attach did not meet a refused device"
            assert name in c.portablectl("list").stdout
            refuse_free_loops(c.policy)
            cursor = c._cursor()
            start = c.start("raced.service")
            assert start.ok, c.journal("raced.service")
            assert tcp_get(18160) == "raced\n", c.journal("raced.service")
            # the harness's retry, not systemd's Restart=: `try` would call that a loop
            restarts = c.systemctl("show", "-p", "NRestarts", "--value", "raced.service")
            assert restarts.stdout.strip() == "0", restarts.output
            journal = c._journal_since(cursor)
            refused = [ln for ln in journal.splitlines() if "mount namespacing" in ln]
            assert len(refused) == 1 and REFUSED in refused[0], journal
            # detach --now opens the image too (portablectl asks for its units, to stop
            # them): refused, nothing would be stopped or detached
            refuse_free_loops(c.policy)
            widened = c.policy.widened
            detach = c.detach(name)
            assert detach.ok and c.policy.widened > widened, detach.output
            assert c.attached_units() == [] and port_closed(18160)
            c.attach(image)  # for the context's own detach


@pytest.mark.parametrize("suite", DDI_RELEASES)
def test_a_ddi_gets_its_own_partitions_not_the_hosts(release_roots, psdemo, tmp_path, suite):
    """The host has a DDI's partitions; the container attaches a DDI of its own and serves
    from its root partition, which is allowed; the host's partition stays refused."""
    require_policy()
    release = roots.RELEASES[suite]
    host_ddi = build_ddi(tmp_path / "host", settings(psdemo, "mksquashfs", "host"))
    image = build_ddi(tmp_path / "own", settings(psdemo, "mksquashfs", f"own on {suite}"))
    with host_loop(host_ddi, partitions=True) as parted, \
            nspawn.booted(release, release_roots[suite], log_dir=LOG_DIR) as c:
        assert c.policy is not None
        host_part = _partition(parted)
        host_minor = Path(f"/sys/block/{Path(parted).name}/{host_part}/dev").read_text().strip()
        with attached(c, image):
            assert c.systemctl("start", "ddidemo.socket").ok
            assert tcp_get(PORT) == f"own on {suite}\n", c.journal("ddidemo.service")
            c.policy.sync()
            own = c.policy.ours()
            assert own, "the DDI's loop device is not the container's"
            parts = [dev.read_text().strip() for n in own
                     for dev in Path(f"/sys/block/loop{n}").glob(f"loop{n}p*/dev")]
            assert parts, "the container's loop device has no partitions"
            assert all(f"b {part} rw" in c.policy.allowed() for part in parts), parts
            assert f"b {host_minor} rw" not in c.policy.allowed()
            got = c.run("dd", f"if=/dev/{host_part}", "of=/dev/null", "count=1",
                        "status=none")
            assert (got.returncode, got.output) == (
                1, f"dd: failed to open '/dev/{host_part}': {REFUSED}")


KILLED = """
import sys
from pathlib import Path
from portable_service.harness import nspawn, roots
release = roots.RELEASES[sys.argv[1]]
with nspawn.booted(release, Path(sys.argv[2])) as c:
    print(c.name, flush=True)
    import time
    time.sleep(600)
"""


def test_the_devices_cgroup_goes_with_a_killed_run(release_roots):
    """SIGKILL of the harness: the reaper removes the devices cgroup too (no next run
    needed)."""
    require_policy()
    suite = roots.DEFAULT_RELEASE
    child = subprocess.Popen([sys.executable, "-c", KILLED, suite, str(release_roots[suite])],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert child.stdout is not None
    name = child.stdout.readline().strip()
    dirs = nspawn._cgroup_dirs(name)
    top = devices.DEVICES_ROOT / name
    assert top in dirs and (top / devices.PAYLOAD / "cgroup.procs").read_text().split()
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(d.exists() for d in dirs):
        time.sleep(0.2)
    assert [d for d in dirs if d.exists()] == []
