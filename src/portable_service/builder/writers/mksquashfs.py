"""The mksquashfs writer: the tree is streamed to ``mksquashfs -tar`` as a tar archive.

Streaming a tar keeps sources where they are (no staging copy) and carries
modes, owners, times and xattrs exactly as the tree says, whatever the host
files' own metadata.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pty
import re
import struct
import tarfile
import termios
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from portable_service.builder.writers.options import PackOptions
from portable_service.errors import ToolError
from portable_service.fs.tree import Entry, ImageTree, Kind
from portable_service.progress import Reporter
from portable_service.run import PIPE, find_tool, output_message, run, spawn

MIN_VERSION = (4, 5)  # -tar, -root-mode and SOURCE_DATE_EPOCH arrived in 4.5


@dataclass(frozen=True)
class MksquashfsWriter:
    binary: Path
    name: str = "mksquashfs"

    @classmethod
    def find(cls, explicit: Path | None = None) -> MksquashfsWriter:
        binary = find_tool("mksquashfs", explicit, reason="to pack the image")
        version = mksquashfs_version(binary)
        if version < MIN_VERSION:
            raise ToolError(
                f"{binary} is version {'.'.join(map(str, version))}; 4.5 or newer is needed",
                "install squashfs-tools 4.5+, or use --writer native",
            )
        return cls(binary)

    def command(self, out: Path, options: PackOptions) -> list[str]:
        return [
            str(self.binary), "-", str(out), "-tar",
            # -quiet keeps only the progress bar, which drives ours (progress_reader)
            "-noappend", "-quiet", "-exit-on-error",
            "-all-root", "-root-mode", "755", "-no-hardlinks",
            "-b", str(options.block_size),
            *options.compression.mksquashfs_args(),
        ]

    def write(self, tree: ImageTree, out: Path, options: PackOptions, reporter: Reporter) -> None:
        # SOURCE_DATE_EPOCH fixes the filesystem time; inode times come from the tar.
        env = {"SOURCE_DATE_EPOCH": str(options.mtime)}
        # read mksquashfs' output while we feed it, so a full pipe cannot stall either side
        captured: dict[str, bytes] = {}
        readers: list[threading.Thread] = []
        # stdout on a pseudo-terminal: mksquashfs' stdio buffers a pipe until it exits, and
        # its progress bar is the only measure of the work it has done
        master, slave = _progress_channel()
        try:
            # spawn() kills mksquashfs if we leave the block early (an error, an interrupt)
            with spawn(self.command(out, options), env=env, stdin=PIPE, stdout=slave,
                       stderr=PIPE) as proc:
                os.close(slave)
                slave = -1
                assert proc.stdin is not None and proc.stderr is not None
                counter = ProgressReader(tree, options.block_size, reporter)
                for target in (lambda: captured.__setitem__("stdout", counter.read(master)),
                               lambda s=proc.stderr: captured.__setitem__("stderr", s.read())):
                    readers.append(threading.Thread(target=target, daemon=True))
                    readers[-1].start()
                try:
                    try:
                        with reporter.bytes_bar("compressing", tree.total_size()):
                            write_tar(tree, proc.stdin, options.mtime)
                            with contextlib.suppress(BrokenPipeError):
                                proc.stdin.close()
                            proc.wait()
                            for reader in readers:
                                reader.join()
                    except BrokenPipeError:
                        pass  # mksquashfs stopped early: its own message says why
                    except OSError as e:  # a source went away or became unreadable since the layout
                        raise ToolError(f"cannot read {e.filename}: {e.strerror} (it changed "
                                        "while the image was written?)",
                                        "build again when it is in place and readable") from None
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.close()
                    rc = proc.wait()
                finally:
                    if proc.poll() is None:
                        proc.kill()  # before joining: its pipes close only when it is gone
                        proc.wait()
                    for reader in readers:
                        reader.join()
        finally:
            if slave >= 0:
                os.close(slave)
        if rc != 0:
            raise ToolError(f"mksquashfs failed (exit {rc}): "
                            f"{output_message(captured.get('stdout'), captured.get('stderr'))}",
                            "fix what it names (often squash-compression), or try --writer native")


def _progress_channel() -> tuple[int, int]:
    """(our end, mksquashfs' stdout): a pseudo-terminal, else a pipe, where no pty can be
    had (a sandbox without /dev/ptmx): the build works, the bar moves only at the end."""
    try:
        master, slave = pty.openpty()
    except OSError:
        return os.pipe()
    # a terminal of 0 columns would give mksquashfs a bar of negative width
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    return master, slave


def tar_info(entry: Entry, mtime: int) -> tarfile.TarInfo:
    name = "." + str(entry.path) if str(entry.path) != "/" else "."
    info = tarfile.TarInfo(name)
    info.mode = entry.mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if entry.kind is Kind.DIR:
        info.type = tarfile.DIRTYPE
    elif entry.kind is Kind.SYMLINK:
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target or ""
    else:
        info.type = tarfile.REGTYPE
        info.size = entry.size
    if entry.xattrs:
        info.pax_headers = {
            f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in entry.xattrs
        }
    return info


def write_tar(tree: ImageTree, stream: IO[bytes], mtime: int) -> None:
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in tree:
            if str(entry.path) == "/":
                continue  # the root's mode is given by -root-mode
            info = tar_info(entry, mtime)
            if entry.kind is Kind.FILE:
                with entry.open() as f:
                    tar.addfile(info, _Checked(f, info.size, entry))
            elif entry.kind is Kind.SYMLINK:
                # mksquashfs 4.5.1 drops the leading '/' of a PAX linkpath (targets over
                # 100 bytes or not ASCII); a GNU long-link header keeps it. Links carry
                # no xattrs, so nothing PAX-only is lost.
                tar.format = tarfile.GNU_FORMAT
                try:
                    tar.addfile(info)
                finally:
                    tar.format = tarfile.PAX_FORMAT
            else:
                tar.addfile(info)


class _Checked(io.RawIOBase):
    """Reads a source for tarfile and refuses a file that changed size."""

    def __init__(self, f: BinaryIO, size: int, entry: Entry) -> None:
        self.f, self.left, self.entry = f, size, entry

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.left -= len(data)
        if (n and not data and self.left > 0) or self.left < 0:
            raise ToolError(f"{self.entry.source} changed size while the image was written",
                            "build again when it is no longer being written to")
        return data


# mksquashfs' bar: "[====-   ] 48/128  37%": blocks written of the blocks it knows of so far
_BAR = re.compile(rb"\]\s*(\d+)/(\d+)\s+\d+%")


class ProgressReader:
    """Reads mksquashfs' progress bar and moves ours by the blocks it has written.

    mksquashfs counts blocks (one per ``block_size`` of each file, the tail included); the
    total it shows grows while the tar is still being read, so the share done is taken
    against the tree's own count, known before the first byte, and shown in bytes.
    """

    def __init__(self, tree: ImageTree, block_size: int, reporter: Reporter) -> None:
        self.reporter = reporter
        self.total_bytes = tree.total_size()
        self.blocks = sum(-(-e.size // block_size) for e in tree if e.kind is Kind.FILE) or 1

    def read(self, fd: int) -> bytes:
        """Everything mksquashfs wrote (for its error message), moving the bar as it comes."""
        out = bytearray()
        try:
            while True:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the terminal's other end closed, mksquashfs is done
                    break
                if not chunk:
                    break
                out += chunk
                self.seen(bytes(out[-256:]))
        finally:
            os.close(fd)
        return bytes(out)

    def seen(self, text: bytes) -> None:
        found = _BAR.findall(text)
        if found:
            done = int(found[-1][0])
            self.reporter.update(min(done * self.total_bytes // self.blocks, self.total_bytes))


def mksquashfs_version(binary: Path) -> tuple[int, ...]:
    out = run([binary, "-version"], timeout=30, check=False).stdout.decode(errors="replace")
    for word in out.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]):
            return tuple(int(p) for p in parts[:2])
    raise ToolError(f"{binary} does not look like mksquashfs (no version in '{out[:60]}')",
                    "give the path of a real mksquashfs")
