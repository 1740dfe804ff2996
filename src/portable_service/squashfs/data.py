"""The block processor: file bytes in, data blocks and fragment blocks out.

Files are cut into blocks of the block size; all-zero blocks are stored as
sparse (size 0, no bytes), the tail shorter than a block goes into a shared
fragment block. Blocks are compressed by a pool of threads (zlib, lzma and
zstd release the GIL) but committed strictly in submission order, so the
image does not depend on thread timing. At most ``window`` blocks are in
flight, which bounds memory whatever the size of the input. A compressor
faster than the hand-over of one block to a thread (lz4) gets its blocks in
batches of about a MiB, and a large host file's blocks are read and compressed
by the threads themselves, a range at a time. The bytes are the same either way.
"""

from __future__ import annotations

import errno
import io
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from portable_service.squashfs import format as fmt
from portable_service.squashfs.compressor import Compressor
from portable_service.squashfs.errors import InputError

# typing and concurrent.futures cost 15 ms at start-up, a tenth of writing a small tree:
# the annotations do not need them at run time, and the pool is made only when used
TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor
    from typing import BinaryIO

SEEK_DATA: int | None = getattr(os, "SEEK_DATA", None)
MAX_PENDING = 1 << 16  # queued entries of any kind, to bound memory on huge sparse files
BATCH_FAST = 1 << 20  # bytes per thread task for a fast compressor (Compressor.fast)


@dataclass
class FileData:
    """Where a file's bytes went: what its inode records."""

    size: int
    blocks_start: int = 0
    blocks: list[int] = field(default_factory=list)  # on-disk size words, as in the inode
    fragment: int = fmt.NO_FRAGMENT
    frag_offset: int = 0
    sparse: int = 0  # bytes stored as sparse blocks


# a block on its way to the image: its (stored bytes, size word) when known, else its
# place in a batch that a thread compresses
_Done = Callable[[int, int], None]
_NOTHING = (b"", 0)


def _pack(compressor: Compressor, block: bytes) -> tuple[bytes, int]:
    """Compress one block; a block that does not shrink is stored as it is."""
    packed = compressor.compress(block)
    if len(packed) < len(block):
        return packed, len(packed)
    return block, len(block) | fmt.BLOCK_UNCOMPRESSED


def _pack_many(compressor: Compressor, blocks: list[bytes]) -> list[tuple[bytes, int]]:
    return [_pack(compressor, b) for b in blocks]


def _read_pack_range(compressor: Compressor, fd: int, at: int, lengths: list[int],
                     zero: bytes, name: str) -> list[tuple[bytes, int]]:
    """Blocks of a host file from ``at`` on, read and packed in a compression thread.

    A block of zeros (read, or in a hole, which is not read) is sparse: ``(b"", 0)``.
    """
    out: list[tuple[bytes, int]] = []
    next_data = 0  # no data before this offset
    try:
        for n in lengths:
            if SEEK_DATA is not None and at >= next_data:
                try:
                    next_data = os.lseek(fd, at, SEEK_DATA)
                except OSError as e:
                    next_data = _end_of(fd) if e.errno == errno.ENXIO else 0
            if SEEK_DATA is not None and next_data >= at + n:
                out.append(_NOTHING)
            else:
                data = os.pread(fd, n, at)
                while len(data) < n:
                    more = os.pread(fd, n - len(data), at + len(data))
                    if not more:
                        raise InputError(f"{name} shrank while the image was written",
                                         "build again when it is no longer being written to")
                    data += more
                out.append(_NOTHING if data == zero[:n] else _pack(compressor, data))
            at += n
    except OSError as e:
        raise InputError(f"cannot read {name}: {e.strerror or e}",
                         "check that it exists and is readable") from None
    return out


def _end_of(fd: int) -> int:
    """Where a file with no data after some offset ends: a hole up to there, nothing after.

    Blocks past the end are then read, come short, and the file is said to have shrunk,
    rather than stored as zeros."""
    try:
        return os.fstat(fd).st_size
    except OSError:
        return 1 << 63


class _Batch:
    """Blocks handed to a compression thread in one task, so that a fast compressor's
    blocks do not each pay for a future and two queue hand-overs."""

    __slots__ = ("blocks", "future", "results", "size")

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.size = 0
        self.future: Future[list[tuple[bytes, int]]] | None = None
        self.results: list[tuple[bytes, int]] | None = None


class BlockProcessor:
    """Streams files into the data area of an image open for writing at ``start``."""

    def __init__(self, out: BinaryIO, start: int, compressor: Compressor, block_size: int,
                 workers: int | None = None, fragments: bool = True,
                 inline: bool | None = None) -> None:
        self.out = out
        self.pos = start
        self.compressor = compressor
        self.block_size = block_size
        self.use_fragments = fragments
        self.workers = workers or os.cpu_count() or 1
        self.window = max(4, 4 * self.workers)  # compressions in flight
        self.in_flight = 0
        # inline (None: when the compressor is faster than a thread hand-over, see Compressor.fast,
        # and there is one core). A fast compressor by default: the blocks the writing thread
        # holds (small files, fragments) go to the threads in batches of about BATCH_FAST
        # bytes, and a large host file's blocks are read and compressed by the threads, a
        # range of blocks per task, so that the writing thread hands over file offsets and
        # never holds the bytes. (lz4 lets go of the GIL: two threads compress at 1.9x one.)
        self.ranges = inline is None and compressor.fast and self.workers > 1
        inline = compressor.fast if inline is None else inline
        self.pool: ThreadPoolExecutor | None = None
        self.range_fds: set[int] = set()  # duplicated descriptors the threads still read
        if self.workers > 1 and (not inline or self.ranges):
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="squashfs")
        # batches of about this many bytes go to a thread: one block, unless the compressor
        # is fast (then a task of one block costs more to hand over than to compress)
        self.batch_bytes = max(block_size, BATCH_FAST if compressor.fast else 0)
        self.batch: _Batch | None = None  # the batch being filled
        # in submission order: (batch, index in it, done) or (None, (bytes, word), done)
        self.pending: deque[tuple[_Batch | None, int | tuple[bytes, int], _Done]] = deque()
        self.fragment_buf = bytearray()
        self.fragment_table: list[tuple[int, int]] = []  # (start, size word) per fragment block
        self.fragment_count = 0  # fragment blocks started; the current one has this index
        self._zero = bytes(block_size)

    # -- one file

    def add_file(self, f: BinaryIO, size: int, name: str,
                 progress: Callable[[int], None] | None = None) -> FileData:
        """Read exactly ``size`` bytes of ``f`` into the image.

        A host file is read with pread, and its holes (SEEK_DATA) are not
        read at all: a sparse file of many GiB costs what its data costs.
        """
        fd = FileData(size)
        src = _Source(f, name)
        bs = self.block_size
        n_full, tail = divmod(size, bs)
        if not self.use_fragments and tail:
            n_full, tail = n_full + 1, 0
        first, here = True, n_full  # blocks read here, in this thread
        if self.ranges and src.fd is not None and n_full > 1:
            self._submit_ranges(fd, src.fd, size, n_full, name, progress)
            first, here = False, 0
        for i in range(here):
            want = min(bs, size - i * bs)
            block = src.read(i * bs, want)
            if progress:
                progress(want)
            self._submit_block(fd, i, block, want, first)
            first = False
        if first:
            fd.blocks_start = self.pos  # no blocks; kept for the inode only

            def place(pos: int, fd: FileData = fd) -> None:
                fd.blocks_start = pos

            self._on_commit(place)
        if tail:
            block = src.read(n_full * bs, tail, hole_ok=False)
            assert block is not None
            if progress:
                progress(len(block))
            self._add_tail(fd, block)
        if src.more(size):
            raise InputError(f"{name} grew while the image was written",
                             "build again when it is no longer being written to")
        return fd

    def add_bytes(self, data: bytes, name: str,
                  progress: Callable[[int], None] | None = None) -> FileData:
        """A file whose bytes are already in memory (read whole, see the writer).

        The same blocks, fragments and order as :meth:`add_file` of the same bytes, without
        a file object: most files of a tree come this way.
        """
        size = len(data)
        fd = FileData(size)
        bs = self.block_size
        n_full, tail = divmod(size, bs)
        if not self.use_fragments and tail:
            n_full, tail = n_full + 1, 0
        for i in range(n_full):
            block = data[i * bs: (i + 1) * bs]
            if progress:
                progress(len(block))
            self._submit_block(fd, i, block, len(block), i == 0)
        if not n_full:
            fd.blocks_start = self.pos  # no blocks; kept for the inode only

            def place(pos: int, fd: FileData = fd) -> None:
                fd.blocks_start = pos

            self._on_commit(place)
        if tail:
            if progress:
                progress(tail)
            self._add_tail(fd, data[n_full * bs:] if n_full else data)
        return fd

    def _submit_block(self, fd: FileData, i: int, block: bytes | None, length: int,
                      first: bool) -> None:
        fd.blocks.append(0)
        if block is None or block == self._zero[:length]:
            fd.sparse += length

            def sparse(pos: int, _word: int, fd: FileData = fd, first: bool = first) -> None:
                if first:
                    fd.blocks_start = pos

            self._push(_NOTHING, sparse)
            return

        def done(pos: int, word: int, fd: FileData = fd, i: int = i, first: bool = first) -> None:
            if first:
                fd.blocks_start = pos
            fd.blocks[i] = word

        assert block is not None
        self._compress(block, done)

    def _submit_ranges(self, fd: FileData, host_fd: int, size: int, n_full: int, name: str,
                       progress: Callable[[int], None] | None) -> None:
        """A host file's full blocks, read and compressed by the threads in ranges.

        The same blocks as :meth:`_submit_block` makes (a block of zeros, read or in a
        hole, is sparse), committed in the same order: the image is the same.
        """
        assert self.pool is not None
        if self.batch is not None:
            self._send()  # what was submitted before goes first
        dup = os.dup(host_fd)  # the caller closes its file when this returns
        self.range_fds.add(dup)
        bs = self.block_size
        per_task = max(1, self.batch_bytes // bs)
        fd.blocks.extend([0] * n_full)
        for first in range(0, n_full, per_task):
            lengths = [min(bs, size - i * bs) for i in range(first, min(n_full, first + per_task))]
            batch = _Batch()
            batch.future = self.pool.submit(_read_pack_range, self.compressor, dup, first * bs,
                                            lengths, self._zero, name)
            self.in_flight += 1
            for k, length in enumerate(lengths):
                i = first + k

                def done(pos: int, word: int, fd: FileData = fd, i: int = i,
                         length: int = length) -> None:
                    if i == 0:
                        fd.blocks_start = pos
                    if word == 0:  # sparse: no bytes stored
                        fd.sparse += length
                    fd.blocks[i] = word

                self.pending.append((batch, k, done))
            if progress:
                progress(sum(lengths))
            self._drain()

        def close(_pos: int, dup: int = dup) -> None:
            self.range_fds.discard(dup)
            os.close(dup)

        self._on_commit(close)

    def _add_tail(self, fd: FileData, tail: bytes) -> None:
        if len(self.fragment_buf) + len(tail) > self.block_size:
            self._flush_fragment()
        fd.fragment = self.fragment_count
        fd.frag_offset = len(self.fragment_buf)
        self.fragment_buf += tail

    def _flush_fragment(self) -> None:
        if not self.fragment_buf:
            return
        block = bytes(self.fragment_buf)
        self.fragment_buf.clear()
        self.fragment_count += 1

        def done(pos: int, word: int) -> None:
            self.fragment_table.append((pos, word))

        self._compress(block, done)

    # -- the ordered pipeline

    def _compress(self, block: bytes, done: _Done) -> None:
        if self.pool is None:  # inline
            self._push(_pack(self.compressor, block), done)
            return
        batch = self.batch
        if batch is None:
            batch = self.batch = _Batch()
        self.pending.append((batch, len(batch.blocks), done))
        batch.blocks.append(block)
        batch.size += len(block)
        if batch.size >= self.batch_bytes:
            self._send()
        self._drain()

    def _send(self) -> None:
        """Hand the batch being filled to a thread."""
        batch, self.batch = self.batch, None
        assert batch is not None and self.pool is not None
        batch.future = self.pool.submit(_pack_many, self.compressor, batch.blocks)
        batch.blocks = []
        self.in_flight += 1

    def _on_commit(self, fn: Callable[[int], None]) -> None:
        """Run ``fn(position)`` once everything submitted before it is on disk."""
        self._push(_NOTHING, lambda pos, _w: fn(pos))

    def _push(self, job: tuple[bytes, int], done: _Done) -> None:
        if not self.pending:  # nothing ahead of it: on disk now (inline, or a quiet pipeline)
            data, word = job
            pos = self.pos
            if data:
                self.out.write(data)
                self.pos += len(data)
            done(pos, word)
            return
        self.pending.append((None, job, done))
        self._drain()

    def _drain(self) -> None:
        # Only batches sent count against the window: markers for small files and holes
        # are cheap, and letting them fill it would leave the compression threads idle.
        while self.pending:
            batch = self.pending[0][0]
            ready = batch is None or (batch.future is not None and batch.future.done())
            if not (ready or self.in_flight > self.window or len(self.pending) > MAX_PENDING):
                break
            self._commit_one()

    def _commit_one(self) -> None:
        batch, job, done = self.pending.popleft()
        if batch is None:
            assert isinstance(job, tuple)
            data, word = job
        else:
            assert isinstance(job, int)
            if batch.results is None:
                if batch.future is None:
                    self._send()  # the batch being filled: it is needed now
                assert batch.future is not None
                batch.results = batch.future.result()
                self.in_flight -= 1
            data, word = batch.results[job]
            batch.results[job] = _NOTHING  # written: let it go
        pos = self.pos
        if data:
            self.out.write(data)
            self.pos += len(data)
        done(pos, word)

    def finish(self) -> int:
        """Write the last fragment and everything in flight; returns the end of the data."""
        self._flush_fragment()
        while self.pending:
            self._commit_one()
        if self.pool is not None:
            self.pool.shutdown()
        return self.pos

    def abort(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for dup in self.range_fds:
            os.close(dup)
        self.range_fds.clear()


class _Source:
    """Reads a file's byte ranges: pread and hole detection for host files, else read()."""

    def __init__(self, f: BinaryIO, name: str) -> None:
        self.f, self.name = f, name
        self.pos = 0
        try:
            self.fd: int | None = f.fileno()
            os.fstat(self.fd)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            self.fd = None
        self.next_data = 0  # no data before this offset (a hole), when fd is set

    def read(self, at: int, n: int, hole_ok: bool = True) -> bytes | None:
        """``n`` bytes at ``at``; None when they all lie in a hole (they are zeros)."""
        if self.fd is None:
            return _read_exactly(self.f, n, self.name)
        hole_ok = hole_ok and SEEK_DATA is not None
        if hole_ok and at >= self.next_data:
            assert SEEK_DATA is not None
            try:
                self.next_data = os.lseek(self.fd, at, SEEK_DATA)
            except OSError as e:
                # ENXIO: no data after ``at``; anything else: treat it all as data
                self.next_data = _end_of(self.fd) if e.errno == errno.ENXIO else 0
                hole_ok = e.errno == errno.ENXIO
        if hole_ok and self.next_data >= at + n:
            return None
        data = os.pread(self.fd, n, at)
        while len(data) < n:
            more = os.pread(self.fd, n - len(data), at + len(data))
            if not more:
                raise InputError(f"{self.name} shrank while the image was written",
                                 "build again when it is no longer being written to")
            data += more
        return data

    def more(self, size: int) -> bool:
        if self.fd is None:
            return bool(self.f.read(1))
        return bool(os.pread(self.fd, 1, size))


def _read_exactly(f: BinaryIO, n: int, name: str) -> bytes:
    data = f.read(n)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            raise InputError(f"{name} shrank while the image was written",
                             "build again when it is no longer being written to")
        parts.append(more)
        got += len(more)
    return b"".join(parts)
