"""The devices policy of a try container, on the host's real cgroup v1 devices controller.

No container here: a shell placed in the policy's ``payload/`` cgroup stands for a
process of the container (the kernel checks the cgroup, not the namespaces).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from portable_service.harness import devices, nspawn
from portable_service.run import PIPE, run, spawn
from tests.conftest import require, require_root, require_tool

SECRET = b"host secret on a loop device\n"

def _host_disk() -> str:
    """A disk of the host that is no loop device (vda, sda, nvme0n1, zram0, ...)."""
    disks = sorted(p.name for p in Path("/sys/block").iterdir()
                   if not p.name.startswith("loop"))
    require(bool(disks), "the host has no disk but loop devices")
    return disks[0]

@pytest.fixture
def policy() -> Iterator[devices.DevicePolicy]:
    require_root()
    require(devices.available(), "no cgroup v1 devices controller on this host")
    top = devices.DEVICES_ROOT / f"ps-unittest-{os.getpid()}-0"
    p = devices.DevicePolicy(top)
    p.create()
    try:
        yield p
    finally:
        p.stop()
        nspawn.kill_cgroups([top])
        assert nspawn.remove_cgroups([top]) == []

@contextlib.contextmanager
def host_loop(tmp_path: Path) -> Iterator[int]:
    """A loop device the host binds, read-only, to a file holding a secret."""
    require_tool("losetup")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET * 100)
    dev = run(["losetup", "--find", "--show", "-r", str(secret)]).stdout.decode().strip()
    try:
        yield int(dev.removeprefix("/dev/loop"))
    finally:
        run(["losetup", "-d", dev], check=False)

def read_inside(p: devices.DevicePolicy, node: str) -> tuple[int, str]:
    """``head -c 40 NODE`` run in the policy's cgroup: its exit code and output."""
    proc = run(["sh", "-c", 'echo $$ > "$0" && exec head -c 40 "$1"',
                str(p.payload / "cgroup.procs"), node], check=False)
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace").strip()

def test_rules_and_list_parsing() -> None:
    assert devices.Node("b", 7, 3).rule() == "b 7:3 rw"
    assert devices.parse_list("c 1:3 rwm\nb 7:0 rw\n\n") == {"c 1:3 rwm", "b 7:0 rw"}
    assert not devices.available(Path("/nonexistent"))

def test_wanted_free_nodes_and_the_containers_own() -> None:
    """Loop 3 is the container's (with partition minor 0), loop 5 the host's (minor 1),
    minor 2 a host NVMe partition."""
    got = devices.wanted({3, 5}, {3}, {0: "loop3", 1: "loop5", 2: "nvme0n1"})
    loops = {n.minor for n in got if n.major == devices.LOOP_MAJOR}
    blkext = {n.minor for n in got if n.major == devices.BLKEXT_MAJOR}
    assert loops == set(range(devices.LOOP_COUNT)) - {5}
    assert blkext == set(range(devices.BLKEXT_COUNT)) - {1, 2}
    assert {n.kind for n in got} == {"b"}

def test_a_loop_bound_before_is_refused_an_unbound_one_allowed(policy, tmp_path) -> None:
    with host_loop(tmp_path) as n:
        p = devices.DevicePolicy(policy.top.with_name(policy.top.name + "-b"))
        p.create()
        try:
            allowed = p.allowed()
            assert f"b 7:{n} rw" not in allowed
            assert "c 10:237 rw" in allowed and "c 1:3 rwm" in allowed
            assert not any(rule.startswith("a ") for rule in allowed)
            code, out = read_inside(p, f"/dev/loop{n}")
            assert (code, out) == (1, f"head: cannot open '/dev/loop{n}' for reading: "
                                      "Operation not permitted")
            # the control: the host itself reads it
            assert Path(f"/dev/loop{n}").read_bytes()[:len(SECRET)] == SECRET
            # a device nobody bound stays open to the container (the next attach takes it)
            free = next(i for i in range(devices.LOOP_COUNT)
                        if i not in devices.bound_loops())
            assert f"b 7:{free} rw" in allowed
        finally:
            nspawn.kill_cgroups([p.top])
            nspawn.remove_cgroups([p.top])

def test_a_loop_bound_later_is_denied_and_allowed_again_when_freed(policy, tmp_path) -> None:
    with host_loop(tmp_path) as n:
        assert f"b 7:{n} rw" in policy.allowed()  # it was free when the policy was made
        policy.sync()
        assert f"b 7:{n} rw" not in policy.allowed()
        assert f"b 7:{n} rw" not in devices.parse_list(
            (policy.top / "devices.list").read_text())  # the parent too
        assert read_inside(policy, f"/dev/loop{n}") == (
            1, f"head: cannot open '/dev/loop{n}' for reading: Operation not permitted")
        assert n not in policy.ours()
    policy.sync()
    assert f"b 7:{n} rw" in policy.allowed()

def test_the_watcher_follows_without_being_asked(policy, tmp_path) -> None:
    import time

    policy.start()
    with host_loop(tmp_path) as n:
        deadline = time.monotonic() + 5
        while f"b 7:{n} rw" in policy.allowed() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert f"b 7:{n} rw" not in policy.allowed()

BIND_AND_READ = """
import fcntl, os, sys, time
LOOP_SET_FD, LOOP_CLR_FD, LOOP_CTL_GET_FREE = 0x4C00, 0x4C01, 0x4C82
backing = os.open(sys.argv[1], os.O_RDONLY)
ctl = os.open("/dev/loop-control", os.O_RDWR)
n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
dev = os.open(f"/dev/loop{n}", os.O_RDONLY)  # held while bound, as systemd does
fcntl.ioctl(dev, LOOP_SET_FD, backing)
time.sleep(1.5)  # the watcher looks meanwhile
again = os.open(f"/dev/loop{n}", os.O_RDONLY)  # a second open: the policy must allow it
print(n, os.read(again, 40).decode().strip())
fcntl.ioctl(dev, LOOP_CLR_FD)
"""

def test_a_loop_the_container_binds_stays_its_own(policy, tmp_path) -> None:
    """A process of the container binds a free loop device to a file on a tmpfs of its
    own mount namespace (as an image copied into the container's overlay): the device is
    the container's, and stays open to it while bound."""
    import sys

    require_tool("unshare")
    secret = tmp_path / "own"
    secret.write_bytes(SECRET * 100)
    (tmp_path / "mnt").mkdir()
    policy.start()
    proc = run(["sh", "-c", 'echo $$ > "$0" && exec unshare --mount --propagation private '
                'sh -c \'mount -t tmpfs tmpfs "$3" && cp "$2" "$3/image" && '
                'exec "$0" -c "$1" "$3/image"\' "$@"',
                str(policy.payload / "cgroup.procs"), sys.executable, BIND_AND_READ,
                str(secret), str(tmp_path / "mnt")], check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    n, text = proc.stdout.decode().split(" ", 1)
    assert text.splitlines()[0] == SECRET.decode().strip()
    policy.sync()
    assert f"b 7:{n} rw" in policy.allowed()  # freed: open to the next allocation again
    assert int(n) not in policy.ours()

def test_holding_a_device_open_does_not_make_it_the_containers(policy, tmp_path) -> None:
    """systemd-udevd in a systemd 247 container opens each loop device the host binds: the
    host's device stays the host's, and a new open from the container is refused."""
    require_tool("losetup")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET * 100)
    free = next(i for i in range(devices.LOOP_COUNT) if i not in devices.bound_loops())
    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(spawn(
            ["sh", "-c", 'echo $$ > "$0" && exec 3<"$1" && echo open && exec sleep 30',
             str(policy.payload / "cgroup.procs"), f"/dev/loop{free}"], stdout=PIPE))
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        run(["losetup", "-r", f"/dev/loop{free}", str(secret)])
        stack.callback(run, ["losetup", "-d", f"/dev/loop{free}"], check=False)
        policy.sync()
        assert free not in policy.ours()
        assert read_inside(policy, f"/dev/loop{free}") == (
            1, f"head: cannot open '/dev/loop{free}' for reading: Operation not permitted")

def test_a_host_disk_is_refused(policy) -> None:
    disk = _host_disk()
    code, out = read_inside(policy, f"/dev/{disk}")
    assert (code, out) == (1, f"head: cannot open '/dev/{disk}' for reading: "
                              "Operation not permitted")


def test_without_a_v1_devices_controller_one_warning_and_no_policy(tmp_path, monkeypatch,
                                                                   capsys) -> None:
    """A pure cgroup v2 host (``cgroup.controllers`` at the top): no devices cgroup among
    the container's, and booting says in one line what is not isolated."""
    from portable_service.progress import Reporter

    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    monkeypatch.setattr(nspawn, "CGROUP_ROOT", tmp_path)
    dirs = nspawn._cgroup_dirs("ps-bookworm-1-0")
    assert dirs == [tmp_path / "ps-bookworm-1-0"]
    reporter = Reporter(quiet=True)
    assert nspawn.device_policy(dirs, reporter) is None
    assert reporter.warnings == [devices.NOT_ISOLATED]
    err = capsys.readouterr().err
    assert err == f"portable-service: warning: {devices.NOT_ISOLATED}\n"


def test_on_this_host_the_policy_is_made(policy) -> None:
    """The hybrid host of CI: the container's cgroups end with its devices cgroup."""
    dirs = nspawn._cgroup_dirs("ps-bookworm-1-0")
    assert dirs[-1] == devices.DEVICES_ROOT / "ps-bookworm-1-0"


BIND_HOLD_FREE = """
import fcntl, os, sys
LOOP_SET_FD, LOOP_CLR_FD, LOOP_CTL_GET_FREE = 0x4C00, 0x4C01, 0x4C82
backing = os.open(sys.argv[1], os.O_RDONLY)
n = fcntl.ioctl(os.open("/dev/loop-control", os.O_RDWR), LOOP_CTL_GET_FREE)
dev = os.open(f"/dev/loop{n}", os.O_RDONLY)
fcntl.ioctl(dev, LOOP_SET_FD, backing)
print(n, flush=True)
sys.stdin.readline()
fcntl.ioctl(dev, LOOP_CLR_FD)
"""


def test_a_device_freed_and_bound_by_the_host_between_two_looks_is_the_hosts(
        policy, tmp_path) -> None:
    import sys

    require_tool("unshare")
    require_tool("losetup")
    (tmp_path / "own").write_bytes(b"the container's image\n" * 100)
    (tmp_path / "secret").write_bytes(SECRET * 100)
    (tmp_path / "mnt").mkdir()
    with spawn(["sh", "-c", 'echo $$ > "$0" && exec unshare --mount --propagation private '
                'sh -c \'mount -t tmpfs tmpfs "$3" && cp "$2" "$3/image" && '
                'exec "$0" -c "$1" "$3/image"\' "$@"',
                str(policy.payload / "cgroup.procs"), sys.executable, BIND_HOLD_FREE,
                str(tmp_path / "own"), str(tmp_path / "mnt")], stdin=PIPE, stdout=PIPE) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        n = int(proc.stdout.readline())
        policy.sync()
        assert n in policy.ours()
        proc.stdin.write(b"free\n")
        proc.stdin.close()
        assert proc.wait(10) == 0
    run(["losetup", "-r", f"/dev/loop{n}", str(tmp_path / "secret")])
    try:
        policy.sync()  # the first look since: bound as before, to another file
        assert n not in policy.ours()
        assert read_inside(policy, f"/dev/loop{n}") == (
            1, f"head: cannot open '/dev/loop{n}' for reading: Operation not permitted")
    finally:
        run(["losetup", "-d", f"/dev/loop{n}"], check=False)
