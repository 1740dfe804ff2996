"""Helpers for the closure tests: compile small ELF files, resolve or build a spec, unpack images."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from portable_service import build
from portable_service.builder.closure import Closure
from portable_service.builder.closure.elf import elf_kind
from portable_service.builder.closure.walk import resolve
from portable_service.builder.spec import Spec, spec_from_mapping
from portable_service.builder.units import load_units
from tests.conftest import require_root, require_tool

LOADER = "/lib64/ld-linux-x86-64.so.2"
# run-time needs no ELF header names (closure/runtime.py: the NSS module for dynamic users,
# C.UTF-8, python's standard library): left out where a test compares a closure with ldd
NO_RUNTIME_NEEDS = ["*/libnss_systemd.so.2", "/usr/lib/locale/*", "/usr/lib/python3.*"]


def cc(out: Path, source: str, *flags: str) -> Path:
    """Compile C ``source`` into ``out`` with gcc (flags such as -shared, -L, -l, -Wl,...)."""
    gcc = require_tool("gcc")
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.parent / f".{out.name}.c"
    src.write_text(source)
    pic = ["-fPIC"] if "-shared" in flags else []
    subprocess.run([gcc, "-o", str(out), str(src), *pic, *flags], check=True, capture_output=True)
    src.unlink()
    return out


def script(path: Path, text: str, mode: int = 0o755) -> Path:
    """A script file (executable by default) with its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def unit(exec_start: str, name: str = "t.service", extra: str = "") -> dict[str, str]:
    return {"name": name, "text": f"[Service]\nExecStart={exec_start}\n{extra}"}


def make_spec(base: Path, **settings: Any) -> Spec:
    data: dict[str, Any] = {"pname": "t", "version": "1", "units": [unit("/usr/bin/true")]}
    data.update(settings)
    return spec_from_mapping(data, base)


def closure_of(base: Path, **settings: Any) -> Closure:
    spec = make_spec(base, **settings)
    return resolve(spec, load_units(spec))


def paths(closure: Closure) -> set[str]:
    return {str(p) for p in closure.nodes}


def build_and_unpack(base: Path, output_dir: Path | None = None, root: Path | None = None,
                     **settings: Any) -> tuple[Path, Path]:
    """Build with the real mksquashfs, unpack with unsquashfs -d; (image, root folder)."""
    require_tool("mksquashfs")
    unsquashfs = require_tool("unsquashfs")
    data: dict[str, Any] = {"pname": "t", "version": "1", "units": [unit("/usr/bin/true")],
                            "squash_compression": "gzip"}
    data.update(settings)
    image = build(output_dir=output_dir or base / "result", base_dir=base, **data)
    root = root or base / "root"
    subprocess.run([unsquashfs, "-q", "-n", "-d", str(root), str(image)], check=True,
                   capture_output=True)
    return image, root


def image_files(root: Path) -> set[str]:
    """Regular files and symlinks of an unpacked image, as absolute image paths."""
    out = set()
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            out.add("/" + os.path.relpath(os.path.join(folder, name), root))
    return out


def elf_files(root: Path) -> list[str]:
    """Image paths of the regular ELF files of an unpacked image."""
    out = []
    for p in sorted(image_files(root)):
        host = root / p.lstrip("/")
        if not host.is_symlink() and elf_kind(host) is not None:
            out.append(p)
    return out


def chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    require_root()
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True,
                          check=False, timeout=60)


def loader_list(root: Path, path: str) -> subprocess.CompletedProcess[str]:
    """The image's own loader resolving ``path`` inside the image (fails on a missing library)."""
    return chroot(root, LOADER, "--list", path)


def ldd_libraries(program: str) -> set[str]:
    """What the host's ldd says ``program`` loads, as real paths (vdso left out)."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    libs = set()
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.add(os.path.realpath(target))
        elif parts and parts[0].startswith("/"):
            libs.add(os.path.realpath(parts[0]))
    return libs


def host_dir() -> Path:
    """A scratch folder outside /tmp: unit paths below /tmp, /run, /var/lib ... are run-time paths.

    Not in the home folder when it can be helped: files reached by reference from /root or
    /home are host secrets the build refuses (closure/secrets.py).
    """
    import tempfile

    base = Path("/var/opt")
    try:
        base.mkdir(exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="ps-closure-test-", dir=base))
    except OSError:  # not root: the home folder, where references are refused as secrets
        return Path(tempfile.mkdtemp(prefix=".ps-closure-test-", dir=Path.home()))
    folder.chmod(0o755)
    return folder
