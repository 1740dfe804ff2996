"""The erofs writer: the tree staged in a private folder, packed by ``mkfs.erofs``.

erofs-utils before 1.7 cannot read a tar stream, so the tree is copied into a fresh
folder with exactly the tree's modes (the host files' own metadata never reaches the
image). Reproducible: every inode's time and the build time are ``-T`` (the build's
SOURCE_DATE_EPOCH), owners are root (``--all-root``), and the file system UUID is derived
from the image's name (``-U``), so the same tree gives the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from portable_service.builder.writers.options import (
    DEFAULT_COMPRESSION,
    PackOptions,
    split_compression,
)
from portable_service.errors import SpecError, ToolError
from portable_service.fs.tree import ImageTree, Kind
from portable_service.progress import Reporter
from portable_service.run import find_tool, run

# The image is mounted by the host's kernel, whatever built it. Compressed clusters stay at
# mkfs.erofs' default (one 4 KiB block): larger ones ("big pclusters", -C, 17% smaller for
# lz4hc on the lighttpd benchmark) need Linux 5.13+, and Debian 11 runs 5.10. erofs' lzma
# needs 5.16+, deflate 6.6+, zstd 6.10+ (a choice the user makes by naming them).

# squash-compression's names (mksquashfs syntax) and what erofs calls the same codec
SQUASHFS_NAMES = {"lz4": "lz4", "xz": "lzma", "gzip": "deflate", "zstd": "zstd"}
# erofs' own compressor names, accepted as they are; "none" stores files uncompressed
EROFS_NAMES = ("lz4", "lz4hc", "lzma", "deflate", "zstd", "none")


@dataclass(frozen=True)
class ErofsCompression:
    name: str  # an erofs compressor, or "none"
    level: int | None = None

    def args(self) -> list[str]:
        if self.name == "none":
            return []
        return [f"-z{self.name}" + ("" if self.level is None else f",{self.level}")]


def parse_erofs_compression(text: str, available: tuple[str, ...] | None = None) -> ErofsCompression:
    """squash-compression for erofs: a squashfs name (mapped) or an erofs one, with
    ``-Xcompression-level N`` (or ``-Xhc``-less levels) as the level."""
    compression = split_compression(text)  # the setting's words, read as for squashfs
    given, opts = compression.name, compression.options
    name = SQUASHFS_NAMES.get(given, given)
    if name not in EROFS_NAMES:
        raise SpecError(f"squash-compression {given!r} has no erofs equivalent",
                        f"with writer erofs use one of: {', '.join(EROFS_NAMES)}")
    level = None
    i = 0
    while i < len(opts):
        if opts[i] == "-Xcompression-level" and i + 1 < len(opts) and opts[i + 1].isdigit():
            level = int(opts[i + 1])
            i += 2
        elif opts[i] == "-Xdict-size" and i + 1 < len(opts):
            i += 2  # xz's dictionary: erofs' MicroLZMA sizes its own (the default maps here)
        else:
            raise SpecError(f"squash-compression option {opts[i]!r} has no erofs equivalent",
                            "with writer erofs only -Xcompression-level N applies")
    if available is not None and name != "none" and name not in available:
        mapped = f" (erofs' {name})" if given != name else ""
        raise SpecError(f"squash-compression {given}{mapped}: this mkfs.erofs offers only "
                        f"{', '.join(available)}",
                        f"set squash-compression to {available[0]!r} (or 'none'), or install "
                        "a newer erofs-utils")
    return ErofsCompression(name, level)


def image_uuid(seed: str) -> uuid.UUID:
    """The file system UUID: fixed per image name, so rebuilds are byte-identical."""
    return uuid.UUID(bytes=hashlib.sha256(b"erofs\0" + seed.encode()).digest()[:16], version=4)


_AVAILABLE = re.compile(r"Available compressors are:\s*(.*)")


@dataclass(frozen=True)
class ErofsWriter:
    binary: Path
    compressors: tuple[str, ...]
    seed: str = ""
    name: str = "erofs"

    @classmethod
    def find(cls, seed: str = "") -> ErofsWriter:
        binary = find_tool("mkfs.erofs", reason="to pack an erofs image")
        out = run([binary, "--help"], check=False)
        text = (out.stdout + out.stderr).decode(errors="replace")
        match = _AVAILABLE.search(text)
        found = tuple(c.strip() for c in match.group(1).split(",")) if match else ("lz4",)
        return cls(binary, tuple(c for c in found if c), seed)

    def compression(self, options: PackOptions) -> ErofsCompression:
        return self.compression_for(shlex.join([options.compression.name,
                                                *options.compression.options]))

    def compression_for(self, text: str) -> ErofsCompression:
        """squash-compression as this mkfs.erofs applies it; one it lacks is refused."""
        if shlex.split(text) == shlex.split(DEFAULT_COMPRESSION) and \
                "lzma" not in self.compressors:
            # the spec's default (xz) maps to erofs' lzma; an erofs-utils without it (1.5,
            # Debian 12) gets the strongest it has rather than a refusal of the default
            text = "lz4hc" if "lz4hc" in self.compressors else self.compressors[0]
        return parse_erofs_compression(text, self.compressors)

    def command(self, staging: Path, out: Path, options: PackOptions) -> list[str]:
        compression = self.compression(options)
        return [str(self.binary), "--quiet", "--all-root", f"-T{options.mtime}",
                f"-U{image_uuid(self.seed)}", *compression.args(), str(out), str(staging)]

    def write(self, tree: ImageTree, out: Path, options: PackOptions, reporter: Reporter) -> None:
        self.command(Path("."), out, options)  # a bad compressor fails before any copying
        with _staging(out.parent) as staging:
            with reporter.bytes_bar("staging", tree.total_size()):
                stage(tree, staging, reporter)
            # SOURCE_DATE_EPOCH: erofs-utils 1.6+ read it for the build time as well
            run(self.command(staging, out, options),
                env={"SOURCE_DATE_EPOCH": str(options.mtime)})


@contextlib.contextmanager
def _staging(near: Path) -> Iterator[Path]:
    # beside the output: same file system, so no surprise about free space in /tmp
    path = Path(tempfile.mkdtemp(prefix=".erofs-staging.", dir=near))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stage(tree: ImageTree, root: Path, reporter: Reporter) -> None:
    """Lay the tree out below ``root`` with the tree's modes and xattrs, nothing else."""
    dirs: list[tuple[Path, int]] = []
    for entry in tree:
        rel = str(entry.path).lstrip("/")
        dest = root / rel if rel else root
        if entry.kind is Kind.DIR:
            dest.mkdir(exist_ok=True)
            dirs.append((dest, entry.mode))  # modes set last: a 0555 folder must be filled first
        elif entry.kind is Kind.SYMLINK:
            os.symlink(entry.target or "", dest)
        else:
            try:
                with entry.open() as src, open(dest, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                        reporter.advance(len(chunk))
            except OSError as e:
                raise ToolError(f"cannot read {e.filename or entry.source}: {e.strerror} (it "
                                "changed while the image was written?)",
                                "build again when it is in place and readable") from None
            os.chmod(dest, entry.mode)
        for key, value in entry.xattrs:
            try:
                os.setxattr(dest, key, value, follow_symlinks=False)
            except OSError as e:
                # security.* (file capabilities) needs CAP_SETFCAP on the staging copy
                raise ToolError(f"cannot give the staging copy of {entry.path} its {key} "
                                f"attribute: {e.strerror}",
                                "build as root, or use writer mksquashfs or native (they take "
                                "attributes from the tree, not from a copy)") from None
    for path, mode in reversed(dirs):
        os.chmod(path, mode)
