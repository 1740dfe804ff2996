"""inspect, ls, cat, diff and size on real images, checked against the trees they were made of."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import mksquashfs, require_tool
from tests.look.imagetrees import make_tree


def _disk(root: Path) -> dict[str, os.stat_result]:
    out = {"/": root.lstat()}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out["/" + p.relative_to(root).as_posix()] = p.lstat()
    return out


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, Path]:
    require_tool("mksquashfs")
    root = make_tree(tmp_path / "tree")
    return root, mksquashfs(root, tmp_path / "demo_1.0.raw", "-comp", "gzip", "-b", "64K")


def test_inspect_json_matches_the_tree(cli, sample) -> None:
    root, img = sample
    data = json.loads(cli("inspect", "--json", str(img), check=True).stdout)
    disk = _disk(root)
    assert data["files"] == sum(stat.S_ISREG(s.st_mode) for s in disk.values())
    assert data["folders"] == sum(stat.S_ISDIR(s.st_mode) for s in disk.values())
    assert data["symlinks"] == sum(stat.S_ISLNK(s.st_mode) for s in disk.values())
    assert data["content_bytes"] == sum(s.st_size for s in disk.values() if stat.S_ISREG(s.st_mode))
    assert data["compressor"] == "gzip"
    assert data["block_size"] == 64 << 10
    assert data["file_size"] == img.stat().st_size
    assert data["format"] == "portable-service/inspect/1"
    assert data["filesystem"] == "squashfs 4.0"
    assert data["os_release"] == {"ID": "debian", "PRETTY_NAME": "Demo"}
    assert data["operating_system"] == "Demo"
    assert [u["name"] for u in data["units"]] == ["demo.service"]
    assert data["prefix"] == "demo"
    assert data["closure_roots"] is None


def test_inspect_text_and_cat(cli, sample, tmp_path) -> None:
    root, img = sample
    text = cli("inspect", str(img), check=True).stdout
    assert "Operating system:  Demo" in text
    assert "Unit files (prefix 'demo'):\n  demo.service  /etc/systemd/system/demo.service" in text
    cat = cli("inspect", "--cat", str(img), check=True).stdout
    unit = (root / "etc/systemd/system/demo.service").read_text()
    assert cat == f"# /etc/os-release\nID=debian\nPRETTY_NAME=Demo\n\n" \
                  f"# /etc/systemd/system/demo.service\n{unit}"
    other = img.with_name("other_1.0.raw")
    other.write_bytes(img.read_bytes())
    assert "none: portabled would refuse" in cli("inspect", str(other), check=True).stdout


def test_ls_and_cat_follow_the_image_not_the_host(cli, sample) -> None:
    root, img = sample
    names = cli("ls", str(img), check=True).stdout.split()
    expected = sorted((n + "/" if (root / n).is_dir() and not (root / n).is_symlink() else n)
                      for n in os.listdir(root))
    assert names == sorted(expected, key=lambda n: n.rstrip("/").encode())
    long = cli("ls", "-l", str(img), "/usr/bin", check=True).stdout
    assert any(line.startswith("-rwxr-xr-x     0     0") and line.endswith(" sleep")
               for line in long.splitlines()), long
    assert cli("cat", str(img), "/etc/systemd/system/demo.service", check=True).stdout == \
        (root / "etc/systemd/system/demo.service").read_text()
    proc = cli("cat", str(img), "/etc/nothing")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "/etc/nothing is not in the image" in proc.stderr


def test_cat_bytes_through_image_symlinks(cli, sample, tmp_path) -> None:
    root, img = sample
    links = [p for p in root.rglob("*") if p.is_symlink() and p.resolve().is_file()]
    links += [root / "usr/bin/sleep"]  # and a binary file read in full
    for link in links:
        _check_cat(img, root, link)


def _check_cat(img: Path, root: Path, link: Path) -> None:
    rel = "/" + link.relative_to(root).as_posix()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    out = subprocess.run([sys.executable, "-m", "portable_service", "cat", str(img), rel],
                         capture_output=True, check=True, env=env).stdout
    assert out == link.resolve().read_bytes()


def test_diff_reports_each_kind_of_change(cli, tmp_path) -> None:
    require_tool("mksquashfs")
    old_root = make_tree(tmp_path / "old")
    new_root = make_tree(tmp_path / "new", os_release="ID=debian\nPRETTY_NAME=Demo 2\n")
    (old_root / "etc/gone.conf").write_text("bye\n")
    (new_root / "etc/new.conf").write_text("hi\n")
    (old_root / "etc/same-size.conf").write_text("aaaa\n")
    (new_root / "etc/same-size.conf").write_text("bbbb\n")
    (new_root / "usr/bin/sleep").chmod(0o700)
    (new_root / "etc/systemd/system/demo-extra.socket").write_text("[Socket]\nListenStream=1\n")
    unit = new_root / "etc/systemd/system/demo.service"
    unit.write_text(unit.read_text() + "Environment=A=1\n")
    old = mksquashfs(old_root, tmp_path / "demo_1.0.raw", "-comp", "gzip")
    new = mksquashfs(new_root, tmp_path / "demo_2.0.raw", "-comp", "gzip")
    proc = cli("diff", "--json", str(old), str(new))
    assert proc.returncode == 1, proc.stderr  # as diff(1): the images differ
    d = json.loads(proc.stdout)
    assert d["added"] == ["/etc/new.conf", "/etc/systemd/system/demo-extra.socket"]
    assert d["removed"] == ["/etc/gone.conf"]
    changed = {c["path"]: c["change"] for c in d["changed"]}
    assert changed["/etc/same-size.conf"] == "content"
    assert changed["/usr/bin/sleep"] == "mode 0755 -> 0700"
    assert "/etc/os-release" in changed and "/etc/systemd/system/demo.service" in changed
    assert len(changed) == 4, changed
    assert d["units"] == {"added": ["demo-extra.socket"], "removed": [],
                          "changed": ["demo.service"]}
    assert d["os_release"] == {"PRETTY_NAME": {"old": "Demo", "new": "Demo 2"}}
    assert d["size"] == {"old": old.stat().st_size, "new": new.stat().st_size}
    text = cli("diff", str(old), str(new)).stdout
    assert "  ~ PRETTY_NAME: Demo -> Demo 2" in text and "  + demo-extra.socket" in text
    same = json.loads(cli("diff", "--json", str(old), str(old), check=True).stdout)
    assert same["same"] is True and same["changed"] == []


def test_size_adds_up(cli, sample) -> None:
    root, img = sample
    data = json.loads(cli("size", "--json", str(img), check=True).stdout)
    disk = _disk(root)
    files = {p: s.st_size for p, s in disk.items() if stat.S_ISREG(s.st_mode)}
    links = sum(len(os.readlink(root / p.lstrip("/"))) for p, s in disk.items()
                if stat.S_ISLNK(s.st_mode))
    assert data["total"] == sum(files.values()) + links
    biggest = max(files.items(), key=lambda kv: (kv[1], [-ord(c) for c in kv[0]]))
    assert (data["files"][0]["path"], data["files"][0]["bytes"]) == biggest
    usr = sum(n for p, n in files.items() if p.startswith("/usr/"))
    assert {"path": "/etc", "bytes": sum(n for p, n in files.items() if p.startswith("/etc/"))} \
        in data["folders"]
    assert any(f["path"] == "/usr" and f["bytes"] >= usr for f in data["folders"])
    text = cli("size", str(img), check=True).stdout
    assert "largest folders" in text and "largest files" in text and "█" in text
    assert "closure roots: not recorded" in text
