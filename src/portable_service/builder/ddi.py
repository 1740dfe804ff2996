"""``format = "ddi"``: the writer's file system becomes the root partition of a GPT disk image.

The file system is written to a temporary file beside the output (named like the build's
own temporaries, so a killed build's leftovers are cleaned the same way), then copied
into its partition.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from portable_service.builder.atomic import TMP_SUFFIX, write_atomically
from portable_service.builder.spec import Spec
from portable_service.builder.verity import SidecarSet, wants_verity
from portable_service.disk import ddi
from portable_service.progress import Reporter
from portable_service.rules import verity as verity_rules


def seed_of(image_name: str) -> bytes:
    """What every derived UUID of the disk starts from: the image's name, so that two
    builds of one spec agree and two images never share a disk UUID by accident."""
    return b"portable-service ddi\0" + image_name.encode()


def write_ddi_image(spec: Spec, write_filesystem: Callable[[Path], None], out: Path,
                    reporter: Reporter) -> None:
    """The file system (written by ``write_filesystem``), its verity partitions, in a GPT."""
    name = spec.image_name
    fd, fs_name = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=TMP_SUFFIX,
                                   dir=out.parent)
    os.close(fd)
    filesystem = Path(fs_name)
    hash_tree = filesystem.with_name(filesystem.name[:-len(TMP_SUFFIX)] + ".verity" + TMP_SUFFIX)
    try:
        write_filesystem(filesystem)
        protection = None
        if wants_verity(spec):
            protection = protect(filesystem, hash_tree, spec.verity_key, spec.verity_certificate,
                                 reporter)
        with reporter.step("placing the file system in a GPT disk image"):
            ddi.write_ddi(filesystem, out, seed=seed_of(name), verity=protection)
    finally:
        for path in (filesystem, hash_tree):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def no_sidecars(out: Path) -> Callable[[Path], SidecarSet]:
    """For write_atomically: remove NAME.verity, NAME.roothash, NAME.roothash.p7s beside a
    DDI (systemd would take them for the DDI's root hash)."""
    return lambda tmp: SidecarSet(dict.fromkeys(verity_rules.sidecars(out).values()))


def protect(filesystem: Path, hash_tree: Path, key: Path | str | None,
            certificate: Path | None, reporter: Reporter) -> ddi.Verity:
    """The verity partitions' content for ``filesystem``: its hash tree (written to
    ``hash_tree``) and, with a key and certificate, the signature JSON."""
    from cryptography.hazmat.primitives import serialization

    from portable_service.disk import signing, verity

    # dm-verity covers whole 4 KiB blocks: the partition's padding is part of the data
    size = os.path.getsize(filesystem)
    os.truncate(filesystem, -(-size // verity.BLOCK_SIZE) * verity.BLOCK_SIZE)
    with reporter.step("computing the dm-verity hash tree"):
        tree = verity.tree_for_image(filesystem)
    hash_tree.write_bytes(tree.hash_tree)
    signature = None
    if key is not None and certificate is not None:
        with reporter.step("signing the root hash"):
            der = signing.sign_root_hash(tree.root_hash.hex(), key, certificate)
            cert = signing.load_certificate(certificate).public_bytes(serialization.Encoding.DER)
            signature = ddi.signature_json(tree.root_hash, cert, der)
    return ddi.Verity(tree.root_hash, hash_tree, signature)


def sign_ddi(image: Path, sign: Callable[[str], bytes], certificate: Path) -> Path:
    """Deferred signing of a DDI: add (or replace) its root-<arch>-verity-sig partition.

    ``sign`` turns the hex root hash into a DER PKCS#7 signature (a PEM key, a PKCS#11 URI
    or a command: disk/signing.py). A DDI built with verity keeps its partitions, and its
    hash tree is checked against the root partition first: a modified image is never
    signed. A DDI built without verity gets the hash tree the build would have made (and
    the root and verity partition UUIDs from its root hash). The image is replaced
    atomically; the partitions before the signature stay where they were.
    """
    from cryptography.hazmat.primitives import serialization

    from portable_service.disk import signing, verity

    found = ddi.find_root(image)
    with contextlib.ExitStack() as stack:
        def temporary() -> Path:
            # named like the build's temporaries: a killed run's leftovers are cleaned alike
            fd, name = tempfile.mkstemp(prefix=f".{image.name}.{os.getpid()}.",
                                        suffix=TMP_SUFFIX, dir=image.parent)
            os.close(fd)
            path = Path(name)
            stack.callback(lambda: path.unlink(missing_ok=True))
            return path

        data, tree_file = temporary(), temporary()
        with open(image, "rb") as src:
            _copy(src, data, found.root.offset, found.root.size)
            if found.verity is not None:
                _copy(src, tree_file, found.verity.offset, found.verity.size)
        if found.verity is not None:
            root_hash = found.root.uuid.bytes + found.verity.uuid.bytes
            verity.verify_hash_tree(data, tree_file.read_bytes(), root_hash)
        else:
            tree = verity.tree_for_image(data)
            root_hash = tree.root_hash
            tree_file.write_bytes(tree.hash_tree)
        der = sign(root_hash.hex())
        cert = signing.load_certificate(certificate).public_bytes(serialization.Encoding.DER)
        protection = ddi.Verity(root_hash, tree_file, ddi.signature_json(root_hash, cert, der))

        def write(tmp: Path) -> None:
            ddi.write_ddi(data, tmp, seed=seed_of(image.name), arch=found.arch,
                          verity=protection)

        write_atomically(image, write)
    return image


def _copy(src: BinaryIO, dst: Path, offset: int, size: int) -> None:
    src.seek(offset)
    with open(dst, "wb") as out:
        left = size
        while left:
            chunk = src.read(min(1 << 20, left))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
