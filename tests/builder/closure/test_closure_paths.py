"""The closure's string path helpers agree with pathlib, which they stand in for in hot loops."""

from __future__ import annotations

import itertools
from pathlib import Path, PurePosixPath

from portable_service.builder.closure import _Moves, _plain, in_nix_store, rebase, runtime, within
from portable_service.builder.spec import Content

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


def _linear_holding(pairs: list[tuple[str, str]], path: str) -> tuple[int, ...]:
    """The definition: every content whose target is the path or above it, in spec order."""
    return tuple(i for i, (_, target) in enumerate(pairs) if within(path, target))


def test_contents_holding_a_path_is_the_linear_scan() -> None:
    """The folder-by-folder lookup gives what comparing with every content gave, nested,
    repeated and root targets included, in the spec's order."""
    targets = ["/srv/z0", "/srv", "/srv/z0/Europe", "/", "/srv/z0", "/opt/app", "/srv/z01"]
    contents = tuple(Content(source=Path(f"/src{i}"), target=PurePosixPath(t))
                     for i, t in enumerate(targets))
    moves = _Moves(contents)
    pairs = [(str(c.source), str(c.target)) for c in contents]
    probes = PATHS + targets + ["/srv/z0/Europe/Berlin", "/srv/z0/Eu", "/opt", "/opt/app/x/y",
                                "/srv/z01/a", "relative/path", ""]
    for path in probes:
        assert moves.holding(path) == _linear_holding(pairs, path), path
    # and without a root target, a path outside every target is held by none
    outside = _Moves(contents[:3])
    assert outside.holding("/usr/lib/x") == ()
    assert outside.holding("/srv/z0/Europe/Berlin") == (0, 1, 2)


def test_in_nix_store_is_the_parts_test() -> None:
    """The string shortcut answers as ``parts[1:3] == ("nix", "store")`` did."""
    for raw in ["/nix/store", "/nix/store/abc-x/bin/y", "/nix/storex", "/nix/stor", "/nix",
                "//nix/store/a", "/usr/nix/store", "nix/store", "a/nix/store/b", "/", "/n"]:
        path = PurePosixPath(raw)
        assert in_nix_store(path) == (path.parts[1:3] == ("nix", "store")), raw


def test_runtime_resolver_leads_cover_its_patterns() -> None:
    """The runtime resolver skips a name by its start: every pattern it acts on begins so."""
    names = ["libc.so.6", "libssl.so.3", "libgnutls.so.30", "libnss3.so", "libmbedtls.so.14",
             "libwolfssl.so", "python3", "python3.11", "python", "perl", "perl5.36.0", "ruby",
             "ruby3.1"]
    for name in names:
        acted = name == "libc.so.6" or any(p.match(name) for p in (
            runtime.TLS_LIBRARY, runtime.PYTHON, runtime.PERL, runtime.RUBY))
        assert acted, name
        assert name.startswith(runtime._LEADS), name
