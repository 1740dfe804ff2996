"""The one seam through which external tools are found and run.

Every process the tool starts goes through :func:`run` (wait for it) or :func:`spawn`
(stream to or from it): one environment policy (:func:`environment`), every command
echoed under ``--debug`` as ``+ cmd``, interrupts held while a child starts, a missing
or unrunnable program turned into one sentence.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from portable_service.errors import ToolError

log = logging.getLogger("portable_service")

# for callers of spawn(), which name the pipes they want without importing subprocess
PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
Process = subprocess.Popen[bytes]  # what spawn() gives, for callers' type hints

# Where a tool is most likely to come from on Debian-like hosts; used in hints.
PACKAGE_OF = {
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "systemd-nspawn": "systemd-container",
    "portablectl": "systemd-container",
    "debootstrap": "debootstrap",
    "nix-store": "nix-bin",
    "mkfs.erofs": "erofs-utils",
    "fsck.erofs": "erofs-utils",
    "dump.erofs": "erofs-utils",
}


def find_tool(name: str, explicit: str | Path | None = None, *, reason: str = "") -> Path:
    """Return the tool's path, or raise one sentence saying how to get it.

    ``explicit`` is a path the user named: a file, or a folder (a package
    prefix like Nix's ``squashfsTools``) holding ``bin/NAME`` or ``NAME``.
    """
    why = f" (needed {reason})" if reason else ""
    if explicit is not None:
        p = Path(explicit)
        for candidate in (p, p / "bin" / name, p / name):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        raise ToolError(
            f"{name} not found at {p}{why}",
            f"give the path of an executable {name} or of a folder with bin/{name}",
        )
    found = shutil.which(name)
    if found is None:
        pkg = PACKAGE_OF.get(name, name)
        raise ToolError(f"{name} not found in PATH{why}", f"install it: apt-get install {pkg}")
    return Path(found)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while a child process is being started.

    A signal that lands inside ``subprocess.Popen`` would leave the child running
    with no one to stop it; held, it is delivered right after, once the caller
    owns the child and its cleanup.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])


class TimedOut(ToolError):
    """A command did not finish within its time; callers that know more say what it was."""


def environment(env: Mapping[str, str] | None = None, *, inherit: bool = True) -> dict[str, str]:
    """The environment of every child: a fixed locale (tools' messages are parsed), then ``env``.

    ``inherit=False`` starts from nothing (``env`` then names PATH and the rest): for
    commands run inside a container, where the host's variables mean nothing.
    """
    base = dict(os.environ) if inherit else {}
    return {**base, "LC_ALL": "C.UTF-8", **(env or {})}


def _argv(cmd: Sequence[str | os.PathLike[str]]) -> list[str]:
    argv = [os.fspath(c) for c in cmd]
    log.debug("+ %s", shlex.join(argv))
    return argv


def _not_started(argv: Sequence[str], e: OSError) -> ToolError:
    if isinstance(e, FileNotFoundError) and e.filename in (argv[0], None):
        return ToolError(f"{argv[0]} not found", "install it or fix the path")
    return ToolError(f"cannot run {argv[0]}: {e.strerror}", "check that it is executable")


@contextlib.contextmanager
def spawn(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    stdin: IO[bytes] | int | None = subprocess.DEVNULL,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    **kwargs: Any,
) -> Iterator[subprocess.Popen[bytes]]:
    """A child to stream to or from; it never outlives the block.

    An interrupt that lands while the child starts is held until the caller owns it
    (see :func:`interrupts_held`); on leaving the block, a child still running is killed
    and reaped, however the block was left. Callers wait for it themselves.
    """
    argv = _argv(cmd)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with interrupts_held():
            try:
                proc = subprocess.Popen(argv, env=environment(env, inherit=inherit_env),
                                        stdin=stdin, stdout=stdout, stderr=stderr, **kwargs)
            except OSError as e:
                raise _not_started(argv, e) from None
        yield proc
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def exited(proc: Process, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc``; whether it is gone."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    stdin: IO[bytes] | int | None = subprocess.DEVNULL,
    input: bytes | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to its end; a failure becomes a ToolError with its stderr.

    ``check=False`` returns the failed process instead; a timeout is :class:`TimedOut`.
    """
    argv = _argv(cmd)
    try:
        proc = subprocess.run(
            argv,
            env=environment(env, inherit=inherit_env),
            stdin=None if input is not None else stdin,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
            **kwargs,
        )
    except OSError as e:
        raise _not_started(argv, e) from None
    except subprocess.TimeoutExpired as e:
        raise TimedOut(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s") from e
    if check and proc.returncode != 0:
        raise ToolError(f"{Path(argv[0]).name} failed (exit {proc.returncode}): {tool_message(proc)}")
    return proc


def tool_message(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The tool's own error line: the first that says 'error', else the first it printed."""
    return output_message(proc.stdout, proc.stderr)


def output_message(stdout: bytes | None, stderr: bytes | None) -> str:
    """:func:`tool_message` for output a caller collected itself (a streamed child)."""
    text = (stderr or b"") + b"\n" + (stdout or b"")
    lines = [ln.strip() for ln in text.decode(errors="replace").splitlines()]
    # progress bars and blank lines say nothing about the failure
    lines = [ln for ln in lines if ln and not ln.startswith("[")]
    for line in lines:
        if "error" in line.lower():
            return line
    return lines[0] if lines else "no message"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts): for leftovers of dead runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
