"""Builds with verity sidecars and deferred signing, through the real CLI and mksquashfs."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from portable_service.disk import verity
from tests.conftest import require_tool
from tests.disk.keys import KeyPair, key_pairs

keys = pytest.fixture(scope="session")(key_pairs)

SERVICE = "[Service]\nExecStart=/usr/bin/env true\n"
SIDECARS = ("demo_1.verity", "demo_1.roothash", "demo_1.roothash.p7s")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    require_tool("mksquashfs")
    (tmp_path / "demo.service").write_text(SERVICE)
    (tmp_path / "portable.toml").write_text('pname = "demo"\nversion = "1"\nunits = ["demo.service"]\n'
                                            'squash-compression = "gzip"\n')
    return tmp_path


def listing(folder: Path) -> list[str]:
    """The image and its sidecars in an output folder (the SBOM beside them aside)."""
    return sorted(n for n in os.listdir(folder) if not n.endswith(".spdx.json"))


def veritysetup_verify(image: Path, tree: Path, root: str) -> int:
    return subprocess.run([require_tool("veritysetup"), "verify", image, tree, root],
                          capture_output=True, check=False).returncode


def test_verity_sidecars_reproducible_and_accepted(cli, project: Path, keys: dict[str, KeyPair]) -> None:
    good = keys["good"]
    args = ["build", "-q", "-o", "out", "--verity-key", str(good.key), "--verity-certificate",
            str(good.cert)]
    cli(*args, cwd=project, check=True)
    out = project / "out"
    assert listing(out) == ["demo_1.raw", *sorted(SIDECARS)]
    first = {n: (out / n).read_bytes() for n in listing(out)}
    root = first["demo_1.roothash"].decode()
    assert root.endswith("\n") and len(root.strip()) == 64
    assert veritysetup_verify(out / "demo_1.raw", out / "demo_1.verity", root.strip()) == 0
    # RSA signatures are deterministic: the whole set is byte-identical on a rebuild
    cli(*args, cwd=project, check=True)
    assert {n: (out / n).read_bytes() for n in listing(out)} == first
    check = cli("verify", "out/demo_1.raw", "--certificate", str(good.cert), cwd=project)
    assert check.returncode == 0, check.stdout + check.stderr


def test_verity_in_spec_without_key(cli, project: Path) -> None:
    with open(project / "portable.toml", "a") as f:
        f.write("verity = true\n")
    cli("build", "-q", "-o", "out", cwd=project, check=True)
    assert listing(project / "out") == ["demo_1.raw", "demo_1.roothash", "demo_1.verity"]
    tree = verity.tree_for_image(project / "out/demo_1.raw")
    assert (project / "out/demo_1.verity").read_bytes() == tree.hash_tree


def test_build_without_verity_removes_stale_sidecars(cli, project: Path) -> None:
    cli("build", "-q", "-o", "out", "--verity", cwd=project, check=True)
    assert "demo_1.verity" in listing(project / "out")
    cli("build", "-q", "-o", "out", cwd=project, check=True)
    assert listing(project / "out") == ["demo_1.raw"]


def test_failed_build_leaves_old_set(cli, project: Path, keys: dict[str, KeyPair]) -> None:
    good = keys["good"]
    cli("build", "-q", "-o", "out", "--verity-key", str(good.key), "--verity-certificate",
        str(good.cert), cwd=project, check=True)
    before = {n: (project / "out" / n).read_bytes() for n in listing(project / "out")}
    (project / "demo.service").write_text(SERVICE.replace("true", "false"))  # a different image
    for bad in (["--verity-key", str(good.key), "--verity-certificate", str(keys["other"].cert)],
                ["--verity-key", str(good.cert), "--verity-certificate", str(good.cert)],
                ["--verity-key", str(good.key)],
                ["--verity-certificate", str(good.cert)]):
        proc = cli("build", "-q", "-o", "out", *bad, cwd=project)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert proc.stdout == ""
        assert {n: (project / "out" / n).read_bytes() for n in listing(project / "out")} == before


def test_sign_after_build(cli, project: Path, keys: dict[str, KeyPair]) -> None:
    """Deferred signing: build with verity, sign elsewhere; the same bytes as signing at build."""
    good = keys["good"]
    cli("build", "-q", "-o", "out", "--verity", cwd=project, check=True)
    proc = cli("sign", "out/demo_1.raw", "--key", str(good.key), "--certificate", str(good.cert),
               cwd=project, check=True)
    assert proc.stdout.strip() == "out/demo_1.roothash.p7s"
    deferred = (project / "out/demo_1.roothash.p7s").read_bytes()
    cli("build", "-q", "-o", "at-build", "--verity-key", str(good.key), "--verity-certificate",
        str(good.cert), cwd=project, check=True)
    assert (project / "at-build/demo_1.roothash.p7s").read_bytes() == deferred


def test_sign_plain_image_makes_tree(cli, project: Path, keys: dict[str, KeyPair]) -> None:
    good = keys["good"]
    cli("build", "-q", "-o", "out", cwd=project, check=True)
    cli("sign", "out/demo_1.raw", "--key", str(good.key), "--certificate", str(good.cert),
        cwd=project, check=True)
    assert listing(project / "out") == ["demo_1.raw", *sorted(SIDECARS)]
    cli("build", "-q", "-o", "ref", "--verity", cwd=project, check=True)
    assert (project / "out/demo_1.verity").read_bytes() == (project / "ref/demo_1.verity").read_bytes()


def test_sign_command_and_refusals(cli, project: Path, keys: dict[str, KeyPair]) -> None:
    good = keys["good"]
    openssl = require_tool("openssl")
    cli("build", "-q", "-o", "out", "--verity", cwd=project, check=True)
    command = shlex.join([openssl, "smime", "-sign", "-nocerts", "-noattr", "-binary", "-outform",
                          "der", "-signer", str(good.cert), "-inkey", str(good.key)])
    cli("sign", "out/demo_1.raw", "--sign-command", command, "--certificate", str(good.cert),
        cwd=project, check=True)
    check = cli("verify", "out/demo_1.raw", "--certificate", str(good.cert), cwd=project)
    assert check.returncode == 0, check.stdout
    # a modified image is never signed
    image = project / "out/demo_1.raw"
    raw = bytearray(image.read_bytes())
    raw[5000] ^= 1
    image.write_bytes(raw)
    signature = (project / "out/demo_1.roothash.p7s").read_bytes()
    proc = cli("sign", "out/demo_1.raw", "--key", str(good.key), "--certificate", str(good.cert),
               cwd=project)
    assert proc.returncode == 2
    assert "data block 1 (bytes 4096-8191) does not match" in proc.stderr
    assert (project / "out/demo_1.roothash.p7s").read_bytes() == signature
    raw[5000] ^= 1
    image.write_bytes(raw)
    for args, message in ((["--key", str(good.key)], "--key needs --certificate"),
                          ([], "either --key or --sign-command"),
                          (["--sign-command", "false"], "sign command false failed")):
        proc = cli("sign", "out/demo_1.raw", *args, cwd=project)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_pkcs11_key_refused_in_one_line_without_provider(cli, project: Path, tmp_path: Path,
                                                         keys: dict[str, KeyPair]) -> None:
    """Without openssl's pkcs11 provider or engine (empty module folders), a pkcs11: key is
    one line, exit 2, before anything is built."""
    require_tool("openssl")
    empty = tmp_path / "no-modules"
    empty.mkdir()
    proc = cli("build", "-q", "-o", "out", "--verity-key", "pkcs11:token=t;object=k",
               "--verity-certificate", str(keys["good"].cert), cwd=project,
               env={"OPENSSL_ENGINES": str(empty), "OPENSSL_MODULES": str(empty)})
    assert proc.returncode == 2
    assert "pkcs11 provider or engine" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (project / "out").exists()
