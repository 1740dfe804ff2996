"""fs/paths.child: a folder entry's path from its folder's, the same object pathlib makes."""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath

import pytest

from portable_service.fs import paths

NAMES = ["a", "zone.tab", "with space", "ünïcode", "-dash", ".hidden", "..x", "a:b", "\\back"]
FOLDERS = [PurePosixPath("/"), PurePosixPath("/usr/share/zoneinfo"), PurePosixPath("/a/b/c/d/e/f"),
           Path("/"), Path("/tmp/x y"), Path("/opt/app/v1/lib/python3.11/site-packages")]


@pytest.mark.parametrize("make", [paths.child, paths.slow_child])
def test_child_is_pathlib_join(make: object) -> None:
    for folder in FOLDERS:
        for name in NAMES:
            made = make(folder, name)  # type: ignore[operator]
            want = folder / name
            assert made == want and str(made) == str(want) and hash(made) == hash(want)
            assert type(made) is type(want)
            assert made.parent == folder and made.name == name and made.parts == want.parts
            assert made / "more" == want / "more"  # and it builds on like any path


def test_fast_on_cpython_311() -> None:
    """The fast way is the one taken where the project runs (3.11): a pathlib change that
    turned it off would show here, not as a slower build."""
    if sys.version_info[:2] == (3, 11) and sys.implementation.name == "cpython":
        assert paths.FAST
