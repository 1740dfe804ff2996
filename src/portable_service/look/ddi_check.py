"""Offline checks of a DDI's verity partitions, the counterpart of the sidecar checks
(verity_check.py) for a GPT image: the hash partition against the root partition, the root
hash (the two partition UUIDs, as systemd pairs them) against the hash tree and the
signature partition's ``rootHash``, and the signature against trusted certificates.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from portable_service.disk import ddi, signing, verity
from portable_service.errors import PortableServiceError, VerityError
from portable_service.look.problems import ERROR, WARNING, Problem
from portable_service.look.verity_check import VerityState, check_sidecars
from portable_service.rules import verity as rules


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def check_ddi(image: Path, certificates: list[Path] | None = None) -> VerityState:
    """What the verity partitions of the DDI ``image`` say, and whether they hold."""
    found = ddi.find_root(image)
    if found.verity is None:
        if found.signature is not None:
            return VerityState((found.signature.name,), problems=(Problem(
                ERROR, "verity-incomplete", found.signature.name,
                "a signature partition without a verity partition: systemd has no hash tree "
                "to check it with", "rebuild the image with verity = true"),))
        return VerityState(())
    present = tuple(p.name for p in (found.verity, found.signature) if p is not None)
    root_hash = (found.root.uuid.bytes + found.verity.uuid.bytes).hex()
    problems: list[Problem] = []
    data_blocks = None
    tree = _read(image, found.verity.offset, found.verity.size)
    try:
        # the root partition may be longer than the data the tree covers (the superblock says)
        data = _read(image, found.root.offset, found.root.size)
        data_blocks = verity.verify_hash_tree(data, tree, bytes.fromhex(root_hash)).data_blocks
    except VerityError as e:
        problems.append(Problem(ERROR, "verity-mismatch", found.verity.name,
                                f"{e.message} (root hash from the partition UUIDs)",
                                e.hint or "rebuild the image"))
    signer = None
    certs = list(certificates) if certificates else rules.trusted_certificates()
    if found.signature is not None:
        sig = found.signature
        try:
            doc = json.loads(_read(image, sig.offset, sig.size).rstrip(b"\0"))
            signed_hash = str(doc["rootHash"]).lower()
            p7s = base64.b64decode(doc["signature"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            problems.append(Problem(ERROR, "verity-signature", sig.name,
                                    f"the signature partition holds no valid JSON with rootHash "
                                    f"and signature ({type(e).__name__})", "rebuild the image"))
        else:
            if signed_hash != root_hash:
                problems.append(Problem(ERROR, "verity-root-hash", sig.name,
                                        f"the signature is for root hash {signed_hash}, the "
                                        f"partition UUIDs say {root_hash}",
                                        "rebuild the image (systemd refuses the pair)"))
            elif not certs:
                problems.append(Problem(WARNING, "verity-signature-unchecked", sig.name,
                                        "no certificate to check the root hash signature against",
                                        "give --certificate CERT, or put it in /etc/verity.d/"))
            else:
                try:
                    signer = signing.verify_signature(root_hash, p7s, certs)
                except PortableServiceError as e:
                    problems.append(Problem(ERROR, "verity-signature", sig.name, e.message,
                                            e.hint or "rebuild the image"))
    return VerityState(present, root_hash, data_blocks, signer, tuple(str(c) for c in certs),
                       tuple(problems))


def is_ddi(image: Path) -> bool:
    from portable_service.disk import gpt

    try:
        return gpt.is_gpt(_read(image, 0, 1024))
    except OSError:
        return False


def check_verity(image: Path, certificates: list[Path] | None = None) -> VerityState:
    """An image's verity, wherever it is: a DDI's partitions, or the sidecars beside a bare
    image; ``certificates`` default to the host's ``/etc/verity.d/*.crt``."""
    if is_ddi(image):  # a DDI carries its verity in partitions
        return check_ddi(image, certificates)
    return check_sidecars(image, certificates)
