"""Helpers for tests/look: hand-made image trees (a working service, then one defect
each) and mksquashfs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile

from portable_service.fs.tree import ImageTree
from tests.conftest import mksquashfs, require

PROGRAM = "/usr/bin/sleep"  # what the sample unit runs: a real dynamically linked program
UNIT = "[Unit]\nDescription=demo\n\n[Service]\nExecStart=/usr/bin/sleep infinity\n" \
       "StateDirectory=demo\n"
HOST_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                 "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")


def host_closure(program: str) -> list[str]:
    """The program, its loader and every library it needs, as host paths (ldd without ldd)."""
    out: list[str] = []
    queue = [program]
    while queue:
        path = queue.pop(0)
        if path in out:
            continue
        out.append(path)
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    queue.append(seg.get_interp_name())
                elif isinstance(seg, DynamicSegment):
                    for tag in seg.iter_tags():
                        if tag.entry.d_tag == "DT_NEEDED":
                            found = next((f"{d}/{tag.needed}" for d in HOST_LIB_DIRS
                                          if os.path.exists(f"{d}/{tag.needed}")), None)
                            assert found, f"host library {tag.needed} not found"
                            queue.append(found)
    return out


def copy_host_path(root: Path, host: str) -> None:
    """Copy a host file into ``root`` at the same path, keeping the host's symlinks on the way."""
    current = Path("/")
    parts = Path(host).parts[1:]
    for i, part in enumerate(parts):
        candidate = current / part
        dest = root / candidate.relative_to("/")
        if candidate.is_symlink():
            if not dest.is_symlink():
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.symlink_to(os.readlink(candidate))
            target = Path(os.path.normpath(candidate.parent / os.readlink(candidate)))
            rest = "/".join(parts[i + 1:])
            copy_host_path(root, str(target / rest) if rest else str(target))
            return
        current = candidate
    dest = root / current.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy2(current, dest)


def make_tree(root: Path, unit: str = UNIT, os_release: str = "ID=debian\nPRETTY_NAME=Demo\n"
              ) -> Path:
    """A portable service tree that portabled attaches and starts: scaffold, unit, program."""
    for d in ("etc/systemd/system", "proc", "sys", "dev", "run", "tmp", "var/tmp", "var/lib/demo",
              "var/cache", "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "var/tmp").chmod(0o1777)
    (root / "etc/machine-id").write_text("")
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/os-release").write_text(os_release)
    (root / "etc/systemd/system/demo.service").write_text(unit)
    for path in host_closure(PROGRAM):
        copy_host_path(root, path)
    return root


def image_maker(tmp_path: Path) -> Callable[..., Path]:
    """image(name, change=None, *mksquashfs_args): a working tree, changed by ``change``, packed.

    (A helper, not a conftest fixture: tests/conftest.py is imported as ``conftest``.)
    """
    require(Path(PROGRAM).exists(), f"{PROGRAM} is missing on this host")
    counter = [0]

    def build(name: str = "demo_1.0.raw", change: Callable[[Path], None] | None = None,
              *extra: str) -> Path:
        counter[0] += 1
        root = make_tree(tmp_path / f"tree{counter[0]}")
        if change is not None:
            change(root)
        out_dir = tmp_path / f"out{counter[0]}"
        out_dir.mkdir()
        return mksquashfs(root, out_dir / name, "-comp", "gzip", *extra)

    return build


def scaffold_tree(*dirs: str) -> ImageTree:
    """An in-memory image tree with the portable scaffold (os-release ID=debian) and ``dirs``."""
    t = ImageTree()
    for d in ("/etc/systemd/system", "/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", *dirs):
        t.add_dir(PurePosixPath(d))
    t.add_file(PurePosixPath("/etc/machine-id"), data=b"")
    t.add_file(PurePosixPath("/etc/resolv.conf"), data=b"")
    t.add_file(PurePosixPath("/etc/os-release"), data=b"ID=debian\n")
    return t
