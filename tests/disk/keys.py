"""Key pairs for the verity and signature tests, made by openssl as users make them."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool


@dataclass(frozen=True)
class KeyPair:
    key: Path
    cert: Path


def make_key_pair(folder: Path, name: str, kind: str = "rsa") -> KeyPair:
    """A self-signed certificate and its key, as `openssl req -x509` makes them."""
    openssl = require_tool("openssl")
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    algo = ["-newkey", "rsa:2048"] if kind == "rsa" else \
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    subprocess.run([openssl, "req", "-x509", *algo, "-nodes", "-keyout", key, "-out", cert,
                    "-subj", f"/CN={name}", "-days", "3650"], check=True, capture_output=True)
    return KeyPair(key, cert)


def key_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    """"good" and "other" (RSA), "ec" (P-256): for a module's session fixture."""
    folder = tmp_path_factory.mktemp("keys")
    return {"good": make_key_pair(folder, "good"), "other": make_key_pair(folder, "other"),
            "ec": make_key_pair(folder, "ec", "ec")}
