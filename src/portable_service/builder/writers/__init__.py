"""Writers turn an image tree into an image file. They are interchangeable behind :class:`Writer`.

A writer gets the tree, the options and a path to write (a temporary file
the builder renames into place): it never decides where the image lives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from portable_service.builder.writers.options import Compression, PackOptions
from portable_service.fs.tree import ImageTree
from portable_service.progress import Reporter


class Writer(Protocol):
    # read-only: implementations name themselves with a class attribute or a frozen field
    @property
    def name(self) -> str: ...

    def write(self, tree: ImageTree, out: Path, options: PackOptions, reporter: Reporter) -> None:
        """Write the whole image to ``out`` (an existing, empty file)."""


def select_writer(writer: str, squashfs_tools: Path | None = None, *, seed: str = "",
                  compression: Compression | None = None) -> Writer:
    """The spec's ``writer``: ``auto`` takes mksquashfs when it is installed (or named with
    ``squashfs_tools``), else the native writer. erofs takes ``seed`` (the image name) for its
    fixed UUID, and refuses a ``compression`` its mkfs.erofs lacks before any work is done."""
    from portable_service.builder.writers.mksquashfs import MksquashfsWriter
    from portable_service.errors import ToolError

    if writer == "mksquashfs":
        return MksquashfsWriter.find(squashfs_tools)
    if writer == "native":
        return _native()
    if writer == "erofs":
        from portable_service.builder.writers.erofs import ErofsWriter

        erofs = ErofsWriter.find(seed=seed)
        if compression is not None:
            erofs.compression_for(str(compression))
        return erofs
    try:
        return MksquashfsWriter.find(squashfs_tools)
    except ToolError:
        if squashfs_tools is not None:
            raise
        return _native()


def _native() -> Writer:
    from portable_service.builder.writers.native import NativeWriter

    return NativeWriter()
