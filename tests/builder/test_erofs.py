"""writer = "erofs": mkfs.erofs behind the Writer interface, mounted by the kernel."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from portable_service import build
from portable_service.builder.writers.erofs import ErofsWriter, parse_erofs_compression
from portable_service.disk import ddi
from portable_service.errors import SpecError
from tests.conftest import require_root, require_tool, unsquashfs_cat, unsquashfs_list

SERVICE = "[Service]\nExecStart=/usr/bin/env true\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    require_tool("mkfs.erofs")
    (tmp_path / "demo.service").write_text(SERVICE)
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret.txt").write_text("only root\n")
    (data / "secret.txt").chmod(0o600)
    (data / "run").write_text("#!/bin/sh\n")
    (data / "run").chmod(0o755)
    (data / "link").symlink_to("run")
    (data / "sub").mkdir()
    (data / "sub").chmod(0o700)
    (data / "sub" / "big.bin").write_bytes(bytes(range(256)) * 4096)
    return tmp_path


def make(project: Path, out: str, **extra: object) -> Path:
    settings: dict[str, object] = {
        "pname": "demo", "version": "1.0", "units": ["demo.service"], "writer": "erofs",
        "contents": [{"source": "data", "target": "/srv/data"}], **extra}
    return build(output_dir=project / out, base_dir=project, **settings)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(image to mount, mount point); the kernel's erofs mounts it read-only from a loop."""
    require_root()
    point = tmp_path / "mnt"
    point.mkdir()
    image = tmp_path / "to-mount.raw"
    yield image, point
    subprocess.run(["umount", str(point)], check=False, capture_output=True)


def test_an_erofs_image_the_kernel_mounts_holds_what_squashfs_holds(project: Path, mounted) -> None:
    """Same spec, two writers: same paths, modes, owners, link targets and bytes."""
    require_tool("mksquashfs")
    image = make(project, "erofs")
    assert ddi.filesystem_kind(image.read_bytes()[:2048]) == "erofs"
    squash = make(project, "squashfs", writer="mksquashfs", squash_compression="gzip")
    expected = unsquashfs_list(squash)
    target, point = mounted
    os.link(image, target)
    subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", str(target), str(point)],
                   check=True, capture_output=True)
    seen = {}
    for folder, dirs, files in os.walk(point):
        for name in ["", *dirs, *files]:
            path = Path(folder, name) if name else Path(folder)
            st = os.lstat(path)
            rel = "/" + str(path.relative_to(point)) if path != point else "/"
            rel = rel.replace("/.", "/") if rel == "/." else rel
            assert (st.st_uid, st.st_gid) == (0, 0), rel
            assert st.st_mtime == 0, rel  # SOURCE_DATE_EPOCH unset: 0, as for squashfs
            if stat.S_ISLNK(st.st_mode):
                seen[rel] = (stat.filemode(st.st_mode), os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                seen[rel] = (stat.filemode(st.st_mode), str(st.st_size))
                if st.st_size < 2 << 20:
                    assert path.read_bytes() == unsquashfs_cat(squash, rel), rel
            else:
                seen[rel] = (stat.filemode(st.st_mode), "")
    want = {p: (mode, "" if mode.startswith("d") else target_or_size)
            for p, (mode, _owner, target_or_size) in expected.items()}
    assert seen == want
    assert seen["/srv/data/secret.txt"][0] == "-rw-------"
    assert seen["/srv/data/sub"][0] == "drwx------"
    assert seen["/srv/data/link"] == ("lrwxrwxrwx", "run")


def test_rebuilds_are_byte_identical_and_the_time_is_source_date_epoch(project: Path,
                                                                       monkeypatch) -> None:
    one = make(project, "one")
    two = make(project, "two")
    assert one.read_bytes() == two.read_bytes()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    three = make(project, "three")
    assert three.read_bytes() != one.read_bytes()
    build_time = int.from_bytes(three.read_bytes()[1024 + 24:1024 + 32], "little")
    assert build_time == 1700000000


def test_the_default_compression_maps_to_what_mkfs_erofs_offers(project: Path) -> None:
    writer = ErofsWriter.find()
    image = make(project, "default")  # squash-compression left at "xz -Xdict-size 100%"
    expected = "lzma" if "lzma" in writer.compressors else "lz4hc"
    from portable_service.builder.writers.options import Compression, PackOptions

    options = PackOptions(Compression("xz", ("-Xdict-size", "100%")), 1 << 20, 0)
    assert writer.compression(options).name == expected
    stored = make(project, "stored", squash_compression="none")
    assert image.stat().st_size < stored.stat().st_size * 0.8


def test_compressors_it_cannot_use_are_refused_in_one_line(project: Path, cli) -> None:
    writer = ErofsWriter.find()
    missing = next(n for n in ("zstd", "deflate", "lzma") if n not in writer.compressors) \
        if not {"zstd", "deflate", "lzma"} <= set(writer.compressors) else None
    old = make(project, "out", squash_compression="lz4")
    before = old.read_bytes()
    if missing is not None:
        squash_name = {"zstd": "zstd", "deflate": "gzip", "lzma": "xz -Xdict-size 50%"}[missing]
        proc = cli("build", "-o", "out", "--pname", "demo", "--version", "1.0", "--unit",
                   "demo.service", "--content", "data=/srv/data", "--writer", "erofs",
                   "--squash-compression", squash_name, cwd=project)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "this mkfs.erofs offers only" in lines[0], lines
        assert old.read_bytes() == before  # the previous image is untouched
    with pytest.raises(SpecError, match="'lzo' has no erofs equivalent"):
        parse_erofs_compression("lzo")
    with pytest.raises(SpecError, match="-Xbcj"):
        parse_erofs_compression("xz -Xbcj x86")
    assert parse_erofs_compression("lz4hc -Xcompression-level 9").args() == ["-zlz4hc,9"]
    assert parse_erofs_compression("none").args() == []


def test_look_verbs_name_erofs_and_read_it(project: Path, cli) -> None:
    image = make(project, "out", format="ddi")
    inspect = cli("inspect", str(image))
    assert inspect.returncode == 0, inspect.stderr
    assert "erofs (read by unpacking with fsck.erofs)" in inspect.stdout
    listing = cli("ls", str(image), "/srv/data")
    assert listing.stdout.split() == ["link", "run", "secret.txt", "sub/"], listing.stdout
    # without erofs-utils: one line saying what is missing, no traceback
    bare = make(project, "bare")
    env = {"PATH": "/nonexistent"}
    proc = cli("inspect", str(bare), env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "erofs is not readable by portable-service without fsck.erofs" \
        in lines[0] and "apt-get install erofs-utils" in lines[0], lines
