"""diff compares files block by block as stored: holes unread, equal stored bytes undecoded,
and still sees every changed byte."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from portable_service.fs.views import IndexedFS, open_image
from portable_service.look.diff import same_content
from tests.conftest import require_tool

MiB = 1 << 20


def image(tmp: Path, name: str, tail: bytes, *args: str) -> Path:
    root = tmp / f"root-{name}"
    root.mkdir()
    with open(root / "sparse", "wb") as f:
        f.truncate(64 * MiB)  # holes but for a little data in the middle and at the end
        f.seek(20 * MiB)
        f.write(b"middle")
        f.seek(64 * MiB - len(tail))
        f.write(tail)
    (root / "small").write_bytes(b"tail of a fragment " + tail)
    out = tmp / f"{name}.raw"
    subprocess.run(["mksquashfs", str(root), str(out), "-quiet", "-no-progress", "-noappend",
                    "-all-root", *args], check=True, capture_output=True)
    return out


@pytest.fixture
def images(tmp_path: Path) -> dict[str, IndexedFS]:
    require_tool("mksquashfs")
    return {n: IndexedFS(open_image(image(tmp_path, n, tail, *args))) for n, tail, args in [
        ("a", b"end", ("-comp", "gzip")), ("same", b"end", ("-comp", "gzip")),
        ("changed", b"eNd", ("-comp", "gzip")), ("xz", b"end", ("-comp", "xz")),
        ("small-blocks", b"end", ("-comp", "gzip", "-b", "4K"))]}


def test_block_comparison(images: dict[str, IndexedFS]) -> None:
    a = images["a"]
    blocks = list(a.fs.image.stored_blocks("/sparse"))
    assert sum(b.raw is None for b in blocks) == len(blocks) - 2  # only two blocks stored
    for other, equal in [("same", True), ("changed", False), ("xz", True),
                         ("small-blocks", True)]:
        for path in ("/sparse", "/small"):
            size = a.stat(path).size
            assert same_content(a, images[other], path, size) is equal, (other, path)
