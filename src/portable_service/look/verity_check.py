"""Offline checks of an image's verity sidecars: the hash tree against the image, the root
hash against the tree, the signature against trusted certificates (``verify``), and what
``inspect`` shows of them.

Each finding is one line: the first tampered block, the root hash that does not match, the
signer no certificate holds. Nothing here needs root or device-mapper.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portable_service.disk import signing, verity
from portable_service.errors import PortableServiceError, VerityError
from portable_service.look.problems import ERROR, WARNING, Problem
from portable_service.rules import verity as rules


@dataclass(frozen=True)
class VerityState:
    """What the sidecars beside an image say, and whether they hold."""

    present: tuple[str, ...]       # the sidecar suffixes found
    root_hash: str | None = None
    data_blocks: int | None = None
    signer: str | None = None      # subject of the certificate the signature verified with
    certificates: tuple[str, ...] = ()  # the certificates the signature was checked against
    problems: tuple[Problem, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"sidecars": list(self.present), "root_hash": self.root_hash,
                "data_blocks": self.data_blocks, "signer": self.signer,
                "certificates": list(self.certificates),
                "problems": [p.to_dict() for p in self.problems]}


def _problem(path: Path, rule: str, err: PortableServiceError, severity: str = ERROR) -> Problem:
    return Problem(severity, rule, path.name, err.message, err.hint or "rebuild the image")


def check_sidecars(image: Path, certificates: list[Path] | None = None) -> VerityState:
    """Check the sidecars beside ``image``; ``certificates`` default to the host's
    ``/etc/verity.d/*.crt`` (and systemd's other verity.d folders)."""
    paths = rules.sidecars(image)
    present = tuple(s for s, p in paths.items() if p.exists())
    if not present:
        return VerityState(present)
    tree_path = paths[rules.VERITY_SUFFIX]
    hash_path = paths[rules.ROOTHASH_SUFFIX]
    sig_path = paths[rules.SIGNATURE_SUFFIX]
    problems: list[Problem] = []
    if rules.ROOTHASH_SUFFIX not in present:
        problems.append(Problem(ERROR, "verity-incomplete", hash_path.name,
                                f"{', '.join(paths[s].name for s in present)} beside the image but "
                                f"no {hash_path.name}: systemd finds no root hash to check them with",
                                "rebuild with verity = true, or remove the stray sidecars"))
        return VerityState(present, problems=tuple(problems))
    try:
        root_hash = signing.read_root_hash(hash_path)
    except VerityError as e:
        return VerityState(present, problems=(_problem(hash_path, "verity-root-hash", e),))
    data_blocks = None
    if rules.VERITY_SUFFIX not in present:
        problems.append(Problem(ERROR, "verity-incomplete", tree_path.name,
                                f"{hash_path.name} beside the image but no {tree_path.name}: "
                                "systemd finds no hash tree for the root hash",
                                "rebuild with verity = true, or remove the root hash"))
    else:
        try:
            tree = verity.verify_hash_tree(image, tree_path.read_bytes(), bytes.fromhex(root_hash))
            data_blocks = tree.data_blocks
        except VerityError as e:
            problems.append(_problem(tree_path, "verity-mismatch", e))
        except OSError as e:
            problems.append(Problem(ERROR, "verity-mismatch", tree_path.name,
                                    f"cannot read {tree_path.name}: {e.strerror}", "make it readable"))
    signer = None
    certs = list(certificates) if certificates else rules.trusted_certificates()
    if rules.SIGNATURE_SUFFIX in present:
        if not certs:
            problems.append(Problem(WARNING, "verity-signature-unchecked", sig_path.name,
                                    "no certificate to check the root hash signature against",
                                    "give --certificate CERT, or put it in /etc/verity.d/"))
        else:
            try:
                signer = signing.verify_signature(root_hash, sig_path.read_bytes(), certs)
            except PortableServiceError as e:
                problems.append(_problem(sig_path, "verity-signature", e))
    return VerityState(present, root_hash, data_blocks, signer, tuple(str(c) for c in certs),
                       tuple(problems))


def tampered(problems: list[Problem]) -> bool:
    """Whether the hash tree found the image modified."""
    return any(p.rule == "verity-mismatch" for p in problems)


def render_verity(state: VerityState) -> list[str]:
    """inspect's lines about verity."""
    if not state.present:
        return ["Verity:            none (no .verity/.roothash beside the image)"]
    lines = [f"Verity:            {', '.join(state.present)}"]
    if state.root_hash:
        lines.append(f"  root hash {state.root_hash}"
                     + (f", {state.data_blocks} data blocks" if state.data_blocks is not None else ""))
    # a DDI names its partitions: root-<arch>-verity-sig holds the signature
    if rules.SIGNATURE_SUFFIX in state.present or any(p.endswith("-verity-sig")
                                                       for p in state.present):
        lines.append(f"  signed by {state.signer}" if state.signer else "  signed (signer not verified)")
    lines += [f"  {p.severity.lower()}: {p.message}" for p in state.problems]
    return lines
