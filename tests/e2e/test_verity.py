"""Verity sidecars and root-hash signatures on real systemd 252 and 257.

These kernels have no device-mapper, so a verity device never opens here. What systemd does
before that is observable: it finds our NAME.verity / NAME.roothash / NAME.roothash.p7s
beside the attached image, checks the signature in userspace against /etc/verity.d/*.crt
(the kernel cannot), logs the verdict at debug level, and then fails only to open the
device. Each case also runs our offline check, which must agree with systemd.

Debian 13's minimal root lacks libcryptsetup (systemd 257 loads it with dlopen() and only
recommends the package), so 257 runs from a root that adds libcryptsetup12, kept in its own
cache beside the shared roots. systemd 247 has no userspace check (not tested here).
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from portable_service.api import build_image
from portable_service.builder.spec import spec_from_mapping
from portable_service.disk import verity
from portable_service.harness import nspawn, roots
from portable_service.look.verity_check import check_sidecars
from portable_service.progress import Reporter
from portable_service.rules import verity as rules
from tests.disk.keys import KeyPair, key_pairs
from tests.e2e.conftest import LOG_DIR, require_e2e
from tests.e2e.lib import VERITY_ENDS, journal_until, unit

pytestmark = pytest.mark.e2e
keys = pytest.fixture(scope="session")(key_pairs)

# systemd 257 needs libcryptsetup in the root to open any verity image
VERITY_RELEASES = {
    "bookworm": roots.RELEASES["bookworm"],
    "trixie": dataclasses.replace(roots.RELEASES["trixie"], extra_packages=("libcryptsetup12",)),
}
UNIT = "[Unit]\nDescription=verity demo\n[Service]\nType=oneshot\nExecStart=/usr/bin/psdemo say {}\n"
NAME = "vdemo_1"


def verity_cache() -> Path:
    shared = roots.cache_dir()
    return shared.with_name(shared.name + "-verity")


@pytest.fixture(scope="module", params=list(VERITY_RELEASES))
def vcontainer(request: pytest.FixtureRequest) -> Iterator[nspawn.Container]:
    require_e2e()
    release = VERITY_RELEASES[request.param]
    cache = None if release == roots.RELEASES[release.suite] else verity_cache()
    root = roots.ensure_root(release, Reporter(quiet=False), cache=cache)
    with nspawn.booted(release, root, log_dir=LOG_DIR) as c:
        # the userspace check logs its verdict at debug level only
        c.run("systemctl", "log-level", "debug", check=True)
        yield c


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, psdemo: Path,
           keys: dict[str, KeyPair]) -> Path:
    """vdemo_1.raw built with verity and signed by "good" through the real pipeline."""
    out = tmp_path_factory.mktemp("verity")
    spec = spec_from_mapping({
        "pname": "vdemo", "version": "1", "squash-compression": "gzip",
        "units": [unit("vdemo.service", UNIT.format("verity-demo-ran"))],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}],
        "verity-key": str(keys["good"].key), "verity-certificate": str(keys["good"].cert),
    }, out)
    image = build_image(spec, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [image.name, image.with_suffix(".spdx.json").name,  # and the SBOM beside them
         *(p.name for p in rules.sidecars(image).values())])
    return image


def variant(signed: Path, folder: Path, change: str) -> Path:
    """A copy of the signed set, changed as an attacker or an accident would."""
    folder.mkdir()
    for p in [signed, *rules.sidecars(signed).values()]:
        shutil.copyfile(p, folder / p.name)
    image = folder / signed.name
    paths = rules.sidecars(image)
    if change == "signature":
        sig = bytearray(paths[rules.SIGNATURE_SUFFIX].read_bytes())
        sig[-5] ^= 1
        paths[rules.SIGNATURE_SUFFIX].write_bytes(sig)
    elif change == "image":
        # a modified image with a hash tree and root hash made anew: only the signature can tell
        raw = bytearray(image.read_bytes())
        used = struct.unpack_from("<Q", raw, 40)[0]  # squashfs bytes_used: the rest is padding
        if used < len(raw):
            raw[used] ^= 1  # the file system is unchanged: it would still mount and run
        else:
            raw += bytes(verity.BLOCK_SIZE)
        image.write_bytes(raw)
        tree = verity.tree_for_image(image)
        paths[rules.VERITY_SUFFIX].write_bytes(tree.hash_tree)
        paths[rules.ROOTHASH_SUFFIX].write_text(tree.root_hash_hex + "\n")
    return image


def trust(c: nspawn.Container, cert: Path | None) -> None:
    """``cert`` as the container's only trusted verity certificate (/etc/verity.d); None: none."""
    trusted = c.root / "etc/verity.d"
    shutil.rmtree(trusted, ignore_errors=True)
    if cert is not None:
        trusted.mkdir(parents=True)
        shutil.copyfile(cert, trusted / "test.crt")


def start(c: nspawn.Container, image: Path, cert: Path | None, sidecars: bool = True) -> tuple[str, str]:
    """Attach ``image`` with its sidecars and ``cert`` trusted; start the service.
    Returns the journal of the start and the unit's exit status."""
    portables = c.root / "var/lib/portables"
    portables.mkdir(parents=True, exist_ok=True)
    if sidecars:
        for p in rules.sidecars(image).values():
            shutil.copyfile(p, portables / p.name)
    trust(c, cert)
    attach = c.attach(image, runtime=True)
    assert attach.ok, attach.output  # portabled reads the units without opening verity
    try:
        cursor = c._cursor()
        c.systemctl("start", "vdemo.service")
        journal = journal_until(c, cursor, VERITY_ENDS)
        status = c.unit_state("vdemo.service").exit_status
    finally:
        c.detach(NAME, runtime=True)
        for p in rules.sidecars(portables / image.name).values():
            p.unlink(missing_ok=True)
    return journal, status


def ran(journal: str) -> bool:
    """Whether the service's program printed its line (debug logging also echoes the command
    line, so the whole line must match)."""
    return "verity-demo-ran" in (ln.strip() for ln in journal.splitlines())


def after(journal: str, marker: str) -> list[str]:
    lines = journal.splitlines()
    at = next(i for i, ln in enumerate(lines) if marker in ln)
    return lines[at + 1:]


def test_signature_accepted_then_only_device_mapper_fails(vcontainer, signed, keys) -> None:
    journal, status = start(vcontainer, signed, keys["good"].cert)
    assert rules.USERSPACE_OK in journal, journal[-3000:]
    assert rules.USERSPACE_FAILED not in journal
    # what fails after the accepted signature is opening the device, for want of device-mapper
    rest = after(journal, rules.USERSPACE_OK)
    failures = [ln for ln in rest if "fail" in ln.lower() or "cannot" in ln.lower()]
    assert failures and rules.NO_DEVICE_MAPPER in failures[0], failures
    assert any("Failed to activate verity device" in ln and "Operation not supported" in ln
               for ln in rest), rest
    assert status == "226"  # NAMESPACE: the image could not be mounted
    assert not ran(journal)
    # our offline check agrees: the set is intact and signed by "good"
    state = check_sidecars(signed, [keys["good"].cert])
    assert state.problems == () and state.signer == "CN=good"


def test_same_image_without_sidecars_runs(vcontainer, signed) -> None:
    """The control: without verity the very same image mounts and its service runs."""
    journal, status = start(vcontainer, signed, None, sidecars=False)
    assert ran(journal) and status == "0", journal[-3000:]
    assert rules.NO_DEVICE_MAPPER not in journal


@pytest.mark.parametrize("case", ["wrong-certificate", "signature", "image"])
def test_signature_refused(vcontainer, signed, keys, tmp_path: Path, case: str) -> None:
    image = signed if case == "wrong-certificate" else variant(signed, tmp_path / "set", case)
    cert = keys["other"].cert if case == "wrong-certificate" else keys["good"].cert
    journal, status = start(vcontainer, image, cert)
    assert rules.USERSPACE_FAILED in journal, journal[-3000:]
    assert rules.USERSPACE_OK not in journal
    if case == "wrong-certificate":
        assert "signer certificate not found" in journal
    assert "worked neither via the kernel nor in userspace" in journal
    assert status == "226" and not ran(journal)
    # and our offline check refuses it too, with the signature as the reason
    state = check_sidecars(image, [cert])
    assert [p.rule for p in state.problems] == ["verity-signature"], state.problems
