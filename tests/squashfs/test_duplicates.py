"""Duplicate files stored once, and images no larger than mksquashfs's of the same tree.

Small files are read whole and matched by hash as they are written; larger ones
that share a size are hashed in a pass of their own (writer.IN_MEMORY). Both
must share the stored bytes, as mksquashfs does.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from portable_service.squashfs.compressor import from_options
from portable_service.squashfs.errors import InputError
from portable_service.squashfs.reader import SquashfsImage
from portable_service.squashfs.writer import IN_MEMORY, WriterOptions, nodes_from_directory, write_image
from tests.conftest import mksquashfs, require_tool
from tests.squashfs.conftest import unsquashfs_extract, write_dir

MTIME = 1_700_000_000


def make_copies(root: Path, copies: int) -> Path:
    """``copies`` copies of one folder of small text files, a block-sized file and a large one."""
    rng = random.Random(7)
    one = root / "c0"
    one.mkdir(parents=True)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(300)]
    for i in range(120):
        (one / f"small-{i}").write_bytes(b" ".join(rng.choice(words) for _ in range(rng.randint(1, 400))))
    (one / "block").write_bytes(os.urandom(128 << 10))
    (one / "large").write_bytes(os.urandom(IN_MEMORY + 300_000))  # over IN_MEMORY: the pre-pass
    (one / "link").symlink_to("small-1")
    for i in range(1, copies):
        shutil.copytree(one, root / f"c{i}", symlinks=True)
    return root


def where(im: SquashfsImage, path: str) -> tuple[int, int, int]:
    ino = im._lookup(path)
    return ino.blocks_start, ino.fragment, ino.frag_offset


@pytest.mark.parametrize("compression", ["gzip", "lz4"])
def test_copies_share_their_bytes(tmp_path: Path, compression: str) -> None:
    if compression == "lz4":
        pytest.importorskip("lz4.block")
    src = make_copies(tmp_path / "src", 4)
    image = write_dir(src, tmp_path / "img", compression)
    with SquashfsImage(image) as im:
        for name in ("small-0", "small-77", "block", "large"):
            first = where(im, f"/c0/{name}")
            assert all(where(im, f"/c{i}/{name}") == first for i in range(1, 4)), name
            assert im.read(f"/c3/{name}") == (src / "c0" / name).read_bytes()
        # different files do not share
        assert where(im, "/c0/small-0") != where(im, "/c0/small-1")
    # unsquashfs reads every copy back byte for byte
    out = unsquashfs_extract(image, tmp_path / "x")
    for i in range(4):
        for name in ("small-5", "block", "large"):
            assert (out / f"c{i}" / name).read_bytes() == (src / "c0" / name).read_bytes()


@pytest.mark.parametrize("compression", ["gzip", "lz4"])
def test_no_larger_than_mksquashfs(tmp_path: Path, compression: str) -> None:
    """The tree of many copies: our image within 0.5% of mksquashfs's of the same tree."""
    if compression == "lz4":
        pytest.importorskip("lz4.block")
    src = make_copies(tmp_path / "src", 8)
    ours = write_dir(src, tmp_path / "ours", compression).stat().st_size
    theirs = mksquashfs(src, tmp_path / "theirs", "-comp", compression).stat().st_size
    once = write_dir(src / "c0", tmp_path / "once", compression).stat().st_size
    assert ours <= theirs * 1.005, (ours, theirs)
    # eight copies cost little more than one: the listings and inodes only
    assert ours < once * 1.5, (ours, once)


def test_duplicates_off_stores_every_copy(tmp_path: Path) -> None:
    src = make_copies(tmp_path / "src", 3)
    sizes = []
    for dedupe in (True, False):
        out = tmp_path / f"img-{dedupe}"
        opts = WriterOptions(from_options("gzip", (), 128 << 10), 128 << 10, MTIME, dedupe=dedupe)
        with open(out, "wb") as f:
            write_image(nodes_from_directory(src, mtime=MTIME), f, opts)
        sizes.append(out.stat().st_size)
        with SquashfsImage(out) as im:
            assert (where(im, "/c0/small-3") == where(im, "/c2/small-3")) is dedupe
    assert sizes[1] > 2.5 * sizes[0]


def test_small_file_that_grew_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"abc")
    nodes = nodes_from_directory(src)
    (src / "f").write_bytes(b"abcdef")
    with open(tmp_path / "img", "wb") as f, pytest.raises(InputError, match="grew"):
        write_image(nodes, f, WriterOptions(from_options("gzip", (), 4096), 4096, 0))


def test_same_size_different_bytes_are_not_merged(tmp_path: Path) -> None:
    """Files of one size with other bytes (small and large) keep their own data."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b"):
        (src / name).write_bytes(os.urandom(5000))
        (src / f"L{name}").write_bytes(os.urandom(IN_MEMORY + 10))
    image = write_dir(src, tmp_path / "img", "gzip")
    require_tool("unsquashfs")
    out = unsquashfs_extract(image, tmp_path / "x")
    for name in ("a", "b", "La", "Lb"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    with SquashfsImage(image) as im:
        assert where(im, "/a") != where(im, "/b") and where(im, "/La") != where(im, "/Lb")
