"""The CA store of a Debian system, made in a pinned build's root.

``ca-certificates`` ships the certificates (``/usr/share/ca-certificates/*/*.crt``); its
maintainer script (``update-ca-certificates``, and no maintainer script runs here) makes
what programs read: ``/etc/ssl/certs/NAME.pem`` links to them, the bundle
``/etc/ssl/certs/ca-certificates.crt`` (every certificate, in the order of its sorted
list), and OpenSSL's hash links (``HASH.0 -> NAME.pem``, by ``openssl rehash``). They are
made here the same way, so an image's trust store is the release's, never the build
host's (whose store may hold a CA of its own network).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from portable_service.rules.debian import CA_PACKAGE
from portable_service.run import run

SHARE = "usr/share/ca-certificates"
STORE = "etc/ssl/certs"
BUNDLE = "ca-certificates.crt"


def make_store(root: Path, owners: dict[str, str]) -> int:
    """Make ``/etc/ssl/certs`` in ``root`` from its certificates; the paths made are
    recorded in ``owners`` as the package's (its script makes them). Returns how many
    certificates the store has (0: the root has none, nothing is made)."""
    share = root / SHARE
    certs = sorted((p for p in share.rglob("*.crt") if p.is_file()),
                   key=lambda p: p.relative_to(share).as_posix()) if share.is_dir() else []
    if not certs:
        return 0
    store = root / STORE
    store.mkdir(parents=True, exist_ok=True)
    bundle = bytearray()
    names: dict[str, Path] = {}
    for cert in certs:
        name = cert.name.removesuffix(".crt") + ".pem"
        names[name] = cert
        _link(store / name, f"/{SHARE}/{cert.relative_to(share).as_posix()}", owners, root)
        data = cert.read_bytes()
        bundle += data if data.endswith(b"\n") else data + b"\n"
    (store / BUNDLE).write_bytes(bytes(bundle))
    owners[f"/{STORE}/{BUNDLE}"] = CA_PACKAGE
    for link, name in sorted(hash_links(names).items()):
        _link(store / link, name, owners, root)
    return len(certs)


def hash_links(certs: dict[str, Path]) -> dict[str, str]:
    """OpenSSL's subject-hash links (``HASH.N`` -> ``NAME.pem``) for ``certs`` (NAME.pem
    -> file): ``openssl rehash`` on copies, so no link leads out of the root."""
    with tempfile.TemporaryDirectory(prefix="ps-cacerts-") as tmp:
        for name, cert in certs.items():
            shutil.copyfile(cert, os.path.join(tmp, name))
        run(["openssl", "rehash", tmp])
        return {entry.name: os.readlink(entry.path) for entry in os.scandir(tmp)
                if entry.is_symlink()}


def _link(path: Path, target: str, owners: dict[str, str], root: Path) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)
    owners["/" + path.relative_to(root).as_posix()] = CA_PACKAGE
