"""publish: the download folder systemd-sysupdate reads (sysupdate itself reads it in
tests/e2e/test_fleet.py); here its manifest is checked by sha256sum, its signature by gpg."""

from __future__ import annotations

import hashlib
import subprocess
import threading
from pathlib import Path

import pytest

from portable_service.deploy.publish import PublishError, Signer, publish
from portable_service.rules import sysupdate
from tests.conftest import gpg_key_home, require_tool


def image(folder: Path, name: str, data: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data if data is not None else name.encode() * 1000)
    return path


def manifest(folder: Path) -> dict[str, str]:
    return sysupdate.parse_manifest((folder / "SHA256SUMS").read_text())


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_publish_writes_a_complete_sorted_manifest(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "www"
    imgs = [image(src, "demo_1.0.raw"), image(src, "demo_2.0.raw"), image(src, "other_7.raw")]
    image(src, "demo_2.0.verity")
    image(src, "demo_2.0.roothash", b"ab" * 32)
    result = publish(imgs, out)
    assert listing(out) == ["SHA256SUMS", "demo_1.0.raw", "demo_2.0.raw", "demo_2.0.roothash",
                            "demo_2.0.verity", "other_7.raw"]
    entries = manifest(out)
    assert sorted(entries) == [n for n in listing(out) if n != "SHA256SUMS"]
    assert list(entries) == sorted(entries, key=str.encode), "not sorted"
    for name, digest in entries.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    proc = subprocess.run([require_tool("sha256sum"), "-c", "--strict", "SHA256SUMS"], cwd=out,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result.added == ("demo_1.0.raw", "demo_2.0.raw", "demo_2.0.verity",
                            "demo_2.0.roothash", "other_7.raw")
    assert not [p for p in out.iterdir() if p.name.startswith(".#")]


def test_publishing_again_changes_nothing(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "www"
    img = image(src, "demo_1.0.raw")
    publish([img], out)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    result = publish([img], out)
    assert result.added == () and result.unchanged == ("demo_1.0.raw",)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_a_different_image_under_a_published_version_is_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "www"
    publish([image(src, "demo_1.0.raw")], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = image(tmp_path / "rebuilt", "demo_1.0.raw", b"changed")
    with pytest.raises(PublishError, match="published already with other contents"):
        publish([other, image(src, "demo_2.0.raw")], out)
    # nothing of the refused run is left: not even demo_2.0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("name,says", [
    ("demo_1.0~rc1.raw", "'~'"), ("demo.raw", "no '_'"), ("demo_1.0.img", "is not named"),
    ("demo_1.0.raw.raw", "'.raw'"),
])
def test_names_sysupdate_cannot_match_are_refused(tmp_path: Path, name: str, says: str) -> None:
    with pytest.raises(PublishError, match=says):
        publish([image(tmp_path / "in", name)], tmp_path / "www")
    assert not (tmp_path / "www").exists()


def test_keep_prunes_the_oldest_by_systemd_order(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "www"
    # 1.10 is newer than 1.9 for systemd (not for a plain string sort)
    publish([image(src, "demo_1.9.raw"), image(src, "demo_1.10.raw"), image(src, "x_1.raw")],
            out)
    image(src, "demo_1.11.verity")
    result = publish([image(src, "demo_1.11.raw")], out, keep=2)
    assert result.pruned == ("demo_1.9.raw",)
    assert listing(out) == ["SHA256SUMS", "demo_1.10.raw", "demo_1.11.raw", "demo_1.11.verity",
                            "x_1.raw"]  # another pname is not pruned
    assert sorted(manifest(out)) == listing(out)[1:]


def test_keep_refuses_to_publish_what_it_would_prune(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "www"
    publish([image(src, "demo_2.raw"), image(src, "demo_3.raw")], out)
    with pytest.raises(PublishError, match="would remove it at once"):
        publish([image(src, "demo_1.raw")], out, keep=2)
    assert listing(out) == ["SHA256SUMS", "demo_2.raw", "demo_3.raw"]


def test_versions_that_rank_equal_are_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "www"
    publish([image(src, "demo_1.0.raw")], out)
    with pytest.raises(PublishError, match="ranks equal"):
        publish([image(src, "demo_1.00.raw")], out)


def test_a_reader_never_sees_a_manifest_naming_a_missing_file(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "www"
    publish([image(src, "demo_0.raw")], out)
    stop = threading.Event()
    seen: list[str] = []

    def read() -> None:
        # a file missing while the manifest naming it is still the current one (a reader
        # holding an older manifest may find a pruned file gone: sysupdate then fails that
        # run and takes the new manifest the next time)
        while not stop.is_set():
            text = (out / "SHA256SUMS").read_text()
            missing = [n for n in sysupdate.parse_manifest(text) if not (out / n).is_file()]
            if missing and (out / "SHA256SUMS").read_text() == text:
                seen.extend(missing)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for v in range(1, 30):
            publish([image(src, f"demo_{v}.raw", bytes(200_000))], out, keep=2)
    finally:
        stop.set()
        reader.join()
    assert seen == []
    assert sorted(manifest(out)) == ["demo_28.raw", "demo_29.raw"]


def test_a_missing_file_is_dropped_from_the_manifest(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "www"
    publish([image(src, "demo_1.raw"), image(src, "demo_2.raw")], out)
    (out / "demo_1.raw").unlink()
    publish([image(src, "demo_3.raw")], out)
    assert sorted(manifest(out)) == ["demo_2.raw", "demo_3.raw"]


def test_a_broken_manifest_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "www"
    out.mkdir()
    (out / "SHA256SUMS").write_text("not a manifest\n")
    with pytest.raises(PublishError, match="not a manifest systemd-sysupdate reads"):
        publish([image(tmp_path / "in", "demo_1.raw")], out)
    assert (out / "SHA256SUMS").read_text() == "not a manifest\n"


@pytest.fixture(scope="module")
def gpg_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gpg_key_home(tmp_path_factory.mktemp("gnupg"), "publisher <pub@example.org>")


def gpg_verify(home: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    """As systemd-pull checks it: a keyring of exported keys, no default keyring, batch."""
    ring = folder.parent / "ring.gpg"
    ring.write_bytes(subprocess.run(["gpg", "--homedir", str(home), "--export"], check=True,
                                    capture_output=True).stdout)
    empty = folder.parent / "verify-home"
    empty.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run(["gpg", "--no-options", "--no-default-keyring", "--batch",
                           "--trust-model=always", f"--homedir={empty}", f"--keyring={ring}",
                           "--verify", str(folder / "SHA256SUMS.gpg"), "-"],
                          input=(folder / "SHA256SUMS").read_text(), capture_output=True,
                          text=True, check=False)


def test_signed_manifest_verifies_and_a_changed_one_does_not(tmp_path: Path,
                                                             gpg_home: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "www"
    signer = Signer("pub@example.org", gpg_home)
    result = publish([image(src, "demo_1.raw")], out, signer=signer)
    assert result.signed
    ok = gpg_verify(gpg_home, out)
    assert ok.returncode == 0, ok.stderr
    publish([image(src, "demo_2.raw")], out, signer=signer)  # re-signed with the manifest
    assert gpg_verify(gpg_home, out).returncode == 0
    with open(out / "SHA256SUMS", "a") as f:
        f.write("0" * 64 + "  demo_3.raw\n")
    bad = gpg_verify(gpg_home, out)
    assert bad.returncode != 0 and "BAD signature" in bad.stderr


def test_unsigned_publish_into_a_signed_folder_is_refused(tmp_path: Path, gpg_home: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "www"
    publish([image(src, "demo_1.raw")], out, signer=Signer("pub@example.org", gpg_home))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(PublishError, match="is signed"):
        publish([image(src, "demo_2.raw")], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_unknown_key_is_refused_before_anything_is_written(tmp_path: Path,
                                                              gpg_home: Path) -> None:
    with pytest.raises(PublishError, match="no secret key"):
        publish([image(tmp_path / "in", "demo_1.raw")], tmp_path / "www",
                signer=Signer("nobody@example.org", gpg_home))
    assert not (tmp_path / "www").exists()


def test_cli_publish_prints_what_it_did_and_errors_in_one_line(cli, tmp_path: Path) -> None:
    img = image(tmp_path / "in", "demo_1.0.raw")
    proc = cli("publish", str(img), "--to", str(tmp_path / "www"), "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["added demo_1.0.raw",
                                        "SHA256SUMS: 1 files (demo_1.0)", str(tmp_path / "www")]
    bad = image(tmp_path / "in", "demo_1~rc.raw")
    proc = cli("publish", str(bad), "--to", str(tmp_path / "www"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "cannot be published" in proc.stderr
