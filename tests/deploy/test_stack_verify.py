"""verify of hand-made extensions: what systemd never overlays, and two layers that disagree."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require_tool
from tests.layer_projects import write_runtime

RELEASE = "ID=debian\nVERSION_ID=12\nSYSEXT_SCOPE=portable\nPORTABLE_PREFIXES={prefix}\n"


def make_extension(tmp_path: Path, name: str, prefix: str, files: dict[str, str]) -> Path:
    """An extension image packed by mksquashfs from a folder (not by our builder)."""
    mksquashfs = require_tool("mksquashfs")
    root = tmp_path / f"tree-{name}"
    files = {f"usr/lib/extension-release.d/extension-release.{name}":
             RELEASE.format(prefix=prefix),
             f"usr/lib/systemd/system/{prefix}.service":
             "[Service]\nExecStart=/usr/bin/dash -c true\n", **files}
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    out = tmp_path / "out" / f"{name}.raw"
    subprocess.run([mksquashfs, str(root), str(out), "-noappend", "-quiet", "-all-root",
                    "-comp", "gzip"], check=True, capture_output=True)
    return out


def test_outside_overlay_and_conflicts_are_warnings(cli, tmp_path: Path) -> None:
    write_runtime(tmp_path)
    built = cli("build", "-q", str(tmp_path / "runtime"), "-o", str(tmp_path / "out"))
    assert built.returncode == 0, built.stderr
    ext_a = make_extension(tmp_path, "app_1", "app", {"etc/app.conf": "x=1\n",
                                                      "opt/shared/data": "a\n"})
    make_extension(tmp_path, "tools_1", "tools", {"opt/shared/data": "b\n"})
    alone = cli("verify", str(ext_a), "--base", str(tmp_path / "out" / "runtime_1.raw"))
    assert alone.returncode == 0, alone.stdout  # warnings only
    assert "warning: /etc/app.conf: outside /usr and /opt" in alone.stdout
    d = tmp_path / "out" / "d.toml"
    d.write_text('base = "runtime_1.raw"\nextensions = ["app_1.raw", "tools_1.raw"]\n')
    stack = cli("verify", str(d))
    assert stack.returncode == 0, stack.stdout
    assert ("warning: /opt/shared/data: both app_1.raw and tools_1.raw ship it, differently"
            in stack.stdout)
    # the same file in both: no warning
    make_extension(tmp_path, "tools_1", "tools", {"opt/shared/data": "a\n"})
    assert "extension-conflict" not in cli("verify", str(d), "--json=short").stdout
