"""The writer's fast paths give the bytes of its plain paths: inline against threaded
compression, batches of blocks per thread task, in-memory files against streamed ones, host
files read by path against files read through their opener."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from portable_service.squashfs.compressor import from_options
from portable_service.squashfs.data import BlockProcessor
from portable_service.squashfs.errors import InputError
from portable_service.squashfs.writer import Node, WriterOptions, nodes_from_directory, write_image
from tests.squashfs.conftest import describe_dir, describe_image, unsquashfs_extract

MTIME = 1_700_000_000


def image_bytes(nodes: list[Node], compression: str, block: int, *, workers: int | None,
                inline: bool | None) -> bytes:
    name, *opts = compression.split()
    out = io.BytesIO()
    write_image(nodes, out, WriterOptions(from_options(name, tuple(opts), block), block, MTIME,
                                          workers=workers, inline=inline))
    return out.getvalue()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Blocks that compress, blocks that do not, zero blocks, tails, duplicates, same sizes."""
    root = tmp_path_factory.mktemp("mixed") / "root"
    (root / "d").mkdir(parents=True)
    (root / "d/text").write_bytes(b"".join(b"line %d\n" % i for i in range(60_000)))
    (root / "d/random").write_bytes(os.urandom(300_000))
    (root / "d/copy").write_bytes((root / "d/random").read_bytes())
    (root / "zeros").write_bytes(bytes(200_000) + b"end")
    (root / "big").write_bytes(os.urandom(1 << 20) + b"x" * (1 << 20) + b"tail")
    (root / "big-zeros").write_bytes(bytes(3 << 20) + os.urandom(5000))  # read as zeros
    with open(root / "big-holes", "wb") as f:  # holes the writer does not read
        f.truncate(4 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(200_000))
    for i in range(50):  # many small files, several of one size and of different bytes
        (root / f"s{i:02d}").write_bytes(b"%02d" % (i % 7) * (i % 5 + 1))
    (root / "link").symlink_to("d/text")
    return root


@pytest.mark.parametrize("compression", ["lz4", "zstd", "gzip"])
@pytest.mark.parametrize("block", [4096, 131072])
def test_inline_threaded_and_batched_give_the_same_image(mixed: Path, tmp_path: Path,
                                                         compression: str, block: int) -> None:
    nodes = nodes_from_directory(mixed, mtime=MTIME)
    inline = image_bytes(nodes, compression, block, workers=2, inline=True)
    one_thread = image_bytes(nodes, compression, block, workers=1, inline=None)
    # threads: one block per task for slow compressors, batches of many for lz4 (fast)
    threaded = image_bytes(nodes, compression, block, workers=2, inline=False)
    # the default: lz4 reads and compresses large files' blocks in ranges in the threads
    default = image_bytes(nodes, compression, block, workers=2, inline=None)
    assert inline == one_thread == threaded == default
    image = tmp_path / "img"
    image.write_bytes(threaded)
    assert describe_image(image) == describe_dir(mixed)
    assert describe_dir(unsquashfs_extract(image, tmp_path / "x")) == describe_dir(mixed)


def test_a_large_file_that_shrinks_is_one_error_and_leaves_no_descriptor(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(3 << 20))
    nodes = nodes_from_directory(src, mtime=MTIME)
    # listed at 3 MiB, read in ranges by the threads: the one with the new end comes short
    os.truncate(src / "f", (2 << 20) + 1000)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(InputError, match=r"f shrank while the image was written"):
        image_bytes(nodes, "lz4", 131072, workers=2, inline=None)
    assert set(os.listdir("/proc/self/fd")) <= before


@pytest.mark.parametrize("inline", [True, None])
def test_a_large_file_cut_at_a_block_is_said_to_have_shrunk(tmp_path: Path,
                                                           inline: bool | None) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(3 << 20))
    nodes = nodes_from_directory(src, mtime=MTIME)
    # no data after 2 MiB: a hole to the file system, but the file ends there
    os.truncate(src / "f", 2 << 20)
    with pytest.raises(InputError, match=r"f shrank while the image was written"):
        image_bytes(nodes, "lz4", 131072, workers=2, inline=inline)


def test_lz4_compresses_inline_and_in_ranges_by_default_and_zstd_in_threads() -> None:
    out = io.BytesIO()
    lz4 = BlockProcessor(out, 0, from_options("lz4", (), 4096), 4096, workers=2)
    zstd = BlockProcessor(out, 0, from_options("zstd", (), 4096), 4096, workers=2)
    lz4_hc = BlockProcessor(out, 0, from_options("lz4", ("-Xhc",), 4096), 4096, workers=2)
    try:
        assert lz4.pool is not None and lz4.ranges  # for large files' ranges only
        assert BlockProcessor(out, 0, from_options("lz4", (), 4096), 4096, workers=1).pool is None
        assert zstd.pool is not None and zstd.batch_bytes == 4096 and not zstd.ranges
        assert lz4_hc.pool is not None and lz4_hc.batch_bytes == 4096 and not lz4_hc.ranges
        forced = BlockProcessor(out, 0, from_options("lz4", (), 4096), 4096, workers=2,
                                inline=False)
        assert forced.pool is not None and forced.batch_bytes == 1 << 20 and not forced.ranges
        forced.finish()
    finally:
        for bp in (lz4, zstd, lz4_hc):
            bp.finish()


@pytest.mark.parametrize("fragments", [True, False])
@pytest.mark.parametrize("inline", [True, False])
def test_bytes_in_memory_are_stored_as_a_streamed_file_would_be(fragments: bool,
                                                                 inline: bool) -> None:
    contents = [os.urandom(10_000), bytes(8192) + b"z", b"a" * 20_000, os.urandom(3), bytes(4096)]

    def run(in_memory: bool) -> tuple[bytes, list[tuple[int, list[int], int, int, int]]]:
        out = io.BytesIO()
        bp = BlockProcessor(out, 0, from_options("lz4", (), 4096), 4096, workers=2,
                            fragments=fragments, inline=inline)
        got = [bp.add_bytes(c, "f") if in_memory else bp.add_file(io.BytesIO(c), len(c), "f")
               for c in contents]
        bp.finish()
        table = [(fd.blocks_start, fd.blocks, fd.fragment, fd.frag_offset, fd.sparse)
                 for fd in got]
        return out.getvalue() + repr(bp.fragment_table).encode(), table

    assert run(True) == run(False)


def test_files_read_by_path_give_the_image_of_files_read_through_opener(mixed: Path) -> None:
    with_source = nodes_from_directory(mixed, mtime=MTIME)
    assert any(n.source for n in with_source)
    without = [replace(n, source=None) for n in with_source]
    assert (image_bytes(with_source, "gzip", 131072, workers=2, inline=None)
            == image_bytes(without, "gzip", 131072, workers=2, inline=None))


def test_a_source_that_does_not_open_leaves_the_error_to_the_opener(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone")

    def opener() -> io.BufferedReader:
        return open(gone, "rb")

    nodes = [Node((), "dir", 0o755), Node((b"f",), "file", 0o644, size=5, opener=opener,
                                          source=gone)]
    with pytest.raises(InputError, match=f"cannot read {gone}: No such file or directory"):
        image_bytes(nodes, "gzip", 131072, workers=2, inline=None)


def test_the_squashfs_library_loads_without_the_builder() -> None:
    code = ("import sys, portable_service.squashfs.writer, portable_service.squashfs.reader; "
            "print(sorted(m for m in sys.modules if m.startswith('portable_service.')))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=env).stdout
    assert "portable_service.squashfs.writer" in out
    assert "portable_service.builder" not in out and "portable_service.api" not in out
    # the package's public names still load, on first use
    code = "from portable_service import PortableServiceError, Spec, build; print(build.__name__)"
    assert subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, env=env).stdout == "build\n"
