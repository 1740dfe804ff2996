"""Metadata blocks: 8 KiB of uncompressed bytes each, stored behind a 2-byte header.

Inodes, directories and tables live in runs of metadata blocks. The writer
knows where its current block will start on disk (the sum of the blocks
before it), so a reference to any byte it is given is known at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from portable_service.squashfs import format as fmt
from portable_service.squashfs.compressor import Compressor
from portable_service.squashfs.errors import CorruptImageError, OutOfBoundsError


def pack_block(data: bytes, compressor: Compressor, compress: bool = True) -> bytes:
    """One metadata block on disk: compressed when that makes it smaller."""
    if compress:
        packed = compressor.compress(data)
        if len(packed) < len(data):
            return fmt.U16.pack(len(packed)) + packed
    return fmt.U16.pack(len(data) | fmt.METADATA_UNCOMPRESSED) + data


class MetadataWriter:
    """Appends bytes to a run of metadata blocks kept in memory."""

    def __init__(self, compressor: Compressor, compress: bool = True) -> None:
        self.compressor = compressor
        self.compress = compress
        self.out = bytearray()  # finished blocks, as they go to disk
        self.buf = bytearray()  # the block being filled
        self.block_starts: list[int] = []  # disk offset (in ``out``) of each finished block

    def position(self) -> tuple[int, int]:
        """(start of the current block relative to the run, offset in it) of the next byte."""
        return len(self.out), len(self.buf)

    @property
    def uncompressed_size(self) -> int:
        return len(self.block_starts) * fmt.METADATA_SIZE + len(self.buf)

    def write(self, data: bytes) -> tuple[int, int]:
        where = self.position()
        self.buf += data
        while len(self.buf) >= fmt.METADATA_SIZE:
            self._flush(bytes(self.buf[: fmt.METADATA_SIZE]))
            del self.buf[: fmt.METADATA_SIZE]
        return where

    def finish(self) -> bytes:
        if self.buf:
            self._flush(bytes(self.buf))
            self.buf.clear()
        return bytes(self.out)

    def _flush(self, block: bytes) -> None:
        self.block_starts.append(len(self.out))
        self.out += pack_block(block, self.compressor, self.compress)


class MetadataReader:
    """Reads byte runs from metadata blocks between ``start`` and ``end`` of the image.

    Every block is checked against those bounds and decompressed to at most
    8 KiB; decoded blocks are kept in a small LRU cache.
    """

    CACHE = 256

    def __init__(self, read_at: Callable[[int, int], bytes], compressor: Compressor,
                 start: int, end: int, what: str) -> None:
        self.read_at = read_at
        self.compressor = compressor
        self.start, self.end, self.what = start, end, what
        self._cache: OrderedDict[int, tuple[bytes, int]] = OrderedDict()

    def block(self, pos: int) -> tuple[bytes, int]:
        """The decoded block at absolute ``pos`` and the position of the next block."""
        hit = self._cache.get(pos)
        if hit is not None:
            self._cache.move_to_end(pos)
            return hit
        if pos < self.start or pos + 2 > self.end:
            raise OutOfBoundsError(f"{self.what}: metadata block at {pos} is outside "
                                   f"{self.start}..{self.end}")
        (header,) = fmt.U16.unpack(self.read_at(pos, 2))
        size = header & ~fmt.METADATA_UNCOMPRESSED & 0xFFFF
        if size == 0 or size > fmt.METADATA_SIZE or pos + 2 + size > self.end:
            raise OutOfBoundsError(f"{self.what}: metadata block at {pos} has bad size {size}")
        raw = self.read_at(pos + 2, size)
        data = raw if header & fmt.METADATA_UNCOMPRESSED else self.compressor.decompress(
            raw, fmt.METADATA_SIZE)
        if not data:
            raise CorruptImageError(f"{self.what}: empty metadata block at {pos}")
        hit = (data, pos + 2 + size)
        self._cache[pos] = hit
        if len(self._cache) > self.CACHE:
            self._cache.popitem(last=False)
        return hit

    def read(self, pos: int, offset: int, size: int) -> tuple[bytes, int, int]:
        """``size`` bytes from block ``pos`` (absolute) at ``offset``; returns the new position.

        The caller bounds ``size``; each block read moves forward, so this ends.
        """
        data, _ = self.block(pos)
        if offset + size <= len(data):  # most reads: one block, one slice
            return data[offset: offset + size], pos, offset + size
        out = bytearray()
        while True:
            data, nxt = self.block(pos)
            if offset > len(data):
                raise OutOfBoundsError(f"{self.what}: offset {offset} beyond a block of "
                                       f"{len(data)} bytes")
            piece = data[offset: offset + size - len(out)]
            out += piece
            offset += len(piece)
            if len(out) == size:
                return bytes(out), pos, offset
            pos, offset = nxt, 0
