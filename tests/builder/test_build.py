"""Real builds with real mksquashfs, read back with unsquashfs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from portable_service import Spec, build
from portable_service.builder.spec import spec_from_mapping
from portable_service.errors import PortableServiceError, TreeError
from tests.conftest import require_tool, unsquashfs_cat, unsquashfs_list

SERVICE = "[Unit]\nDescription=Demo\n[Service]\nExecStart=/usr/bin/env true\nStateDirectory=demo\n"
SOCKET = "[Socket]\nListenStream=127.0.0.1:18080\n"


@pytest.fixture(autouse=True)
def _mksquashfs() -> None:
    require_tool("mksquashfs")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "demo.service").write_text(SERVICE)
    (tmp_path / "demo.socket").write_text(SOCKET)
    app = tmp_path / "app"
    (app / "bin").mkdir(parents=True)
    (app / "bin" / "run").write_text("#!/bin/sh\necho hi\n")
    (app / "bin" / "run").chmod(0o755)
    (app / "share").mkdir()
    (app / "share" / "data.txt").write_text("data\n")
    (app / "share" / "data.txt").chmod(0o600)
    (app / "bin" / "alias").symlink_to("run")
    return tmp_path


def make(project: Path, out: Path | None = None, **extra: object) -> Path:
    settings = {"pname": "demo", "version": "1.0", "units": ["demo.service", "demo.socket"],
                "squash_compression": "gzip", **extra}
    return build(output_dir=out or project / "result", base_dir=project, **settings)


def test_scaffold_units_and_os_release(project: Path) -> None:
    image = make(project, description='Demo "quoted" $x', homepage="https://example.org")
    assert image == project / "result" / "demo_1.0.raw"
    entries = unsquashfs_list(image)
    for d in ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/lib", "/var/cache",
              "/var/log", "/etc/systemd/system"):
        assert entries[d][0].startswith("d"), d
    assert entries["/"][0] == "drwxr-xr-x"
    assert entries["/tmp"][0] == "drwxrwxrwt"
    assert entries["/etc/machine-id"] == ("-rw-r--r--", "0/0", "0")
    assert entries["/etc/resolv.conf"] == ("-rw-r--r--", "0/0", "0")
    assert all(owner == "0/0" for _, owner, _ in entries.values())
    # mount point for StateDirectory=demo: a read-only image cannot grow it at start
    assert entries["/var/lib/demo"][0].startswith("d")
    # the unit as written, plus the bind to systemd's user database (closure/runtime.py)
    service = unsquashfs_cat(image, "etc/systemd/system/demo.service").decode()
    assert service.startswith(SERVICE) and service.endswith("BindReadOnlyPaths=-/run/systemd/userdb\n")
    assert unsquashfs_cat(image, "etc/systemd/system/demo.socket").decode() == SOCKET
    os_release = unsquashfs_cat(image, "etc/os-release").decode()
    host = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines()
                if "=" in line)
    assert f"ID={host['ID']}\n" in os_release
    assert f"PRETTY_NAME={host['PRETTY_NAME']}\n" in os_release  # already quoted in the host file
    assert "PORTABLE_ID=demo\n" in os_release
    assert 'PORTABLE_PRETTY_NAME="Demo \\"quoted\\" \\$x"\n' in os_release
    assert 'HOME_URL="https://example.org"\n' in os_release
    assert "IMAGE_ID=demo\nIMAGE_VERSION=1.0\nPORTABLE_PREFIXES=demo\n" in os_release


def test_os_release_overrides(project: Path) -> None:
    image = make(project, os_release={"ID": "myos", "VERSION_ID": "7", "VARIANT": "server x"})
    text = unsquashfs_cat(image, "etc/os-release").decode()
    assert text.startswith("ID=myos\nVERSION_ID=7\n")
    assert 'VARIANT="server x"\n' in text
    assert "PORTABLE_PRETTY_NAME" not in text and "HOME_URL" not in text
    assert "PRETTY_NAME" not in text  # the host's name would not describe another ID


def test_empty_os_release_id_is_refused(project: Path) -> None:
    with pytest.raises(TreeError, match="ID is empty"):
        make(project, os_release={"ID": ""})


def test_contents_symlinks_and_modes(project: Path) -> None:
    image = make(
        project,
        contents=[{"source": "app", "target": "/opt/demo"}, "/usr/bin/env"],
        symlinks=[{"object": "/usr/bin/env", "symlink": "/usr/local/bin/demo-env"},
                  {"object": "app/bin/run", "symlink": "/bin/demo"}],
    )
    entries = unsquashfs_list(image)
    assert entries["/opt/demo/bin/run"][0] == "-rwxr-xr-x"
    assert entries["/opt/demo/share/data.txt"][0] == "-rw-------"
    assert entries["/opt/demo/bin/alias"] == ("lrwxrwxrwx", "0/0", "run")
    assert entries["/usr/local/bin/demo-env"][2] == "/usr/bin/env"
    assert entries["/usr/bin/env"][0].startswith("-r")
    # the spec's symlink object lives outside the image's paths: it is shipped at its host path
    obj = str((project / "app/bin/run").resolve())
    if Path("/bin").is_symlink():  # merged /usr: the host's folder link is kept as a link
        assert entries["/bin"] == ("lrwxrwxrwx", "0/0", os.readlink("/bin"))
        assert entries["/usr/bin/demo"][2] == obj
    else:
        assert entries["/bin/demo"][2] == obj
    assert obj in entries
    assert unsquashfs_cat(image, "opt/demo/share/data.txt") == b"data\n"


def test_host_folder_links_are_kept(project: Path) -> None:
    if not Path("/lib").is_symlink():
        pytest.skip("host is not merged-/usr")  # a property of the host, not of the tool
    libc = next(Path("/lib").glob("*-linux-gnu/libc.so.6"))
    image = make(project, contents=[str(libc)])
    entries = unsquashfs_list(image)
    assert entries["/lib"][0] == "lrwxrwxrwx"
    real = "/usr" + str(libc)
    assert real in entries, sorted(entries)


def test_inline_units_and_drop_ins(project: Path) -> None:
    d = project / "demo.service.d"
    d.mkdir()
    (d / "override.conf").write_text("[Service]\nEnvironment=X=1\n")
    image = make(project, units=[{"name": "demo.service", "text": SERVICE}, "demo.service.d"])
    entries = unsquashfs_list(image)
    assert entries["/etc/systemd/system/demo.service"][0] == "-rw-r--r--"
    # portabled never reads a drop-in inside an image: it is merged into the unit file
    assert not any(p.startswith("/etc/systemd/system/demo.service.d") for p in entries)
    text = unsquashfs_cat(image, "etc/systemd/system/demo.service").decode()
    assert text.startswith(SERVICE)
    assert "\n[Service]\nEnvironment=X=1\n" in text
    assert text.index("Environment=X=1") > text.index("# demo.service.d/override.conf")


def test_byte_identical_rebuilds(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    kwargs = {"contents": [{"source": "app", "target": "/opt/demo"}]}
    first = make(project, tmp_path_factory.mktemp("a"), **kwargs).read_bytes()
    # new mtimes, a new directory order (recreate in reverse), another umask
    for p in (project / "app").rglob("*"):
        os.utime(p, (123456, 123456), follow_symlinks=False)
    data = project / "app/share/data.txt"
    content = data.read_bytes()
    data.unlink()
    (project / "app/share/zz.txt").write_text("")
    data.write_bytes(content)
    data.chmod(0o600)
    (project / "app/share/zz.txt").unlink()
    old = os.umask(0o077)
    try:
        second = make(project, tmp_path_factory.mktemp("b"), **kwargs).read_bytes()
    finally:
        os.umask(old)
    assert first == second


def test_source_date_epoch_sets_the_times(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    image = make(project)
    out = subprocess.run(["unsquashfs", "-lln", str(image)], capture_output=True, text=True,
                         check=True).stdout
    assert "2023-11-14" in out and "1970-01-01" not in out


def test_default_compression_is_xz_1m(project: Path) -> None:
    image = make(project, squash_compression="xz -Xdict-size 100%")
    out = subprocess.run(["unsquashfs", "-s", str(image)], capture_output=True, text=True,
                         check=True).stdout
    assert "Compression xz" in out
    assert "Block size 1048576" in out
    spec = Spec(pname="demo", version="2", units=())
    assert str(spec.squash_compression) == "xz -Xdict-size 100%"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"contents": ["/does/not/exist"]}, "does not exist"),
        ({"contents": [{"source": "app", "target": "/etc/os-release"}]}, "image's own"),
        ({"symlinks": [{"object": "/usr/bin/env", "symlink": "/etc/machine-id"}]}, "image's own"),
        ({"contents": [{"source": "app/bin/run", "target": "/opt/x"},
                       {"source": "app/share/data.txt", "target": "/opt/x"}]}, "claimed twice"),
        ({"symlinks": [{"object": "/nope", "symlink": "/bin/x"}]}, "does not exist"),
        ({"units": ["demo.service", "demo.service"]}, "given twice"),
        ({"squash_compression": "xz -Xdict-size 3"}, "mksquashfs failed"),
        ({"squash_compression": "lzma"}, "kernel's squashfs cannot mount lzma"),
        ({"squashfs_tools": "/nonexistent"}, "mksquashfs not found at /nonexistent"),
    ],
)
def test_errors_keep_the_old_image(project: Path, extra: dict[str, object], message: str) -> None:
    good = make(project)
    before = good.read_bytes()
    with pytest.raises(PortableServiceError, match=message):
        make(project, **extra)
    assert good.read_bytes() == before
    assert sorted(p.name for p in good.parent.iterdir()) == ["demo_1.0.raw", "demo_1.0.spdx.json"]


@pytest.mark.parametrize("writer", ["mksquashfs", "native"])
def test_lzo_images_are_written_and_verified(project: Path, writer: str) -> None:
    image = make(project, squash_compression="lzo", writer=writer)
    assert unsquashfs_cat(image, "etc/systemd/system/demo.service").decode().startswith(SERVICE)


def test_lzo_without_its_reader_is_refused_before_any_work(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = make(project)
    before = good.read_bytes()
    monkeypatch.setitem(sys.modules, "lzo", None)  # as if python-lzo were not installed
    with pytest.raises(PortableServiceError, match="pip install python-lzo"):
        make(project, squash_compression="lzo", writer="mksquashfs")
    assert good.read_bytes() == before


def test_same_content_twice_is_not_a_conflict(project: Path) -> None:
    image = make(project, contents=["/usr/bin/env", {"source": "/usr/bin/env",
                                                      "target": "/usr/bin/env"}])
    assert "/usr/bin/env" in unsquashfs_list(image)


def test_device_nodes_are_refused(project: Path) -> None:
    with pytest.raises(PortableServiceError, match="device, fifo or socket"):
        make(project, contents=[{"source": "/dev/null", "target": "/opt/null"}])
    fifo = project / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(PortableServiceError, match="device, fifo or socket"):
        make(project, contents=[{"source": "fifo", "target": "/opt/fifo"}])


def test_api_spec_object(project: Path) -> None:
    spec = spec_from_mapping({"pname": "demo", "version": "3", "units": ["demo.service"],
                              "squash-compression": "gzip"}, project)
    image = build(spec, output_dir=project / "out")
    assert image.name == "demo_3.raw" and image.stat().st_size > 0
    assert spec.to_dict()["units"] == [{"name": "demo.service",
                                        "path": str(project / "demo.service")}]


def test_spec_built_in_code_is_checked(project: Path) -> None:
    from portable_service.builder.spec import UnitSource
    from portable_service.errors import SpecError

    spec = Spec(pname="my_demo", version="1", units=(UnitSource("my_demo.service", text="[Unit]\n"),))
    with pytest.raises(SpecError, match="contains '_'"):
        build(spec, output_dir=project / "out")
    assert not (project / "out").exists()


def test_long_and_non_ascii_absolute_link_targets_survive(project: Path) -> None:
    long_target = "/opt/" + "x" * 150 + "/target"
    odd_target = "/usr/share/F\u0151tan\u00fas\u00edtv\u00e1ny.pem"
    links = project / "links"
    links.mkdir()
    (links / ("long-" + "y" * 120)).symlink_to(long_target)
    (links / "odd").symlink_to(odd_target)
    (links / "short").symlink_to("/usr/bin/env")
    # the targets are not in the image: verify would refuse the dangling links
    image = make(project, contents=[{"source": "links", "target": "/opt/links"},
                                    "/usr/bin/env"], verify=False)
    entries = unsquashfs_list(image)
    assert entries["/opt/links/long-" + "y" * 120][2] == long_target
    assert entries["/opt/links/odd"][2] == odd_target
    assert entries["/opt/links/short"][2] == "/usr/bin/env"
