"""Packing options shared by every writer, in mksquashfs syntax so a spec works with any writer."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from portable_service.errors import SpecError

COMPRESSORS = ("gzip", "xz", "zstd", "lz4", "lzo")
# mksquashfs writes these, but the kernel's squashfs cannot mount them: portabled then
# finds no file system in the image and says it "lacks os-release data"
UNMOUNTABLE = {"lzma": "use xz (LZMA2), which every kernel with squashfs mounts"}
MIN_BLOCK, MAX_BLOCK = 4096, 1 << 20


@dataclass(frozen=True)
class Compression:
    """A compressor name and its mksquashfs ``-X`` options, e.g. ``xz -Xdict-size 100%``."""

    name: str
    options: tuple[str, ...] = ()

    def __str__(self) -> str:
        """As written in a spec: ``xz -Xdict-size 100%``."""
        return shlex.join([self.name, *self.options])

    def mksquashfs_args(self) -> list[str]:
        return ["-comp", self.name, *self.options]


@dataclass(frozen=True)
class PackOptions:
    compression: Compression
    block_size: int
    mtime: int  # every inode's time and the filesystem's, from SOURCE_DATE_EPOCH


DEFAULT_COMPRESSION = "xz -Xdict-size 100%"  # the spec's default, as written


def split_compression(text: str) -> Compression:
    """The compressor's name and options as written (``xz -Xdict-size 100%``); which ones are
    valid depends on the writer (:func:`check_squashfs_compression`, erofs' own check)."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise SpecError(f"squash-compression {text!r} cannot be parsed: {e}") from None
    if not words:
        raise SpecError("squash-compression is empty", f"use one of: {', '.join(COMPRESSORS)}")
    name, *options = words
    return Compression(name, tuple(options))


def check_squashfs_compression(compression: Compression) -> Compression:
    """A compressor the kernel's squashfs mounts, with mksquashfs ``-X`` options only."""
    name = compression.name
    if name in UNMOUNTABLE:
        raise SpecError(f"squash-compression {name}: the kernel's squashfs cannot mount {name} "
                        "images, so portabled would refuse the image ('lacks os-release data')",
                        UNMOUNTABLE[name])
    if name not in COMPRESSORS:
        raise SpecError(
            f"squash-compression: unknown compressor {name!r}",
            f"use one of: {', '.join(COMPRESSORS)}",
        )
    for opt in compression.options:
        if opt.startswith("-") and not opt.startswith("-X"):
            raise SpecError(
                f"squash-compression option {opt!r} is not a compressor option",
                "only -X options belong here, e.g. 'xz -Xdict-size 100%'",
            )
    return compression


def parse_compression(text: str) -> Compression:
    return check_squashfs_compression(split_compression(text))


_SIZE = re.compile(r"^\s*(\d+)\s*([KkMm]?)\s*$")


def block_size_text(n: int) -> str:
    """A block size as written in a spec: ``1M``, ``128K``."""
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K"


def parse_block_size(text: str | int) -> int:
    match = _SIZE.match(str(text))
    if not match:
        raise SpecError(f"squash-block-size {text!r} is not a size", "use e.g. 128K or 1M")
    n = int(match.group(1)) * {"": 1, "k": 1024, "m": 1 << 20}[match.group(2).lower()]
    if n < MIN_BLOCK or n > MAX_BLOCK or n & (n - 1):
        raise SpecError(
            f"squash-block-size {text!r} is not a power of two from 4K to 1M",
            "use 4K, 8K, ..., 128K, ..., 1M",
        )
    return n
