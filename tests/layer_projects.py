"""Spec folders for layered-service tests: a runtime base and app extensions of it.

The runtime is the host's dash (with libc); an app is a dash script in /opt/PNAME, so its
extension needs nothing of the host but the script.
"""

from __future__ import annotations

from pathlib import Path


def write_runtime(root: Path, version: str = "1", extra: str = "",
                  contents: str = '"/usr/bin/dash"') -> Path:
    folder = root / "runtime"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "portable.toml").write_text(
        f'pname = "runtime"\nversion = "{version}"\nwriter = "native"\n'
        'squash-compression = "gzip"\n'
        'units = [{ name = "runtime-info.service", text = "[Service]\\nType=oneshot\\n'
        'ExecStart=/usr/bin/dash -c true\\n" }]\n'
        f'contents = [{contents}]\n{extra}')
    return folder


def write_app(root: Path, pname: str = "app", version: str = "2",
              base: str = "../runtime", unit_extra: str = "", extra: str = "",
              script: str = "echo hello", contents: str = "") -> Path:
    folder = root / f"{pname}-{version}"
    (folder / "src").mkdir(parents=True, exist_ok=True)
    run = folder / "src" / "run"
    run.write_text(f"#!/usr/bin/dash\n{script}\n")
    run.chmod(0o755)
    (folder / "portable.toml").write_text(
        f'pname = "{pname}"\nversion = "{version}"\nbase = "{base}"\nwriter = "native"\n'
        'squash-compression = "gzip"\n'
        f'units = [{{ name = "{pname}.service", text = "[Service]\\n'
        f'ExecStart=/opt/{pname}/run\\n{unit_extra}" }}]\n'
        f'contents = [{contents}{{ source = "src", target = "/opt/{pname}" }}]\n{extra}')
    return folder
