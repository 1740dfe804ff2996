"""dm-verity hash trees (format 1, sha256), computed natively and checked block by block.

The on-disk layout is the kernel's and cryptsetup's (``veritysetup format``): a 512-byte
superblock at the start of the first hash block, then the hash levels, the level nearest the
root first and the hashes of the data blocks last. Every hash is ``sha256(salt || block)``
(format 1 puts the salt first), packed 128 to a 4 KiB hash block, each block zero-padded.
The root hash is the hash of the single top block; with one data block it is that block's
hash and the hash device holds the superblock only (cryptsetup does the same).

A rebuild must give the same bytes, so the salt and the superblock UUID come from a seed
(the digest of the image) instead of from randomness as veritysetup's default does.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mmap
import os
import stat
import struct
import uuid as uuid_mod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from portable_service.errors import VerityError

ALGORITHM = "sha256"
DIGEST_SIZE = 32
SALT_SIZE = 32
BLOCK_SIZE = 4096
FORMAT_VERSION = 1  # hash = H(salt || block); version 0 (Chrome OS) appends the salt
SIGNATURE = b"verity\0\0"
# struct verity_sb (cryptsetup lib/verity/verity.c): signature, version, hash_type, uuid,
# algorithm, data_block_size, hash_block_size, data_blocks, salt_size, pad, salt, pad
_SB = struct.Struct("<8sII16s32sIIQH6s256s168s")
assert _SB.size == 512
_READ_CHUNK = 1 << 22  # data is hashed 4 MiB at a time (a piece per thread)
_MAX_THREADS = 8


@dataclass(frozen=True)
class VerityTree:
    """A hash device's contents and what identifies it."""

    root_hash: bytes        # 32 bytes
    salt: bytes             # 32 bytes
    data_blocks: int
    hash_tree: bytes        # the hash device contents (superblock included, as veritysetup writes)
    uuid: str               # superblock UUID (derived from the seed, reproducible)

    @property
    def root_hash_hex(self) -> str:
        return self.root_hash.hex()


@dataclass(frozen=True)
class Superblock:
    """The fields of a hash device's superblock that a check needs."""

    uuid: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes


def _derive(seed: bytes, what: bytes) -> bytes:
    # one labelled digest per derived value, so the salt never equals the UUID's bytes
    return hashlib.sha256(b"portable-service verity " + what + b"\0" + seed).digest()


def salt_from_seed(seed: bytes) -> bytes:
    """The 32-byte salt for an image whose seed (e.g. the image's sha256) is ``seed``."""
    return _derive(seed, b"salt")


def uuid_from_seed(seed: bytes) -> str:
    """The superblock UUID for ``seed``: a random-style (version 4) UUID, reproducible."""
    return str(uuid_mod.UUID(bytes=_derive(seed, b"uuid")[:16], version=4))


def image_seed(data: BinaryIO | Path | bytes) -> bytes:
    """The seed of an image: a digest of all its bytes, so equal images get equal trees.

    It is the sha256 of the sha256 of each 4 MiB piece: the pieces are hashed in parallel.
    """
    with _mapped(data) as view:
        if view is not None:
            pieces = _parallel(view, _READ_CHUNK, lambda piece: hashlib.sha256(piece).digest())
        else:
            pieces = [hashlib.sha256(chunk).digest() for chunk in _chunks(data, _READ_CHUNK)]
    return hashlib.sha256(b"".join(pieces)).digest()


def tree_for_image(data: BinaryIO | Path | bytes) -> VerityTree:
    """The reproducible hash tree of an image: salt and UUID from its own bytes."""
    seed = image_seed(data)
    return build_hash_tree(data, salt=salt_from_seed(seed), uuid=uuid_from_seed(seed))


def _chunks(data: BinaryIO | Path | bytes, size: int) -> Iterator[memoryview]:
    """The data in pieces of ``size`` bytes (the last may be shorter), without copies:
    bytes are sliced through a memoryview, a file is read into one reused buffer (each
    piece is valid until the next is asked for)."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for off in range(0, len(view), size):
            yield view[off:off + size]
        return
    if isinstance(data, Path):
        with open(data, "rb") as f:
            yield from _file_chunks(f, size)
        return
    yield from _file_chunks(data, size)


def _file_chunks(f: BinaryIO, size: int) -> Iterator[memoryview]:
    # one buffer filled again and again: no allocation per chunk, no copy per block
    buf = bytearray(size)
    view = memoryview(buf)
    while True:
        n = 0
        while n < size:  # a short read (a pipe) is not the end
            got = f.readinto(view[n:])  # type: ignore[attr-defined]
            if not got:
                break
            n += got
        if n == 0:
            return
        yield view[:n]
        if n < size:
            return


def _block_digests(data: BinaryIO | Path | bytes, salted: hashlib._Hash, block: int,
                   count: int | None = None) -> tuple[bytes, int]:
    """The concatenated ``H(salt || block)`` of every whole data block and their number.

    A trailing partial block is not covered (cryptsetup counts data blocks as size / block
    size, rounded down); ``count`` stops after that many blocks. A file or bytes object is
    hashed by several threads at once (hashlib lets go of the GIL while it hashes).
    """
    copy = salted.copy

    def digests(chunk: memoryview) -> bytes:
        out = []
        for off in range(0, len(chunk) - len(chunk) % block, block):
            h = copy()
            h.update(chunk[off:off + block])
            out.append(h.digest())
        return b"".join(out)

    chunk_size = max(_READ_CHUNK - _READ_CHUNK % block, block)
    with _mapped(data) as view:
        if view is not None:
            whole = len(view) // block
            if count is not None:
                whole = min(whole, count)
            return b"".join(_parallel(view[:whole * block], chunk_size, digests)), whole
    parts: list[bytes] = []
    done = 0
    for chunk in _chunks(data, chunk_size):
        part = digests(chunk)
        if count is not None and done + len(part) // DIGEST_SIZE >= count:
            parts.append(part[:(count - done) * DIGEST_SIZE])
            return b"".join(parts), count
        parts.append(part)
        done += len(part) // DIGEST_SIZE
        if len(chunk) % block:
            break  # a partial block can only be the last
    return b"".join(parts), done


_T = TypeVar("_T")


def _parallel(view: memoryview, size: int, work: Callable[[memoryview], _T]) -> list[_T]:
    """``work`` on each ``size``-byte piece of ``view``, in order, on several threads when
    the data is large enough to gain from them."""
    offsets = range(0, len(view), size)
    workers = min(os.cpu_count() or 1, _MAX_THREADS, len(offsets))
    if workers < 2:
        return [work(view[off:off + size]) for off in offsets]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda off: work(view[off:off + size]), offsets))


@contextlib.contextmanager
def _mapped(data: BinaryIO | Path | bytes) -> Iterator[memoryview | None]:
    """The whole data as one memoryview (a file is mapped, from its current position), or
    None for a source that cannot be mapped (a pipe, an empty file): then it is streamed."""
    if isinstance(data, bytes | bytearray | memoryview):
        yield memoryview(data)
        return
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(data, "rb")) if isinstance(data, Path) else data
        try:
            fd, start = f.fileno(), f.tell()
            regular = stat.S_ISREG(os.fstat(fd).st_mode) and os.fstat(fd).st_size > start
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            regular = False
        if not regular:
            yield None
            return
        m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        try:
            yield memoryview(m)[start:]
        finally:
            # a view of it still alive (the caller's): unmapped when that is collected
            with contextlib.suppress(BufferError):
                m.close()


def _pad(level: bytes, block: int) -> bytes:
    rest = len(level) % block
    return level + bytes(block - rest) if rest else level


def _levels(leaf_digests: bytes, salted: hashlib._Hash, hash_block: int) -> tuple[list[bytes], bytes]:
    """The hash levels (lowest first, each padded to whole hash blocks) and the root hash."""
    if len(leaf_digests) == DIGEST_SIZE:
        return [], leaf_digests  # one data block: its hash is the root, no levels
    levels = [_pad(leaf_digests, hash_block)]
    copy = salted.copy
    while True:
        level = memoryview(levels[-1])
        digests = []
        for off in range(0, len(level), hash_block):
            h = copy()
            h.update(level[off:off + hash_block])
            digests.append(h.digest())
        if len(digests) == 1:
            return levels, digests[0]
        levels.append(_pad(b"".join(digests), hash_block))


def _superblock(uuid: str, data_block: int, hash_block: int, data_blocks: int, salt: bytes) -> bytes:
    return _SB.pack(SIGNATURE, FORMAT_VERSION, 1, uuid_mod.UUID(uuid).bytes,
                    ALGORITHM.encode(), data_block, hash_block, data_blocks, len(salt), b"",
                    salt, b"")


def _check_sizes(data_block: int, hash_block: int, salt: bytes) -> None:
    for name, size in (("data", data_block), ("hash", hash_block)):
        if size < 512 or size > (1 << 19) or size & (size - 1):
            raise ValueError(f"{name} block size {size} is not a power of two from 512 to 512K")
    if hash_block < DIGEST_SIZE * 2:
        raise ValueError("hash block too small")
    if len(salt) > 256:
        raise ValueError("salt longer than 256 bytes")


def build_hash_tree(data: BinaryIO | Path | bytes, *, salt: bytes, uuid: str,
                    data_block: int = BLOCK_SIZE, hash_block: int = BLOCK_SIZE) -> VerityTree:
    """The hash device ``veritysetup format --salt SALT --uuid UUID`` writes for ``data``."""
    _check_sizes(data_block, hash_block, salt)
    salted = hashlib.sha256(salt)
    leaves, count = _block_digests(data, salted, data_block)
    return _assemble(leaves, count, salted, salt, uuid, data_block, hash_block)


def _assemble(leaves: bytes, count: int, salted: hashlib._Hash, salt: bytes, uuid: str,
              data_block: int, hash_block: int) -> VerityTree:
    if count == 0:
        raise VerityError("the image is smaller than one block: a hash tree needs data",
                          "build a non-empty image")
    levels, root = _levels(leaves, salted, hash_block)
    sb = _superblock(uuid, data_block, hash_block, count, salt)
    # the superblock takes a whole hash block; the level nearest the root comes first
    tree = b"".join([_pad(sb, hash_block), *reversed(levels)])
    return VerityTree(root_hash=root, salt=salt, data_blocks=count, hash_tree=tree,
                      uuid=str(uuid_mod.UUID(uuid)))


def read_superblock(tree: bytes) -> Superblock:
    """Parse a hash device's superblock; a device that is not one is a VerityError."""
    if len(tree) < _SB.size:
        raise VerityError(f"the hash tree is {len(tree)} bytes, shorter than a verity superblock",
                          "rebuild the image's .verity file")
    (sig, version, hash_type, uuid_b, alg, dbs, hbs, blocks, salt_size, _p1, salt,
     _p2) = _SB.unpack_from(tree)
    if sig != SIGNATURE:
        raise VerityError("the hash tree has no verity superblock", "rebuild the image's .verity file")
    name = alg.rstrip(b"\0").decode(errors="replace")
    if version != FORMAT_VERSION or hash_type != 1 or name != ALGORITHM:
        raise VerityError(f"unsupported verity hash tree: version {version}, hash type {hash_type}, "
                          f"algorithm {name}", "only format 1 with sha256 is supported")
    if salt_size > len(salt):
        raise VerityError(f"corrupt verity superblock: a salt of {salt_size} bytes (at most "
                          f"{len(salt)})", "rebuild the image's .verity file")
    try:
        _check_sizes(dbs, hbs, salt[:salt_size])
    except ValueError as e:
        raise VerityError(f"corrupt verity superblock: {e}", "rebuild the image's .verity file") from None
    return Superblock(str(uuid_mod.UUID(bytes=uuid_b)), dbs, hbs, blocks, salt[:salt_size])


def verify_hash_tree(data: BinaryIO | Path | bytes, tree: bytes,
                     root_hash: bytes | None = None) -> VerityTree:
    """Check ``tree`` (a hash device) against ``data`` and, if given, ``root_hash``.

    Returns the tree recomputed from the data. Raises VerityError naming the first data
    block whose hash differs (a tampered byte), else the first corrupt hash block, else the
    root hash that does not match.
    """
    sb = read_superblock(tree)
    salted = hashlib.sha256(sb.salt)
    leaves, count = _block_digests(data, salted, sb.data_block_size, sb.data_blocks)
    if count < sb.data_blocks:
        raise VerityError(f"the image holds {count} blocks of {sb.data_block_size} bytes, its hash "
                          f"tree covers {sb.data_blocks}", "the image was truncated; rebuild it")
    want = _assemble(leaves, count, salted, sb.salt, sb.uuid, sb.data_block_size, sb.hash_block_size)
    if count > 1:
        # the data blocks' hashes are the last level: compare them block by block
        leaf_start = len(want.hash_tree) - len(_pad(leaves, sb.hash_block_size))
        stored = tree[leaf_start:leaf_start + len(leaves)]
        for i in range(count) if stored != leaves else ():  # one comparison when all match
            a = i * DIGEST_SIZE
            if stored[a:a + DIGEST_SIZE] != leaves[a:a + DIGEST_SIZE]:
                if len(stored) < a + DIGEST_SIZE:
                    raise VerityError(f"the hash tree is truncated ({len(tree)} bytes, "
                                      f"{len(want.hash_tree)} expected)",
                                      "rebuild the image's .verity file")
                start = i * sb.data_block_size
                raise VerityError(f"data block {i} (bytes {start}-{start + sb.data_block_size - 1}) "
                                  "does not match its hash in the hash tree: the image was "
                                  "modified after its hash tree was made",
                                  "rebuild the image or restore the original")
    elif len(tree) >= len(want.hash_tree) and root_hash is not None and want.root_hash != root_hash:
        # one block: nothing but the root hash covers it
        raise VerityError("data block 0 does not match the root hash: the image was modified "
                          "after its hash tree was made", "rebuild the image or restore the original")
    if tree[:len(want.hash_tree)] != want.hash_tree or len(tree) < len(want.hash_tree):
        off = next((i for i, (a, b) in enumerate(zip(tree, want.hash_tree, strict=False)) if a != b),
                   min(len(tree), len(want.hash_tree)))
        raise VerityError(f"hash block {off // sb.hash_block_size} of the hash tree is corrupt "
                          f"(byte {off})", "rebuild the image's .verity file")
    if root_hash is not None and want.root_hash != root_hash:
        raise VerityError(f"the root hash {root_hash.hex()} is not the hash tree's "
                          f"({want.root_hash.hex()})", "use the .roothash built with the image")
    return want


def check_whole_blocks(image: Path, hint: str) -> None:
    """A hash tree covers whole data blocks only (as cryptsetup's): an image whose size is not
    a multiple of :data:`BLOCK_SIZE` would end in bytes that are read but not protected."""
    size = image.stat().st_size
    if size % BLOCK_SIZE:
        raise VerityError(f"the image is {size} bytes, not a multiple of {BLOCK_SIZE}: its last "
                          "bytes would not be covered by the hash tree", hint)
