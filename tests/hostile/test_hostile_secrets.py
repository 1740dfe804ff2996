"""Host secrets never enter an image by reference: symlinks, PT_INTERP, #!, all refused with
the chain that reached them; naming the file in contents is the only way in."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from portable_service import build
from portable_service.errors import ClosureError
from tests.conftest import require, require_root, require_tool, unsquashfs_list

UNIT = "[Service]\nExecStart=/usr/bin/env true\n"


def make(tmp_path: Path, unit: str = UNIT, **extra: object) -> Path:
    (tmp_path / "demo.service").write_text(unit)
    settings = {"pname": "demo", "version": "1", "units": ["demo.service"],
                "squash_compression": "gzip", **extra}
    return build(output_dir=tmp_path / "result", base_dir=tmp_path, **settings)


@pytest.fixture
def shadow() -> Path:
    path = Path("/etc/shadow")
    require(path.exists(), "this host has no /etc/shadow")
    return path


@pytest.fixture
def app() -> Iterator[Path]:
    """A content folder at a host path (units and links below /tmp are run-time paths)."""
    require_root()
    Path("/var/opt").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="ps-secrets-", dir="/var/opt"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_absolute_symlink_to_a_secret(tmp_path: Path, app: Path, shadow: Path) -> None:
    (app / "passwords").symlink_to(shadow)
    with pytest.raises(ClosureError, match=rf"/etc/shadow lies in a secret place.*{app}"):
        make(tmp_path, contents=[str(app)])
    assert not (tmp_path / "result/demo_1.raw").exists()


def test_relative_symlink_climbing_out(tmp_path: Path, app: Path, shadow: Path) -> None:
    up = "../" * len(app.parts)
    (app / "passwords").symlink_to(f"{up}etc/shadow")
    with pytest.raises(ClosureError, match="only a reference brings it in"):
        make(tmp_path, contents=[str(app)])


def test_interp_naming_a_secret(tmp_path: Path, app: Path, shadow: Path) -> None:
    require_tool("gcc")
    (tmp_path / "x.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-o", str(app / "prog"), str(tmp_path / "x.c"),
                    f"-Wl,--dynamic-linker={shadow}"], check=True, capture_output=True)
    with pytest.raises(ClosureError, match="/etc/shadow"):
        make(tmp_path, unit=f"[Service]\nExecStart={app}/prog\n", contents=[str(app)])


def test_shebang_naming_a_secret(tmp_path: Path, app: Path, shadow: Path) -> None:
    (app / "run").write_text(f"#!{shadow}\n")
    (app / "run").chmod(0o755)
    with pytest.raises(ClosureError, match="/etc/shadow"):
        make(tmp_path, unit=f"[Service]\nExecStart={app}/run\n", contents=[str(app)])


def test_unreadable_file_reached_by_reference(tmp_path: Path, app: Path) -> None:
    secret = app / "outside" / "token"
    secret.parent.mkdir()
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    (app / "link").mkdir()
    (app / "link" / "token").symlink_to(secret)
    with pytest.raises(ClosureError, match=r"not readable by everyone on the host \(mode 0600\)"):
        make(tmp_path, contents=[str(app / "link")])
    # named in contents, it goes in: the user meant to publish it
    image = make(tmp_path, contents=[str(app / "link"), str(secret)])
    assert str(secret) in unsquashfs_list(image)


def test_named_secret_is_allowed_and_folders_of_content_are_named(tmp_path: Path,
                                                                   app: Path) -> None:
    (app / "private.key").write_text("k\n")
    os.chmod(app / "private.key", 0o600)  # inside a folder the spec names: the user's own
    image = make(tmp_path, contents=[str(app)])
    assert f"{app}/private.key" in unsquashfs_list(image)
