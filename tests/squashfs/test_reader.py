"""The reader against images made by mksquashfs, and against broken images."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from portable_service.squashfs.errors import NotFoundError, SquashfsError
from portable_service.squashfs.reader import SquashfsImage
from tests.conftest import mksquashfs
from tests.squashfs.conftest import (
    CAP,
    describe_dir,
    describe_image,
    unsquashfs_lln,
)

COMPRESSORS = [["-comp", "gzip"], ["-comp", "xz"], ["-comp", "zstd"], ["-comp", "lz4"],
               ["-comp", "gzip", "-noI", "-noD", "-noF", "-noX"],
               ["-comp", "xz", "-Xbcj", "x86", "-Xdict-size", "50%"],
               ["-comp", "gzip", "-Xcompression-level", "1"], ["-comp", "lz4", "-Xhc"],
               ["-comp", "lzo"], ["-comp", "lzo", "-Xalgorithm", "lzo1x_1"]]


@pytest.mark.parametrize("args", COMPRESSORS, ids=lambda a: " ".join(a))
def test_reads_mksquashfs_images(sample: Path, tmp_path: Path, args: list[str]) -> None:
    image = mksquashfs(sample, tmp_path / "img", *args)
    assert describe_image(image) == describe_dir(sample)


@pytest.mark.parametrize("block", ["4K", "128K", "1M"])
def test_block_sizes(sample: Path, tmp_path: Path, block: str) -> None:
    image = mksquashfs(sample, tmp_path / "img", "-b", block, "-comp", "zstd")
    assert describe_image(image) == describe_dir(sample)
    with SquashfsImage(image) as im:
        assert im.superblock.block_size == {"4K": 4096, "128K": 131072, "1M": 1 << 20}[block]


def test_metadata_agrees_with_unsquashfs(sample: Path, tmp_path: Path) -> None:
    image = mksquashfs(sample, tmp_path / "img", "-comp", "xz", "-mkfs-time", "1000",
                       "-all-time", "1234")
    listed = unsquashfs_lln(image)
    with SquashfsImage(image) as im:
        assert im.superblock.compressor == "xz"
        assert im.superblock.mkfs_time == 1000
        ours = dict(im.walk())
        assert sorted(listed) == sorted(ours)
        for path, (mode, owner, size_or_target) in listed.items():
            st = ours[path]
            assert st.filemode() == mode, path
            assert owner == f"{st.uid}/{st.gid}" == "0/0"
            assert size_or_target == (st.target if st.kind == "symlink" else str(st.size))
            assert st.mtime == 1234


def test_api(sample: Path, tmp_path: Path) -> None:
    image = mksquashfs(sample, tmp_path / "img", "-comp", "gzip")
    with SquashfsImage(image) as im:
        assert im.read("/etc/os-release") == b"ID=test\n"
        assert im.read("/lib/big", 10, 5) == (sample / "usr/lib/big").read_bytes()[10:15]
        assert im.read("/sparse", (1 << 20) - 2, 10) == b"\0\0middle\0\0"
        assert im.stat("/lib").kind == "symlink" and im.readlink("/lib") == "usr/lib"
        assert im.stat("/lib/text").size == 500_000  # through the symlink
        assert im.stat("/bin/prog").mode == 0o4755
        assert im.xattrs("/bin/prog") == {"security.capability": CAP}
        assert im.xattrs("/etc/os-release") == {"user.note": b"hello"}
        assert im.xattrs("/etc") == {}
        names = im.listdir("/many")
        assert len(names) == 600 and names == sorted(names)
        assert im.listdir("/") == sorted(os.listdir(sample), key=os.fsencode)
        with im.open("/usr/lib/text") as f:
            f.seek(499_990)
            assert f.read() == b"squash me "
        assert next(p for p, _ in im.walk()) == "/"
        with pytest.raises(NotFoundError):
            im.stat("/etc/missing")
        with pytest.raises(FileNotFoundError):
            im.read("/nope")
        with pytest.raises(SquashfsError):
            im.read("/etc")


def test_not_an_image(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"hello" * 100)
    with pytest.raises(SquashfsError, match="not a squashfs image"):
        SquashfsImage(bad)
    with pytest.raises(SquashfsError):
        SquashfsImage(tmp_path / "absent")


def test_truncated(sample: Path, tmp_path: Path) -> None:
    image = mksquashfs(sample, tmp_path / "img", "-comp", "gzip")
    data = image.read_bytes()
    for cut in (50, 4096, len(data) // 2, len(data) - 5000):
        short = tmp_path / f"short{cut}"
        short.write_bytes(data[:cut])
        with pytest.raises(SquashfsError):
            SquashfsImage(short)


def exercise(image: Path) -> None:
    """Everything the reader can do, over the whole image."""
    with SquashfsImage(image) as im:
        for path, st in im.walk():
            if st.kind == "file":
                im.read(path, 0, 1 << 22)
            im.xattrs(path)


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 2, 4, 16))):
        i = rng.randrange(len(buf))
        choice = rng.random()
        if choice < 0.5:
            buf[i] = rng.randrange(256)
        elif choice < 0.8:
            buf[i] ^= 1 << rng.randrange(8)
        else:
            for j in range(i, min(i + 8, len(buf))):
                buf[j] = 0xFF
    if rng.random() < 0.1:
        del buf[rng.randrange(len(buf)):]
    return bytes(buf)


def test_fuzz_sample(tmp_path: Path) -> None:
    """Mutated images give an SquashfsError or read fine: never another exception or a hang."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/file").write_bytes(b"abc" * 3000)
    (src / "tail").write_bytes(b"tail")
    (src / "link").symlink_to("d/file")
    os.setxattr(src / "tail", "user.x", b"y")
    image = mksquashfs(src, tmp_path / "img", "-comp", "gzip", "-b", "4K")
    exercise(image)
    data = image.read_bytes()
    rng = random.Random(5)
    failures = 0
    for n in range(300):
        case = tmp_path / "case"
        case.write_bytes(mutate(data, rng))
        try:
            exercise(case)
        except SquashfsError:
            failures += 1
        except Exception as e:  # pragma: no cover - the failure message is the point
            shutil.copy(case, tmp_path / f"crash{n}")
            raise AssertionError(f"case {n}: {type(e).__name__}: {e}") from e
    assert failures > 50  # mutations do get noticed


def test_special_files_from_mksquashfs(tmp_path: Path) -> None:
    """Device nodes, fifos and sockets (pseudo files here) are listed with their kind."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f")
    image = mksquashfs(src, tmp_path / "img", "-comp", "gzip",
                       "-p", "null c 666 0 0 1 3", "-p", "sda b 660 0 6 8 0",
                       "-p", "pipe i 600 0 0 f", "-p", "sock i 600 0 0 s")
    with SquashfsImage(image) as im:
        kinds = {p: (st.kind, st.mode, st.gid) for p, st in im.walk()}
    assert kinds["/null"] == ("chardev", 0o666, 0)
    assert kinds["/sda"] == ("blockdev", 0o660, 0)  # -all-root
    assert kinds["/pipe"][0] == "fifo" and kinds["/sock"][0] == "socket"


def test_directory_cycle_is_reported(tmp_path: Path) -> None:
    """A listing that points back at the root would loop forever: it is an error instead."""
    src = tmp_path / "src"
    (src / "a/loopdir").mkdir(parents=True)
    image = mksquashfs(src, tmp_path / "img", "-comp", "gzip", "-noI", "-noD", "-noF", "-noX")
    data = bytearray(image.read_bytes())
    with SquashfsImage(image) as im:
        root_block, root_offset = im.superblock.root_inode >> 16, im.superblock.root_inode & 0xFFFF
        at = data.index(b"loopdir", im.superblock.directory_table)
    # the entry is 8 bytes before its name, its run's header 12 bytes before the entry
    entry, header = at - 8, at - 8 - 12
    data[entry: entry + 2] = root_offset.to_bytes(2, "little")
    data[header + 4: header + 8] = root_block.to_bytes(4, "little")
    bad = tmp_path / "cycle"
    bad.write_bytes(bytes(data))
    with SquashfsImage(bad) as im, pytest.raises(SquashfsError, match="cycle"):
        list(im.walk())


def test_owners_through_the_id_table(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f")
    image = tmp_path / "img"
    subprocess.run(["mksquashfs", str(src), str(image), "-quiet", "-no-progress", "-force-uid",
                    "1234", "-force-gid", "5678"], check=True, capture_output=True)
    with SquashfsImage(image) as im:
        st = im.stat("/f")
    assert (st.uid, st.gid) == (1234, 5678)
    assert unsquashfs_lln(image)["/f"][1] == "1234/5678"


def test_hostile_sizes_are_bounded(tmp_path: Path) -> None:
    """A file claiming 4 GiB in a tiny image fails fast instead of allocating or looping."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 10000)
    image = mksquashfs(src, tmp_path / "img", "-comp", "gzip", "-b", "4K", "-noI", "-noD",
                       "-noF", "-noX")
    data = bytearray(image.read_bytes())
    with SquashfsImage(image) as im:
        block, offset = im._lookup("/f").ref >> 16, im._lookup("/f").ref & 0xFFFF
        assert block == 0
        size_at = im.superblock.inode_table + 2 + offset + 16 + 12  # header, then file_size
        assert int.from_bytes(data[size_at: size_at + 4], "little") == 10000
    data[size_at: size_at + 4] = (0xFFFFFFFF).to_bytes(4, "little")
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    with SquashfsImage(bad) as im:
        assert im.stat("/f").size == 0xFFFFFFFF
        with pytest.raises(SquashfsError):
            im.read("/f", 0, 100)
