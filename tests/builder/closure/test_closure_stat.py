"""One lstat per closure node: the folder listing makes it, resolvers and the layout share it."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from portable_service.builder.closure import Node, is_link, lstat_of
from portable_service.builder.closure.walk import folder_resolver


def _tree(tmp_path: Path) -> Path:
    top = tmp_path / "top"
    (top / "sub").mkdir(parents=True)
    (top / "file").write_bytes(b"data")
    (top / "exe").write_bytes(b"#!/bin/sh\n")
    (top / "exe").chmod(0o750)
    (top / "link").symlink_to("file")
    (top / "dangling").symlink_to("nowhere")
    (top / "B").write_bytes(b"")  # byte order: "B" before "a"-names
    return top


def test_folder_entries_carry_their_lstat(tmp_path: Path) -> None:
    top = _tree(tmp_path)
    folder = Node(PurePosixPath("/srv/top"), top, "content")
    entries = list(folder_resolver(folder))
    assert [n.image.name for n in entries] == sorted(os.listdir(top), key=os.fsencode)
    for node in entries:
        assert node.image == PurePosixPath("/srv/top") / node.host.name
        assert node.host == top / node.image.name and node.parent == folder.image
        # made without Node's __init__, and yet the very node it would make
        made = Node(node.image, node.host, "in folder", folder.image, st=node.st)
        assert node == made and hash(node) == hash(made) and repr(node) == repr(made)
        assert (node.package, node.executed, node.reason) == (None, False, "in folder")
        want = os.lstat(node.host)
        assert node.st is not None
        assert node.st == (want.st_mode, want.st_size, want.st_uid, want.st_gid)
    kinds = {n.image.name: is_link(n) for n in entries}
    assert kinds == {"B": False, "dangling": True, "exe": False, "file": False, "link": True,
                     "sub": False}


def test_lstat_is_made_once_and_is_not_identity(tmp_path: Path) -> None:
    top = _tree(tmp_path)
    node = Node(PurePosixPath("/x"), top / "file", "content")
    assert node.st is None
    first = lstat_of(node)
    assert node.st is first and first.st_size == 4
    (top / "file").write_bytes(b"longer data")
    assert lstat_of(node) is first  # a fact of this build's look at the host, not asked again
    # equal nodes stay equal (and hash alike) whether or not their lstat is known
    bare = Node(PurePosixPath("/x"), top / "file", "content")
    assert bare == node and hash(bare) == hash(node)


def test_missing_host_path_is_no_link(tmp_path: Path) -> None:
    node = Node(PurePosixPath("/gone"), tmp_path / "gone", "content")
    assert not is_link(node)
    assert node.st is None  # nothing was there to remember


def test_each_resolver_is_asked_of_the_kinds_it_answers_for(tmp_path: Path) -> None:
    """The walk asks a resolver marked with acts_on only of nodes of those kinds (by the
    lstat the listing made) and an unmarked one of every node, each once."""
    import stat

    from portable_service.builder.closure import Closure, Context, acts_on
    from portable_service.builder.closure.walk import resolve, standard_resolvers
    from portable_service.builder.units import load_units
    from tests.builder.closure.closure_helpers import make_spec, unit

    top = _tree(tmp_path)
    spec = make_spec(tmp_path, contents=[{"source": str(top), "target": "/srv/top"}],
                     units=[unit("/usr/bin/true")])
    asked: dict[str, list[str]] = {"files": [], "all": []}

    @acts_on(stat.S_IFREG)
    def files(node: Node) -> list[Node]:
        asked["files"].append(str(node.image))
        return []

    def every(node: Node) -> list[Node]:
        asked["all"].append(str(node.image))
        return []

    standard = standard_resolvers(Context(spec, Closure()))
    closure = resolve(spec, load_units(spec), resolvers=(*standard, files, every))
    mine = {str(p) for p in closure.nodes if str(p).startswith("/srv/top")}
    assert mine == {"/srv/top", *(f"/srv/top/{n}" for n in ("B", "dangling", "exe", "file",
                                                            "link", "sub"))}
    assert {p for p in asked["files"] if p.startswith("/srv/top")} == {
        "/srv/top/B", "/srv/top/exe", "/srv/top/file"}
    assert sorted(p for p in asked["all"] if p.startswith("/srv/top")) == sorted(mine)
    assert len(asked["all"]) == len(set(asked["all"])) == len(closure.nodes)
