"""Images that are not a bare squashfs: a GPT Discoverable Disk Image, an erofs file system.

A DDI's root partition is found as systemd-dissect finds it (rules/partitions.py); a
squashfs root is read in place by the pure-Python reader. erofs has no reader here:
``fsck.erofs --extract`` (erofs-utils, which the erofs writer needs anyway) unpacks it
into a private folder that is then read like any folder, and removed on close.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from portable_service.errors import ImageError, ToolError
from portable_service.fs.views import HostFS, ImageInfo, SquashfsFS


def open_disk_or_erofs(path: Path) -> SquashfsFS | HostFS | None:
    """The file system inside ``path`` when it is a DDI or erofs; None for anything else."""
    from portable_service.disk import ddi, gpt

    with open(path, "rb") as f:
        head = f.read(2048)
    if gpt.is_gpt(head):
        found = ddi.find_root(path)
        root = found.root
        label = f"DDI (GPT), root partition {root.name or found.arch}"
        if found.verity is not None:
            label += " + verity" + (" + signature" if found.signature is not None else "")
        if found.filesystem == "squashfs":
            try:
                return SquashfsFS(path, root.offset, root.size, container=f"{label}: ")
            except ImageError as e:  # the bytes the reader saw are the partition's
                raise ImageError(f"{path}: the squashfs in root partition {root.name} cannot be "
                                 f"read: {e.message}", e.hint or "is the image damaged?") from None
        if found.filesystem == "erofs":
            return ErofsFS(path, root.offset, root.size, container=f"{label}: ")
        raise ImageError(f"{path}: the root partition holds neither squashfs nor erofs",
                         "portable-service reads squashfs and erofs root partitions only")
    if ddi.filesystem_kind(head) == "erofs":
        return ErofsFS(path)
    return None


class ErofsFS(HostFS):
    """An erofs image unpacked with ``fsck.erofs --extract`` into a private folder.

    Owners are what fsck.erofs could restore: the image's when run as root, else the
    caller's (only ``ls -l`` and ``diff`` show owners; modes, links and bytes are exact).
    """

    def __init__(self, path: Path, offset: int = 0, length: int | None = None,
                 container: str = "") -> None:
        from portable_service.run import find_tool, run

        try:
            tool = find_tool("fsck.erofs", reason="to read an erofs image")
        except ToolError as e:
            raise ImageError(f"{path}: erofs is not readable by portable-service without "
                             "fsck.erofs", e.hint or "install erofs-utils, or mount it") from None
        self._work = Path(tempfile.mkdtemp(prefix="portable-service-erofs."))
        try:
            image = path
            if offset or length is not None:
                image = self._work / "partition"
                _copy_range(path, image, offset, length)
            tree = self._work / "root"
            proc = run([tool, f"--extract={tree}", image], check=False)
            if proc.returncode != 0:
                from portable_service.run import tool_message

                raise ImageError(f"{path}: fsck.erofs cannot read this erofs file system: "
                                 f"{tool_message(proc)}", "is the image damaged?")
            if image != path:
                image.unlink()
        except BaseException:
            shutil.rmtree(self._work, ignore_errors=True)
            raise
        super().__init__(tree)
        superblock = _erofs_superblock(path, offset)
        self.info = ImageInfo(format=f"{container}erofs (read by unpacking with fsck.erofs)",
                              compressor=superblock.compressor,
                              block_size=superblock.block_size,
                              file_size=path.stat().st_size,
                              mkfs_time=superblock.build_time)

    def close(self) -> None:
        shutil.rmtree(self._work, ignore_errors=True)


def _copy_range(src: Path, dst: Path, offset: int, length: int | None) -> None:
    with open(src, "rb") as f, open(dst, "wb") as out:
        f.seek(offset)
        left = length if length is not None else -1
        while left:
            chunk = f.read(1 << 20 if left < 0 else min(1 << 20, left))
            if not chunk:
                break
            out.write(chunk)
            if left > 0:
                left -= len(chunk)


# the erofs on-disk superblock at byte 1024 (linux fs/erofs/erofs_fs.h)
_ALGORITHMS = {0: "lz4", 1: "lzma", 2: "deflate", 3: "zstd"}


@dataclass(frozen=True)
class ErofsSuperblock:
    block_size: int | None = None
    build_time: int | None = None
    compressor: str | None = None


def _erofs_superblock(path: Path, offset: int) -> ErofsSuperblock:

    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(offset + 1024)
        sb = f.read(128)
        if len(sb) == 128:
            blkszbits = sb[12]
            build_time = struct.unpack_from("<Q", sb, 24)[0]
            feature_incompat = struct.unpack_from("<I", sb, 80)[0]
            algs = struct.unpack_from("<H", sb, 84)[0]
            compressor: str | None = None
            # bit 0 of feature_incompat: "lz4_0padding"; bit 1: compr_cfgs (available algs)
            if feature_incompat & 0x2:
                names = [n for b, n in _ALGORITHMS.items() if algs & (1 << b)]
                compressor = ",".join(names) or None
            elif feature_incompat & 0x1:
                compressor = "lz4"
            return ErofsSuperblock(1 << blkszbits, build_time, compressor)
    return ErofsSuperblock()

