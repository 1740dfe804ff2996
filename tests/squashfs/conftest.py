"""Fixtures for the squashfs tests: sample trees on disk and helpers that describe them."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from portable_service.squashfs.reader import SquashfsImage
from tests.conftest import require_tool, unsquashfs_list

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep


def make_sample(root: Path) -> Path:
    """A tree with the shapes images meet: nesting, links, tails, sparse, many names, xattrs."""
    root.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text("ID=test\n")
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/lib/big").write_bytes(os.urandom(300_000))
    (root / "usr/lib/dup").write_bytes((root / "usr/lib/big").read_bytes())
    (root / "usr/lib/text").write_bytes(b"squash me " * 50_000)
    (root / "empty").write_bytes(b"")
    (root / "emptydir").mkdir()
    with open(root / "sparse", "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(b"middle")
    many = root / "many"
    many.mkdir()
    for i in range(600):
        (many / f"file-with-a-longish-name-{i:04d}").write_text(str(i))
    (root / "bin").mkdir()
    prog = root / "bin/prog"
    prog.write_bytes(b"\x7fELF" + bytes(5000))
    prog.chmod(0o4755)
    os.setxattr(prog, "security.capability", CAP)
    os.setxattr(root / "etc/os-release", "user.note", b"hello")
    (root / "bin/dangling").symlink_to("/nowhere/" + "x" * 200)
    (root / "deep/a/b/c/d/e/f/g").mkdir(parents=True)
    (root / "deep/a/b/c/d/e/f/g/leaf").write_text("leaf")
    (root / ("n" * 255)).write_text("long name")
    (root / os.fsdecode(b"latin-\xe9")).write_text("not utf-8")
    return root


def describe_dir(root: Path) -> dict[str, tuple]:
    """{image path: (kind, mode, size-or-target, sha256)} of a directory on disk."""
    out: dict[str, tuple] = {"/": ("dir", 0o755, None, None)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = "/" + os.fsdecode(p.relative_to(root).as_posix())
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", 0o777, os.readlink(p), None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None, None)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size,
                            hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def describe_image(image: Path) -> dict[str, tuple]:
    """The same description of an image, read with our reader."""
    out: dict[str, tuple] = {}
    with SquashfsImage(image) as im:
        for path, st in im.walk():
            if st.kind == "file":
                h = hashlib.sha256()
                with im.open(path) as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                out[path] = ("file", st.mode, st.size, h.hexdigest())
            elif st.kind == "symlink":
                out[path] = ("symlink", st.mode, st.target, None)
            else:
                out[path] = (st.kind, st.mode, None, None)
    return out


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample(tmp_path_factory.mktemp("sample") / "root")


# the listing every test of the project reads images with
unsquashfs_lln = unsquashfs_list


def write_dir(src: Path, out: Path, compression: str = "xz", block_size: int = 128 << 10,
              mtime: int = 1_700_000_000, workers: int | None = None) -> Path:
    """Our writer on a host directory (the lower-level API), like mksquashfs -all-root."""
    from portable_service.squashfs.compressor import from_options
    from portable_service.squashfs.writer import WriterOptions, nodes_from_directory, write_image

    name, *opts = compression.split()
    options = WriterOptions(from_options(name, tuple(opts), block_size), block_size, mtime,
                            workers)
    with open(out, "wb") as f:
        write_image(nodes_from_directory(src, mtime=mtime), f, options)
    return out


def unsquashfs_extract(image: Path, dest: Path) -> Path:
    require_tool("unsquashfs")
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(dest), str(image)], check=True,
                   capture_output=True)
    return dest
