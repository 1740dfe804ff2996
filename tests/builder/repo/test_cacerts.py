"""The CA store made in a pinned build's root, as update-ca-certificates makes it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from portable_service.builder.repo import cacerts
from tests.conftest import require, require_tool

SHARE = Path("/usr/share/ca-certificates/mozilla")


def some_certificates(count: int = 3) -> list[Path]:
    require(SHARE.is_dir(), "apt-get install ca-certificates")
    return sorted(SHARE.glob("*.crt"))[:count]


def test_the_store_is_the_bundle_the_pem_links_and_openssls_hash_links(tmp_path: Path):
    require_tool("openssl")
    root = tmp_path / "root"
    share = root / cacerts.SHARE / "mozilla"
    share.mkdir(parents=True)
    certs = some_certificates()
    for cert in reversed(certs):  # made in any order, listed sorted
        shutil.copyfile(cert, share / cert.name)
    owners: dict[str, str] = {}
    assert cacerts.make_store(root, owners) == len(certs)
    store = root / cacerts.STORE
    bundle = (store / cacerts.BUNDLE).read_bytes()
    assert bundle == b"".join(c.read_bytes().rstrip(b"\n") + b"\n" for c in certs)
    for cert in certs:
        link = store / (cert.stem + ".pem")
        assert os.readlink(link) == f"/usr/share/ca-certificates/mozilla/{cert.name}"
        subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(cert)],
                                      capture_output=True, text=True, check=True).stdout.strip()
        assert os.readlink(store / f"{subject_hash}.0") == link.name  # relative, in the store
    assert owners[f"/{cacerts.STORE}/{cacerts.BUNDLE}"] == "ca-certificates"
    assert all(v == "ca-certificates" for v in owners.values())
    assert len(owners) == 1 + 2 * len(certs)


def test_a_root_without_certificates_gets_no_store(tmp_path: Path):
    owners: dict[str, str] = {}
    assert cacerts.make_store(tmp_path, owners) == 0
    assert not (tmp_path / cacerts.STORE).exists() and owners == {}
