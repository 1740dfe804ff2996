"""The closure's string path helpers agree with pathlib, which they stand in for in hot loops."""

from __future__ import annotations

import itertools
from pathlib import PurePosixPath

from portable_service.builder.closure import _plain, rebase, within

PATHS = ["/", "/a", "/a/b", "/a/bc", "/ab", "/a/b/c", "/usr", "/usr/lib", "/usr/lib64",
         "/srv/z0", "/srv/z0/Europe/Berlin", "/srv/z01"]


def test_within_is_pathlib_parents() -> None:
    for path, root in itertools.product(PATHS, PATHS):
        p, r = PurePosixPath(path), PurePosixPath(root)
        assert within(path, root) == (p == r or r in p.parents), (path, root)


def test_rebase_is_relative_to() -> None:
    for path, old in itertools.product(PATHS, PATHS):
        if not within(path, old):
            continue
        for new in ("/", "/x", "/x/y"):
            want = str(PurePosixPath(new) / PurePosixPath(path).relative_to(old))
            assert rebase(path, old, new) == want, (path, old, new)


def test_plain_is_pathlib_spelling() -> None:
    for raw in ["/", "/a", "/a/", "//a", "/a//b", "/a/./b", "/a/.", "/a/b/", "/a/../b", "///a"]:
        assert _plain(raw) == str(PurePosixPath(raw)), raw
