"""Writing a file so that a reader sees the old one or the whole new one, never a part.

An image is written to a temporary file beside it (``.NAME.PID.XXXXXXXX.tmp``, locked while
the build runs), checked, and renamed over the old one; files that go beside it (verity
sidecars) are staged and renamed just before it. A build killed outright leaves its
temporary file; the next build of the same image removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from portable_service.run import pid_alive


class Staged(Protocol):
    """Files staged to go beside the image (:class:`portable_service.builder.verity.SidecarSet`)."""

    def commit(self) -> None: ...

    def discard(self) -> None: ...


def write_atomically(out: Path, write: Callable[[Path], None],
                     check: Callable[[Path], None] | None = None,
                     sidecars: Callable[[Path], Staged] | None = None) -> None:
    """Write to a temporary file beside ``out``, ``check`` it, then rename it over ``out``.

    ``sidecars`` stages the files that go beside the image (verity), renamed into place
    just before it.

    The temporary file is ``.NAME.PID.XXXXXXXX.tmp``, locked (flock) while the build
    runs. A build killed outright (``kill -9``, a power cut) cannot remove it; the next
    build of ``out`` does (:func:`remove_stale_temporaries`).
    """
    remove_stale_temporaries(out)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.{os.getpid()}.", suffix=TMP_SUFFIX,
                                    dir=out.parent)
    tmp = Path(tmp_name)
    staged: Staged | None = None
    try:
        # held until the end: another build's cleanup leaves a locked file alone even when
        # it cannot see our pid (a build in another pid namespace writing to the same folder)
        with contextlib.suppress(OSError):  # a file system without locks: the pid still says
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        write(tmp)
        os.chmod(tmp, 0o644)
        if check is not None:
            check(tmp)
        staged = sidecars(tmp) if sidecars is not None else None
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if staged is not None:
            staged.commit()
        os.replace(tmp, out)
        dir_fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.close(fd)
        if staged is not None:
            staged.discard()


TMP_SUFFIX = ".tmp"


def temporary_pid(out: Path, name: str) -> int | None:
    """The builder's pid in the name of one of ``out``'s temporary files, else None."""
    prefix = f".{out.name}."
    if not (name.startswith(prefix) and name.endswith(TMP_SUFFIX)):
        return None
    parts = name[len(prefix):-len(TMP_SUFFIX)].split(".")
    if len(parts) != 2 or not parts[0].isdigit() or not parts[1]:
        return None
    return int(parts[0])


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove temporary files left beside ``out`` by builds that were killed; the removed.

    Only files named with a pid that is no longer alive and that no process holds
    locked are removed: a running build's file is never touched.
    """
    try:
        names = os.listdir(out.parent)
    except OSError:
        return []
    removed: list[Path] = []
    for name in sorted(names):
        pid = temporary_pid(out, name)
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        path = out.parent / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live build holds it, in a pid namespace we cannot see
            except OSError:
                pass  # a file system without locks: the dead pid decides alone
            st, now = os.fstat(fd), os.lstat(path)
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # gone already, or not ours to remove
        finally:
            os.close(fd)
    return removed
