"""Root-hash signatures: byte-identical to openssl's, checked as systemd checks them."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from portable_service.disk import signing
from portable_service.errors import SpecError, ToolError, VerityError
from tests.conftest import require, require_tool
from tests.disk.keys import KeyPair, key_pairs

keys = pytest.fixture(scope="session")(key_pairs)

ROOT = "a3dd6baa076eac71f879fd4d8f0fd83db61b7faab186fb091ee768ca9c8e300f"


def openssl_sign(pair: KeyPair, data: bytes) -> bytes:
    return subprocess.run([require_tool("openssl"), "smime", "-sign", "-nocerts", "-noattr", "-binary",
                           "-outform", "der", "-signer", pair.cert, "-inkey", pair.key], input=data,
                          capture_output=True, check=True).stdout


def openssl_verifies(tool: str, tmp_path: Path, sig: bytes, cert: Path, data: bytes) -> bool:
    (tmp_path / "sig").write_bytes(sig)
    (tmp_path / "data").write_bytes(data)
    proc = subprocess.run([require_tool("openssl"), tool, "-verify", "-binary", "-inform", "der", "-in",
                           tmp_path / "sig", "-content", tmp_path / "data", "-certfile", cert,
                           "-nointern", "-noverify", "-out", "/dev/null"], capture_output=True,
                          check=False)
    return proc.returncode == 0


def test_rsa_signature_is_openssls(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    sig = signing.sign_root_hash(ROOT, keys["good"].key, keys["good"].cert)
    assert sig == openssl_sign(keys["good"], ROOT.encode())  # deterministic: reproducible builds
    for tool in ("smime", "cms"):
        assert openssl_verifies(tool, tmp_path, sig, keys["good"].cert, ROOT.encode())
        assert not openssl_verifies(tool, tmp_path, sig, keys["other"].cert, ROOT.encode())
        assert not openssl_verifies(tool, tmp_path, sig, keys["good"].cert, ROOT.upper().encode())


def test_no_certificates_no_attributes(keys: dict[str, KeyPair]) -> None:
    """What systemd expects: the signer is named, not embedded; nothing else is signed."""
    sig = signing.sign_root_hash(ROOT, keys["good"].key, keys["good"].cert)
    printed = subprocess.run([require_tool("openssl"), "pkcs7", "-inform", "der", "-print", "-noout"],
                             input=sig, capture_output=True, check=True).stdout.decode()
    squeezed = " ".join(printed.split())
    assert "cert: <ABSENT>" in squeezed
    assert "auth_attr: <ABSENT>" in squeezed
    assert "d.data: <ABSENT>" in squeezed  # detached
    assert "issuer: CN=good" in squeezed


def test_verify_names_signer(keys: dict[str, KeyPair]) -> None:
    ec = signing.sign_root_hash(ROOT, str(keys["ec"].key), keys["ec"].cert)
    assert signing.verify_signature(ROOT, ec, [keys["other"].cert, keys["ec"].cert]) == "CN=ec"
    signer = signing.verify_signer(ROOT, ec, [keys["ec"].cert])
    assert signer.path == keys["ec"].cert and len(signer.fingerprint) == 64


def test_wrong_signer_and_tampered(keys: dict[str, KeyPair]) -> None:
    sig = signing.sign_root_hash(ROOT, keys["good"].key, keys["good"].cert)
    with pytest.raises(VerityError, match=r"signed by a key none of the trusted certificates holds"):
        signing.verify_signature(ROOT, sig, [keys["other"].cert])
    other_root = "b" + ROOT[1:]
    with pytest.raises(VerityError, match=rf"by CN=good does not match root hash {other_root}"):
        signing.verify_signature(other_root, sig, [keys["good"].cert])
    tampered = sig[:-1] + bytes([sig[-1] ^ 1])
    with pytest.raises(VerityError, match=r"by CN=good does not match"):
        signing.verify_signature(ROOT, tampered, [keys["good"].cert])
    with pytest.raises(VerityError, match=r"not a DER PKCS#7"):
        signing.verify_signature(ROOT, b"0\x03junk", [keys["good"].cert])
    with pytest.raises(VerityError, match=r"no certificate"):
        signing.verify_signature(ROOT, sig, [])


def test_bad_inputs_one_line(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"is not for the key"):
        signing.sign_root_hash(ROOT, keys["good"].key, keys["other"].cert)
    with pytest.raises(SpecError, match=r"is not a PEM private key"):
        signing.sign_root_hash(ROOT, keys["good"].cert, keys["good"].cert)
    with pytest.raises(SpecError, match=r"is not an X.509 certificate"):
        signing.sign_root_hash(ROOT, keys["good"].key, keys["good"].key)
    with pytest.raises(VerityError, match=r"not a sha256 root hash"):
        signing.sign_root_hash("abc", keys["good"].key, keys["good"].cert)
    enc = tmp_path / "enc.key"
    subprocess.run([require_tool("openssl"), "pkey", "-in", keys["good"].key, "-out", enc, "-aes256",
                    "-passout", "pass:x"], check=True)
    with pytest.raises(SpecError, match=r"encrypted with a passphrase"):
        signing.sign_root_hash(ROOT, enc, keys["good"].cert)


def test_sign_command(keys: dict[str, KeyPair]) -> None:
    """An external signer (what an HSM or KMS wrapper does): stdin in, DER out."""
    openssl = require_tool("openssl")
    good = keys["good"]
    cmd = shlex.join([openssl, "smime", "-sign", "-nocerts", "-noattr", "-binary", "-outform", "der",
                      "-signer", str(good.cert), "-inkey", str(good.key)])
    assert signing.sign_with_command(ROOT, cmd, good.cert) == openssl_sign(good, ROOT.encode())
    with pytest.raises(VerityError, match=r"none of the trusted certificates"):
        signing.sign_with_command(ROOT, cmd, keys["other"].cert)
    with pytest.raises(ToolError, match=r"did not write a DER PKCS#7"):
        signing.sign_with_command(ROOT, "cat", None)
    with pytest.raises(ToolError, match=r"sign command false failed"):
        signing.sign_with_command(ROOT, "false", None)


def test_pkcs11_key_in_softhsm(keys: dict[str, KeyPair], tmp_path: Path, monkeypatch) -> None:
    """A key held by a PKCS#11 token (SoftHSM, as an HSM would hold it), through openssl's
    pkcs11 engine or provider: the same signature as the PEM key gives."""
    softhsm = require_tool("softhsm2-util")
    openssl = require_tool("openssl")
    have = [subprocess.run(cmd, capture_output=True, check=False).returncode == 0 for cmd in (
        [openssl, "list", "-providers", "-provider", "pkcs11"], [openssl, "engine", "-t", "pkcs11"])]
    require(any(have), "openssl has neither the pkcs11 provider nor the engine "
            "(apt-get install libengine-pkcs11-openssl)")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    good = keys["good"]
    pkcs8 = tmp_path / "key.p8"
    subprocess.run([openssl, "pkcs8", "-topk8", "-nocrypt", "-in", good.key, "-out", pkcs8], check=True)
    subprocess.run([softhsm, "--init-token", "--free", "--label", "ps", "--pin", "1234", "--so-pin",
                    "5678"], check=True, capture_output=True)
    subprocess.run([softhsm, "--import", pkcs8, "--token", "ps", "--label", "verity", "--id", "01",
                    "--pin", "1234"], check=True, capture_output=True)
    uri = "pkcs11:token=ps;object=verity;type=private?pin-value=1234"
    assert signing.sign_root_hash(ROOT, uri, good.cert) == openssl_sign(good, ROOT.encode())
    with pytest.raises(ToolError, match=r"could not sign with pkcs11:token=ps;object=nokey") as e:
        signing.sign_root_hash(ROOT, uri.replace("verity", "nokey"), good.cert)
    assert "1234" not in str(e.value)  # the PIN stays out of messages


def test_pkcs11_without_provider_or_engine(keys: dict[str, KeyPair], tmp_path: Path, monkeypatch) -> None:
    """openssl that can load neither (empty module folders): one line naming what to install."""
    require_tool("openssl")
    monkeypatch.setenv("OPENSSL_ENGINES", str(tmp_path))
    monkeypatch.setenv("OPENSSL_MODULES", str(tmp_path))
    with pytest.raises(ToolError, match=r"needs openssl's pkcs11 provider or engine") as e:
        signing.sign_root_hash(ROOT, "pkcs11:token=t;object=k", keys["good"].cert)
    assert "libengine-pkcs11-openssl" in (e.value.hint or "")
