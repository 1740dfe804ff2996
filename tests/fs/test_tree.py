"""The image tree (fs/tree.py): its order is squashfs' (byte-wise, component by component),
kept between walks and made again after every change."""

from __future__ import annotations

import os
import random
from pathlib import Path, PurePosixPath

from portable_service.fs.tree import ImageTree, sort_key

NAMES = ["a", "a-b", "a.b", "ab", "b", "a\udcff", "\u00e9", "A", "a b", "z", "a\x01"]


def test_the_order_is_the_components_byte_by_byte() -> None:
    """One bytes key per path orders as the tuple of each component's bytes (a name
    before a longer name it starts, whatever byte follows)."""
    rng = random.Random(7)
    paths = list({PurePosixPath("/" + "/".join(rng.choice(NAMES) for _ in range(rng.randint(1, 4))))
                  for _ in range(3000)})
    rng.shuffle(paths)
    by_parts = sorted(paths, key=lambda p: tuple(os.fsencode(x) for x in p.parts[1:]))
    assert sorted(paths, key=sort_key) == by_parts


def test_a_walk_after_a_change_sees_the_change(tmp_path: Path) -> None:
    tree = ImageTree()
    tree.add_file(PurePosixPath("/b/f"), data=b"1")
    first = [str(e.path) for e in tree]
    assert first == ["/", "/b", "/b/f"]
    assert [str(e.path) for e in tree] == first  # walked again, unchanged
    tree.add_file(PurePosixPath("/a/x/g"), data=b"2")  # new parents too
    assert [str(e.path) for e in tree] == ["/", "/a", "/a/x", "/a/x/g", "/b", "/b/f"]
    tree.remove(PurePosixPath("/a"))
    assert [str(e.path) for e in tree] == first
    source = tmp_path / "s"
    source.write_bytes(b"four")
    entry = tree.add_file(PurePosixPath("/b/s"), source=source, source_size=4)
    assert entry.size == 4 and b"".join(entry.chunks(3)) == b"four"
    assert [str(e.path) for e in tree] == [*first, "/b/s"]
