"""Discoverable Disk Images (format = "ddi") on real systemd.

- systemd-dissect (in the container, so the release's own) lists our DDI as a portable
  service with the partitions we wrote, and verity "signed" when it carries a signature;
- the plain DDI (squashfs or erofs root) attaches, starts and serves (the harness links
  the loop device's partition nodes into the container);
- on systemd 257, ``systemd-repart --make-ddi=portable`` over the same tree gives a DDI
  that systemd-dissect describes the same way (designators, labels, file systems, verity);
- on 252 and 257 a signed DDI's signature partition is accepted in userspace for the
  signer's certificate in /etc/verity.d (then only device-mapper fails) and refused for
  another.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from portable_service.builder.atomic import write_atomically
from portable_service.builder.ddi import protect, seed_of, write_ddi_image
from portable_service.builder.pipeline import plan as plan_build
from portable_service.builder.spec import spec_from_mapping
from portable_service.builder.writers.erofs import stage
from portable_service.disk import ddi, gpt
from portable_service.harness import roots
from portable_service.harness.nspawn import Container
from portable_service.progress import QUIET
from portable_service.rules import verity as verity_rules
from tests.conftest import require_tool
from tests.disk.keys import KeyPair, make_key_pair
from tests.e2e.conftest import RELEASES
from tests.e2e.lib import VERITY_ENDS, journal_until, tcp_get, unit
from tests.e2e.test_verity import after, ran, trust, vcontainer  # noqa: F401 (vcontainer: a fixture)

PORT = 18131
pytestmark = pytest.mark.e2e


# systemd 247 (Debian 11) finds the GPT (disks are padded past libblkid 2.36's floppy limit
# for it) and sets the loop device up with partition scanning on, but on these kernels no
# partition device appears while it waits (no /sys/class/block/loopNpM), so it gives up:
# test_ddi_on_systemd_247_times_out shows it. The other tests run where DDIs work.
DDI_RELEASES = [s for s in RELEASES if roots.RELEASES[s].systemd >= 252]
OLD_RELEASES = [s for s in RELEASES if roots.RELEASES[s].systemd < 252]
on_ddi_releases = pytest.mark.parametrize("container", DDI_RELEASES, indirect=True)


@pytest.fixture
def c(container: Container) -> Container:
    """The container, of a release whose DDI handling this harness can show."""
    return container


def settings(psdemo: Path, writer: str, message: str) -> dict[str, Any]:
    return {
        "pname": "ddidemo", "version": "1.0", "format": "ddi", "writer": writer,
        "squash-compression": "lz4",
        "units": [
            unit("ddidemo.service", "[Service]\n"
                 f"ExecStart=/usr/bin/psdemo sockserve '{message}'\n"),
            unit("ddidemo.socket", f"[Socket]\nListenStream=127.0.0.1:{PORT}\n"),
        ],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}],
    }


def build_ddi(out_dir: Path, values: Mapping[str, Any]) -> Path:
    """The build's own DDI step (builder/ddi.py) over the real pipeline's plan."""
    spec = spec_from_mapping(values, out_dir)
    plan = plan_build(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / spec.image_name
    write_atomically(out, lambda tmp: write_ddi_image(
        spec, lambda fs: plan.writer.write(plan.tree, fs, plan.options, QUIET), tmp, QUIET))
    return out


def build_signed_ddi(out_dir: Path, values: Mapping[str, Any],
                     keys: KeyPair) -> tuple[Path, bytes]:
    """A DDI with root, root-verity and root-verity-sig partitions."""
    spec = spec_from_mapping({**values, "format": "raw"}, out_dir)
    plan = plan_build(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    filesystem = out_dir / "root.fs"
    plan.writer.write(plan.tree, filesystem, plan.options, QUIET)
    verity = protect(filesystem, out_dir / "root.verity", keys.key, keys.cert, QUIET)
    out = out_dir / spec.image_name
    ddi.write_ddi(filesystem, out, seed=seed_of(spec.image_name), verity=verity)
    return out, verity.root_hash


def dissect(c: Container, image: Path) -> tuple[list[str], list[dict[str, str]]]:
    """systemd-dissect's verdicts (the ticked "Use As" lines) and partition table rows."""
    name = c.copy_image(image)
    res = c.run("systemd-dissect", f"/var/lib/portables/{name}.raw", timeout=120)
    assert res.ok, f"systemd-dissect failed on {c.release.suite}: {res.output}"
    return parse_dissect(res.stdout)


def parse_dissect(text: str) -> tuple[list[str], list[dict[str, str]]]:
    lines = text.splitlines()
    ticked = [re.sub(r"^✓\s*", "", ln.strip()) for ln in lines
              if re.sub(r"^\s*Use As:", "", ln).strip().startswith("✓")]
    header = next(i for i, ln in enumerate(lines) if ln.startswith("RW DESIGNATOR"))
    names = lines[header].lower().replace("partition uuid", "uuid").replace(
        "partition label", "label").split()
    rows = []
    for ln in lines[header + 1:]:
        if not ln.strip():
            break
        rows.append(dict(zip(names, ln.split(), strict=False)))
    return ticked, rows


@pytest.mark.parametrize("container", OLD_RELEASES, indirect=True)
def test_ddi_on_systemd_247_times_out(container, psdemo, tmp_path):
    """What the README says of 247: it finds the GPT, then no partition device appears on
    this kernel and portabled gives up waiting ("Connection timed out")."""
    image = build_ddi(tmp_path, settings(psdemo, "mksquashfs", "old"))
    attach = container.attach(image, runtime=True)
    try:
        assert not attach.ok and "Connection timed out" in attach.output, attach.output
    finally:
        container.remove_image("ddidemo_1.0")


@on_ddi_releases
@pytest.mark.parametrize("writer", ["mksquashfs", "erofs"])
def test_plain_ddi_attaches_and_serves(c, psdemo, tmp_path, writer):
    """portabled takes our GPT image: the unit starts from the root partition and serves."""
    if writer == "erofs":
        require_tool("mkfs.erofs")
    message = f"ddi {writer} on {c.release.suite}"
    image = build_ddi(tmp_path, settings(psdemo, writer, message))
    ticked, rows = dissect(c, image)
    assert "portable service" in ticked, (c.release.suite, ticked)
    fstype = "erofs" if writer == "erofs" else "squashfs"
    assert [(r["designator"], r["label"], r["fstype"]) for r in rows] == \
        [("root", "root-x86-64", fstype)], rows
    attach = c.attach(image, runtime=True)
    assert attach.ok, attach.output
    try:
        start = c.systemctl("start", "ddidemo.socket")
        assert start.ok, start.output
        assert tcp_get(PORT) == message + "\n", c.journal("ddidemo.service")
        state = c.wait_for("ddidemo.service")
        assert state.active == "active", c.journal("ddidemo.service")
    finally:
        detach = c.detach("ddidemo_1.0", runtime=True, now=True)
    assert detach.ok, detach.output


@on_ddi_releases
def test_plain_ddi_without_partition_nodes_fails_as_seen_before(c, psdemo, tmp_path):
    """The control for the harness' partition links: without them portabled cannot open the
    root partition ("No such file or directory"), which is what a DDI met before."""
    image = build_ddi(tmp_path, settings(psdemo, "mksquashfs", "unlinked"))
    links = sorted((c.root / "dev").glob("loop*p*"))
    assert links, "the harness made no partition links"
    for link in links:
        link.unlink()
    try:
        attach = c.attach(image, runtime=True)
        assert not attach.ok and "No such file or directory" in attach.output, attach.output
    finally:
        from portable_service.harness.nspawn import link_partition_nodes

        c.remove_image("ddidemo_1.0")
        c.run("umount", "/run/harness-dev")
        link_partition_nodes(c)


@on_ddi_releases
def test_signed_ddi_is_dissected_as_signed(c, psdemo, tmp_path):
    """root + root-verity + root-verity-sig, with the UUIDs from the root hash: systemd
    accepts the pairing (it refuses mismatched UUIDs) and reports the verity as signed."""
    keys = make_key_pair(tmp_path / "keys", "ddi")
    image, root_hash = build_signed_ddi(tmp_path / "out", settings(psdemo, "mksquashfs", "signed"),
                                        keys)
    ticked, rows = dissect(c, image)
    assert "portable service" in ticked, ticked
    got = [(r["designator"], r["label"], r["fstype"], r["verity"]) for r in rows]
    assert got == [("root", "root-x86-64", "squashfs", "signed"),
                   ("root-verity", "root-x86-64-verity", "DM_verity_hash", "-"),
                   ("root-verity-sig", "root-x86-64-verity-sig", "verity_hash_signature", "-")], \
        got
    uuids = {r["designator"]: r["uuid"].replace("-", "") for r in rows}
    assert uuids["root"] + uuids["root-verity"] == root_hash.hex()


@pytest.mark.parametrize("container", [s for s in RELEASES if roots.RELEASES[s].systemd >= 255],
                         indirect=True)  # systemd-repart --make-ddi arrives in 255: Debian 13
def test_repart_make_ddi_is_described_the_same(c, psdemo, tmp_path):
    """systemd-repart --make-ddi=portable (257) over the same tree, and our DDI of it."""
    install = c.run("sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                    "apt-get install -y -qq --no-install-recommends systemd-repart erofs-utils "
                    "libcryptsetup12",
                    timeout=600)
    assert install.ok, install.output
    keys = make_key_pair(tmp_path / "keys", "repart")
    values = settings(psdemo, "erofs", "repart")
    ours, _ = build_signed_ddi(tmp_path / "ours", values, keys)
    # the same tree, laid out for repart's CopyFiles=/
    plan = plan_build(spec_from_mapping({**values, "format": "raw"}, tmp_path))
    work = c.root / "tmp/repart"
    shutil.rmtree(work, ignore_errors=True)
    (work / "tree").mkdir(parents=True)
    stage(plan.tree, work / "tree", QUIET)
    for f in (keys.key, keys.cert):
        shutil.copyfile(f, work / f.name)
    (work / keys.key.name).chmod(0o600)  # repart refuses a key others can read
    made = c.run("systemd-repart", "--make-ddi=portable", "--copy-source=/tmp/repart/tree",
                 "--empty=create", "--size=auto", "--seed=0d3bc8a2-6f1c-4e5b-9a77-3c2d1e0f4b5a",
                 f"--private-key=/tmp/repart/{keys.key.name}",
                 f"--certificate=/tmp/repart/{keys.cert.name}",
                 "/tmp/repart/ddidemo_1.0.raw", timeout=300)
    assert made.ok, made.output
    theirs = tmp_path / "theirs" / "ddidemo_1.0.raw"
    theirs.parent.mkdir()
    shutil.copyfile(work / "ddidemo_1.0.raw", theirs)
    ticked_ours, rows_ours = dissect(c, ours)
    c.remove_image("ddidemo_1.0")
    ticked_theirs, rows_theirs = dissect(c, theirs)

    def described(rows: list[dict[str, str]]) -> list[tuple[str, ...]]:
        return [(r["designator"], r["label"], r["fstype"], r["architecture"], r["verity"])
                for r in rows]

    assert ticked_ours == ticked_theirs and "portable service" in ticked_ours
    assert described(rows_ours) == described(rows_theirs), (rows_ours, rows_theirs)

    # and in the tables themselves: types, labels, flags, the signature partition's size,
    # the root/verity UUIDs as the two halves of each image's root hash
    def table(image: Path) -> list[tuple[str, str, int]]:
        with open(image, "rb") as f:
            parts = gpt.read(f).partitions
        root, tree, sig = parts
        signed = json.loads(_partition(image, sig).rstrip(b"\0"))["rootHash"]
        assert (root.uuid.bytes + tree.uuid.bytes).hex() == signed, image
        return [(str(p.type_uuid), p.name, p.attributes) for p in parts] + [("sig", "", sig.size)]

    assert table(ours) == table(theirs)


def _partition(image: Path, part: gpt.Partition) -> bytes:
    with open(image, "rb") as f:
        f.seek(part.offset)
        return f.read(part.size)


# -- a signed DDI on systemd 252 and 257: the signature partition is checked in userspace,
# then only device-mapper (absent from these kernels) is missing. The container is the
# verity tests' (Debian 13's root there adds libcryptsetup12, which 257 needs for verity).

SIGNED_UNIT = "[Service]\nType=oneshot\nExecStart=/usr/bin/psdemo say verity-demo-ran\n"


def signed_ddi_settings(psdemo: Path, keys: KeyPair) -> dict[str, Any]:
    return {"pname": "vddi", "version": "1", "format": "ddi", "squash-compression": "gzip",
            "units": [unit("vddi.service", SIGNED_UNIT)],
            "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}],
            "verity-key": str(keys.key), "verity-certificate": str(keys.cert)}


def start_signed(c: Container, image: Path, cert: Path | None) -> tuple[str, str]:
    trust(c, cert)
    attach = c.attach(image, runtime=True)
    assert attach.ok, attach.output
    try:
        cursor = c._cursor()
        c.systemctl("start", "vddi.service")
        journal = journal_until(c, cursor, VERITY_ENDS)
        status = c.unit_state("vddi.service").exit_status
    finally:
        c.detach("vddi_1", runtime=True)
    return journal, status


@pytest.mark.parametrize("trusted", ["signer", "other"])
def test_signed_ddi_signature_checked_by_systemd(vcontainer, psdemo, tmp_path, trusted):  # noqa: F811
    """Our root-<arch>-verity-sig partition: accepted for the signer's certificate in
    /etc/verity.d (then only device-mapper fails), refused for another certificate."""
    good = make_key_pair(tmp_path / "keys", "good")
    other = make_key_pair(tmp_path / "keys", "other")
    image = build_ddi(tmp_path / "out", signed_ddi_settings(psdemo, good))
    journal, status = start_signed(vcontainer, image,
                                   good.cert if trusted == "signer" else other.cert)
    if trusted == "signer":
        assert verity_rules.USERSPACE_OK in journal, journal[-3000:]
        rest = after(journal, verity_rules.USERSPACE_OK)
        failures = [ln for ln in rest if "fail" in ln.lower() or "cannot" in ln.lower()]
        assert failures and verity_rules.NO_DEVICE_MAPPER in failures[0], failures
    else:
        assert verity_rules.USERSPACE_FAILED in journal, journal[-3000:]
        assert verity_rules.USERSPACE_OK not in journal
    assert status == "226" and not ran(journal)
