"""Our dm-verity hash trees against cryptsetup's: same salt and UUID give the same bytes."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from portable_service.disk import verity
from portable_service.errors import VerityError
from tests.conftest import require_tool

SALT = hashlib.sha256(b"test salt").digest()
UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


def veritysetup_format(data: Path, hash_dev: Path, salt: bytes = SALT, uuid: str = UUID) -> str:
    tool = require_tool("veritysetup")
    out = subprocess.run([tool, "format", data, hash_dev, "--salt", salt.hex(), "--uuid", uuid],
                         capture_output=True, text=True, check=True).stdout
    return next(ln.split()[-1] for ln in out.splitlines() if ln.startswith("Root hash:"))


def veritysetup_verify(data: Path, hash_dev: Path, root: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("veritysetup")
    return subprocess.run([tool, "verify", data, hash_dev, root], capture_output=True, text=True,
                          check=False)


# 1 block (no levels: the root is the block's hash), one hash block exactly full (128), one
# more (two levels), a three-level tree (16385 > 128*128), and sizes squashfs images have
@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 300, 16385])
def test_same_bytes_as_veritysetup(tmp_path: Path, blocks: int) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(blocks * 4096))
    root = veritysetup_format(data, tmp_path / "theirs")
    ours = verity.build_hash_tree(data, salt=SALT, uuid=UUID)
    assert ours.root_hash.hex() == root
    assert ours.hash_tree == (tmp_path / "theirs").read_bytes()
    assert ours.data_blocks == blocks
    # and cryptsetup accepts our device as written
    (tmp_path / "ours").write_bytes(ours.hash_tree)
    assert veritysetup_verify(data, tmp_path / "ours", root).returncode == 0


def test_sources_agree(tmp_path: Path) -> None:
    """A path, an open file, a pipe-like stream and bytes give the same tree."""
    raw = os.urandom(200 * 4096)
    (tmp_path / "d").write_bytes(raw)
    trees = [verity.build_hash_tree(src, salt=SALT, uuid=UUID)
             for src in (tmp_path / "d", raw, io.BytesIO(raw))]
    with open(tmp_path / "d", "rb") as f:
        trees.append(verity.build_hash_tree(f, salt=SALT, uuid=UUID))
    # a pipe cannot be mapped: it is streamed, in pieces that need not be whole blocks
    proc = subprocess.Popen(["cat", tmp_path / "d"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    trees.append(verity.build_hash_tree(proc.stdout, salt=SALT, uuid=UUID))
    proc.wait()
    assert len({t.hash_tree for t in trees}) == 1
    assert len({verity.image_seed(src) for src in (tmp_path / "d", raw, io.BytesIO(raw))}) == 1


def test_squashfs_image_padded_to_4k(tmp_path: Path) -> None:
    """mksquashfs pads to 4 KiB, so every byte of an image is under the tree."""
    mksquashfs = require_tool("mksquashfs")
    (tmp_path / "root").mkdir()
    (tmp_path / "root/file").write_bytes(os.urandom(10_001))
    image = tmp_path / "img.raw"
    subprocess.run([mksquashfs, tmp_path / "root", image, "-quiet", "-noappend"], check=True)
    assert image.stat().st_size % 4096 == 0
    tree = verity.tree_for_image(image)
    assert tree.data_blocks * 4096 == image.stat().st_size
    assert tree.root_hash.hex() == veritysetup_format(image, tmp_path / "h", tree.salt, tree.uuid)


def test_reproducible_from_seed(tmp_path: Path) -> None:
    raw = os.urandom(10 * 4096)
    a, b = verity.tree_for_image(raw), verity.tree_for_image(bytes(raw))
    assert a == b
    c = verity.tree_for_image(raw[:-1] + bytes([raw[-1] ^ 1]))
    assert c.salt != a.salt and c.uuid != a.uuid and c.root_hash != a.root_hash
    assert verity.salt_from_seed(b"x") != verity.salt_from_seed(b"y")
    assert len(verity.salt_from_seed(b"x")) == 32


def test_partial_tail_block_not_covered(tmp_path: Path) -> None:
    """As cryptsetup: a data size that is not a whole number of blocks covers the whole ones."""
    data = tmp_path / "data"
    data.write_bytes(os.urandom(3 * 4096 + 100))
    root = veritysetup_format(data, tmp_path / "theirs")
    ours = verity.build_hash_tree(data, salt=SALT, uuid=UUID)
    assert (ours.root_hash.hex(), ours.data_blocks) == (root, 3)


@pytest.mark.parametrize("blocks", [1, 5, 300])
def test_flipped_byte_named_and_rejected_by_veritysetup(tmp_path: Path, blocks: int) -> None:
    data = tmp_path / "data"
    raw = bytearray(os.urandom(blocks * 4096))
    data.write_bytes(raw)
    tree = verity.build_hash_tree(data, salt=SALT, uuid=UUID)
    (tmp_path / "tree").write_bytes(tree.hash_tree)
    assert verity.verify_hash_tree(data, tree.hash_tree, tree.root_hash) == tree
    victim = (blocks - 1) * 4096 + 17
    raw[victim] ^= 0x40
    data.write_bytes(raw)
    with pytest.raises(VerityError, match=rf"data block {blocks - 1}\b"):
        verity.verify_hash_tree(data, tree.hash_tree, tree.root_hash)
    proc = veritysetup_verify(data, tmp_path / "tree", tree.root_hash.hex())
    assert proc.returncode != 0


def test_corrupt_tree_and_wrong_root(tmp_path: Path) -> None:
    raw = os.urandom(300 * 4096)
    tree = verity.build_hash_tree(raw, salt=SALT, uuid=UUID)
    bad = bytearray(tree.hash_tree)
    bad[4096 + 5] ^= 1  # the top level: the data still matches its hashes
    with pytest.raises(VerityError, match=r"hash block 1 of the hash tree is corrupt"):
        verity.verify_hash_tree(raw, bytes(bad), tree.root_hash)
    with pytest.raises(VerityError, match=r"root hash 00+ is not the hash tree's"):
        verity.verify_hash_tree(raw, tree.hash_tree, bytes(32))
    with pytest.raises(VerityError, match=r"truncated"):
        verity.verify_hash_tree(raw, tree.hash_tree[:-4096], tree.root_hash)
    with pytest.raises(VerityError, match=r"covers 300"):
        verity.verify_hash_tree(raw[:-4096], tree.hash_tree)
    with pytest.raises(VerityError, match=r"no verity superblock"):
        verity.verify_hash_tree(raw, bytes(4096))


def test_reads_veritysetup_superblock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(7 * 4096))
    veritysetup_format(data, tmp_path / "theirs")
    sb = verity.read_superblock((tmp_path / "theirs").read_bytes())
    assert (sb.uuid, sb.salt, sb.data_blocks, sb.data_block_size) == (UUID, SALT, 7, 4096)
