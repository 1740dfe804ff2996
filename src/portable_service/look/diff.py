"""diff: what an upgrade changes between two images (files, units, os-release, size)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from portable_service.fs.errors import squashfs_errors
from portable_service.fs.views import IndexedFS, Stat, read_text
from portable_service.look.facts import attached_units, find_os_release
from portable_service.progress import human
from portable_service.rules.portabled import image_prefix

CHUNK = 1 << 20


@dataclass
class ImageDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)  # (path, what changed)
    units_added: list[str] = field(default_factory=list)
    units_removed: list[str] = field(default_factory=list)
    units_changed: list[str] = field(default_factory=list)
    os_release: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    size: tuple[int | None, int | None] = (None, None)  # image file bytes
    content: tuple[int, int] = (0, 0)  # bytes of file content

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed or self.units_added
                    or self.units_removed or self.units_changed or self.os_release)

    def to_dict(self) -> dict[str, Any]:
        return {
            "same": self.same,
            "added": self.added,
            "removed": self.removed,
            "changed": [{"path": p, "change": w} for p, w in self.changed],
            "units": {"added": self.units_added, "removed": self.units_removed,
                      "changed": self.units_changed},
            "os_release": {k: {"old": o, "new": n} for k, (o, n) in self.os_release.items()},
            "size": {"old": self.size[0], "new": self.size[1]},
            "content_bytes": {"old": self.content[0], "new": self.content[1]},
        }


def entry_change(old: Stat, new: Stat) -> str | None:
    """What differs in the metadata of one path, or None; contents are compared elsewhere."""
    if old.kind != new.kind:
        return f"{old.kind} -> {new.kind}"
    parts = []
    if old.mode != new.mode:
        parts.append(f"mode {old.mode:04o} -> {new.mode:04o}")
    if (old.uid, old.gid) != (new.uid, new.gid):
        parts.append(f"owner {old.uid}:{old.gid} -> {new.uid}:{new.gid}")
    if old.kind == "symlink" and old.target != new.target:
        parts.append(f"target {old.target} -> {new.target}")
    if old.kind == "file" and old.size != new.size:
        parts.append(f"size {old.size} -> {new.size}")
    return ", ".join(parts) or None


def same_content(old: IndexedFS, new: IndexedFS, path: str, size: int) -> bool:
    """Whether a file holds the same bytes in both images.

    From two squashfs images of one block size, block by block as stored: holes on both
    sides are equal unread, equal stored bytes of one compressor are equal undecoded;
    only the rest is decoded. A crafted image claiming a huge sparse file costs its block
    list, not its size.
    """
    a, b = _squashfs(old), _squashfs(new)
    if a is not None and b is not None and a.superblock.block_size == b.superblock.block_size:
        with squashfs_errors():
            return _same_blocks(a, b, path)
    offset = 0
    while offset < size:
        n = min(CHUNK, size - offset)
        if old.read(path, offset, n) != new.read(path, offset, n):
            return False
        offset += n
    return True


def _same_blocks(a: Any, b: Any, path: str) -> bool:
    """Two squashfs readers' copies of ``path``, compared as stored (see same_content)."""
    same_codec = a.codec == b.codec
    for x, y in itertools.zip_longest(a.stored_blocks(path), b.stored_blocks(path)):
        if x is None or y is None or x.length != y.length:
            return False
        if x.raw is None and y.raw is None:
            continue
        if same_codec and x.raw == y.raw:
            continue
        if x.data() != y.data():
            return False
    return True


def _squashfs(fs: IndexedFS) -> Any:
    """The squashfs reader behind an opened image, or None (a build's tree, say)."""
    return getattr(fs.fs, "image", None)


def diff_images(old: IndexedFS, old_name: str, new: IndexedFS, new_name: str) -> ImageDiff:
    d = ImageDiff()
    a, b = old.entries, new.entries
    d.added = [p for p in b if p not in a]
    d.removed = [p for p in a if p not in b]
    for path, st in a.items():
        other = b.get(path)
        if other is None:
            continue
        change = entry_change(st, other)
        if change is None and st.kind == "file" and not same_content(old, new, path, st.size):
            change = "content"
        if change is not None:
            d.changed.append((path, change))
    old_units = {u.name: u for u in attached_units(old, image_prefix(old_name))}
    new_units = {u.name: u for u in attached_units(new, image_prefix(new_name))}
    d.units_added = sorted(set(new_units) - set(old_units))
    d.units_removed = sorted(set(old_units) - set(new_units))
    d.units_changed = sorted(
        n for n in set(old_units) & set(new_units)
        if read_text(old, old_units[n].path) != read_text(new, new_units[n].path)
    )
    _, old_os = find_os_release(old)
    _, new_os = find_os_release(new)
    for key in sorted(set(old_os) | set(new_os)):
        if old_os.get(key) != new_os.get(key):
            d.os_release[key] = (old_os.get(key), new_os.get(key))
    d.size = (_file_size(old), _file_size(new))
    d.content = (_content(a), _content(b))
    return d


def _file_size(fs: IndexedFS) -> int | None:
    return fs.info.file_size if fs.info is not None else None


def _content(entries: dict[str, Stat]) -> int:
    return sum(st.size for st in entries.values() if st.kind == "file")


def _delta(old: int, new: int) -> str:
    sign = "+" if new >= old else "-"
    return f"{human(old)} -> {human(new)} ({sign}{human(abs(new - old))})"


def render_diff(d: ImageDiff) -> str:
    lines: list[str] = []
    if d.os_release:
        lines.append("os-release:")
        for key, (o, n) in d.os_release.items():
            lines.append(f"  ~ {key}: {o if o is not None else '(unset)'} -> "
                         f"{n if n is not None else '(unset)'}")
    if d.units_added or d.units_removed or d.units_changed:
        lines.append("units:")
        lines += [f"  + {u}" for u in d.units_added]
        lines += [f"  - {u}" for u in d.units_removed]
        lines += [f"  ~ {u}" for u in d.units_changed]
    lines.append(f"files: {len(d.added)} added, {len(d.removed)} removed, "
                 f"{len(d.changed)} changed")
    lines += [f"  + {p}" for p in d.added]
    lines += [f"  - {p}" for p in d.removed]
    lines += [f"  ~ {p} ({what})" for p, what in d.changed]
    if d.size[0] is not None and d.size[1] is not None:
        lines.append(f"image size: {_delta(d.size[0], d.size[1])}")
    lines.append(f"content: {_delta(d.content[0], d.content[1])}")
    if d.same:
        lines.append("the images hold the same files, units and os-release")
    return "\n".join(lines)
