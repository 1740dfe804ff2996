"""Compressors behind one interface: ``compress``, ``decompress`` and the options record.

gzip (zlib) and xz/lzma come from the standard library, zstd and lz4 from
their packages, lzo from python-lzo when installed. Options are given in mksquashfs syntax
(:class:`~portable_service.builder.writers.options.Compression`), so a spec works with
either writer, and the defaults match mksquashfs 4.5 so images compare.
"""

from __future__ import annotations

import lzma
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from portable_service.squashfs import format as fmt
from portable_service.squashfs.errors import CorruptImageError, OptionsError, UnsupportedError

GZIP_STRATEGIES = {
    "default": zlib.Z_DEFAULT_STRATEGY, "filtered": zlib.Z_FILTERED,
    "huffman_only": zlib.Z_HUFFMAN_ONLY, "run_length_encoded": zlib.Z_RLE, "fixed": zlib.Z_FIXED,
}
# bits of the gzip options' strategy field, as squashfs-tools numbers them
GZIP_STRATEGY_BITS = {"default": 1, "filtered": 2, "huffman_only": 4,
                      "run_length_encoded": 8, "fixed": 16}
XZ_FILTERS = {"x86": (1, lzma.FILTER_X86), "powerpc": (2, lzma.FILTER_POWERPC),
              "ia64": (4, lzma.FILTER_IA64), "arm": (8, lzma.FILTER_ARM),
              "armthumb": (16, lzma.FILTER_ARMTHUMB), "sparc": (32, lzma.FILTER_SPARC)}
LZ4_LEGACY, LZ4_HC = 1, 1
# squashfs-tools' lzo algorithms by options-record number; python-lzo offers two of them
LZO_ALGORITHMS = {"lzo1x_1": 0, "lzo1x_1_11": 1, "lzo1x_1_12": 2, "lzo1x_1_15": 3, "lzo1x_999": 4}
LZO_WRITABLE = ("lzo1x_1", "lzo1x_999")
LZO_DEFAULT_LEVEL = 8  # mksquashfs: lzo1x_999 at level 8


@dataclass(frozen=True)
class Compressor:
    """One configured compressor. ``compress`` is safe to call from several threads."""

    name: str
    block_size: int
    level: int = 0
    window: int = 15
    strategies: tuple[str, ...] = ()
    dict_size: int = 0
    filters: tuple[str, ...] = ()
    hc: bool = False
    algorithm: str = ""  # lzo only

    @property
    def fast(self) -> bool:
        """Compresses a block in less time than handing it to a thread and back costs.

        lz4 (not -Xhc) runs at several hundred MB/s per core: with threads, the writer's
        one thread spends more on queues and futures than the workers save, measured on
        the standard library (see BENCHMARKS.md), so its blocks are compressed inline.
        """
        return self.name == "lz4" and not self.hc

    @property
    def id(self) -> int:
        return fmt.COMPRESSOR_NAMES[self.name]

    def compress(self, data: bytes) -> bytes:
        return _COMPRESS[self.name](self, data)

    def decompress(self, data: bytes, limit: int) -> bytes:
        """Decompress at most ``limit`` bytes; more output means a corrupt block."""
        try:
            out = _DECOMPRESS[self.name](data, limit)
        except CorruptImageError:
            raise
        except Exception as e:  # every library has its own error type
            raise CorruptImageError(f"{self.name} data does not decompress: {e}") from None
        if len(out) > limit:
            raise CorruptImageError(f"a {self.name} block decompresses to more than {limit} bytes")
        return out

    def options_record(self) -> bytes | None:
        """The compressor options written after the superblock, None when all are defaults."""
        if self.name == "gzip":
            bits = sum(GZIP_STRATEGY_BITS[s] for s in self.strategies)
            if self.level == 9 and self.window == 15 and not bits:
                return None
            return fmt.GZIP_OPTIONS.pack(self.level, self.window, bits)
        if self.name == "xz":
            bits = sum(XZ_FILTERS[f][0] for f in self.filters)
            if self.dict_size == self.block_size and not bits:
                return None
            return fmt.XZ_OPTIONS.pack(self.dict_size, bits)
        if self.name == "zstd":
            return None if self.level == 15 else fmt.ZSTD_OPTIONS.pack(self.level)
        if self.name == "lz4":
            return fmt.LZ4_OPTIONS.pack(LZ4_LEGACY, LZ4_HC if self.hc else 0)
        if self.name == "lzo":
            if self.algorithm == "lzo1x_999" and self.level == LZO_DEFAULT_LEVEL:
                return None
            return fmt.LZO_OPTIONS.pack(LZO_ALGORITHMS[self.algorithm], self.level)
        return None


# -- building one: from mksquashfs option strings (writer) or an image (reader)

def from_options(name: str, options: tuple[str, ...], block_size: int) -> Compressor:
    """A compressor from mksquashfs-style ``-X`` options; bad options are an OptionsError."""
    opts = _pairs(name, options)

    def take(flag: str) -> str | None:
        return opts.pop(flag, None)

    if name == "gzip":
        level = _int_opt(take("-Xcompression-level"), 9, 1, 9, name)
        window = _int_opt(take("-Xwindow-size"), 15, 8, 15, name)
        strat = take("-Xstrategy")
        strategies = tuple(strat.split(",")) if strat else ()
        for s in strategies:
            if s not in GZIP_STRATEGIES:
                raise OptionsError(f"gzip -Xstrategy {s!r} is unknown",
                                f"use some of {', '.join(GZIP_STRATEGIES)}")
        c = Compressor(name, block_size, level=level, window=window, strategies=strategies)
    elif name == "xz":
        dict_size = _dict_size(take("-Xdict-size"), block_size)
        bcj = take("-Xbcj")
        filters = tuple(bcj.split(",")) if bcj else ()
        for f in filters:
            if f not in XZ_FILTERS:
                raise OptionsError(f"xz -Xbcj filter {f!r} is unknown",
                                f"use some of {', '.join(XZ_FILTERS)}")
        c = Compressor(name, block_size, dict_size=dict_size, filters=filters)
    elif name == "zstd":
        _need(name)
        c = Compressor(name, block_size, level=_int_opt(take("-Xcompression-level"), 15, 1, 22,
                                                        name))
    elif name == "lz4":
        _need(name)
        hc = take("-Xhc")
        c = Compressor(name, block_size, hc=hc is not None)
    elif name == "lzo":
        _need(name)
        algorithm = take("-Xalgorithm") or "lzo1x_999"
        if algorithm not in LZO_WRITABLE:
            raise OptionsError(f"lzo -Xalgorithm {algorithm!r} is not offered by the native writer",
                            f"use {' or '.join(LZO_WRITABLE)}, or --writer mksquashfs")
        level = _int_opt(take("-Xcompression-level"), LZO_DEFAULT_LEVEL, 1, 9, name)
        if algorithm == "lzo1x_1":
            level = 0  # squashfs-tools records no level for the lzo1x_1 family
        c = Compressor(name, block_size, level=level, algorithm=algorithm)
    else:
        raise OptionsError(f"the native writer cannot write {name} images",
                        "use gzip, xz, zstd, lz4 or lzo, or --writer mksquashfs")
    if opts:
        raise OptionsError(f"{name} option {next(iter(opts))} is not supported by the native writer",
                        "remove it, or use --writer mksquashfs")
    return c


def from_image(compression_id: int, record: bytes | None, block_size: int) -> Compressor:
    """The compressor an image names, with its options record if it has one."""
    name = fmt.COMPRESSOR_IDS.get(compression_id)
    if name is None:
        raise UnsupportedError(f"unknown compressor id {compression_id}")
    if name == "lzo":
        _need_image(name)
    if name == "zstd":
        _need_image(name)
    if name == "lz4":
        _need_image(name)
        if record is not None and len(record) >= 8:
            version, _flags = fmt.LZ4_OPTIONS.unpack_from(record)
            if version != LZ4_LEGACY:
                raise UnsupportedError(f"lz4 format version {version} is not supported")
    return Compressor(name, block_size)


def _pairs(name: str, options: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(options):
        flag = options[i]
        if not flag.startswith("-X"):
            raise OptionsError(f"{name} option {flag!r} is not a -X option")
        value = ""
        if i + 1 < len(options) and not options[i + 1].startswith("-X"):
            value = options[i + 1]
            i += 1
        out[flag] = value
        i += 1
    return out


def _int_opt(value: str | None, default: int, lo: int, hi: int, name: str) -> int:
    if value is None:
        return default
    if not value.isdigit() or not lo <= int(value) <= hi:
        raise OptionsError(f"{name} option value {value!r} is out of range",
                        f"use a number from {lo} to {hi}")
    return int(value)


def _dict_size(value: str | None, block_size: int) -> int:
    """xz -Xdict-size: bytes, K/M suffix, or a percentage of the block size (mksquashfs rules)."""
    if value is None:
        return block_size
    v = value.strip()
    try:
        if v.endswith("%"):
            n = block_size * int(v[:-1]) // 100
        elif v[-1:] in "kK":
            n = int(v[:-1]) * 1024
        elif v[-1:] in "mM":
            n = int(v[:-1]) << 20
        else:
            n = int(v)
    except ValueError:
        raise OptionsError(f"xz -Xdict-size {value!r} is not a size",
                        "use e.g. 100%, 50% or 512K") from None
    # the kernel only takes 2^n or 2^n + 2^(n-1), up to the block size
    top = n.bit_length() - 1
    ok = n > 0 and (n == 1 << top or n == (1 << top) + (1 << (top - 1)))
    if not ok or n < min(8192, block_size) or n > block_size:
        raise OptionsError(f"xz -Xdict-size {value!r} gives {n} bytes",
                        "use a power of two (or 1.5 times one) up to the block size")
    return n


def readable(name: str) -> bool:
    """Whether this installation can decompress ``name`` blocks (to read or verify an image)."""
    module = _MODULES.get(name)
    if module is None:
        return name in _DECOMPRESS
    try:
        __import__(module[0])
    except ImportError:
        return False
    return True


# compressor -> (module to import, package to install) when it is not in the standard library
_MODULES = {"zstd": ("zstandard", "zstandard"), "lz4": ("lz4", "lz4"), "lzo": ("lzo", "python-lzo")}


def install_hint(name: str) -> str:
    """How to get the Python package a compressor outside the standard library needs."""
    package = _MODULES[name][1]
    extra = " (it builds against liblzo2: apt-get install liblzo2-dev)" if name == "lzo" else ""
    return f"pip install {package}{extra}"


def _need(name: str) -> None:
    if not readable(name):
        raise OptionsError(f"{name} compression needs the Python package {_MODULES[name][1]}",
                        f"{install_hint(name)}, or choose gzip or xz")


def _need_image(name: str) -> None:
    if not readable(name):
        raise UnsupportedError(f"the image is {name}-compressed and {_MODULES[name][1]} is not "
                               "installed", install_hint(name))


# -- the codecs

def _gzip(c: Compressor, data: bytes) -> bytes:
    if len(c.strategies) <= 1:
        strategy = GZIP_STRATEGIES[c.strategies[0]] if c.strategies else zlib.Z_DEFAULT_STRATEGY
        co = zlib.compressobj(c.level, zlib.DEFLATED, c.window, 8, strategy)
        return co.compress(data) + co.flush()
    best = b""
    for s in c.strategies:  # mksquashfs keeps the smallest of the strategies
        co = zlib.compressobj(c.level, zlib.DEFLATED, c.window, 8, GZIP_STRATEGIES[s])
        out = co.compress(data) + co.flush()
        if not best or len(out) < len(best):
            best = out
    return best


def _xz(c: Compressor, data: bytes) -> bytes:
    lzma2 = {"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": c.dict_size}
    best = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=[lzma2])
    for f in c.filters:  # mksquashfs tries each branch filter and keeps the smallest
        out = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                            filters=[{"id": XZ_FILTERS[f][1]}, lzma2])
        if len(out) < len(best):
            best = out
    return best


_local = threading.local()


def _zstd(c: Compressor, data: bytes) -> bytes:
    import zstandard

    # a ZstdCompressor must not be shared by threads
    cctx = getattr(_local, "zstd", None)
    if cctx is None or getattr(_local, "zstd_level", None) != c.level:
        cctx = zstandard.ZstdCompressor(level=c.level)
        _local.zstd, _local.zstd_level = cctx, c.level
    # ZstdCompressor.compress holds the GIL; the batch API runs in its own thread without it,
    # which lets blocks compress in parallel. The frames are the same bytes.
    out = cctx.multi_compress_to_buffer([data], threads=1)
    return out[0].tobytes()


def _lz4(c: Compressor, data: bytes) -> bytes:
    import lz4.block

    mode = "high_compression" if c.hc else "default"
    out: bytes = lz4.block.compress(data, mode=mode, store_size=False)
    return out


def _lzo(c: Compressor, data: bytes) -> bytes:
    import lzo

    # python-lzo: level 1 is lzo1x_1, levels 2-9 are lzo1x_999 at that level; no header,
    # as squashfs stores bare lzo1x streams
    return bytes(lzo.compress(data, 1 if c.algorithm == "lzo1x_1" else c.level, False))


def _un_lzo(data: bytes, limit: int) -> bytes:
    import lzo

    # the output buffer is the limit: a longer stream is an error, not an overflow
    return bytes(lzo.decompress(data, False, limit))


def _un_zlib(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, limit + 1)
    if not d.eof:
        raise CorruptImageError("a gzip block is truncated or too large")
    return out


def _un_lzma(form: int) -> Callable[[bytes, int], bytes]:
    def run(data: bytes, limit: int) -> bytes:
        d = lzma.LZMADecompressor(format=form, memlimit=256 << 20)
        out = d.decompress(data, limit + 1)
        if not d.eof:
            raise CorruptImageError("an xz/lzma block is truncated or too large")
        return out

    return run


def _un_zstd(data: bytes, limit: int) -> bytes:
    import zstandard

    size = zstandard.frame_content_size(data)
    if size > limit:
        raise CorruptImageError("a zstd block claims to be larger than a block")
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=limit + 1)


def _un_lz4(data: bytes, limit: int) -> bytes:
    import lz4.block

    out: bytes = lz4.block.decompress(data, uncompressed_size=limit)
    return out


_COMPRESS: dict[str, Callable[[Compressor, bytes], bytes]] = {
    "gzip": _gzip, "xz": _xz, "zstd": _zstd, "lz4": _lz4, "lzo": _lzo,
}
_DECOMPRESS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _un_zlib, "xz": _un_lzma(lzma.FORMAT_XZ), "lzma": _un_lzma(lzma.FORMAT_ALONE),
    "zstd": _un_zstd, "lz4": _un_lz4, "lzo": _un_lzo,
}
