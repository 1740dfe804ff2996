"""Discoverable Disk Images for portable services: a GPT holding the root file system,
and with verity its hash partition and signature partition (rules/partitions.py).

Every UUID is derived from a seed (or from the verity root hash, as systemd demands), so
the same file system and seed give the same disk, byte for byte.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from portable_service.disk import gpt
from portable_service.errors import ImageError
from portable_service.rules import partitions as rules

SQUASHFS_MAGIC = b"hsqs"
EROFS_MAGIC = b"\xe2\xe1\xf5\xe0"  # little-endian 0xE0F5E1E2 at byte 1024


def derived_uuid(seed: bytes, what: str) -> uuid.UUID:
    """A version-4-formatted UUID from sha256(seed, what): stable, and distinct per ``what``."""
    digest = hashlib.sha256(seed + b"\0" + what.encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def filesystem_kind(head: bytes) -> str | None:
    """Name the file system a partition or bare image starts with (first 2 KiB are enough)."""
    if head[:4] == SQUASHFS_MAGIC:
        return "squashfs"
    if head[1024:1028] == EROFS_MAGIC:
        return "erofs"
    return None


def signature_json(root_hash: bytes, certificate_der: bytes, pkcs7_der: bytes) -> bytes:
    """The verity-sig partition's content: the JSON object, padded with NULs (UAPI DDI spec)."""
    text = json.dumps({
        "rootHash": root_hash.hex(),
        "certificateFingerprint": hashlib.sha256(certificate_der).hexdigest(),
        "signature": base64.b64encode(pkcs7_der).decode("ascii"),
    }, separators=(",", ":")).encode()
    if len(text) >= rules.VERITY_SIG_SIZE:
        raise ValueError(f"the signature JSON has {len(text)} bytes; at most "
                         f"{rules.VERITY_SIG_SIZE - 1} fit its partition")
    return text.ljust(rules.VERITY_SIG_SIZE, b"\0")


@dataclass(frozen=True)
class Verity:
    """A root file system's dm-verity facts, as the hash partition and signature carry them."""

    root_hash: bytes  # 32 bytes of sha256
    hash_tree: Path  # the hash device's bytes (dm-verity superblock first)
    signature: bytes | None = None  # signature_json(...) when signed


def write_ddi(filesystem: Path, out: Path, *, seed: bytes, arch: str | None = None,
              verity: Verity | None = None) -> gpt.Table:
    """Write ``out`` as a GPT disk image holding ``filesystem`` as its root partition."""
    arch = arch or rules.host_arch()
    if verity is None:
        root_uuid = derived_uuid(seed, "root")
    else:
        root_uuid, verity_uuid = rules.verity_uuids(verity.root_hash)
    with open(filesystem, "rb") as fs:
        kind = filesystem_kind(fs.read(2048))
        if kind is None:
            raise ImageError(f"{filesystem} is neither squashfs nor erofs",
                             "a DDI root partition needs a read-only file system")
        fs.seek(0)
        with contextlib.ExitStack() as stack:
            contents = [_content(rules.ROOT, arch, root_uuid, fs, os.fstat(fs.fileno()).st_size)]
            if verity is not None:
                tree = stack.enter_context(open(verity.hash_tree, "rb"))
                contents.append(_content(rules.VERITY, arch, verity_uuid, tree,
                                         os.fstat(tree.fileno()).st_size))
                if verity.signature is not None:
                    # from the root hash: a rebuild of the same image gives the same UUID
                    sig_uuid = derived_uuid(verity.root_hash, "root-verity-sig")
                    contents.append(_content(rules.VERITY_SIG, arch, sig_uuid,
                                             io.BytesIO(verity.signature), len(verity.signature)))
            table = gpt.layout(contents, derived_uuid(seed, "disk"), rules.MIN_DISK_SIZE)
            with open(out, "wb", buffering=1 << 20) as f:
                gpt.write(f, table, contents)
    return table


def _content(kind: str, arch: str, part_uuid: uuid.UUID, source: BinaryIO, size: int) -> gpt.Content:
    ptype = rules.partition_type(arch, kind)
    return gpt.Content(ptype.uuid, part_uuid, ptype.name, source, size, rules.FLAGS[kind])


# -- reading


@dataclass(frozen=True)
class Found:
    """A DDI's root partition and what goes with it."""

    table: gpt.Table
    root: gpt.Partition
    arch: str
    filesystem: str | None  # squashfs, erofs, or None (unknown)
    verity: gpt.Partition | None
    signature: gpt.Partition | None


def find_root(path: Path) -> Found:
    """Read the GPT of ``path`` and pick the root partition as systemd-dissect would for a
    portable service: the root partition of this machine's architecture, else of any."""
    with open(path, "rb") as f:
        try:
            table = gpt.read(f)
        except ImageError as e:
            raise ImageError(f"{path} is a GPT disk image (a Discoverable Disk Image) whose "
                             f"partition table cannot be read: {e.message}", e.hint) from None
        by_kind: dict[tuple[str, str], gpt.Partition] = {}
        for part in table.partitions:
            ptype = rules.identify(part.type_uuid)
            if ptype is not None:
                by_kind.setdefault((ptype.arch, ptype.kind), part)
        arches = [a for a, k in by_kind if k == rules.ROOT]
        if not arches:
            names = ", ".join(p.name or str(p.type_uuid) for p in table.partitions) or "none"
            raise ImageError(f"{path} is a GPT disk image without a root partition "
                             f"(partitions: {names})",
                             "portabled needs a root-<arch> partition (Discoverable "
                             "Partitions Specification)")
        try:
            native = rules.host_arch()
        except ValueError:
            native = arches[0]
        arch = native if native in arches else arches[0]
        root = by_kind[(arch, rules.ROOT)]
        f.seek(root.offset)
        kind = filesystem_kind(f.read(2048))
    return Found(table, root, arch, kind, by_kind.get((arch, rules.VERITY)),
                 by_kind.get((arch, rules.VERITY_SIG)))
