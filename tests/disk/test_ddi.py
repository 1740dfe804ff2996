"""format = "ddi": the build's GPT disk image, its verity partitions, and the look verbs on it.

systemd itself reads these images in tests/e2e/test_ddi.py; here the layout is checked
against util-linux (partx) and the root partition against the bare image of the same spec.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from portable_service import build
from portable_service.builder.ddi import protect, seed_of
from portable_service.disk import ddi, gpt, signing
from portable_service.errors import ImageError, SpecError
from portable_service.progress import QUIET
from portable_service.rules import partitions as rules
from tests.conftest import require_tool
from tests.disk.keys import KeyPair, key_pairs

keys = pytest.fixture(scope="session")(key_pairs)

SERVICE = "[Service]\nExecStart=/usr/bin/env true\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    require_tool("mksquashfs")
    (tmp_path / "demo.service").write_text(SERVICE)
    return tmp_path


def make(project: Path, out: str, **extra: object) -> Path:
    return build(output_dir=project / out, base_dir=project, pname="demo", version="1.0",
                 units=["demo.service"], squash_compression="gzip", **extra)


def partx(image: Path) -> list[list[str]]:
    tool = require_tool("partx")
    out = subprocess.run([tool, "--raw", "--noheadings", "-o", "NR,TYPE,UUID,NAME,FLAGS",
                          str(image)], capture_output=True, text=True, check=True).stdout
    return [line.split(" ") for line in out.splitlines()]


def test_the_root_partition_holds_the_bare_image_and_rebuilds_are_identical(project: Path) -> None:
    disk = make(project, "a", format="ddi")
    again = make(project, "b", format="ddi")
    bare = make(project, "raw")
    assert disk.name == "demo_1.0.raw"  # portabled takes a DDI under the .raw name too
    assert disk.read_bytes() == again.read_bytes()
    arch = rules.host_arch()
    root_type = rules.partition_type(arch, rules.ROOT)
    root_uuid = ddi.derived_uuid(seed_of("demo_1.0.raw"), "root")
    assert partx(disk) == [["1", str(root_type.uuid), str(root_uuid), f"root-{arch}",
                            f"0x{rules.FLAG_READ_ONLY:x}"]]
    with open(disk, "rb") as f:
        table = gpt.read(f)
    root = table.partitions[0]
    data = disk.read_bytes()[root.offset:root.offset + root.size]
    raw = bare.read_bytes()
    assert data[:len(raw)] == raw and data[len(raw):] == b"\0" * (root.size - len(raw))
    assert table.disk_size >= rules.MIN_DISK_SIZE


def test_verity_partitions_uuids_and_signature(project: Path, keys: dict[str, KeyPair],
                                               tmp_path: Path) -> None:
    bare = make(project, "raw")
    filesystem = tmp_path / "fs"
    shutil.copyfile(bare, filesystem)
    good = keys["good"]
    verity = protect(filesystem, tmp_path / "tree", good.key, good.cert, QUIET)
    disk = tmp_path / "demo_1.0.raw"
    table = ddi.write_ddi(filesystem, disk, seed=seed_of(disk.name), verity=verity)
    arch = rules.host_arch()
    rows = partx(disk)
    assert [(r[1], r[3]) for r in rows] == [
        (str(rules.partition_type(arch, kind).uuid), f"root-{arch}{kind[4:]}")
        for kind in rules.KINDS]
    # systemd pairs data and hash partitions by these UUIDs: the root hash's two halves
    assert (rows[0][2] + rows[1][2]).replace("-", "") == verity.root_hash.hex()
    data = disk.read_bytes()
    tree = table.partitions[1]
    assert data[tree.offset:tree.offset + tree.size].rstrip(b"\0") == \
        (tmp_path / "tree").read_bytes().rstrip(b"\0")
    sig = table.partitions[2]
    raw_json = data[sig.offset:sig.offset + sig.size]
    assert len(raw_json) == rules.VERITY_SIG_SIZE
    text = raw_json.rstrip(b"\0")
    assert b"\0" not in text
    doc = json.loads(text)
    assert set(doc) == {"rootHash", "certificateFingerprint", "signature"}
    assert doc["rootHash"] == verity.root_hash.hex()
    der = subprocess.run([require_tool("openssl"), "x509", "-in", str(good.cert), "-outform",
                          "DER"], capture_output=True, check=True).stdout
    assert doc["certificateFingerprint"] == hashlib.sha256(der).hexdigest()
    p7s = base64.b64decode(doc["signature"])
    signing.verify_signature(verity.root_hash.hex(), p7s, [good.cert])
    with pytest.raises(Exception):  # noqa: B017 - whichever error the verity side raises
        signing.verify_signature(verity.root_hash.hex(), p7s, [keys["other"].cert])
    found = ddi.find_root(disk)
    assert (found.filesystem, found.verity, found.signature) == \
        ("squashfs", table.partitions[1], table.partitions[2])


def test_look_verbs_read_the_root_partition(project: Path, cli) -> None:
    disk = make(project, "a", format="ddi")
    inspect = cli("inspect", str(disk))
    assert inspect.returncode == 0, inspect.stderr
    assert f"DDI (GPT), root partition root-{rules.host_arch()}: squashfs 4.0, gzip" \
        in inspect.stdout
    listing = cli("ls", str(disk), "/etc/systemd/system")
    assert listing.stdout.split() == ["demo.service"], listing.stdout
    cat = cli("cat", str(disk), "/etc/systemd/system/demo.service")
    assert cat.stdout.startswith(SERVICE)
    verify = cli("verify", str(disk))
    assert verify.returncode == 0 and "ok: 0 error(s)" in verify.stderr, verify.stderr


def test_a_gpt_without_root_partition_is_one_line(tmp_path: Path, cli) -> None:
    import io
    import uuid

    other = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")  # generic Linux data
    content = [gpt.Content(other, uuid.UUID(int=7), "data", io.BytesIO(b"x"), 1)]
    disk = tmp_path / "x_1.raw"
    with open(disk, "wb") as f:
        gpt.write(f, gpt.layout(content, uuid.UUID(int=9)), content)
    proc = cli("inspect", str(disk))
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "without a root partition (partitions: data)" in lines[0], lines
    with pytest.raises(ImageError, match="without a root partition"):
        ddi.find_root(disk)


def test_unknown_format_is_refused(project: Path) -> None:
    with pytest.raises(SpecError, match="format 'qcow2' is unknown"):
        make(project, "a", format="qcow2")


def test_spec_verity_builds_the_verity_partitions_and_no_sidecars(
        project: Path, keys: dict[str, KeyPair]) -> None:
    """verity = true (and a key) with format = "ddi": the partitions carry what the
    sidecars carry for a bare image; sidecars a bare build left beside it are removed."""
    good = keys["good"]
    bare = make(project, "out", verity=True, verity_key=str(good.key),
                verity_certificate=str(good.cert))
    sidecars = [bare.with_name(bare.name.removesuffix(".raw") + s)
                for s in (".verity", ".roothash", ".roothash.p7s")]
    assert all(p.exists() for p in sidecars)
    disk = make(project, "out", format="ddi", verity=True, verity_key=str(good.key),
                verity_certificate=str(good.cert))
    assert disk == bare and not any(p.exists() for p in sidecars)
    arch = rules.host_arch()
    assert [r[3] for r in partx(disk)] == [f"root-{arch}", f"root-{arch}-verity",
                                           f"root-{arch}-verity-sig"]
    found = ddi.find_root(disk)
    assert found.verity is not None and found.signature is not None
    unsigned = make(project, "unsigned", format="ddi", verity=True)
    assert [r[3] for r in partx(unsigned)] == [f"root-{arch}", f"root-{arch}-verity"]
    assert make(project, "unsigned2", format="ddi", verity=True).read_bytes() == \
        unsigned.read_bytes()


def test_verify_checks_the_verity_partitions_offline(project: Path, keys: dict[str, KeyPair],
                                                     cli) -> None:
    """The hash partition against the root partition, the root hash (partition UUIDs)
    against the signature's, the signature against a certificate: one line each."""
    good = keys["good"]
    disk = make(project, "out", format="ddi", verity=True, verity_key=str(good.key),
                verity_certificate=str(good.cert))
    ok = cli("verify", str(disk), "--certificate", str(good.cert))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    inspect = cli("inspect", str(disk), "--certificate", str(good.cert), "--json")
    state = json.loads(inspect.stdout)["verity"]
    with open(disk, "rb") as f:
        table = gpt.read(f)
    root, tree, sig = table.partitions
    assert state["root_hash"] == (root.uuid.bytes + tree.uuid.bytes).hex()
    assert state["signer"] == "CN=good" and state["problems"] == []

    wrong = cli("verify", str(disk), "--certificate", str(keys["other"].cert))
    assert wrong.returncode == 1
    assert [ln for ln in wrong.stdout.splitlines() if ln.startswith("error")] == [
        f"error: root-{rules.host_arch()}-verity-sig: the root hash was signed by a key none of "
        f"the trusted certificates holds (checked {keys['other'].cert}); fix: give the signer's "
        "certificate with --certificate, or put it in /etc/verity.d/"]

    data = bytearray(disk.read_bytes())
    data[root.offset + 5 * 4096 + 7] ^= 0x01  # one bit of data block 5
    tampered = project / "tampered" / disk.name
    tampered.parent.mkdir()
    tampered.write_bytes(bytes(data))
    bad = cli("verify", str(tampered), "--certificate", str(good.cert))
    assert bad.returncode == 1
    assert "data block 5 (bytes 20480-24575) does not match its hash" in bad.stdout, bad.stdout

    data = bytearray(disk.read_bytes())
    doc = json.loads(bytes(data[sig.offset:sig.offset + sig.size]).rstrip(b"\0"))
    doc["rootHash"] = "0" * 64
    text = json.dumps(doc).encode().ljust(sig.size, b"\0")
    data[sig.offset:sig.offset + sig.size] = text
    # the GPT is untouched (its CRCs cover the table, not the partitions)
    other = project / "other-hash" / disk.name
    other.parent.mkdir()
    other.write_bytes(bytes(data))
    mism = cli("verify", str(other), "--certificate", str(good.cert))
    assert mism.returncode == 1
    assert f"the signature is for root hash {'0' * 64}, the partition UUIDs say " \
        f"{state['root_hash']}" in mism.stdout, mism.stdout


def test_deferred_signing_gives_the_build_time_signed_bytes(project: Path,
                                                           keys: dict[str, KeyPair],
                                                           cli) -> None:
    """`sign` on a DDI built without a key (with or without verity) adds the signature
    partition: the result is byte for byte the DDI signed at build time (RSA signatures are
    deterministic). A modified root partition is never signed."""
    good = keys["good"]
    signed = make(project, "signed", format="ddi", verity=True, verity_key=str(good.key),
                  verity_certificate=str(good.cert))
    for folder, extra in (("plain", {}), ("verity", {"verity": True})):
        disk = make(project, folder, format="ddi", **extra)
        proc = cli("sign", str(disk), "--key", str(good.key), "--certificate", str(good.cert))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(disk)
        assert disk.read_bytes() == signed.read_bytes(), folder
        sbom = disk.with_suffix(".spdx.json").name  # the SBOM the build writes beside it
        assert sorted(p.name for p in disk.parent.iterdir()) == [disk.name, sbom]  # no leftovers

    disk = make(project, "tampered", format="ddi", verity=True)
    with open(disk, "rb") as f:
        root = gpt.read(f).partitions[0]
    data = bytearray(disk.read_bytes())
    data[root.offset + 3 * 4096] ^= 0x80
    disk.write_bytes(bytes(data))
    proc = cli("sign", str(disk), "--key", str(good.key), "--certificate", str(good.cert))
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data block 3 (bytes 12288-16383) does not match" in lines[0], lines
    assert disk.read_bytes() == bytes(data)

    proc = cli("sign", str(disk), "--sign-command", "false")
    assert proc.returncode == 2 and "needs --certificate" in proc.stderr


@pytest.mark.parametrize("case", ["truncated", "junk", "erofs-junk"])
def test_a_damaged_root_partition_is_one_line(project: Path, cli, case: str) -> None:
    import io
    import uuid

    bare = make(project, "raw").read_bytes()
    data = {"truncated": bare[:len(bare) // 2], "junk": b"\x01" * 8192,
            "erofs-junk": bytes(1024) + ddi.EROFS_MAGIC + bytes(4000)}[case]
    if case == "erofs-junk":
        require_tool("fsck.erofs")
    root = rules.partition_type(rules.host_arch(), rules.ROOT)
    content = [gpt.Content(root.uuid, uuid.UUID(int=1), root.name, io.BytesIO(data), len(data))]
    disk = project / case / "demo_1.0.raw"
    disk.parent.mkdir()
    with open(disk, "wb") as f:
        gpt.write(f, gpt.layout(content, uuid.UUID(int=2), rules.MIN_DISK_SIZE), content)
    want = {"truncated": f"the squashfs in root partition {root.name} cannot be read: the "
                         "image is truncated",
            "junk": "the root partition holds neither squashfs nor erofs",
            "erofs-junk": "fsck.erofs cannot read this erofs file system"}[case]
    for verb in ("inspect", "verify", "ls"):
        proc = cli(verb, str(disk))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and proc.stdout == "" and len(lines) == 1, (verb, lines)
        assert str(disk) in lines[0] and want in lines[0], lines
