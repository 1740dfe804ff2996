"""The build: spec -> units -> closure -> image tree -> writer -> image, written atomically."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from portable_service.builder import layout
from portable_service.builder import units as units_mod
from portable_service.builder.closure import Closure
from portable_service.builder.closure.secrets import check_no_secrets
from portable_service.builder.closure.walk import resolve
from portable_service.builder.spec import Spec, check_spec
from portable_service.builder.writers import Writer, select_writer
from portable_service.builder.writers.options import PackOptions
from portable_service.errors import PortableServiceError, SpecError, ToolError
from portable_service.fs.tree import ImageTree
from portable_service.progress import QUIET, Reporter
from portable_service.run import pid_alive


@dataclass(frozen=True)
class Plan:
    """Everything decided before a byte is written."""

    spec: Spec
    units: list[units_mod.Unit]
    closure: Closure
    tree: ImageTree
    writer: Writer
    options: PackOptions


def source_date_epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        value = int(raw)
    except ValueError:
        raise SpecError(f"SOURCE_DATE_EPOCH={raw!r} is not a whole number of seconds",
                        "unset it or set it to e.g. 0") from None
    if not 0 <= value < 2**32:
        raise SpecError(f"SOURCE_DATE_EPOCH={raw} is out of range", "use 0 to 4294967295")
    return value


def plan(spec: Spec, reporter: Reporter = QUIET) -> Plan:
    """Check everything and lay out the image tree; nothing is written."""
    check_spec(spec)  # a Spec built in code has not been through the parser's checks
    # options and tools first: a bad setting or a missing tool is reported before any work
    options = PackOptions(
        compression=spec.squash_compression,
        block_size=spec.squash_block_size,
        mtime=source_date_epoch(),
    )
    writer = select_writer(spec.writer, spec.squashfs_tools)
    with reporter.step(f"reading {len(spec.units)} unit source(s)"):
        units = units_mod.load_units(spec)
    for unit in units:
        if unit.drop_ins:
            reporter.info(f"merged {', '.join(unit.drop_ins)} into {unit.name}: portabled does "
                          "not read drop-ins inside an image")
    with reporter.step("resolving the closure"):
        closure = resolve(spec, units)
        check_no_secrets(closure)
    if not reporter.quiet:
        for note in closure.notes:  # one line each, like warnings: they are about the image
            reporter.console.print(f"portable-service: {note}", markup=False, highlight=False,
                                   soft_wrap=True)
    for warning in closure.warnings:
        reporter.warn(warning)
    with reporter.step("laying out the image tree"):
        tree = layout.assemble(spec, units, closure)
    return Plan(spec, units, closure, tree, writer, options)


# reads a written image back before it replaces the old one (look.verify.check_written):
# (written file, image name, warn, allow-missing)
Checker = Callable[[Path, str, Callable[[str], None], bool], None]


def build_image(spec: Spec, output_dir: Path, reporter: Reporter = QUIET,
                inspect: Callable[[Plan], None] | None = None, *,
                check: Checker | None) -> Path:
    """Build ``output_dir/<pname>_<version>.raw``; on any failure the old image stays as it was.

    ``inspect`` sees the plan before anything is written (``--print-closure``). ``check``
    (the read side's, given by the caller: the builder sits below it) reads the written
    file before it replaces the old image, so an image portabled would refuse never lands;
    None writes unchecked. :func:`portable_service.api.build_image` passes it.
    """
    if check is not None:
        _check_verifiable(spec)
    p = plan(spec, reporter)
    if inspect is not None:
        inspect(p)
    out = output_dir / spec.image_name
    _prepare_dir(output_dir)

    def check_tmp(tmp: Path) -> None:
        assert check is not None

        def say(line: str) -> None:  # shown even when quiet, like warnings
            reporter.console.print(f"portable-service: verify: {line}", markup=False,
                                   highlight=False, soft_wrap=True)

        with reporter.step("verifying the image"):
            check(tmp, out.name, say, spec.allow_missing)

    with reporter.step(f"writing {out} with {p.writer.name} ({len(p.tree)} entries)"):
        write_atomically(out, lambda tmp: p.writer.write(p.tree, tmp, p.options, reporter),
                         check_tmp if check is not None else None)
    return out


def _check_verifiable(spec: Spec) -> None:
    """The written image is read back to be verified: its compressor must be readable here."""
    from portable_service.squashfs import compressor

    name = spec.squash_compression.name
    if not compressor.readable(name):
        raise ToolError(f"{name} images are verified by reading them back, which this "
                        "installation cannot do",
                        f"{compressor.install_hint(name)}; or build with --no-verify")


def _prepare_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PortableServiceError(f"cannot create output folder {output_dir}: {e.strerror}",
                                   "choose another with -o") from None
    if not os.access(output_dir, os.W_OK):
        raise PortableServiceError(f"output folder {output_dir} is not writable",
                                   "choose another with -o")


def write_atomically(out: Path, write: Callable[[Path], None],
                     check: Callable[[Path], None] | None = None) -> None:
    """Write to a temporary file beside ``out``, ``check`` it, then rename it over ``out``.

    The temporary file is ``.NAME.PID.XXXXXXXX.tmp``, locked (flock) while the build
    runs. A build killed outright (``kill -9``, a power cut) cannot remove it; the next
    build of ``out`` does (:func:`remove_stale_temporaries`).
    """
    remove_stale_temporaries(out)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.{os.getpid()}.", suffix=TMP_SUFFIX,
                                    dir=out.parent)
    tmp = Path(tmp_name)
    try:
        # held until the end: another build's cleanup leaves a locked file alone even when
        # it cannot see our pid (a build in another pid namespace writing to the same folder)
        with contextlib.suppress(OSError):  # a file system without locks: the pid still says
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        write(tmp)
        os.chmod(tmp, 0o644)
        if check is not None:
            check(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
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
