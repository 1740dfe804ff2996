"""Round trips through our writer, judged by unsquashfs, the kernel and our reader."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.writers.native import NativeWriter
from portable_service.builder.writers.options import Compression, PackOptions
from portable_service.errors import PortableServiceError
from portable_service.fs.tree import ImageTree
from portable_service.progress import QUIET
from portable_service.squashfs import format as fmt
from portable_service.squashfs.compressor import from_options
from portable_service.squashfs.errors import InputError, OptionsError
from portable_service.squashfs.reader import SquashfsImage
from portable_service.squashfs.writer import Node, WriterOptions, nodes_from_directory, write_image
from tests.conftest import mksquashfs, require_root
from tests.squashfs.conftest import (
    CAP,
    describe_dir,
    describe_image,
    unsquashfs_extract,
    unsquashfs_lln,
    write_dir,
)

MTIME = 1_700_000_000


def expected_lln(src: Path) -> dict[str, tuple[str, str, str]]:
    """What unsquashfs -lln must say of an image of ``src`` with all-root owners."""
    out = {}
    for path, (kind, mode, size_or_target, _) in describe_dir(src).items():
        full = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK}[kind] | mode
        if kind == "dir":
            out[path] = (stat.filemode(full), "0/0", None)
        else:
            out[path] = (stat.filemode(full), "0/0", str(size_or_target))
    return out


def lln_without_dir_sizes(image: Path) -> dict[str, tuple[str, str, str | None]]:
    return {p: (m, o, None if m.startswith("d") else s)
            for p, (m, o, s) in unsquashfs_lln(image).items()}


def test_round_trip_judged_by_unsquashfs(sample: Path, tmp_path: Path) -> None:
    image = write_dir(sample, tmp_path / "img")
    assert lln_without_dir_sizes(image) == expected_lln(sample)
    out = unsquashfs_extract(image, tmp_path / "x")
    assert describe_dir(out) == describe_dir(sample)
    if os.geteuid() == 0:  # unsquashfs restores security.* xattrs only as root
        assert os.getxattr(out / "bin/prog", "security.capability") == CAP
    assert os.getxattr(out / "etc/os-release", "user.note") == b"hello"
    assert describe_image(image) == describe_dir(sample)


def test_directory_sizes_match_mksquashfs(sample: Path, tmp_path: Path) -> None:
    ours = unsquashfs_lln(write_dir(sample, tmp_path / "ours", "gzip"))
    theirs = unsquashfs_lln(mksquashfs(sample, tmp_path / "theirs", "-comp", "gzip"))
    assert ours == theirs  # modes, owners, sizes (directories' too) and link targets


@pytest.mark.root
def test_kernel_mount(sample: Path, tmp_path: Path) -> None:
    require_root()
    image = write_dir(sample, tmp_path / "img", "zstd")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", "-t", "squashfs", str(image), str(mnt)], check=True)
    try:
        assert describe_dir(mnt) == describe_dir(sample)
        assert os.getxattr(mnt / "bin/prog", "security.capability") == CAP
        assert os.stat(mnt).st_mtime == MTIME
        assert os.stat(mnt / "many").st_nlink == 2
        # a lookup in a directory spanning several metadata blocks goes through its index
        assert (mnt / "many/file-with-a-longish-name-0451").read_text() == "451"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def tree_of(src: Path) -> ImageTree:
    tree = ImageTree()
    tree.add_file(PurePosixPath("/etc/os-release"), data=b"ID=demo\n")
    tree.add_file(PurePosixPath("/usr/bin/prog"), source=src / "bin/prog", mode=0o755,
                  xattrs=(("security.capability", CAP),))
    tree.add_file(PurePosixPath("/usr/lib/big"), source=src / "usr/lib/big")
    tree.add_file(PurePosixPath("/usr/lib/copy"), source=src / "usr/lib/big")
    tree.add_symlink(PurePosixPath("/bin"), "usr/bin")
    tree.add_dir(PurePosixPath("/run"), 0o755)
    return tree


def test_native_writer(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.raw"
    opts = PackOptions(Compression("xz", ("-Xdict-size", "100%")), 1 << 20, MTIME)
    NativeWriter().write(tree_of(sample), out, opts, QUIET)
    listed = unsquashfs_lln(out)
    assert listed["/"][:2] == ("drwxr-xr-x", "0/0")
    assert listed["/usr/bin/prog"] == ("-rwxr-xr-x", "0/0", "5004")
    assert listed["/bin"] == ("lrwxrwxrwx", "0/0", "usr/bin")
    with SquashfsImage(out) as im:
        assert im.superblock.mkfs_time == MTIME and im.superblock.compressor == "xz"
        assert im.superblock.block_size == 1 << 20
        assert all(st.mtime == MTIME and st.uid == st.gid == 0 for _, st in im.walk())
        assert im.xattrs("/usr/bin/prog") == {"security.capability": CAP}
        assert im.read("/etc/os-release") == b"ID=demo\n"
        big, copy = im._lookup("/usr/lib/big"), im._lookup("/usr/lib/copy")
        # the duplicate is stored once: both inodes point at the same blocks
        assert (big.blocks_start, big.fragment, big.frag_offset) == \
            (copy.blocks_start, copy.fragment, copy.frag_offset)
        assert im.read("/usr/lib/copy") == (sample / "usr/lib/big").read_bytes()


def test_reproducible(sample: Path, tmp_path: Path) -> None:
    """Same tree, other source times, other listing order, other thread count: same bytes."""
    a = write_dir(sample, tmp_path / "a", "xz", workers=2)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(sample), str(copy)], check=True)
    for p in sorted(copy.rglob("*"), reverse=True):
        os.utime(p, (12345, 12345), follow_symlinks=False)
    b = write_dir(copy, tmp_path / "b", "xz", workers=1)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    opts = PackOptions(Compression("zstd"), 131072, MTIME)
    NativeWriter().write(tree_of(sample), tmp_path / "n1", opts, QUIET)
    NativeWriter(workers=1).write(tree_of(sample), tmp_path / "n2", opts, QUIET)
    assert (tmp_path / "n1").read_bytes() == (tmp_path / "n2").read_bytes()


def test_refuses_special_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    with pytest.raises(InputError, match="fifo"):
        nodes_from_directory(src)
    os.unlink(src / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(src / "sock"))
        with pytest.raises(InputError, match="socket"):
            nodes_from_directory(src)
    with pytest.raises(InputError, match="device"):
        write_image([Node((), "dir", 0o755), Node((b"null",), "chardev", 0o666)],
                    open(tmp_path / "img", "wb"),  # noqa: SIM115 - closed by the test end
                    WriterOptions(from_options("gzip", (), 4096), 4096, 0))


def test_bad_compressor_options() -> None:
    with pytest.raises(OptionsError, match="dict-size"):
        from_options("xz", ("-Xdict-size", "3000"), 131072)
    with pytest.raises(OptionsError, match="not supported"):
        from_options("gzip", ("-Xnope",), 131072)
    with pytest.raises(OptionsError, match="cannot write lzma"):
        from_options("lzma", (), 131072)
    with pytest.raises(OptionsError, match="lzo1x_1_15"):
        from_options("lzo", ("-Xalgorithm", "lzo1x_1_15"), 131072)


COMPRESSIONS = ["gzip", "xz", "zstd", "lz4", "xz -Xbcj x86,arm -Xdict-size 100%",
                "gzip -Xcompression-level 1 -Xwindow-size 12", "zstd -Xcompression-level 19",
                "lz4 -Xhc", "gzip -Xstrategy default,filtered", "lzo",
                "lzo -Xalgorithm lzo1x_1", "lzo -Xcompression-level 9"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small") / "root"
    (root / "d").mkdir(parents=True)
    (root / "d/text").write_bytes(b"".join(b"line %d\n" % i for i in range(40_000)))
    (root / "d/random").write_bytes(os.urandom(70_000))  # stored uncompressed
    (root / "exact").write_bytes(b"x" * 8192)
    (root / "one-over").write_bytes(b"y" * 8193)
    with open(root / "holes", "wb") as f:
        f.truncate(2 << 20)
        f.write(b"start")
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("d/text")
    return root


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("block", [4096, 131072, 1 << 20])
def test_every_compressor_and_block_size(small: Path, tmp_path: Path, compression: str,
                                         block: int) -> None:
    image = write_dir(small, tmp_path / "img", compression, block)
    out = unsquashfs_extract(image, tmp_path / "x")
    assert describe_dir(out) == describe_dir(small)
    with SquashfsImage(image) as im:
        assert im.superblock.compressor == compression.split()[0]
        assert (im.superblock.flags & fmt.F_COMPRESSOR_OPTIONS != 0) == (
            from_options(compression.split()[0], tuple(compression.split()[1:]), block)
            .options_record() is not None)
        holes = im._lookup("/holes")
        im._block_list(holes)
        assert holes.sparse >= (2 << 20) - block  # zero blocks stored as holes


def test_compressor_options_match_mksquashfs(small: Path, tmp_path: Path) -> None:
    """The options record says what mksquashfs says for the same options."""
    for comp, extra in [("xz", ["-Xdict-size", "50%"]), ("gzip", ["-Xcompression-level", "3"]),
                        ("zstd", ["-Xcompression-level", "19"]), ("lz4", ["-Xhc"]),
                        ("lzo", ["-Xcompression-level", "9"]),
                        ("lzo", ["-Xalgorithm", "lzo1x_1"])]:
        tag = "-".join([comp, *extra])
        ours = write_dir(small, tmp_path / f"o-{tag}", " ".join([comp, *extra]))
        theirs = mksquashfs(small, tmp_path / f"t-{tag}", "-comp", comp, *extra)
        head_ours, head_theirs = ours.read_bytes()[96:120], theirs.read_bytes()[96:120]
        size = fmt.U16.unpack(head_theirs[:2])[0] & 0x7FFF
        assert head_ours[: 2 + size] == head_theirs[: 2 + size], comp


def test_size_close_to_mksquashfs(sample: Path, tmp_path: Path) -> None:
    ours = write_dir(sample, tmp_path / "ours", "gzip").stat().st_size
    theirs = mksquashfs(sample, tmp_path / "theirs", "-comp", "gzip").stat().st_size
    assert abs(ours - theirs) / theirs < 0.02


def test_truncated_source_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"abc")
    nodes = nodes_from_directory(src)
    (src / "f").write_bytes(b"a")
    with open(tmp_path / "img", "wb") as f, pytest.raises(InputError, match="shrank"):
        write_image(nodes, f, WriterOptions(from_options("gzip", (), 4096), 4096, 0))


@pytest.mark.root
def test_sparse_file_over_4gib(tmp_path: Path) -> None:
    """A file past 4 GiB needs the extended inode with 64-bit sizes; holes stay holes."""
    src = tmp_path / "src"
    src.mkdir()
    size = (5 << 30) + 12345
    with open(src / "huge", "wb") as f:
        f.truncate(size)
        f.seek(size - 6)
        f.write(b"theend")
    image = write_dir(src, tmp_path / "img", "zstd", 1 << 20)
    assert image.stat().st_size < 1 << 20
    with SquashfsImage(image) as im:
        st = im.stat("/huge")
        assert st.size == size
        assert im.read("/huge", size - 10) == b"\0\0\0\0theend"
        assert im.read("/huge", 3 << 30, 4) == b"\0\0\0\0"
    assert unsquashfs_lln(image)["/huge"][2] == str(size)
    require_root()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", "-t", "squashfs", str(image), str(mnt)], check=True)
    try:
        assert os.stat(mnt / "huge").st_size == size
        with open(mnt / "huge", "rb") as f:
            f.seek(size - 6)
            assert f.read() == b"theend"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_unreadable_source_is_one_error(tmp_path: Path) -> None:
    tree = ImageTree()
    tree.add_file(PurePosixPath("/gone"), source=tmp_path / "gone")
    (tmp_path / "gone").write_text("x")
    opts = PackOptions(Compression("gzip"), 131072, MTIME)
    (tmp_path / "gone").unlink()
    with pytest.raises(PortableServiceError, match=r"cannot read .*gone"):
        NativeWriter().write(tree, tmp_path / "img", opts, QUIET)


def test_huge_directories(tmp_path: Path) -> None:
    """Listings over 64 KiB (extended directory inode, index) and inode numbers too far apart
    for one directory header (over 32767): unsquashfs, our reader and the kernel agree."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "huge").mkdir()
    for name in ("0", "b"):
        (src / name).write_bytes(b"")
    for i in range(33000):
        (src / f"a/f{i}").touch()
    for i in range(3000):
        (src / f"huge/{'n' * 40}{i:05d}").write_bytes(b"%d" % i)
    image = write_dir(src, tmp_path / "img", "gzip")
    listed = unsquashfs_lln(image)
    assert len(listed) == 36005
    assert int(listed["/huge"][2]) > 0xFFFF
    with SquashfsImage(image) as im:
        b_inode = im.stat("/b").inode
        assert b_inode - im.stat("/0").inode > 32767
        assert im.read(f"/huge/{'n' * 40}02999") == b"2999"
        assert len(im.listdir("/a")) == 33000
    require_root()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", "-t", "squashfs", str(image), str(mnt)], check=True)
    try:
        assert len(os.listdir(mnt / "a")) == 33000
        assert (mnt / f"huge/{'n' * 40}01234").read_bytes() == b"1234"
        assert os.stat(mnt / "b").st_ino == b_inode
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
