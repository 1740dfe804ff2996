"""The reader's fast paths (one unpack per inode in a walk, blocks decoded ahead in threads,
resolved paths kept) give what the careful paths and unsquashfs give, and stay bounded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from portable_service.squashfs import reader
from portable_service.squashfs.errors import NotFoundError, SquashfsError
from portable_service.squashfs.reader import SquashfsImage
from tests.conftest import REPO, mksquashfs, require_tool, unsquashfs_list

BIG = 3 << 20  # 24 blocks of 128K, 3 of 1M: enough to run ahead of the reader


def _tree(root: Path) -> Path:
    """A large file with a tail in a fragment, a sparse one, and many small files."""
    root.mkdir()
    pattern = b"".join(i.to_bytes(4, "little") for i in range(1 << 16))  # compressible
    noise = os.urandom(1 << 18)  # and blocks that are not
    with (root / "big").open("wb") as f:
        while f.tell() < BIG:
            f.write(pattern[: 1 << 18])
            f.write(noise)
        f.truncate(BIG + 12_345)
    with (root / "holes").open("wb") as f:
        f.truncate(5 << 20)
        f.seek(2 << 20)
        f.write(b"middle" * 1000)
    (root / "many").mkdir()
    for i in range(700):  # inodes across metadata block boundaries
        (root / "many" / f"f{i:04d}").write_text(str(i) * (i % 7))
        if i % 50 == 0:
            (root / "many" / f"l{i:04d}").symlink_to("x" * (i + 1))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tree(tmp_path_factory.mktemp("read") / "src")


COMPRESSIONS = [["-comp", "xz", "-b", "1M"], ["-comp", "zstd"], ["-comp", "gzip"],
                ["-comp", "lz4"], ["-comp", "gzip", "-noD", "-noF"]]


@pytest.mark.parametrize("args", COMPRESSIONS, ids=lambda a: " ".join(a))
def test_stream_and_large_reads_give_the_file(tree: Path, tmp_path: Path,
                                              args: list[str]) -> None:
    image = mksquashfs(tree, tmp_path / "img", *args)
    with SquashfsImage(image) as im:
        for name in ("big", "holes"):
            want = (tree / name).read_bytes()
            assert b"".join(im.stream(f"/{name}", chunk=1 << 20)) == want
            # ranges across many blocks, at offsets inside blocks, through the threads
            for offset, size in ((0, len(want)), (1, len(want) - 2), (131_071, 2_500_001),
                                 (len(want) - 200_000, 10 << 20)):
                assert im.read(f"/{name}", offset, size) == want[offset: offset + size]
            sizes = [len(c) for c in im.stream(f"/{name}", chunk=1 << 20)]
            assert min(sizes[:-1]) >= 1 << 20  # writes of at least a chunk, bar the last
        assert b"".join(im.stream("/many/f0006")) == b"6" * 6
        assert list(im.stream("/many/f0000")) == []  # empty


def test_cat_agrees_with_unsquashfs_cat(tree: Path, tmp_path: Path) -> None:
    require_tool("unsquashfs")
    image = mksquashfs(tree, tmp_path / "img", "-comp", "zstd")
    ours = subprocess.run([sys.executable, "-m", "portable_service", "cat", str(image), "/big"],
                          capture_output=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")}).stdout
    theirs = subprocess.run(["unsquashfs", "-cat", str(image), "big"], capture_output=True,
                            check=True).stdout
    assert ours == theirs == (tree / "big").read_bytes()


def test_stream_refuses_before_any_data(tree: Path, tmp_path: Path) -> None:
    image = mksquashfs(tree, tmp_path / "img", "-comp", "gzip")
    with SquashfsImage(image) as im:
        with pytest.raises(NotFoundError):
            im.stream("/many")  # a folder: refused at the call, not at the first block
        with pytest.raises(NotFoundError):
            im.stream("/nothing")


def test_a_corrupt_block_in_a_streamed_file_is_an_image_error(tree: Path,
                                                              tmp_path: Path) -> None:
    image = mksquashfs(tree, tmp_path / "img", "-comp", "zstd")
    with SquashfsImage(image) as im:
        ino = im._lookup("/big")
        words, starts = im._block_list(ino), im._starts(ino)
        i = next(i for i in range(8, len(words)) if not words[i] & (1 << 24))  # compressed
        start, size = starts[i], words[i] & ((1 << 24) - 1)
    data = bytearray(image.read_bytes())
    data[start: start + size] = bytes(size)  # a block decoded in a worker thread
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    with SquashfsImage(bad) as im, pytest.raises(SquashfsError):
        for _ in im.stream("/big"):
            pass
    with SquashfsImage(bad) as im, pytest.raises(SquashfsError):
        im.read("/big")


def test_walk_fast_path_agrees_with_stat_and_unsquashfs(tree: Path, tmp_path: Path) -> None:
    """The walk decodes inodes in one unpack; stat() decodes them field by field."""
    image = mksquashfs(tree, tmp_path / "img", "-comp", "xz")
    listed = unsquashfs_list(image)
    with SquashfsImage(image) as im:
        walked = dict(im.walk())
        assert sorted(walked) == sorted(listed)
        for path, st in walked.items():
            assert st == im.stat(path), path
        records = list(im.walk_as(lambda *fields: fields))
        assert [(p, SquashfsImage._fields(im._lookup(p))) for p, _ in records] == records
        assert walked["/many/l0100"].target == "x" * 101


def test_resolved_paths_are_kept_and_bounded(tree: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "LOOKUP_CACHE", 100)
    image = mksquashfs(tree, tmp_path / "img", "-comp", "gzip")
    with SquashfsImage(image) as im:
        first = im._lookup("/big")
        assert im._lookup("/big") is first  # a file read in chunks resolves its path once
        for name in im.listdir("/many"):
            assert im.stat(f"/many/{name}").kind in ("file", "symlink")
        assert len(im._lookups) <= 100
        assert im.read("/big", 5, 10) == (tree / "big").read_bytes()[5:15]


def test_fragment_read_ahead_gives_the_files_and_reports_errors_when_read(
        tmp_path: Path) -> None:
    """Fragment blocks read in a row are decoded one ahead, in a worker thread: the bytes
    are the files', and a corrupt block read ahead fails only the read that wants it."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):  # 3,000 bytes each: four to a 16K fragment block
        (src / f"f{i:02d}").write_bytes(os.urandom(1500) + bytes([i]) * 1500)
    image = mksquashfs(src, tmp_path / "img", "-comp", "gzip", "-b", "16K")
    with SquashfsImage(image) as im:
        for i in range(60):
            assert im.read(f"/f{i:02d}") == (src / f"f{i:02d}").read_bytes()
        assert im.superblock.fragment_count > 10
        frag = {i: im._lookup(f"/f{i:02d}").fragment for i in range(60)}
        victim = frag[30]
        start, word = im._fragment_where(victim)
    data = bytearray(image.read_bytes())
    size = word & ((1 << 24) - 1)
    data[start: start + size] = bytes(size)  # no longer a zlib stream
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    before = [i for i in range(60) if frag[i] < victim]
    with SquashfsImage(bad) as im:
        for i in before:  # the last two of these start decoding the victim ahead
            assert im.read(f"/f{i:02d}") == (src / f"f{i:02d}").read_bytes()
        assert victim in im._frag_ahead
        with pytest.raises(SquashfsError):
            im.read("/f30")
        after = [i for i in range(60) if frag[i] > victim]
        assert im.read(f"/f{after[0]:02d}") == (src / f"f{after[0]:02d}").read_bytes()
