"""Verity sidecars of a build: NAME.verity, NAME.roothash and, with a key, NAME.roothash.p7s.

They are made from the written image (still under its temporary name), staged beside it
under temporary names, and renamed into place just before the image, so a failed build
leaves the old set as it was. A build without verity removes sidecars an earlier build
left: systemd would pick them up and refuse the new image.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from portable_service.builder.spec import Spec
from portable_service.disk import verity
from portable_service.errors import SpecError
from portable_service.progress import QUIET, Reporter
from portable_service.rules import verity as rules


def wants_verity(spec: Spec) -> bool:
    return spec.verity or spec.verity_key is not None


def check_verity_spec(spec: Spec) -> None:
    """A key needs its certificate and the other way round (nothing is read yet)."""
    if spec.verity_key is not None and spec.verity_certificate is None:
        raise SpecError("verity-key is given without verity-certificate",
                        "add verity-certificate = \"KEY.crt\" (the key's X.509 certificate)")
    if spec.verity_certificate is not None and spec.verity_key is None:
        raise SpecError("verity-certificate is given without verity-key",
                        "add verity-key, or sign later: portable-service sign IMAGE --key ... "
                        "--certificate ...")


def check_signing_inputs(spec: Spec) -> None:
    """Read the key and certificate before the build starts: a wrong path, an encrypted key
    or a certificate of another key fails in a second, not after the image is written."""
    if spec.verity_key is None or spec.verity_certificate is None:
        return
    from portable_service.disk import signing  # cryptography: loaded by signed builds only

    if spec.verity_key.startswith(signing.PKCS11_PREFIX):
        signing.check_pkcs11(spec.verity_certificate)
    else:
        signing.sign_root_hash("0" * 64, spec.verity_key, spec.verity_certificate)


def sidecar_files(image: Path, out: Path, spec: Spec) -> dict[Path, bytes | None]:
    """What goes beside ``out`` for the image written at ``image``: path -> bytes, or None
    for a sidecar that must not be there."""
    names = rules.sidecars(out)
    if not wants_verity(spec):
        return dict.fromkeys(names.values())
    verity.check_whole_blocks(image, "build with a writer that pads to 4 KiB (all of ours do)")
    tree = verity.tree_for_image(image)
    files: dict[Path, bytes | None] = {
        names[rules.VERITY_SUFFIX]: tree.hash_tree,
        names[rules.ROOTHASH_SUFFIX]: (tree.root_hash_hex + "\n").encode(),
        names[rules.SIGNATURE_SUFFIX]: None,
    }
    if spec.verity_key is not None and spec.verity_certificate is not None:
        from portable_service.disk import signing

        files[names[rules.SIGNATURE_SUFFIX]] = signing.sign_root_hash(
            tree.root_hash_hex, spec.verity_key, spec.verity_certificate)
    return files


class SidecarSet:
    """Files staged beside an image under temporary names; :meth:`commit` puts them in place
    (and removes the ones that must go), :meth:`discard` removes what is still staged."""

    def __init__(self, files: dict[Path, bytes | None]) -> None:
        self.files = files
        self.staged: dict[Path, Path] = {}

    def stage(self) -> None:
        from portable_service.builder.atomic import TMP_SUFFIX, remove_stale_temporaries

        for path, data in sorted(self.files.items()):
            if data is None:
                continue
            remove_stale_temporaries(path)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX,
                                        dir=path.parent)
            self.staged[path] = Path(name)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(name, 0o644)

    def commit(self) -> None:
        for path, tmp in sorted(self.staged.items()):
            os.replace(tmp, path)
        self.staged.clear()
        for path, data in sorted(self.files.items()):
            if data is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def discard(self) -> None:
        for tmp in self.staged.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.staged.clear()


def sidecar_step(spec: Spec, out: Path, reporter: Reporter = QUIET) -> Callable[[Path], SidecarSet]:
    """For :func:`~portable_service.builder.pipeline.write_atomically`: from the written
    temporary image, the staged sidecars of ``out``."""

    def make(tmp: Path) -> SidecarSet:
        if wants_verity(spec):
            signed = " and signing its root hash" if spec.verity_key else ""
            with reporter.step(f"computing the dm-verity hash tree{signed}"):
                files = sidecar_files(tmp, out, spec)
        else:
            files = sidecar_files(tmp, out, spec)
        sidecars = SidecarSet(files)
        try:
            sidecars.stage()
        except BaseException:
            sidecars.discard()
            raise
        return sidecars

    return make
