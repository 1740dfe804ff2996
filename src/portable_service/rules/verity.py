"""What systemd does with verity sidecars and root-hash signatures, stated once.

Sources: systemd's src/shared/dissect-image.c (``build_auxiliary_path``,
``verity_settings_load``, ``validate_signature_userspace``, ``do_crypt_activate_verity``) and
what the journals of systemd 252 and 257 show here (tests/e2e/test_verity.py).
"""

from __future__ import annotations

from pathlib import Path

# Beside IMAGE.raw systemd looks for IMAGE.verity, IMAGE.roothash and IMAGE.roothash.p7s:
# the suffix replaces ".raw" (a name without ".raw" gets the suffix appended)
VERITY_SUFFIX = ".verity"
ROOTHASH_SUFFIX = ".roothash"
SIGNATURE_SUFFIX = ".roothash.p7s"
SIDECAR_SUFFIXES = (VERITY_SUFFIX, ROOTHASH_SUFFIX, SIGNATURE_SUFFIX)

# where the userspace check finds trusted certificates (*.crt, PEM), earlier folders
# masking a file of the same name in later ones (CONF_PATHS("verity.d"))
CERTIFICATE_DIRS = ("/etc/verity.d", "/run/verity.d", "/usr/local/lib/verity.d", "/usr/lib/verity.d")
CERTIFICATE_SUFFIX = ".crt"

# The signature is checked in userspace (PKCS7_verify with PKCS7_NOINTERN|PKCS7_NOVERIFY:
# only these certificates, no chain) when the kernel cannot check it. Debian 12's 252 and
# 13's 257 do (seen here); 11's 247 has no such code (its library lacks the messages). It
# logs at debug level only:
USERSPACE_OK = "Userspace PKCS#7 validation succeeded."
USERSPACE_FAILED = "Userspace PKCS#7 validation failed"
# ... and then opens the verity device, which needs device-mapper (libcryptsetup's words)
NO_DEVICE_MAPPER = "Cannot initialize device-mapper"
# systemd >= 254 loads libcryptsetup with dlopen(): a host without libcryptsetup12 cannot
# open any verity image (Debian 13's systemd only recommends it)
NO_LIBCRYPTSETUP = "libcryptsetup.so.12 is not installed"
USERSPACE_VALIDATION_SEEN = (252, 257)


def sidecar_path(image: Path, suffix: str) -> Path:
    """Where systemd looks for ``image``'s sidecar with ``suffix`` (build_auxiliary_path)."""
    name = image.name
    stem = name[:-len(".raw")] if name.endswith(".raw") else name
    return image.with_name(stem + suffix)


def sidecars(image: Path) -> dict[str, Path]:
    """The three sidecar paths of ``image``, keyed by suffix."""
    return {suffix: sidecar_path(image, suffix) for suffix in SIDECAR_SUFFIXES}


def trusted_certificates(root: Path = Path("/")) -> list[Path]:
    """The certificates systemd on the host at ``root`` trusts for root-hash signatures."""
    seen: dict[str, Path] = {}
    for folder in CERTIFICATE_DIRS:
        d = root / folder.lstrip("/")
        try:
            names = sorted(p.name for p in d.iterdir() if p.name.endswith(CERTIFICATE_SUFFIX))
        except OSError:
            continue
        for name in names:
            seen.setdefault(name, d / name)
    return [seen[n] for n in sorted(seen) if seen[n].is_file()]
