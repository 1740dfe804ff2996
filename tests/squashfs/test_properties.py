"""Property tests: generated trees survive our writer, judged by unsquashfs and our reader."""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portable_service.squashfs.reader import SquashfsImage
from tests.conftest import mksquashfs
from tests.squashfs.conftest import (
    describe_dir,
    describe_image,
    unsquashfs_extract,
    unsquashfs_lln,
    write_dir,
)

BLOCK = 4096


def _ok_name(b: bytes) -> bool:
    # newlines and " -> " would make unsquashfs -lln output ambiguous, not the image wrong
    return (b not in (b".", b"..") and b"/" not in b and b"\0" not in b and b"\n" not in b
            and b" -> " not in b)


names = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF, exclude_characters="/"),
             min_size=1, max_size=12).map(lambda s: s.encode()),
    st.binary(min_size=1, max_size=8).filter(_ok_name),  # not UTF-8, as often as not
    st.integers(1, 4).map(lambda n: bytes([0x60 + n]) * 255),  # the longest names
).filter(_ok_name)

# contents from a small pool so that duplicate files happen
contents = st.one_of(
    st.just(("bytes", 0)),
    st.tuples(st.just("blocks"), st.integers(1, 3), st.sampled_from([-1, 0, 1])),
    st.tuples(st.just("sparse"), st.integers(1, 4)),
    st.tuples(st.just("bytes"), st.integers(1, 3 * BLOCK)),
    st.tuples(st.just("seeded"), st.integers(0, 2), st.integers(1, 20_000)),
)
leaf = st.one_of(
    st.tuples(st.just("file"), contents, st.sampled_from([0o644, 0o755, 0o600, 0o4755])),
    st.tuples(st.just("symlink"), st.integers(1, 4095)),
)
trees = st.recursive(leaf, lambda kids: st.dictionaries(names, kids, max_size=5), max_leaves=20)


def content(spec: tuple) -> bytes:
    kind = spec[0]
    if kind == "blocks":
        return b"B" * (spec[1] * BLOCK + spec[2])
    if kind == "sparse":
        return bytes(spec[1] * BLOCK) + b"end"
    if kind == "seeded":
        return random.Random(spec[1]).randbytes(spec[2])
    return b"x" * spec[1]


def materialize(node: object, path: Path, rng: random.Random) -> None:
    if isinstance(node, dict):
        path.mkdir()
        for name, child in node.items():
            materialize(child, path / os.fsdecode(name), rng)
        return
    assert isinstance(node, tuple)
    if node[0] == "symlink":
        target = ("d" * 99 + "/") * (node[1] // 100) + "t" * (node[1] % 100)
        path.symlink_to(target or "t")
        return
    data = content(node[1])
    if node[1][0] == "sparse":
        with open(path, "wb") as f:
            f.truncate(len(data) - 3)
            f.seek(len(data) - 3)
            f.write(b"end")
    else:
        path.write_bytes(data)
    path.chmod(node[2])


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(tree=st.dictionaries(names, trees, max_size=6), many=st.booleans(), deep=st.booleans(),
       hardlink=st.booleans(), xattr=st.booleans(), compression=st.sampled_from(
           ["gzip", "xz", "zstd", "lz4"]))
def test_generated_trees(tree: dict, many: bool, deep: bool, hardlink: bool, xattr: bool,
                         compression: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        src = base / "src"
        materialize(tree, src, random.Random(0))
        if many:  # over 256 entries and over one metadata block of listing
            big = src / "zz-many"
            big.mkdir(exist_ok=True)
            for i in range(300):
                (big / f"entry-with-a-name-of-some-length-{i:04d}").write_bytes(b"%d" % (i % 7))
        if deep:
            d = src / "deep"
            for i in range(40):
                d = d / f"level{i}"
            d.mkdir(parents=True)
            (d / "bottom").write_text("bottom")
        files = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())
        if hardlink and files:
            os.link(files[0], src / "hard-link")
        if xattr and files:
            os.setxattr(files[-1], "user.generated", b"v" * 100)
            os.setxattr(files[-1], "security.capability", b"\1\0\0\2" + bytes(16))
        image = write_dir(src, base / "img", compression, BLOCK)
        want = describe_dir(src)
        assert describe_image(image) == want
        listed = unsquashfs_lln(image)
        assert sorted(listed) == sorted(want)
        for path, (kind, _mode, size_or_target, _) in want.items():
            assert listed[path][1] == "0/0"
            if kind != "dir":
                assert listed[path][2] == str(size_or_target), path
        assert describe_dir(unsquashfs_extract(image, base / "x")) == want
        with SquashfsImage(image) as im:
            if hardlink and files:
                rel = "/" + os.fsdecode(files[0].relative_to(src).as_posix())
                a, b = im.stat(rel), im.stat("/hard-link")
                assert a.inode == b.inode and a.nlink == b.nlink == 2
            if xattr and files:
                rel = "/" + os.fsdecode(files[-1].relative_to(src).as_posix())
                assert im.xattrs(rel)["user.generated"] == b"v" * 100
        # and our reader reads mksquashfs' image of the same tree alike
        theirs = mksquashfs(src, base / "theirs", "-comp", compression, "-b", str(BLOCK))
        assert describe_image(theirs) == want


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(tree=st.dictionaries(names, trees, min_size=1, max_size=6))
def test_kernel_agrees(tree: dict) -> None:
    from tests.conftest import require_root

    require_root()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        materialize(tree, base / "src", random.Random(0))
        image = write_dir(base / "src", base / "img", "zstd", BLOCK)
        mnt = base / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", "-o", "loop,ro", "-t", "squashfs", str(image), str(mnt)],
                       check=True)
        try:
            assert describe_dir(mnt) == describe_dir(base / "src")
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
