"""What a build must not let into an image: set-id bits of other owners, units that skip the
unit checks; and what it must not refuse: a program named by another spelling."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from portable_service import build
from portable_service.errors import TreeError
from tests.conftest import require, require_root, unsquashfs_list

UNIT = "[Service]\nExecStart=/usr/bin/env true\n"


def make(tmp_path: Path, **extra: object) -> Path:
    (tmp_path / "demo.service").write_text(UNIT)
    settings = {"pname": "demo", "version": "1", "units": ["demo.service"],
                "squash_compression": "gzip", **extra}
    return build(output_dir=tmp_path / "result", base_dir=tmp_path, **settings)


def test_setid_bits_of_other_owners_are_dropped(tmp_path: Path) -> None:
    require_root()
    app = tmp_path / "app"
    app.mkdir()
    for name, uid, gid in (("user-suid", 65534, 0), ("user-sgid", 0, 65534), ("root-suid", 0, 0)):
        f = app / name
        f.write_text("#!/bin/sh\n")
        os.chown(f, uid, gid)
        f.chmod(0o755 | stat.S_ISUID | stat.S_ISGID)
    entries = unsquashfs_list(make(tmp_path, contents=[{"source": "app", "target": "/opt/app"}]))
    assert entries["/opt/app/user-suid"][0] == "-rwxr-sr-x"  # setuid of uid 65534 dropped
    assert entries["/opt/app/user-sgid"][0] == "-rwsr-xr-x"  # setgid of gid 65534 dropped
    assert entries["/opt/app/root-suid"][0] == "-rwsr-sr-x"  # root's own: kept (verify warns)


@pytest.mark.parametrize("target", ["/etc/systemd/system/demo-extra.service",
                                    "/usr/lib/systemd/system/demo.socket"])
def test_units_enter_only_through_units(tmp_path: Path, target: str) -> None:
    (tmp_path / "sneaky.service").write_text("[Service]\nExecStart=/usr/bin/env false\n")
    with pytest.raises(TreeError, match="portabled would attach it unchecked"):
        make(tmp_path, contents=[{"source": "sneaky.service", "target": target}])
    assert not (tmp_path / "result" / "demo_1.raw").exists()


def test_a_folder_of_units_is_refused_too(tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    (units / "demo-web.service").write_text(UNIT)
    (units / "other.service").write_text(UNIT)  # no prefix match: portabled ignores it
    with pytest.raises(TreeError, match=r"demo-web\.service"):
        make(tmp_path, contents=[{"source": "units", "target": "/usr/lib/systemd/system"}])


def test_program_by_another_spelling_is_found(tmp_path: Path) -> None:
    require(Path("/bin").is_symlink(), "the host has no merged /usr (/bin -> usr/bin)")
    (tmp_path / "demo.service").write_text("[Service]\nExecStart=/bin/true\n")
    settings = {"pname": "demo", "version": "1", "units": ["demo.service"],
                "squash_compression": "gzip", "contents": ["/usr/bin/true"]}
    image = build(output_dir=tmp_path / "result", base_dir=tmp_path, **settings)
    entries = unsquashfs_list(image)
    assert entries["/bin"][0].startswith("l")
    assert "/usr/bin/true" in entries


@pytest.mark.parametrize("writer", ["mksquashfs", "native"])
def test_a_file_deleted_during_the_build_fails_it(tmp_path: Path, writer: str) -> None:
    from portable_service.builder.atomic import write_atomically
    from portable_service.builder.pipeline import plan
    from portable_service.builder.spec import spec_from_mapping
    from portable_service.errors import PortableServiceError
    from portable_service.progress import QUIET

    (tmp_path / "app").mkdir()
    (tmp_path / "app/a").write_text("a")
    (tmp_path / "app/gone").write_text("b")
    (tmp_path / "demo.service").write_text(UNIT)
    spec = spec_from_mapping({"pname": "demo", "version": "1", "units": ["demo.service"],
                              "writer": writer, "squash-compression": "gzip",
                              "contents": [{"source": "app", "target": "/opt/app"}]}, tmp_path)
    p = plan(spec)
    (tmp_path / "app/gone").unlink()  # after the layout, before the writer reads it
    out = tmp_path / "demo_1.raw"
    with pytest.raises(PortableServiceError, match=r"cannot read .*app/gone"):
        write_atomically(out, lambda tmp: p.writer.write(p.tree, tmp, p.options, QUIET))
    assert not out.exists()
    assert list(tmp_path.glob(".demo_1.raw.*")) == []


def test_files_of_a_package_user_stay_readable(tmp_path: Path) -> None:
    """/etc/redis is 2770 redis:redis on a host: as root:root in the image, the service's user
    must still read it."""
    require_root()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "server.conf").write_text("port 1\n")
    os.chown(conf / "server.conf", 65534, 65534)
    (conf / "server.conf").chmod(0o640)
    (conf / "group-only").write_text("x\n")
    os.chown(conf / "group-only", 0, 65534)
    (conf / "group-only").chmod(0o640)
    (conf / "root-only").write_text("x\n")
    (conf / "root-only").chmod(0o600)
    os.chown(conf, 65534, 65534)
    conf.chmod(0o2770)
    entries = unsquashfs_list(make(tmp_path, contents=[{"source": "conf", "target": "/etc/srv"}]))
    assert entries["/etc/srv"][0] == "drwxrwxr-x"  # setgid of gid 65534 dropped, r-x for all
    assert entries["/etc/srv/server.conf"][0] == "-rw-r--r--"
    assert entries["/etc/srv/group-only"][0] == "-rw-r--r--"
    assert entries["/etc/srv/root-only"][0] == "-rw-------"  # root's own: as it was
