"""Which device nodes a ``try`` container may open: a cgroup v1 ``devices`` policy.

The container's /dev holds nodes for all 256 loop devices and, for disk images, a
devtmpfs (every host disk) at /run/harness-dev: portabled takes whichever loop device
``LOOP_CTL_GET_FREE`` names, and a DDI's partition nodes get numbers only when the
kernel makes them. Without a policy anything in the container (a unit under the
"trusted" profile too) could read a loop device the host bound, or a host disk.

The policy, in ``devices/ps-NAME`` (the default is deny; the processes live one level
below, in ``payload/``, so the container's cgroup namespace is rooted there and a
limit set on ``ps-NAME`` is out of its reach):

- the nodes systemd-nspawn itself gives a container (its own DeviceAllow list in
  ``nspawn-register.c``: null, zero, full, random, urandom, tty, net/tun rwm;
  ptmx and the ptys rw) and ``/dev/loop-control``;
- every loop device (7:0-255) that is **not bound**, because the next allocation in
  the container may take any of them, plus those the container bound itself;
- among the minors of block major 259 ("blkext": loop partitions, and NVMe partitions
  too), every one **no device has** (0-511), because the kernel gives the next partition
  the lowest free minor and systemd opens it at once (it adds a DDI's partitions itself
  with BLKPG and opens them in the same breath, faster than any watcher), plus the
  partitions of the loop devices the container bound. A partition of any other disk
  (the host's NVMe, another container's or the host's loop device) is refused.

A watcher thread keeps it current: on each block uevent (and twice a second as a
fallback) it looks which loop devices are bound. A device that turns bound is the
container's if its backing file (``LOOP_GET_STATUS64``: device and inode) lies on a
file system only the container has: one mounted in its namespaces and not the host's
(its /tmp and /run), or the tmpfs under its overlay root, which no namespace shows
mounted (:meth:`DevicePolicy.add_private` names it). Images are copied there, and no
host file or other container's file is. Otherwise the device is denied. (Who holds it
open says nothing: systemd-udevd in a systemd 247 container opens every loop device
the host binds, to probe it.)

So a loop device bound by the host or by another container is unreadable from inside
from the moment the watcher has seen it
(:meth:`DevicePolicy.sync` makes that moment now); a device bound before the boot is
denied from the start, and so is every partition that exists then.

A device freed elsewhere is open to the container again only when the watcher has seen
it (a few milliseconds): if the container's next allocation takes it sooner, the open
fails with "Operation not permitted". ``Container.attach`` and ``Container.detach``
retry that once (portabled says "Access denied", and the policy widened meanwhile), and
so does ``Container.start`` (the image mount fails "Failed to set up mount namespacing:
Operation not permitted" before the program runs), on every release.

What this does not stop (v1 checks access when a node is opened, not afterwards): a
process that opens a free loop device (or blkext minor) and keeps it open until someone
else binds it (or a partition gets that minor) keeps reading it. Without a v1
``devices`` controller (a pure cgroup v2 host) a policy needs a BPF program; there is
none, and :func:`available` says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEVICES_ROOT = Path("/sys/fs/cgroup/devices")
PAYLOAD = "payload"  # where the container's processes live, below the policy's cgroup
LOOP_MAJOR = 7
BLKEXT_MAJOR = 259  # partitions beyond a driver's own minors: loop and NVMe partitions
LOOP_COUNT = 256  # loop nodes the container gets (nspawn.LOOP_DEVICES)
BLKEXT_COUNT = 512  # blkext minors a container's partitions may get (lowest free first)
SYS_BLOCK = Path("/sys/block")
SYS_DEV_BLOCK = Path("/sys/dev/block")  # MAJOR:MINOR -> the device's sysfs folder
NETLINK_KOBJECT_UEVENT = 15
LOOP_GET_STATUS64 = 0x4C05
LOOP_INFO64_SIZE = 232  # struct loop_info64; it starts with lo_device, lo_inode (u64 each)
RESCAN = 0.5  # seconds between scans when no uevent arrives

# systemd-nspawn's own list (nspawn-register.c, DevicePolicy=closed), and loop-control
BASE_RULES = (
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",  # null zero full random urandom
    "c 5:0 rwm",  # tty
    "c 10:200 rwm",  # net/tun
    "c 5:2 rw",  # ptmx
    "c 136:* rw",  # the ptys, /dev/console among them
    "c 10:237 rw",  # loop-control: LOOP_CTL_GET_FREE
)
NOT_ISOLATED = ("no cgroup v1 devices controller on this host: the try container can open "
                "every loop device and, for disk images, every host disk")


def available(root: Path = DEVICES_ROOT) -> bool:
    """Whether the host has the v1 devices controller (hybrid or legacy cgroups)."""
    return (root / "devices.allow").exists()


@dataclass(frozen=True)
class Node:
    kind: str  # "b" or "c"
    major: int
    minor: int

    def rule(self) -> str:
        return f"{self.kind} {self.major}:{self.minor} rw"


def bound_loops() -> set[int]:
    """Loop devices with a backing file: their ``loop/`` folder exists only while bound."""
    found = set()
    for entry in SYS_BLOCK.glob("loop*/loop"):
        with contextlib.suppress(ValueError):
            found.add(int(entry.parent.name.removeprefix("loop")))
    return found


def partitions(loop: int) -> set[Node]:
    """The partition nodes the kernel made for ``/dev/loopN`` (major:minor from sysfs)."""
    nodes = set()
    for dev in (SYS_BLOCK / f"loop{loop}").glob(f"loop{loop}p*/dev"):
        with contextlib.suppress(OSError, ValueError):
            major, minor = dev.read_text().split(":")
            nodes.add(Node("b", int(major), int(minor)))
    return nodes


def blkext_parents() -> dict[int, str]:
    """The blkext minors in use, each with its disk's name (``loop3``, ``nvme0n1``)."""
    used = {}
    for link in SYS_DEV_BLOCK.glob(f"{BLKEXT_MAJOR}:*"):
        with contextlib.suppress(OSError, ValueError):
            used[int(link.name.split(":")[1])] = Path(os.readlink(link)).parent.name
    return used


def backing_file(loop: int) -> tuple[int, int] | None:
    """The device (st_dev) and inode of the file ``/dev/loopN`` is bound to, or None."""
    try:
        fd = os.open(f"/dev/loop{loop}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(LOOP_INFO64_SIZE))
    except OSError:
        return None
    finally:
        os.close(fd)
    device, inode = struct.unpack_from("=QQ", info)
    return int(device), int(inode)


def mounted_devices(pids: Iterable[int | str]) -> set[int]:
    """The devices (st_dev) of every file system mounted in these processes' namespaces."""
    found: set[int] = set()
    seen: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
            if ns in seen:
                continue
            seen.add(ns)
            for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
                with contextlib.suppress(IndexError, ValueError):
                    major, minor = line.split(" ", 3)[2].split(":")
                    found.add(os.makedev(int(major), int(minor)))
    return found


def wanted(bound: set[int], ours: set[int], used: dict[int, str]) -> set[Node]:
    """The loop and blkext nodes a container may open: free ones and its own."""
    mine = {f"loop{n}" for n in ours}
    return ({Node("b", LOOP_MAJOR, n) for n in range(LOOP_COUNT)
             if n not in bound or n in ours}
            | {Node("b", BLKEXT_MAJOR, m) for m in range(BLKEXT_COUNT)
               if m not in used or used[m] in mine})


def parse_list(text: str) -> set[str]:
    """``devices.list`` lines as the rules they are (``b 7:3 rw``)."""
    return {line.strip() for line in text.splitlines() if line.strip()}


class DevicePolicy:
    """The devices cgroup of one container, kept current by :meth:`start`'s thread."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.payload = top / PAYLOAD
        self._lock = threading.Lock()
        self._ours: dict[int, tuple[int, int]] = {}  # loop devices the container bound,
        # with their backing file: a device freed and bound again between two looks is
        # the container's only if it still has that file
        self._bound: set[int] = set()
        self._allowed: set[Node] = set()  # loop and partition nodes allowed now
        self._private: set[int] = set()  # file systems of the container no mount shows
        self.widened = 0  # how often a node was allowed again (freed by its other owner)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def create(self) -> None:
        """Deny everything, allow the base list and every unbound loop, make ``payload/``.

        ``a`` can be denied only while the cgroup has no children; ``payload/`` copies the
        exceptions when it is made.
        """
        self.top.mkdir(exist_ok=True)
        (self.top / "devices.deny").write_text("a")
        for rule in BASE_RULES:
            (self.top / "devices.allow").write_text(rule)
        with self._lock:
            self._bound = bound_loops()
            want = wanted(self._bound, set(), blkext_parents())
            self._write(self.top, "devices.allow", want)
            self._allowed = want
        self.payload.mkdir(exist_ok=True)

    def start(self) -> None:
        """Watch loop devices until :meth:`stop`."""
        self._thread = threading.Thread(target=self._watch, name=f"devices {self.top.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def add_private(self, device: int) -> None:
        """A file system (st_dev) only the container has, though no namespace mounts it."""
        with self._lock:
            self._private.add(device)

    def allowed(self) -> set[str]:
        """What the container may open now (the kernel's list for ``payload/``)."""
        try:
            return parse_list((self.payload / "devices.list").read_text())
        except OSError:
            return set()

    def ours(self) -> set[int]:
        with self._lock:
            return set(self._ours)

    def sync(self) -> None:
        """Bring the policy up to date with the loop devices bound right now."""
        with self._lock:
            if not self.payload.is_dir():
                return
            bound = bound_loops()
            # an unbound device is nobody's; one bound to another file meanwhile is looked
            # at again, as a new one
            kept = {n: f for n, f in self._ours.items() if n in bound and backing_file(n) == f}
            fresh = (bound - self._bound) | (set(self._ours) & bound) - set(kept)
            self._ours = kept
            if fresh:
                private = self._private_devices()
                for n in fresh:
                    backing = backing_file(n)
                    if backing is not None and backing[0] in private:
                        self._ours[n] = backing
            self._bound = bound
            want = wanted(bound, set(self._ours), blkext_parents())
            # widen parent first (a child is never allowed more than its parent), narrow
            # the child first
            add, drop = want - self._allowed, self._allowed - want
            with contextlib.suppress(FileNotFoundError):
                self._write(self.top, "devices.allow", add)
                self._write(self.payload, "devices.allow", add)
                self._write(self.payload, "devices.deny", drop)
                self._write(self.top, "devices.deny", drop)
                self._allowed = want
                self.widened += bool(add)

    @staticmethod
    def _write(cgroup: Path, knob: str, nodes: Iterable[Node]) -> None:
        for node in sorted(nodes, key=lambda n: (n.major, n.minor)):
            (cgroup / knob).write_text(node.rule())

    def _pids(self) -> list[int]:
        pids: list[int] = []
        for procs in self.top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids += [int(p) for p in procs.read_text().split()]
        return pids

    def _private_devices(self) -> set[int]:
        """File systems mounted in the container's namespaces and not in the host's."""
        return (mounted_devices(self._pids()) - mounted_devices(["self"])) | self._private

    def _watch(self) -> None:
        sock = _uevent_socket()
        try:
            while not self._stop.is_set():
                if sock is None:
                    self._stop.wait(RESCAN)
                else:
                    ready, _, _ = select.select([sock], [], [], RESCAN)
                    if ready:
                        _drain(sock)
                self.sync()
        finally:
            if sock is not None:
                sock.close()


def _uevent_socket() -> socket.socket | None:
    """The kernel's uevents (a loop device bound, freed, its partitions made), or None."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
        sock.bind((0, 1))
    except OSError:
        return None  # polling alone still keeps the policy current
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while sock.recv(65536):
            pass
