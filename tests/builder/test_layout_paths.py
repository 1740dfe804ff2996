"""The layout's per-folder shortcuts give the answers of the full resolution they replace."""

from __future__ import annotations

import itertools
import os
from pathlib import Path, PurePosixPath

from portable_service.builder.layout import _FolderResolver, mirror_host_parents, resolve_in
from portable_service.fs.tree import ImageTree

P = PurePosixPath


def linked_tree() -> ImageTree:
    tree = ImageTree()
    tree.add_file(P("/usr/lib/x/a/f"), data=b"f")
    tree.add_dir(P("/usr/lib/x/a/b/c"))
    tree.add_symlink(P("/lib"), "usr/lib")  # relative
    tree.add_symlink(P("/abs"), "/usr/lib/x")  # absolute
    tree.add_symlink(P("/usr/lib/x/up"), "../x/a")  # climbs and comes back
    tree.add_symlink(P("/chain"), "lib")  # a link to a link
    tree.add_symlink(P("/dangling"), "/nowhere")
    tree.add_symlink(P("/tofile"), "usr/lib/x/a/f")
    tree.add_symlink(P("/loop1"), "loop2")
    tree.add_symlink(P("/loop2"), "loop1")
    return tree


def test_folder_resolver_is_resolve_in() -> None:
    tree = linked_tree()
    heads = ["/lib", "/abs", "/chain", "/dangling", "/tofile", "/loop1", "/usr/lib", "/usr/lib/x/up",
             "/missing"]
    tails = ["", "/x", "/x/a", "/x/a/b", "/x/a/b/c", "/a", "/a/b/c", "/b", "/f", "/up/b"]
    resolver = _FolderResolver(tree)
    checked = 0
    for head, tail in itertools.product(heads, tails):
        folder = head + tail
        want = resolve_in(tree, P(folder))
        assert resolver(folder) == (None if want is None else str(want)), folder
        checked += 1
    # a fresh resolver (nothing remembered) answers the same, deepest folder first
    fresh = _FolderResolver(tree)
    assert fresh("/chain/x/up/b/c") == "/usr/lib/x/a/b/c" == str(resolve_in(tree, P("/chain/x/up/b/c")))
    assert fresh("/tofile/x") is None and fresh("/dangling/a") is None and fresh("/loop1/a") is None
    assert checked == len(heads) * len(tails)


def test_host_folder_links_are_answered_once_and_kept(tmp_path: Path) -> None:
    """Entries below a host folder link land below its target, and the link is in the tree;
    a later entry of the same folder gets the same answer from the memo."""
    (tmp_path / "real/sub").mkdir(parents=True)
    os.symlink("real", tmp_path / "link")
    tree = ImageTree()
    first = mirror_host_parents(tree, P(tmp_path / "link/sub/one"), "test")
    os.unlink(tmp_path / "link")  # the host changing now does not change the answer
    second = mirror_host_parents(tree, P(tmp_path / "link/sub/two"), "test")
    assert first == P(tmp_path / "real/sub/one") and second == P(tmp_path / "real/sub/two")
    link = tree.get(P(tmp_path / "link"))
    assert link is not None and link.target == "real"
    # another tree asks the host afresh
    assert mirror_host_parents(ImageTree(), P(tmp_path / "link/sub/one"), "test") == \
        P(tmp_path / "link/sub/one")
