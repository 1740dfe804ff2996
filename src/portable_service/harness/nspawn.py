"""Boot a throwaway systemd with systemd-nspawn, run portablectl inside, tear it all down.

Works on hosts whose PID 1 is not systemd (containers, CI runners):

- no system bus on the host: ``--register=no --keep-unit``;
- the host's /run may be on disk: nspawn runs in a private mount namespace
  with a tmpfs on /run (``unshare --mount --propagation private``);
- nspawn gets its own cgroup (both hierarchies on a hybrid host), so every
  process it leaves behind can be found and killed, and the cgroup removed;
- ``--volatile=overlay``: writes go to a tmpfs layer, the cached root stays clean;
- the container's /dev has no loop devices: they are created inside, and the
  partition nodes of a GPT image (``/dev/loopNpM``, made by the kernel when portabled
  attaches a disk image) are links into a read-only devtmpfs mounted inside;
- which of those nodes the container may open is a cgroup v1 ``devices`` policy kept
  current while it runs (:mod:`portable_service.harness.devices`): no loop device the
  host or another container bound, no host disk.

Commands run inside with ``nsenter -t <init> -a``. :func:`booted` is the only
way in: its exit (normal, exception or Ctrl-C) always powers the container
off, kills what is left by PID, removes the cgroups and checks that no loop
device still holds one of the copied images.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from portable_service.errors import HostError, ToolError
from portable_service.harness import devices
from portable_service.harness.judge import PROPERTIES, UnitProps, parse_show
from portable_service.harness.roots import Release
from portable_service.progress import Reporter
from portable_service.rules.portabled import SPLIT_USR_PATH, UNIT_TYPES
from portable_service.run import DEVNULL, STDOUT, Process, TimedOut, exited, pid_alive, run, spawn

CGROUP_ROOT = Path("/sys/fs/cgroup")
LOOP_DEVICES = 256
LOOP_PARTITIONS = 8  # partition nodes linked per loop device (a portable DDI uses 1-3)
HOST_DEV = "/run/harness-dev"  # where the container sees the kernel's devtmpfs
UDEV_RETRIES = 4
DENIED = "Operation not permitted"  # what EPERM from the devices policy reads as
# portabled (247, 252, 257) returns EPERM to portablectl as D-Bus AccessDenied
DENIED_ATTACH = (DENIED, "Access denied")
# what commands in the container see: systemd's PATH and nothing of the host's environment
CONTAINER_ENV = {"PATH": ":".join(SPLIT_USR_PATH), "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
                 "TERM": "dumb"}
INSTALL_HINT = "install it: apt-get install systemd-container debootstrap"
_counter = itertools.count()


class BootError(HostError):
    """The container did not come up; the message carries nspawn's own output."""


@dataclass
class Result:
    """A command run inside the container."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


@dataclass
class UnitState:
    name: str
    active: str  # ActiveState: active, inactive, failed, activating, ...
    sub: str
    result: str  # Result: success, exit-code, resources, ...
    exit_status: str
    load: str

    @property
    def failed(self) -> bool:
        return self.active == "failed" or self.result not in ("success", "")


@dataclass
class Container:
    release: Release
    name: str
    nspawn: Process
    init_pid: int
    log: Path
    timings: dict[str, float] = field(default_factory=dict)
    copied: list[str] = field(default_factory=list)
    policy: devices.DevicePolicy | None = None  # None: the host has no v1 devices controller

    @property
    def root(self) -> Path:
        """The container's root as the host sees it (inside its mount namespace)."""
        return Path(f"/proc/{self.init_pid}/root")

    def run(self, *argv: str, check: bool = False, timeout: float = 60,
            input: str | None = None) -> Result:
        cmd = ["nsenter", "-t", str(self.init_pid), "-a", "--", *argv]
        if self.policy is not None:
            # nsenter leaves a process in its caller's cgroups: join the container's
            # devices cgroup first, so that its policy holds for commands run here too
            cmd = ["sh", "-c", 'echo $$ > "$0" && exec "$@"',
                   str(self.policy.payload / "cgroup.procs"), *cmd]
        try:
            proc = run(cmd, env=CONTAINER_ENV, inherit_env=False, check=False, timeout=timeout,
                       input=None if input is None else input.encode())
        except TimedOut:
            raise ToolError(f"{' '.join(argv)} did not finish within {timeout:.0f} s "
                            f"in the {self.release.suite} container") from None
        result = Result(list(argv), proc.returncode, proc.stdout.decode(errors="replace"),
                        proc.stderr.decode(errors="replace"))
        if check and not result.ok:
            raise ToolError(f"{' '.join(argv)} failed in the {self.release.suite} container "
                            f"(exit {result.returncode}): {one_line(result.output)}")
        return result

    def systemctl(self, *args: str, check: bool = False, timeout: float = 60) -> Result:
        if args and args[0] in ("start", "restart"):
            self.settle()
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def portablectl(self, *args: str, check: bool = False) -> Result:
        return self.run("portablectl", "--no-pager", *args, check=check, timeout=120)

    def copy_image(self, image: Path) -> str:
        """Copy an image to /var/lib/portables; returns the name portablectl knows it by."""
        dest = self.root / "var/lib/portables"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, dest / image.name)
        self.copied.append(image.name)
        return image.name.removesuffix(".raw")

    def remove_image(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / "var/lib/portables" / f"{name}.raw").unlink()

    def attach(self, image: Path, *, profile: str = "default", runtime: bool = True,
               now: bool = False) -> Result:
        """Copy ``image`` in and ``portablectl attach`` it; the result says if it worked."""
        name = self.copy_image(image)
        args = ["attach", f"--profile={profile}"]
        args += ["--runtime"] * runtime + ["--now"] * now
        result = self._portablectl_retried(*args, name)
        self.settle()
        return result

    def _portablectl_retried(self, *args: str) -> Result:
        """``portablectl``, retried for the harness's faults: the udev wait (systemd 247,
        see :meth:`settle`) and a loop device freed elsewhere that the device policy had
        not yet allowed again (both attach and detach open the image: detach asks for its
        units first, to stop them)."""
        for _ in range(UDEV_RETRIES + 1):
            self.settle()
            cursor = self._cursor()
            widened = self.policy.widened if self.policy is not None else 0
            result = self.portablectl(*args)
            if result.ok or not (self._udev_timeout(self._journal_since(cursor))
                                 or self._lost_device_race(result, widened)):
                break
        return result

    def start(self, unit: str, timeout: float = 60) -> Result:
        """``systemctl start``, retried for two faults of the harness, never of the unit:
        on systemd 247 the udev wait (see :meth:`settle`), and, once, a start whose image
        mount lost the race for a loop device the device policy had not yet allowed again
        (see :mod:`.devices`). Either fails before the unit's program runs, so the start
        waits for the program (a simple service is "active" as soon as it is forked).

        ``timeout`` bounds the wait for the start job (a ToolError past it; the job goes on).
        """
        raced = False
        deadline = time.monotonic() + timeout  # retries included
        for _ in range(UDEV_RETRIES + 1):
            cursor = self._cursor()
            result = self.systemctl("start", unit,
                                    timeout=max(deadline - time.monotonic(), 1.0))
            if result.ok:
                self._wait_until_exec(unit)  # a simple service can still fail after this
            journal = self._journal_since(cursor)
            if self._udev_timeout(journal):
                pass
            elif not raced and self._lost_device_race_at_start(unit, journal):
                raced = True
            else:
                break
            # a unit with Restart= is in auto-restart by now, and systemd's own restart
            # would count: stop it, then zero its counters (NRestarts included)
            self.systemctl("stop", unit)
            self.systemctl("reset-failed", unit)
            self.settle()
        return result

    def _lost_device_race_at_start(self, unit: str, journal: str) -> bool:
        """Whether ``unit`` failed setting up its namespace (its image mount) with
        "Operation not permitted": a loop device the policy refused at that moment. (It
        may be failed, in auto-restart, or running again after systemd's own restart.)"""
        if self.policy is None:
            return False
        lost = any(line.startswith(f"{unit}: ") and DENIED in line and "namespac" in line.lower()
                   for line in journal.splitlines())
        if lost:
            self.policy.sync()
        return lost

    def _wait_until_exec(self, unit: str, timeout: float = 10) -> None:
        """Until the unit's program runs, or the unit failed or finished.

        A simple service counts as active as soon as systemd forked it; the
        sandbox (and the image mount) is set up after that, in a child named
        "(program)" until it execs the program.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.unit_state(unit)
            if state.active == "failed":
                return
            if state.sub == "auto-restart":  # it ran, and systemd will start it again
                return
            if state.active != "activating":
                pid = self.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip()
                if pid in ("", "0"):
                    return
                try:
                    comm = (self.root / "proc" / pid / "comm").read_text().strip()
                except OSError:
                    comm = ""  # it exited already: look again at the state
                if comm and not comm.startswith("("):
                    return
            time.sleep(0.05)

    def _lost_device_race(self, result: Result, widened: int) -> bool:
        """Whether the step failed on a loop device freed elsewhere that the device policy
        allowed again only while the step ran (see :mod:`.devices`)."""
        if self.policy is None or not any(m in result.output for m in DENIED_ATTACH):
            return False
        self.policy.sync()
        return self.policy.widened != widened

    def _udev_timeout(self, journal: str) -> bool:
        return self.release.needs_udevd and "Failed to wait for device to be initialized" in journal

    def _cursor(self) -> str:
        out = self.run("journalctl", "-n0", "--show-cursor", "--no-pager").stdout
        return out.strip().rsplit("cursor: ", 1)[-1] if "cursor: " in out else ""

    def _journal_since(self, cursor: str) -> str:
        args = ["journalctl", "--no-pager", "-o", "cat"]
        args += [f"--after-cursor={cursor}"] if cursor else ["-b"]
        return self.run(*args).stdout

    def settle(self) -> None:
        """On systemd < 250, let udev finish with loop devices before the next one is set up.

        systemd 247 waits for udev to initialise every loop device it mounts; a
        device freed a moment ago and reused at once can time out there
        ("Failed to wait for device to be initialized").
        """
        if self.release.needs_udevd:
            self.run("udevadm", "settle", "--timeout=10")

    def detach(self, name: str, *, runtime: bool = True, now: bool = True) -> Result:
        """Detach (stopping the units with ``now``) and delete the copied image."""
        args = ["detach", *["--runtime"] * runtime, *["--now"] * now, name]
        prefix = name.split("_", 1)[0]  # the image's units carry its name's prefix
        templates = [u for u in self.attached_units(runtime) if "@." in u and
                     u.startswith((f"{prefix}.", f"{prefix}-", f"{prefix}@"))]
        result = self._portablectl_retried(*args)
        if not result.ok and now and templates and "is active, can't detach" in result.output:
            # --now stops the image's units by name, and a template's instances have none
            # of their own ("is missing the instance name"): stop them, then detach
            self.systemctl("stop", *(t.replace("@.", "@*.") for t in templates))
            result = self._portablectl_retried(*args)
        # a failed unit stays loaded after its file is gone, and portabled then refuses
        # to attach an image carrying a unit of that name ("exists on the host already")
        self.systemctl("reset-failed")
        self.remove_image(name)
        return result

    def attached_units(self, runtime: bool = True) -> list[str]:
        """Units portabled placed for attached images."""
        folder = self.root / ("run" if runtime else "etc") / "systemd/system.attached"
        try:
            return sorted(p.name for p in folder.iterdir()
                          if not p.name.endswith(".d") and p.suffix in UNIT_TYPES)
        except FileNotFoundError:
            return []

    def read_file(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()

    def unit_state(self, unit: str) -> UnitState:
        out = self.systemctl("show", unit, "-p",
                             "ActiveState,SubState,Result,ExecMainStatus,LoadState").stdout
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return UnitState(unit, props.get("ActiveState", ""), props.get("SubState", ""),
                         props.get("Result", ""), props.get("ExecMainStatus", ""),
                         props.get("LoadState", ""))

    def unit_props(self, units: Sequence[str]) -> dict[str, UnitProps]:
        """One ``systemctl show`` for all ``units``: what ``try`` judges them by."""
        out = self.systemctl("show", "-p", ",".join(PROPERTIES), *units).stdout
        return parse_show(out, units)

    def wait_for(self, unit: str, states: Sequence[str] = ("active",),
                 timeout: float = 10) -> UnitState:
        """Poll until the unit reaches one of ``states`` or fails; returns the last state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.unit_state(unit)
            if state.active in states or state.active == "failed" or time.monotonic() > deadline:
                return state
            time.sleep(0.1)

    def journal(self, unit: str | None = None) -> str:
        """This boot's journal (of one unit), message text only.

        A unit's lines are those ``journalctl -u`` shows, and also those of its processes
        that journald could not put in the unit: it reads a sender's cgroup from /proc
        when the line arrives, so a process gone by then (the exec child that failed to
        set up the unit's sandbox exits at once) leaves lines with no ``_SYSTEMD_UNIT``.
        That child names the unit itself (``UNIT=``) in its last lines; its other lines
        ("Failed to create destination mount point node ...") are found by its PID.
        """
        if not unit:
            return self.run("journalctl", "--no-pager", "-b", "-o", "cat").stdout
        out = self.run("journalctl", "--no-pager", "-b", "-o", "json", "--all",
                       f"--output-fields={','.join(JOURNAL_FIELDS)}").stdout
        return "".join(line + "\n" for line in unit_lines(out, unit))

    def status(self, unit: str) -> str:
        return self.systemctl("status", "--lines=0", unit).stdout


JOURNAL_FIELDS = ("MESSAGE", "MESSAGE_ID", "_PID", "_UID", "_SYSTEMD_UNIT", "UNIT",
                  "OBJECT_SYSTEMD_UNIT", "COREDUMP_UNIT")
_COREDUMP_MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"


def unit_lines(json_lines: str, unit: str) -> list[str]:
    """The messages of ``journalctl -o json`` output that are about ``unit``: the matches
    of ``journalctl -u`` (systemd's ``add_matches_for_unit``) and the lines of every
    process other than PID 1 that logged ``UNIT=unit`` and has no unit of its own."""
    entries = []
    for line in json_lines.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    children = {e.get("_PID") for e in entries if e.get("UNIT") == unit} - {"1", None}

    def about(e: dict[str, object]) -> bool:
        own = e.get("_SYSTEMD_UNIT")
        return (own == unit
                or (e.get("UNIT") == unit and (e.get("_PID") == "1" or not own))
                or (e.get("_UID") == "0" and e.get("OBJECT_SYSTEMD_UNIT") == unit)
                or (e.get("_UID") == "0" and e.get("COREDUMP_UNIT") == unit
                    and e.get("MESSAGE_ID") == _COREDUMP_MESSAGE_ID)
                or (not own and e.get("_PID") in children))

    return [_message(e) for e in entries if about(e)]


def _message(entry: dict[str, object]) -> str:
    message = entry.get("MESSAGE")
    if isinstance(message, list):  # not valid UTF-8: journalctl gives the bytes
        return bytes(b for b in message if isinstance(b, int)).decode(errors="replace")
    return message if isinstance(message, str) else ""


def one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " / ".join(lines[-3:]) if lines else "no message"


def check_host() -> None:
    """Root and the tools; each missing piece is one sentence with its fix."""
    if os.geteuid() != 0:
        raise HostError("booting a throwaway systemd needs root",
                        "run it as root (e.g. with sudo)")
    for tool, hint in (("systemd-nspawn", INSTALL_HINT), ("debootstrap", INSTALL_HINT),
                       ("unshare", "install it: apt-get install util-linux"),
                       ("nsenter", "install it: apt-get install util-linux")):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise HostError(f"{tool} not found in PATH (needed to boot a throwaway systemd)",
                            hint)


# -- cgroups: one per container, in every named hierarchy systemd cares about

def _cgroup_dirs(name: str) -> list[Path]:
    """The container's cgroups; the last is its devices policy's when the host has one."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # pure cgroup v2
        return [CGROUP_ROOT / name]
    dirs = [CGROUP_ROOT / h / name for h in ("systemd", "unified")
            if (CGROUP_ROOT / h / "cgroup.procs").exists()]
    if devices.available(CGROUP_ROOT / "devices"):
        dirs.append(CGROUP_ROOT / "devices" / name)
    return dirs


def cgroup_pids(dirs: Sequence[Path]) -> set[int]:
    pids: set[int] = set()
    for top in dirs:
        for proc_file in top.rglob("cgroup.procs") if top.is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in proc_file.read_text().split())
    return pids


def kill_cgroups(dirs: Sequence[Path], rounds: int = 50) -> None:
    """SIGKILL every process in the cgroups, until they are empty (or ``rounds`` tries)."""
    for _ in range(rounds):
        pids = cgroup_pids(dirs)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_cgroups(dirs: Sequence[Path]) -> list[Path]:
    """Remove the cgroups depth-first (nspawn makes payload/ and supervisor/ below); returns
    those that could not be removed."""
    left = []
    for top in dirs:
        if not top.is_dir():
            continue
        below = sorted((p for p in top.rglob("*") if p.is_dir()),
                       key=lambda p: len(p.parts), reverse=True)
        for d in [*below, top]:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)
    return left


PR_SET_PDEATHSIG = 1


def _enter_cgroup(dirs: Sequence[Path], parent: int) -> None:  # runs in the child before exec
    for d in dirs:
        (d / "cgroup.procs").write_text(str(os.getpid()))
    # nspawn dies with us, even by SIGKILL (it takes the container with it); the signal
    # survives the exec of unshare, sh and nspawn, which all keep this PID
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # we died before prctl took effect
        os._exit(1)


_NAME = re.compile(r"^ps-[a-z]+-(\d+)-\d+$")


def remove_stale(root: Path = CGROUP_ROOT) -> list[Path]:
    """Cgroups (and their processes) of earlier runs whose process is gone.

    A run killed by SIGKILL cannot tear down; the next one cleans up after it. Cgroups are
    named ``ps-SUITE-PID-N``: only those whose PID is dead are touched.
    """
    stale: list[Path] = []
    for top in [root, root / "systemd", root / "unified", root / "devices"]:
        if not top.is_dir():
            continue
        for d in top.iterdir():
            match = _NAME.match(d.name)
            if match is None or not d.is_dir() or pid_alive(int(match.group(1))):
                continue
            for pid in cgroup_pids([d]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stale.append(d)
    if stale:
        _wait(lambda: not cgroup_pids(stale) or None, 5)
        remove_cgroups(stale)
    return stale


def device_policy(dirs: Sequence[Path], reporter: Reporter) -> devices.DevicePolicy | None:
    """The container's device policy, watched from now on, in the devices cgroup among
    ``dirs`` (made already); without one (pure cgroup v2) a warning and None."""
    if not dirs or dirs[-1].parent.name != "devices":
        reporter.warn(devices.NOT_ISOLATED)
        return None
    policy = devices.DevicePolicy(dirs[-1])
    try:
        policy.create()
    except OSError as e:
        remove_cgroups(dirs)
        raise HostError(f"cannot set the container's device policy in {dirs[-1]}: "
                        f"{e.strerror}", "run it as root on a host whose cgroup file system "
                        "is writable") from None
    policy.start()
    return policy


# -- boot and teardown

def _find_init(nspawn_pid: int) -> int | None:
    """The container's PID 1 as the host sees it: nspawn's child running systemd."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        if ppid == nspawn_pid and comm == "systemd":
            return int(entry.name)
    return None


@contextlib.contextmanager
def booted(release: Release, root: Path, *, log_dir: Path | None = None,
           boot_timeout: float = 60, private_network: bool = False,
           reporter: Reporter | None = None) -> Iterator[Container]:
    """A running container of ``root``; always torn down on exit.

    nspawn's console log is kept only when the boot failed (the error names it) or the
    caller chose ``log_dir``. With ``private_network`` the container has only loopback.
    On a host without a v1 devices controller it boots without a device policy, and
    ``reporter`` (by default stderr) gets one warning saying what that leaves open.
    """
    check_host()
    name = f"ps-{release.suite}-{os.getpid()}-{next(_counter)}"
    keep_log = log_dir is not None
    remove_stale()
    parent = os.getpid()
    log_dir = log_dir or Path(tempfile.gettempdir()) / "portable-service-nspawn"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    dirs = _cgroup_dirs(name)
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            remove_cgroups(dirs)  # the ones made before this one
            raise HostError(f"cannot create the container's cgroup {d}: {e.strerror}",
                            "run it as root on a host whose cgroup file system is writable"
                            ) from None
    policy = device_policy(dirs, reporter or Reporter(quiet=True))
    enter = [*dirs[:-1], policy.payload] if policy is not None else list(dirs)
    start = time.monotonic()
    nspawn: Process | None = None
    container: Container | None = None
    # the children (nspawn, the reaper) are killed on leaving, after the teardown below
    with contextlib.ExitStack() as children:
        try:
            with open(log, "wb") as log_file:
                nspawn = children.enter_context(spawn(
                    ["unshare", "--mount", "--propagation", "private", "--",
                     "sh", "-c", 'mount -t tmpfs tmpfs /run && exec "$@"', "sh",
                     "systemd-nspawn", "-D", str(root), "--volatile=overlay", "-M", name,
                     "--register=no", "--keep-unit", "--console=read-only", "-b",
                     *(["--private-network"] if private_network else [])],
                    stdout=log_file, stderr=STDOUT,
                    # own session: a Ctrl-C in the terminal reaches us, not nspawn, and
                    # teardown stays in our hands
                    start_new_session=True, preexec_fn=lambda: _enter_cgroup(enter, parent),
                    env=CONTAINER_ENV, inherit_env=False))
            children.enter_context(spawn(
                [sys.executable, "-m", "portable_service.harness.reaper", str(parent),
                 *map(str, dirs)],
                stdout=DEVNULL, start_new_session=True,
                env={"PYTHONPATH": os.pathsep.join(sys.path)}))
            proc = nspawn
            init = _wait(lambda: _find_init(proc.pid) if proc.poll() is None else -1,
                         boot_timeout)
            if not init or init == -1:
                raise BootError(f"systemd-nspawn did not start {release.suite}'s systemd: "
                                f"{one_line(_read(log))}", f"see {log}")
            container = Container(release, name, nspawn, init, log, policy=policy)
            container.timings["nspawn"] = time.monotonic() - start
            booted_container = container
            _wait(lambda: (booted_container.root / "run/systemd/private").exists() or None,
                  boot_timeout)
            prepare(container, boot_timeout, start)
            container.timings["ready"] = time.monotonic() - start
            yield container
        except BootError:
            keep_log = True
            raise
        finally:
            teardown(nspawn, container, dirs, policy)
            if not keep_log:
                log.unlink(missing_ok=True)


def prepare(container: Container, boot_timeout: float, start: float) -> None:
    """Wait for the boot to finish, then make the container fit for portabled."""
    release, log = container.release, container.log
    state = container.run("systemctl", "is-system-running", "--wait",
                          timeout=boot_timeout).stdout.strip()
    if state not in ("running", "degraded"):
        failed = container.systemctl("--failed", "--no-legend").stdout
        raise BootError(f"the {release.suite} container did not boot (state {state!r}): "
                        f"{one_line(failed)}", f"see {log}")
    container.timings["booted"] = time.monotonic() - start
    if container.policy is not None:
        container.policy.add_private(_upper_device(container.root))
    make_loop_devices(container.root / "dev")
    link_partition_nodes(container)
    if release.needs_udevd:
        container.run("/lib/systemd/systemd-udevd", "--daemon", check=True)
        # When udev's message about a new loop device does not arrive within 5 s,
        # systemd 247 re-triggers it by writing "change" to its uevent file; nspawn's
        # /sys is read-only, so that fails ("Read-only file system"). Give the
        # container writable block-device folders (and nothing else of /sys).
        container.run("sh", "-c", "mkdir -p /run/harness-sysfs && "
                      "mount -t sysfs sysfs /run/harness-sysfs && "
                      "mount --bind /run/harness-sysfs/devices/virtual/block "
                      "/sys/devices/virtual/block && umount /run/harness-sysfs", check=True)
    if release.systemd >= 256:
        # systemd >= 256 puts the host's os-release at /run/host/os-release in a unit's
        # root. Under the "trusted" profile (BindPaths=/run) that /run is the
        # container's, where nspawn already mounted a read-only /run/host with its own
        # os-release ("Read-only file system", then "File exists"). A real host has no
        # /run/host; make the container's look like that.
        container.run("sh", "-c", "while mountpoint -q /run/host; do "
                      "umount -l /run/host || exit 1; done; rm -f /run/host/os-release",
                      check=True)


def _upper_device(root: Path) -> int:
    """The tmpfs holding ``--volatile=overlay``'s writes (where copied images land).

    No mount namespace of the container's processes shows it mounted (it is only the
    overlay's upper layer), so the device policy is told; a file written through the
    overlay reports it as its device (directories report the overlay's own).
    """
    folder = root / "var/tmp"
    with tempfile.NamedTemporaryFile(dir=folder if folder.is_dir() else root) as probe:
        return os.fstat(probe.fileno()).st_dev


def make_loop_devices(dev: Path, count: int = LOOP_DEVICES) -> None:
    """Device nodes for the host's loop devices (nspawn's private /dev has none).

    All of them: portabled takes whichever loop-control says is free when it attaches, and
    another container may have freed one that was busy when this one booted.
    """
    for path, major, minor in [(dev / "loop-control", 10, 237)] + [
            (dev / f"loop{i}", 7, i) for i in range(count)]:
        with contextlib.suppress(FileExistsError):
            kind = stat.S_IFCHR if major == 10 else stat.S_IFBLK
            os.mknod(path, 0o660 | kind, os.makedev(major, minor))


def link_partition_nodes(container: Container, count: int = LOOP_DEVICES,
                         partitions: int = LOOP_PARTITIONS) -> None:
    """Make a disk image's partitions reachable: ``/dev/loopNpM`` links into devtmpfs.

    The kernel creates a loop device's partition nodes (block major 259, minors given
    out as partitions appear) only in devtmpfs, which nspawn's /dev is not; their
    numbers cannot be known in advance. systemd opens the name sysfs gives
    (``/dev/loop0p1``): the link leads it to the kernel's node. devtmpfs is mounted
    inside the container (the same instance as the host's /dev), then made read-only
    for this mount only (a bind remount: the host's /dev stays as it is).
    """
    container.run("sh", "-c", f"mkdir -p {HOST_DEV} && mount -t devtmpfs devtmpfs {HOST_DEV} "
                  f"&& mount -o remount,bind,ro {HOST_DEV}", check=True)
    dev = container.root / "dev"
    for n in range(count):
        for m in range(1, partitions + 1):
            with contextlib.suppress(FileExistsError):
                os.symlink(f"{HOST_DEV}/loop{n}p{m}", dev / f"loop{n}p{m}")


_T = TypeVar("_T")


def _wait(probe: Callable[[], _T | None], timeout: float) -> _T | None:
    """The first true value ``probe`` gives within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def teardown(nspawn: Process | None, container: Container | None,
             dirs: Sequence[Path], policy: devices.DevicePolicy | None = None) -> None:
    """Power off, then kill by PID whatever is left, remove the cgroups, check loop devices.

    Runs with SIGINT held off so that a second Ctrl-C cannot leave a half-torn container.
    """
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    try:
        if nspawn is not None and nspawn.poll() is None:
            if container is not None:
                with contextlib.suppress(Exception):
                    container.run("systemctl", "poweroff", "--no-block", timeout=10)
            else:
                nspawn.terminate()  # nspawn turns SIGTERM into an orderly shutdown
            if not exited(nspawn, 15):
                nspawn.kill()
        kill_cgroups(dirs)
        if nspawn is not None:
            exited(nspawn, 5)
        if policy is not None:
            policy.stop()  # before its cgroup goes
        remove_cgroups(dirs)
        if container is not None:
            release_loops(container.copied)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def release_loops(image_names: Sequence[str]) -> list[str]:
    """Detach loop devices still backed by one of our copied images.

    The mounts die with the container's mount namespace and portabled sets
    autoclear, so normally there is nothing to do; a killed container can leave
    a device behind, and loop devices are global to the host.
    """
    detached = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            path = backing.read_text().strip().removesuffix(" (deleted)")
            if path.startswith("/var/lib/portables/") and Path(path).name in image_names:
                dev = f"/dev/{backing.parent.parent.name}"
                run(["losetup", "-d", dev], check=False)
                detached.append(dev)
    return detached


def loops_in_use(image_names: Sequence[str]) -> list[str]:
    """Loop devices backed by one of these image names (for checks after teardown)."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            path = backing.read_text().strip().removesuffix(" (deleted)")
            if path.startswith("/var/lib/portables/") and Path(path).name in image_names:
                found.append(backing.parent.parent.name)
    return found
