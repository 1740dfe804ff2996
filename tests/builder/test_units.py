"""Unit files: parsing, portabled's naming rules, mount points and programs."""

from __future__ import annotations

import socket
from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.spec import UnitSource, spec_from_mapping
from portable_service.builder.units import (
    Unit,
    drop_in_dirs,
    exec_programs,
    load_units,
    mount_points,
    parse_unit_text,
)
from portable_service.errors import UnitError


def unit(text: str, name: str = "demo.service") -> Unit:
    return Unit(name=name, text=text, origin="test", sections=parse_unit_text(text))


def test_parse_continuations_comments_and_resets() -> None:
    u = unit("[Service]\n# c\n; c\nExecStart=/bin/a \\\n  --flag\nEnvironment=A=1\n"
             "Environment=\nEnvironment=B=2\n")
    # systemd turns the '\\' into a space and keeps the next line's indentation
    assert u.values("Service", "ExecStart") == ["/bin/a    --flag"]
    assert u.values("Service", "Environment") == ["B=2"]


@pytest.mark.parametrize(
    "name", ["demo.service", "demo-web.service", "demo.web.socket", "demo@.service", "demo.timer",
             "demo-x.path", "demo.target"]
)
def test_names_portabled_accepts(tmp_path: Path, name: str) -> None:
    s = spec_from_mapping({"pname": "demo", "version": "1",
                           "units": [{"name": name, "text": "[Unit]\n"}]}, tmp_path)
    assert [u.name for u in load_units(s)] == [name]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("demonstration.service", "does not match the image prefix"),  # plain prefix is not enough
        ("other.service", "does not match the image prefix"),
        ("demo.mount", "portabled does not attach"),
        ("demo.device", "portabled does not attach"),
        ("demo", "not a valid unit name"),
        ("de mo.service", "not a valid unit name"),
    ],
)
def test_names_portabled_refuses(tmp_path: Path, name: str, message: str) -> None:
    s = spec_from_mapping({"pname": "demo", "version": "1",
                           "units": [{"name": name, "text": "[Unit]\n"}]}, tmp_path)
    with pytest.raises(UnitError, match=message):
        load_units(s)


def test_unit_file_problems(tmp_path: Path) -> None:
    empty = tmp_path / "demo.service"
    empty.write_text("  \n")
    s = spec_from_mapping({"pname": "demo", "version": "1", "units": [str(empty)]}, tmp_path)
    with pytest.raises(UnitError, match="is empty"):
        load_units(s)
    s = spec_from_mapping({"pname": "demo", "version": "1", "units": ["missing.service"]},
                          tmp_path)
    with pytest.raises(UnitError, match="does not exist"):
        load_units(s)
    binary = tmp_path / "demo.socket"
    binary.write_bytes(b"\xff\xfe[Socket]\n")
    s = spec_from_mapping({"pname": "demo", "version": "1", "units": [str(binary)]}, tmp_path)
    with pytest.raises(UnitError, match="not UTF-8"):
        load_units(s)


def test_drop_in_folder(tmp_path: Path) -> None:
    (tmp_path / "demo.service").write_text("[Service]\nExecStart=/bin/true\n")
    d = tmp_path / "demo.service.d"
    d.mkdir()
    (d / "10-env.conf").write_text("[Service]\nEnvironment=A=1\n")
    (d / "README").write_text("not a drop-in")
    s = spec_from_mapping({"pname": "demo", "version": "1",
                           "units": ["demo.service", "demo.service.d"]}, tmp_path)
    (units,) = load_units(s)
    assert units.name == "demo.service"
    assert units.drop_ins == ("demo.service.d/10-env.conf",)
    assert units.values("Service", "Environment") == ["A=1"]
    assert units.values("Service", "ExecStart") == ["/bin/true"]


def test_duplicate_units(tmp_path: Path) -> None:
    s = spec_from_mapping({"pname": "demo", "version": "1", "units": [
        UnitSource("demo.service", text="[Unit]\n"), UnitSource("demo.service", text="[Unit]\n")
    ]}, tmp_path)
    with pytest.raises(UnitError, match="given twice"):
        load_units(s)


def test_mount_points_of_every_directive() -> None:
    u = unit(
        "[Service]\n"
        "StateDirectory=demo demo/sub\nCacheDirectory=demo\nLogsDirectory=demo\n"
        "ConfigurationDirectory=demo\nRuntimeDirectory=demo\n"
        "BindPaths=/srv/data:/data -/opt/x\nBindReadOnlyPaths=/etc/hostname:/etc/demo-host\n"
        "TemporaryFileSystem=/scratch:size=10M\nReadWritePaths=/var/spool/demo -/maybe\n"
        "WorkingDirectory=/srv/demo\nInaccessiblePaths=/proc/kcore\nBindPaths=/x/%i\n"
    )
    found = {str(m.path): m.is_file for m in mount_points(u)}
    assert found == {
        "/var/lib/demo": False, "/var/lib/demo/sub": False, "/var/cache/demo": False,
        "/var/log/demo": False, "/etc/demo": False, "/data": False,
        "/opt/x": False, "/etc/demo-host": True, "/scratch": False, "/var/spool/demo": False,
        "/srv/demo": False,
    }
    assert {str(m.path) for m in mount_points(u) if m.bind} == {
        "/data", "/opt/x", "/etc/demo-host"}


def test_a_bind_mount_point_is_of_its_sources_kind(tmp_path: Path) -> None:
    """A socket (the journal's /dev/log, bound into a chroot by haproxy's unit) or a file
    needs a file to mount on, a folder a folder; a source this machine lacks is a folder
    unless it is under /dev or named like a socket."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s"))
    (tmp_path / "d").mkdir()
    u = unit("[Service]\n"
             f"BindReadOnlyPaths={tmp_path}/s:/a {tmp_path}/d:/b /dev/nowhere-log:/c\n"
             f"BindPaths=-{tmp_path}/none:/d /run/none/app.sock:/e {tmp_path}/none:/f\n")
    assert {str(m.path): m.is_file for m in mount_points(u)} == {
        "/a": True, "/b": False, "/c": True, "/d": False, "/e": True, "/f": False}
    sock.close()


def test_exec_programs_strip_prefixes() -> None:
    u = unit("[Service]\nExecStartPre=-/usr/bin/mkdir x\nExecStart=@/usr/bin/demo demo-argv0\n"
             "ExecStartPost=+/bin/true ; /bin/false\nExecReload=kill -HUP $MAINPID\n")
    assert [p for p, _ in exec_programs(u)] == [
        "/usr/bin/demo", "/usr/bin/mkdir", "/bin/true", "/bin/false", "kill"]


def test_unit_image_path() -> None:
    assert unit("[Unit]\n").image_path == PurePosixPath("/etc/systemd/system/demo.service")
    drop = unit("[Service]\n", name="demo.service.d/a.conf")
    assert drop.unit_name == "demo.service"


def test_exec_commands_keep_arguments_and_quotes() -> None:
    from portable_service.builder.units import exec_commands

    u = unit("[Service]\nExecStart=@/usr/bin/demo demo-name --flag 'two words' ; -/bin/sh -c 'a; b'\n")
    assert [c.argv for c in exec_commands(u)] == [
        ("/usr/bin/demo", "--flag", "two words"), ("/bin/sh", "-c", "a; b")]
    assert exec_commands(u)[0].directive == "ExecStart= in demo.service"


def test_drop_in_dirs_follow_systemd() -> None:
    assert drop_in_dirs("demo.service") == ["demo.service.d"]
    assert drop_in_dirs("demo-web-api.service") == [
        "demo-web-api.service.d", "demo-web-.service.d", "demo-.service.d"]
    assert drop_in_dirs("demo@x.service") == ["demo@x.service.d", "demo@.service.d"]


def test_drop_ins_merge_in_name_order_specific_folder_wins(tmp_path: Path) -> None:
    units = [
        UnitSource("demo-web.service", text="[Service]\nExecStart=/bin/true\n"),
        UnitSource("demo-db.service", text="[Service]\nExecStart=/bin/false"),
    ]
    for folder, conf, text in [
        ("demo-web.service.d", "20-b.conf", "[Service]\nEnvironment=B=web\n"),
        ("demo-.service.d", "20-b.conf", "[Service]\nEnvironment=B=prefix\n"),
        ("demo-.service.d", "10-a.conf", "[Service]\nEnvironment=A=prefix\n"),
        ("demo-web.service.d", "30-c.conf", "[Service]\nExecStart=\nExecStart=/bin/echo c"),
    ]:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / conf).write_text(text)
    s = spec_from_mapping({"pname": "demo", "version": "1", "units": [
        *units, "demo-web.service.d", "demo-.service.d"]}, tmp_path)
    web, db = load_units(s)
    assert web.drop_ins == ("demo-.service.d/10-a.conf", "demo-web.service.d/20-b.conf",
                            "demo-web.service.d/30-c.conf")
    assert web.values("Service", "Environment") == ["A=prefix", "B=web"]
    assert web.values("Service", "ExecStart") == ["/bin/echo c"]  # the empty value resets
    assert db.drop_ins == ("demo-.service.d/10-a.conf", "demo-.service.d/20-b.conf")
    # a unit whose last line has no newline still keeps its own setting apart
    assert db.values("Service", "ExecStart") == ["/bin/false"]


def test_drop_in_for_no_unit_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "demo.service").write_text("[Service]\nExecStart=/bin/true\n")
    (tmp_path / "demo-other.service.d").mkdir()
    (tmp_path / "demo-other.service.d/a.conf").write_text("[Service]\nEnvironment=A=1\n")
    s = spec_from_mapping({"pname": "demo", "version": "1",
                           "units": ["demo.service", "demo-other.service.d"]}, tmp_path)
    with pytest.raises(UnitError, match=r"demo-other\.service\.d belongs to no unit"):
        load_units(s)
