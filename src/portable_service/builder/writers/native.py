"""The native writer: the image tree written as squashfs by our own Python code.

It needs no external tool. File bytes stream from their sources straight
into the image (no staging copy); owners are root, every time is the
build's fixed time, so the result is reproducible.
"""

from __future__ import annotations

import os
from pathlib import Path

from portable_service.builder.writers.options import PackOptions
from portable_service.errors import TreeError
from portable_service.fs.errors import squashfs_errors
from portable_service.fs.tree import Entry, ImageTree, Kind
from portable_service.progress import Reporter
from portable_service.squashfs.compressor import from_options
from portable_service.squashfs.writer import Node, WriterOptions, write_image


def tree_nodes(tree: ImageTree, mtime: int) -> list[Node]:
    return [node_of(entry, mtime) for entry in tree]


def node_of(entry: Entry, mtime: int) -> Node:
    parts = tuple(os.fsencode(p) for p in entry.path.parts[1:])
    if entry.kind is Kind.DIR:
        return Node(parts, "dir", entry.mode, mtime=mtime, xattrs=entry.xattrs)
    if entry.kind is Kind.SYMLINK:
        return Node(parts, "symlink", 0o777, mtime=mtime, target=os.fsencode(entry.target or ""),
                    xattrs=entry.xattrs)
    try:
        size = entry.size
    except OSError as e:
        raise TreeError(f"cannot read {entry.source} for {entry.path}: {e.strerror}",
                         "check that it exists and is readable") from None
    # a host file's path lets the writer read it without a file object (see Node.source)
    source = str(entry.source) if entry.data is None and entry.source is not None else None
    return Node(parts, "file", entry.mode, mtime=mtime, size=size, opener=entry.open,
                xattrs=entry.xattrs, source=source)


class NativeWriter:
    name = "native"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers

    def write(self, tree: ImageTree, out: Path, options: PackOptions, reporter: Reporter) -> None:
        with squashfs_errors():
            compressor = from_options(options.compression.name, options.compression.options,
                                      options.block_size)
        opts = WriterOptions(compressor, options.block_size, options.mtime, self.workers)
        nodes = tree_nodes(tree, options.mtime)
        with open(out, "wb", buffering=1 << 20) as f, squashfs_errors(), \
                reporter.bytes_bar("compressing", sum(n.size for n in nodes)):
            write_image(nodes, f, opts, reporter.advance)
