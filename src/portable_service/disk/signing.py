"""Root-hash signatures as systemd checks them: PKCS#7, detached, binary DER, no certificates,
no signed attributes, over the lower-case hex root hash without a newline (what
``openssl smime -sign -nocerts -noattr -binary -outform der`` makes).

A signature is made with a PEM key through ``cryptography``, with a PKCS#11 key through
openssl's pkcs11 provider or engine, or by an external command (an HSM, a cloud KMS) that
reads the data on stdin and writes the DER signature on stdout. It is checked the way
systemd's userspace validation does (OpenSSL's ``PKCS7_verify`` with ``PKCS7_NOINTERN`` and
``PKCS7_NOVERIFY``: the signer must be one of the trusted certificates, no chain is built),
through ``openssl smime -verify`` with the same flags.
"""

from __future__ import annotations

import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from portable_service.errors import SpecError, ToolError, VerityError
from portable_service.run import find_tool, run, tool_message

PKCS11_PREFIX = "pkcs11:"
_OPTIONS = [pkcs7.PKCS7Options.NoCerts, pkcs7.PKCS7Options.NoAttributes,
            pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.DetachedSignature]


@dataclass(frozen=True)
class Signer:
    """Who signed: the certificate that verified the signature."""

    path: Path
    subject: str
    fingerprint: str  # sha256 of the DER certificate, hex (as a DDI's signature partition names it)


def signed_data(root_hash_hex: str) -> bytes:
    """The bytes systemd verifies a signature over: the lower-case hex root hash, no newline."""
    text = root_hash_hex.strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise VerityError(f"{root_hash_hex.strip()[:80]!r} is not a sha256 root hash (64 hex digits)",
                          "use the .roothash file written with the image")
    return text.encode()


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM (or DER) X.509 certificate; anything else is a one-line SpecError."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpecError(f"cannot read certificate {path}: {e.strerror}", "give a readable PEM file") from None
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError:
        raise SpecError(f"{path} is not an X.509 certificate",
                        "give the PEM certificate of the signing key (openssl req -x509 ...)") from None


def describe(cert: x509.Certificate, path: Path) -> Signer:
    return Signer(path, cert.subject.rfc4514_string() or "(empty subject)",
                  cert.fingerprint(hashes.SHA256()).hex())


def _load_key(path: Path) -> pkcs7.PKCS7PrivateKeyTypes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpecError(f"cannot read signing key {path}: {e.strerror}",
                        "give a readable PEM private key") from None
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except TypeError:
        raise SpecError(f"signing key {path} is encrypted with a passphrase",
                        "decrypt it (openssl pkey -in KEY -out PLAIN), or sign with --sign-command "
                        "or a pkcs11: URI") from None
    except (ValueError, UnsupportedAlgorithm):
        raise SpecError(f"{path} is not a PEM private key",
                        "give the key as PEM (-----BEGIN PRIVATE KEY-----)") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SpecError(f"signing key {path} is a {type(key).__name__}, which PKCS#7 cannot sign with",
                        "use an RSA or EC key")
    return key


def sign_root_hash(root_hash_hex: str, key: Path | str, certificate: Path) -> bytes:
    """A DER PKCS#7 signature of the root hash by ``key`` (a PEM file or a ``pkcs11:`` URI).

    RSA signatures (PKCS#1 v1.5) are deterministic, so a rebuild gives the same bytes; EC
    signatures are not.
    """
    data = signed_data(root_hash_hex)
    if isinstance(key, str) and key.startswith(PKCS11_PREFIX):
        der = _sign_pkcs11(data, key, certificate)
    else:
        cert = load_certificate(certificate)
        private = _load_key(Path(key))
        if cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) != \
                private.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo):
            raise SpecError(f"certificate {certificate} is not for the key {key}",
                            "give the certificate made from that key")
        der = (pkcs7.PKCS7SignatureBuilder().set_data(data)
               .add_signer(cert, private, hashes.SHA256())
               .sign(serialization.Encoding.DER, _OPTIONS))
    verify_signature(root_hash_hex, der, [certificate])
    return der


def sign_with_command(root_hash_hex: str, command: str, certificate: Path | None) -> bytes:
    """Let an external command sign: the data on its stdin, a DER PKCS#7 on its stdout.

    With ``certificate`` the result is checked against it, so a command that signs with
    another key or signs something else is caught here, not on the host that attaches.
    """
    data = signed_data(root_hash_hex)
    argv = shlex.split(command)
    if not argv:
        raise SpecError("--sign-command is empty", "name a command that signs its stdin")
    tool = find_tool(argv[0], reason="to sign the root hash")
    proc = run([tool, *argv[1:]], input=data, check=False)
    if proc.returncode != 0:
        raise ToolError(f"sign command {argv[0]} failed (exit {proc.returncode}): {tool_message(proc)}",
                        "run it by hand: echo -n ROOTHASH | CMD > sig.p7s")
    der = proc.stdout
    if not der or der[:1] != b"\x30":
        raise ToolError(f"sign command {argv[0]} did not write a DER PKCS#7 signature on stdout",
                        "it must print what openssl smime -sign -nocerts -noattr -binary "
                        "-outform der prints")
    if certificate is not None:
        verify_signature(root_hash_hex, der, [certificate])
    return der


def _pkcs11_flags(openssl: Path) -> list[str]:
    """openssl's flags to load a key from a pkcs11: URI: the provider (OpenSSL 3), else the
    engine; a one-line ToolError when neither is installed."""
    if run([openssl, "list", "-providers", "-provider", "pkcs11"], check=False).returncode == 0:
        return ["-provider", "pkcs11", "-provider", "default"]
    if run([openssl, "engine", "-t", "pkcs11"], check=False).returncode == 0:
        return ["-engine", "pkcs11", "-keyform", "engine"]
    raise ToolError("a pkcs11: key needs openssl's pkcs11 provider or engine, and neither is installed",
                    "apt-get install pkcs11-provider (or libengine-pkcs11-openssl), or sign with "
                    "--sign-command")


def check_pkcs11(certificate: Path) -> None:
    """Before a build signs with a pkcs11: key: the certificate reads and openssl can reach
    PKCS#11 (the token itself is asked only when signing)."""
    load_certificate(certificate)
    _pkcs11_flags(find_tool("openssl", reason="to sign with a PKCS#11 key"))


def _sign_pkcs11(data: bytes, uri: str, certificate: Path) -> bytes:
    openssl = find_tool("openssl", reason="to sign with a PKCS#11 key")
    load_certificate(certificate)  # a wrong certificate path is reported before the token is asked
    flags = _pkcs11_flags(openssl)
    proc = run([openssl, "smime", "-sign", "-nocerts", "-noattr", "-binary", "-outform", "der",
                "-md", "sha256", *flags, "-inkey", uri, "-signer", certificate], input=data,
               check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise ToolError(f"openssl could not sign with {redact_pin(uri)}: {tool_message(proc)}",
                        "check the URI's token= and object= and its PIN (?pin-value=)")
    return proc.stdout


def redact_pin(uri: str) -> str:
    """A PKCS#11 URI fit for an error message: its PIN left out (RFC 7512 pin-value)."""
    path, sep, query = uri.partition("?")
    kept = [a for a in query.split("&") if a and not a.startswith("pin-value=")]
    return path + (sep + "&".join(kept) if kept else "")


def verify_signature(root_hash_hex: str, p7s: bytes, certificates: list[Path]) -> str:
    """Which certificate's key signed the root hash (its subject); else a VerityError.

    Each certificate is tried alone, with OpenSSL's flags systemd uses (only the given
    certificates, no chain): "wrong signer" and "signature does not match" are told apart.
    """
    return verify_signer(root_hash_hex, p7s, certificates).subject


def verify_signer(root_hash_hex: str, p7s: bytes, certificates: list[Path]) -> Signer:
    """:func:`verify_signature` returning the whole :class:`Signer`."""
    data = signed_data(root_hash_hex)
    if not certificates:
        raise VerityError("no certificate to check the root hash signature against",
                          "give --certificate or put the signer's certificate in /etc/verity.d/")
    openssl = find_tool("openssl", reason="to check a root hash signature")
    certs = [(path, load_certificate(path)) for path in certificates]
    mismatch: Path | None = None
    with tempfile.TemporaryDirectory(prefix="portable-service-sig.") as tmp:
        sig, content, pem = Path(tmp, "sig.p7s"), Path(tmp, "roothash"), Path(tmp, "signer.pem")
        sig.write_bytes(p7s)
        content.write_bytes(data)
        for path, cert in certs:
            pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            proc = run([openssl, "smime", "-verify", "-binary", "-inform", "der", "-in", sig,
                        "-content", content, "-certfile", pem, "-nointern", "-noverify",
                        "-out", "/dev/null"], check=False)
            if proc.returncode == 0:
                return describe(cert, path)
            text = (proc.stderr or b"").decode(errors="replace")
            if "signer certificate not found" not in text:
                if "Error reading S/MIME message" in text or ("asn1" in text.lower() and "decode" in text):
                    raise VerityError("the root hash signature is not a DER PKCS#7 signature",
                                      "sign again (portable-service sign)")
                mismatch = path
    if mismatch is not None:
        raise VerityError(f"the root hash signature by {describe(dict(certs)[mismatch], mismatch).subject} "
                          f"does not match root hash {data.decode()}: the signature or the root "
                          "hash was modified", "sign the image again (portable-service sign)")
    names = ", ".join(str(p) for p, _ in certs)
    raise VerityError(f"the root hash was signed by a key none of the trusted certificates holds "
                      f"(checked {names})", "give the signer's certificate with --certificate, or "
                      "put it in /etc/verity.d/")


def read_root_hash(path: Path) -> str:
    """The hex root hash in a .roothash file (one line, as systemd reads it)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise VerityError(f"cannot read {path.name}: {e.strerror}", "make it readable") from None
    line = text.split("\n", 1)[0].strip()
    signed_data(line)  # 64 hex digits, else a one-line VerityError
    return line.lower()
