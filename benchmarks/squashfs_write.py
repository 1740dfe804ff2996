"""Write one image with the native writer: the process squashfs_bench.py times.

It imports the squashfs library and nothing else (no benchmark harness), as a
command that only writes an image would, so its start-up and peak memory are the
writer's own.

    PYTHONPATH=src python3 benchmarks/squashfs_write.py TREE OUT "xz -Xdict-size 100%" 1M
"""

from __future__ import annotations

import sys

MTIME = 1_700_000_000


def parse_block_size(block: str) -> int:
    """128K, 1M or bytes, as mksquashfs -b takes them."""
    if block[-1:] in ("K", "M"):
        return int(block[:-1]) << (10 if block[-1] == "K" else 20)
    return int(block)


def main(tree: str, out: str, compression: str, block: str) -> None:
    from portable_service.squashfs.compressor import from_options
    from portable_service.squashfs.writer import WriterOptions, nodes_from_directory, write_image

    name, *opts = compression.split()
    bs = parse_block_size(block)
    with open(out, "wb", buffering=1 << 20) as f:
        write_image(nodes_from_directory(tree, mtime=MTIME), f,
                    WriterOptions(from_options(name, tuple(opts), bs), bs, MTIME))


if __name__ == "__main__":
    main(*sys.argv[1:5])
