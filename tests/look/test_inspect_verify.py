"""verify on real squashfs images: made by mksquashfs from hand-made trees, one defect each."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import require, require_tool
from tests.look.imagetrees import PROGRAM, UNIT, host_closure, image_maker


def _rm(rel: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    return change


def _write(rel: str, text: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        (root / rel).write_text(text)
    return change


def _unit_symlink(root: Path) -> None:
    (root / "usr/lib/demo").mkdir(parents=True)
    (root / "etc/systemd/system/demo.service").rename(root / "usr/lib/demo/demo.service")
    (root / "etc/systemd/system/demo.service").symlink_to("/usr/lib/demo/demo.service")


def _dangling(root: Path) -> None:
    (root / "usr/bin/demo-helper").symlink_to("/usr/libexec/demo/helper")


def _missing_library(root: Path) -> None:
    # the C library of the program the unit runs: the loader stops before main()
    for lib in root.rglob("libc.so.6"):
        if not lib.is_symlink():
            lib.unlink()


def _setuid(root: Path) -> None:
    (root / "usr/bin/sleep").chmod(0o4755)


def _world_writable(root: Path) -> None:
    (root / "etc/demo.conf").write_text("x=1\n")
    (root / "etc/demo.conf").chmod(0o666)


# (id, image name, change, extra mksquashfs args, rule, words of the message, exit code)
DEFECTS = [
    ("no-os-release", "demo_1.0.raw", _rm("etc/os-release"), (), "os-release-missing",
     "lacks os-release data", 1),
    ("empty-id", "demo_1.0.raw", _write("etc/os-release", "ID=\nPRETTY_NAME=x\n"),
     (), "os-release-id", "lacks the ID field", 1),
    ("wrong-prefix", "badprefix_1.0.raw", None, (), "no-matching-units",
     "Couldn't find any matching unit files", 1),
    ("portable-prefixes", "demo_1.0.raw",
     _write("etc/os-release", "ID=debian\nPORTABLE_PREFIXES=other\n"), (), "portable-prefixes",
     "does not allow the prefix 'demo'", 1),
    ("unit-symlink", "demo_1.0.raw", _unit_symlink, (), "unit-symlink",
     "resolves against the host", 1),
    ("empty-unit", "demo_1.0.raw", _write("etc/systemd/system/demo.service", ""), (),
     "unit-empty", "empty", 1),
    ("no-dev", "demo_1.0.raw", _rm("dev"), (), "mount-point", "226/NAMESPACE", 1),
    ("no-machine-id", "demo_1.0.raw", _rm("etc/machine-id"), (), "mount-point",
     "/etc/machine-id is missing", 1),
    ("no-state-dir", "demo_1.0.raw", _rm("var/lib/demo"), (), "unit-mount-point",
     "StateDirectory=demo in demo.service needs /var/lib/demo", 1),
    ("missing-program", "demo_1.0.raw",
     _write("etc/systemd/system/demo.service", UNIT.replace("/usr/bin/sleep", "/usr/bin/nope")),
     (), "exec-missing", "runs /usr/bin/nope, which is not in the image", 1),
    ("program-not-executable", "demo_1.0.raw", lambda r: (r / "usr/bin/sleep").chmod(0o644), (),
     "exec-not-executable", "not executable", 1),
    ("missing-library", "demo_1.0.raw", _missing_library, (), "elf-library",
     "needs libc.so.6", 1),
    ("missing-loader", "demo_1.0.raw",
     lambda r: [p.unlink() for p in r.rglob("ld-linux*") if not p.is_symlink()], (),
     "elf-interpreter", "ELF loader", 1),
    ("dangling-link", "demo_1.0.raw", _dangling, (), "dangling-symlink",
     "-> /usr/libexec/demo/helper dangles", 1),
    ("root-0700", "demo_1.0.raw", None, ("-root-mode", "0700"), "root-mode", "200/CHDIR", 1),
    ("not-raw", "demo_1.0.img", None, (), "image-name", "ends in .raw", 1),
    # warnings only: the image still works, exit 0
    ("setuid", "demo_1.0.raw", _setuid, (), "setuid", "setuid file", 0),
    ("world-writable", "demo_1.0.raw", _world_writable, (), "world-writable",
     "world-writable file", 0),
]


@pytest.fixture
def image(tmp_path: Path) -> Callable[..., Path]:
    return image_maker(tmp_path)


def test_a_working_image_is_clean(image, cli) -> None:
    img = image()
    proc = cli("verify", str(img))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert "0 error(s), 0 warning(s)" in proc.stderr


@pytest.mark.parametrize(("name", "change", "extra", "rule", "words", "code"),
                         [d[1:] for d in DEFECTS], ids=[d[0] for d in DEFECTS])
def test_each_defect_is_reported(image, cli, name, change, extra, rule, words, code) -> None:
    img = image(name, change, *extra)
    proc = cli("verify", str(img))
    assert "Traceback" not in proc.stderr
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert words in proc.stdout, proc.stdout
    # one line per problem, each with its path and a fix
    lines = proc.stdout.splitlines()
    assert lines and all("; fix: " in line for line in lines)
    assert all(line.startswith(("error: ", "warning: ")) for line in lines)
    data = json.loads(cli("verify", "--json=short", str(img)).stdout)
    assert rule in {p["rule"] for p in data["problems"]}
    assert data["ok"] is (code == 0)
    # the defect is the only error: the rules do not cascade into noise
    assert data["errors"] == (1 if code else 0) or rule in ("elf-library", "elf-interpreter"), \
        proc.stdout


def test_missing_library_of_an_unused_program_is_a_warning(image, cli) -> None:
    base = {os.path.basename(p) for p in host_closure(PROGRAM)}
    other = next((p for p in ("/usr/bin/ls", "/usr/bin/gzip", "/usr/bin/tar", "/usr/bin/find")
                  if os.path.exists(p) and {os.path.basename(x) for x in host_closure(p)} - base),
                 None)
    require(other is not None, "no host program needs a library that sleep does not")
    assert other is not None
    missing = {os.path.basename(x) for x in host_closure(other)} - base

    def change(root: Path) -> None:
        dest = root / "usr/bin/other"
        dest.write_bytes(Path(other).read_bytes())
        dest.chmod(0o755)

    proc = cli("verify", str(image("demo_1.0.raw", change)))
    assert proc.returncode == 0, proc.stdout
    assert any(f"warning: /usr/bin/other: needs {lib}," in proc.stdout for lib in missing)
    assert "no unit runs it directly" in proc.stdout


def test_links_into_runtime_folders_are_not_dangling(image, cli) -> None:
    def change(root: Path) -> None:
        (root / "etc/mtab").symlink_to("../proc/self/mounts")
        (root / "var/run").symlink_to("/run")
        (root / "etc/demo.sock").symlink_to("/run/demo/demo.sock")

    proc = cli("verify", str(image("demo_1.0.raw", change)))
    assert proc.returncode == 0, proc.stdout


def test_script_with_missing_interpreter(image, cli) -> None:
    def change(root: Path) -> None:
        script = root / "usr/bin/demo-start"
        script.write_text("#!/usr/bin/python3\nprint('hi')\n")
        script.chmod(0o755)
        (root / "etc/systemd/system/demo.service").write_text(
            UNIT.replace("/usr/bin/sleep infinity", "/usr/bin/demo-start"))

    proc = cli("verify", str(image("demo_1.0.raw", change)))
    assert proc.returncode == 1
    assert "starts with #!/usr/bin/python3, which is not in the image" in proc.stdout


@pytest.mark.parametrize("kind", ["text", "truncated", "random", "empty", "folder", "absent",
                                  "ext4", "gpt"])
def test_non_images_exit_2_with_one_line(image, cli, tmp_path, kind) -> None:
    path = tmp_path / f"bad_{kind}.raw"
    if kind == "text":
        path.write_text("[Service]\nExecStart=/bin/true\n" * 20)
    elif kind == "truncated":
        data = image().read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(os.urandom(64 << 10))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "ext4":
        subprocess.run([require_tool("mkfs.ext4"), "-q", "-F", str(path), "4M"], check=True,
                       capture_output=True)
    elif kind == "gpt":
        # a disk image's protective MBR and GPT header signature (no partitioning tool here)
        data = bytearray(1 << 20)
        data[510:512] = b"\x55\xaa"
        data[512:520] = b"EFI PART"
        path.write_bytes(bytes(data))
    for verb in ("verify", "inspect", "size", "ls"):
        proc = cli(verb, str(path))
        assert proc.returncode == 2, (verb, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("portable-service: error: "), lines
        assert str(path) in lines[0]
        if kind == "ext4":
            assert "is an ext2/3/4 image; this tool reads bare squashfs images only" in lines[0]
        if kind == "gpt":
            assert "is a GPT disk image (a Discoverable Disk Image" in lines[0]
