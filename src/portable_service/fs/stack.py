"""A base image with portable extensions on top, seen as the one root a unit runs in.

systemd overlays each extension's /usr and /opt onto the base (rules/extensions.py); every
other path is the base's. A hierarchy the base lacks is not overlaid at all (systemd cannot
create its mount point in a read-only base). Among extensions, a later one's file is taken
(verify warns when two extensions disagree on a file, so nothing depends on the order).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence

from portable_service.errors import ImageError
from portable_service.fs.errors import NotInImage
from portable_service.fs.views import ImageFS, Stat
from portable_service.rules.extensions import OVERLAID


def _hierarchy(path: str) -> str | None:
    for h in OVERLAID:
        if path == h or path.startswith(h + "/"):
            return h
    return None


def _has(fs: ImageFS, path: str) -> Stat | None:
    try:
        return fs.stat(path)
    except (ImageError, FileNotFoundError):
        return None


class StackFS:
    """``base`` with ``layers`` (extensions, lowest first) overlaid on /usr and /opt."""

    def __init__(self, base: ImageFS, layers: Sequence[ImageFS]) -> None:
        self.base = base
        self.layers = list(layers)
        self.overlaid = {h for h in OVERLAID
                         if (st := _has(base, h)) is not None and st.kind == "dir"}

    def _stacked(self, path: str) -> list[ImageFS]:
        """The file systems that hold ``path``, top first."""
        path = posixpath.normpath("/" + path.lstrip("/")) if path != "/" else "/"
        h = _hierarchy(path)
        found = []
        if h is not None and h in self.overlaid:
            found = [fs for fs in reversed(self.layers) if _has(fs, path) is not None]
        if _has(self.base, path) is not None:
            found.append(self.base)
        return found

    def owner(self, path: str) -> ImageFS:
        found = self._stacked(path)
        if not found:
            raise NotInImage(f"{path}: no such file in the stack", "check the path")
        return found[0]

    def stat(self, path: str) -> Stat:
        return self.owner(path).stat(path)

    def listdir(self, path: str) -> list[str]:
        found = self._stacked(path)
        if not found:
            raise NotInImage(f"{path}: no such file in the stack", "check the path")
        if found[0].stat(path).kind != "dir":
            raise ImageError(f"{path} is not a folder", "give a folder")
        names: set[str] = set()
        for fs in found:
            if fs.stat(path).kind == "dir":
                names.update(fs.listdir(path))
        return sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape"))

    def walk(self) -> Iterator[tuple[str, Stat]]:
        entries: dict[str, Stat] = dict(self.base.walk())
        for layer in self.layers:
            for path, st in layer.walk():
                h = _hierarchy(path)
                if h is not None and h in self.overlaid:
                    entries[path] = st
        # what an upper file hides below a lower folder is gone from the view
        for path in sorted(entries, key=_key):
            parent = posixpath.dirname(path)
            if path != "/" and (parent not in entries or entries[parent].kind != "dir"):
                entries.pop(path, None)
        for path in sorted(entries, key=_key):
            yield path, entries[path]

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        return self.owner(path).read(path, offset, size)

    def readlink(self, path: str) -> str:
        return self.owner(path).readlink(path)


def _key(path: str) -> tuple[bytes, ...]:
    return tuple(p.encode("utf-8", "surrogateescape") for p in path.split("/") if p)
