"""Fixtures for the end-to-end tests: a booted container per release and test module.

Every test here runs on Debian 11, 12 and 13 (systemd 247, 252, 257). A
container boots once per module and release; tests attach and detach their
images in it. Missing root or tools skip locally and fail under CI=true.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from portable_service.harness import nspawn, roots
from portable_service.progress import Reporter
from tests.conftest import require_root, require_tool
from tests.e2e.lib import static_program

HERE = Path(__file__).resolve().parent
RELEASES = list(roots.RELEASES)
LOG_DIR = Path(os.environ.get("PORTABLE_SERVICE_E2E_LOGS", "/var/tmp/portable-service-e2e-logs"))


def require_e2e() -> None:
    require_root()
    for tool in ("systemd-nspawn", "debootstrap", "unshare", "nsenter", "mksquashfs", "gcc"):
        require_tool(tool)


@pytest.fixture(scope="session")
def psdemo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/e2e/psdemo.c linked statically: runs in any image without a library closure."""
    require_e2e()
    return static_program(HERE / "psdemo.c", tmp_path_factory.mktemp("bin") / "psdemo")


@pytest.fixture(scope="session")
def release_roots() -> dict[str, Path]:
    """The cached roots; missing ones are made in parallel (about 80 s each, network bound)."""
    require_e2e()
    missing = [s for s in RELEASES if not roots.is_ready(roots.RELEASES[s])]
    if missing:
        # first run: say why the session pauses
        print(f"\ncreating the Debian roots for the end-to-end tests (once): {missing}",
              file=sys.stderr)
    with ThreadPoolExecutor(max_workers=len(RELEASES)) as pool:
        made = pool.map(lambda s: roots.ensure_root(roots.RELEASES[s], Reporter(quiet=False)),
                        RELEASES)
        return dict(zip(RELEASES, made, strict=True))


@pytest.fixture(scope="module", params=RELEASES)
def container(request: pytest.FixtureRequest,
              release_roots: dict[str, Path]) -> Iterator[nspawn.Container]:
    """A booted systemd of one release, shared by the tests of a module."""
    require_e2e()
    suite = request.param
    release = roots.RELEASES[suite]
    root = release_roots[suite]
    with nspawn.booted(release, root, log_dir=LOG_DIR) as c:
        yield c
        # a test that failed half-way may leave an image attached: the next module
        # gets a fresh container anyway
    assert nspawn.loops_in_use(c.copied) == [], "a loop device outlived the container"
