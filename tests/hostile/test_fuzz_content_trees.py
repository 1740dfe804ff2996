"""Random content trees (odd names, links that climb, loop or dangle, odd modes, fifos):
a build gives an image or one typed error, never a traceback (fixed seed, bounded)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portable_service import build
from portable_service.cli import one_line
from portable_service.errors import PortableServiceError

NAMES = st.one_of(
    st.sampled_from(["a", "b", "..x", " sp ace", "dash-", "new\nline", "ü", "x" * 200]),
    st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b
                                               and b not in (b".", b"..")))
TARGETS = st.sampled_from(["a", "../a", "../../../../etc/hostname", "/usr/bin/env", "nowhere",
                           ".", "..", "b/../a", "self", "/proc/self/root", ""])
ENTRY = st.tuples(st.sampled_from(["file", "dir", "link", "fifo"]), NAMES, TARGETS,
                  st.sampled_from([0o644, 0o755, 0o600, 0o000, 0o4755, 0o777, 0o1777]))


def lay_out(root: Path, entries: list[tuple[str, bytes | str, str, int]]) -> None:
    folders = [root]
    for kind, name, target, mode in entries:
        parent = folders[len(name) % len(folders)] if isinstance(name, str) else folders[0]
        path = os.path.join(os.fsencode(parent), os.fsencode(name))
        if os.path.lexists(path):
            continue
        try:
            if kind == "file":
                with open(path, "wb") as f:
                    f.write(b"#!/nowhere\n" if mode & 0o100 else b"data\n")
                os.chmod(path, mode)
            elif kind == "dir":
                os.mkdir(path)
                os.chmod(path, mode | 0o700)  # keep it walkable for the cleanup
                folders.append(Path(os.fsdecode(path)))
            elif kind == "link":
                os.symlink(target or ".", path)
            else:
                os.mkfifo(path)
        except OSError:
            continue


@settings(max_examples=120, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ENTRY, min_size=1, max_size=12))
def test_random_content_trees(entries: list[tuple[str, bytes | str, str, int]]) -> None:
    base = Path(tempfile.mkdtemp(prefix="ps-fuzz-tree-"))
    try:
        (base / "fz.service").write_text("[Service]\nExecStart=/usr/bin/env true\n")
        app = base / "app"
        app.mkdir()
        lay_out(app, entries)
        try:
            image = build(pname="fz", version="1", units=["fz.service"], writer="native",
                          squash_compression="gzip", output_dir=base / "out", base_dir=base,
                          contents=[{"source": "app", "target": "/opt/app"}])
        except PortableServiceError as e:
            assert "\n" not in one_line(str(e))  # what the command line prints
            assert not any((base / "out").glob("*.raw")) if (base / "out").exists() else True
        else:
            assert image.stat().st_size > 0
    finally:
        for dirpath, dirnames, _ in os.walk(base):
            for d in dirnames:
                p = os.path.join(dirpath, d)
                if not os.path.islink(p):
                    os.chmod(p, stat.S_IRWXU)
        shutil.rmtree(base, ignore_errors=True)
