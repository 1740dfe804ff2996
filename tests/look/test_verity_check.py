"""verify and inspect on verity sidecars: each kind of damage in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.disk.keys import KeyPair, key_pairs

keys = pytest.fixture(scope="session")(key_pairs)


@pytest.fixture
def built(cli, tmp_path: Path, keys: dict[str, KeyPair]) -> Path:
    require_tool("mksquashfs")
    (tmp_path / "demo.service").write_text("[Service]\nExecStart=/usr/bin/env true\n")
    cli("build", "-q", "-o", "out", "--pname", "demo", "--version", "1", "--unit", "demo.service",
        "--squash-compression", "gzip", "--verity-key", str(keys["good"].key),
        "--verity-certificate", str(keys["good"].cert), cwd=tmp_path, check=True)
    return tmp_path / "out/demo_1.raw"


def verify_lines(cli, image: Path, cert: Path) -> tuple[int, list[str]]:
    proc = cli("verify", str(image), "--certificate", str(cert))
    assert "Traceback" not in proc.stderr
    return proc.returncode, [ln for ln in proc.stdout.splitlines() if ln.startswith("error")]


def test_intact_set_passes(cli, built: Path, keys: dict[str, KeyPair]) -> None:
    assert verify_lines(cli, built, keys["good"].cert) == (0, [])
    proc = cli("inspect", str(built), "--certificate", str(keys["good"].cert), "--json=short")
    data = json.loads(proc.stdout)["verity"]
    assert data["signer"] == "CN=good" and data["problems"] == []
    assert data["sidecars"] == [".verity", ".roothash", ".roothash.p7s"]
    text = cli("inspect", str(built), "--certificate", str(keys["good"].cert)).stdout
    assert "signed by CN=good" in text and data["root_hash"] in text


def test_tampered_byte(cli, built: Path, keys: dict[str, KeyPair]) -> None:
    raw = bytearray(built.read_bytes())
    raw[len(raw) - 4096 * 2 + 10] ^= 0xFF  # a block near the end (file data or tables)
    built.write_bytes(raw)
    blocks = len(raw) // 4096
    rc, errors = verify_lines(cli, built, keys["good"].cert)
    assert rc == 1
    assert errors == [f"error: demo_1.verity: data block {blocks - 2} (bytes {(blocks - 2) * 4096}-"
                      f"{(blocks - 1) * 4096 - 1}) does not match its hash in the hash tree: the image "
                      "was modified after its hash tree was made; fix: rebuild the image or restore "
                      "the original"]


def test_wrong_root_hash(cli, built: Path, keys: dict[str, KeyPair]) -> None:
    rh = built.with_name("demo_1.roothash")
    rh.write_text("ab" * 32 + "\n")
    rc, errors = verify_lines(cli, built, keys["good"].cert)
    assert rc == 1
    assert any("the root hash " + "ab" * 32 + " is not the hash tree's" in e for e in errors), errors
    assert any("does not match root hash " + "ab" * 32 in e for e in errors), errors
    rh.write_text("not hex\n")
    rc, errors = verify_lines(cli, built, keys["good"].cert)
    assert rc == 1 and len(errors) == 1 and "is not a sha256 root hash" in errors[0]


def test_wrong_signer(cli, built: Path, keys: dict[str, KeyPair]) -> None:
    rc, errors = verify_lines(cli, built, keys["other"].cert)
    assert rc == 1
    assert len(errors) == 1 and "signed by a key none of the trusted certificates holds" in errors[0]


def test_tampered_signature(cli, built: Path, keys: dict[str, KeyPair]) -> None:
    sig = built.with_name("demo_1.roothash.p7s")
    data = bytearray(sig.read_bytes())
    data[-5] ^= 1  # inside the RSA signature value
    sig.write_bytes(data)
    rc, errors = verify_lines(cli, built, keys["good"].cert)
    assert rc == 1 and len(errors) == 1 and "by CN=good does not match root hash" in errors[0]


def test_incomplete_set(cli, built: Path, keys: dict[str, KeyPair]) -> None:
    built.with_name("demo_1.verity").unlink()
    rc, errors = verify_lines(cli, built, keys["good"].cert)
    assert rc == 1 and any("no demo_1.verity" in e for e in errors), errors
    built.with_name("demo_1.roothash").unlink()
    rc, errors = verify_lines(cli, built, keys["good"].cert)
    assert rc == 1 and any("no demo_1.roothash" in e for e in errors), errors


def test_plain_image_shows_none(cli, tmp_path: Path) -> None:
    require_tool("mksquashfs")
    (tmp_path / "demo.service").write_text("[Service]\nExecStart=/usr/bin/env true\n")
    cli("build", "-q", "-o", "out", "--pname", "demo", "--version", "1", "--unit", "demo.service",
        cwd=tmp_path, check=True)
    text = cli("inspect", "out/demo_1.raw", cwd=tmp_path).stdout
    assert "Verity:            none" in text


def test_mutated_sidecars_never_crash(built: Path, keys: dict[str, KeyPair]) -> None:
    """Damaged sidecars (fixed seed) through verify, inspect and sign: exit 0, 1 or 2 with
    one line, never a traceback; damage that matters is always reported."""
    import contextlib
    import io
    import random

    from portable_service.cli import main

    rng = random.Random(11)
    originals = {p: p.read_bytes() for p in built.parent.iterdir() if p != built}
    verbs = [["verify", str(built), "--certificate", str(keys["good"].cert)],
             ["inspect", "--json", str(built), "--certificate", str(keys["good"].cert)],
             ["sign", str(built), "--key", str(keys["good"].key), "--certificate",
              str(keys["good"].cert)]]
    noticed = 0
    for n in range(30):
        victim = rng.choice(sorted(originals))
        data = bytearray(originals[victim])
        if rng.random() < 0.2:
            del data[rng.randrange(len(data)):]
        else:
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(min(len(data), 600))  # superblocks and headers first
                data[at] ^= 1 << rng.randrange(8)
        for p, original in originals.items():
            p.write_bytes(bytes(data) if p == victim else original)
        for verb in verbs:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(verb)
            assert code in (0, 1, 2), f"case {n}: {verb[0]} exit {code}"
            if code == 2:
                assert err.getvalue().count("\n") == 1, err.getvalue()
            if verb[0] == "verify" and code == 1:
                noticed += 1
    assert noticed > 15
