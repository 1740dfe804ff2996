"""One direction for every pair: ``LINK=OBJECT`` (symlinks) and ``SOURCE=TARGET`` (contents).

Both read "where it goes = what it is" for symlinks and "host path = image path" for
contents, in the flags and in TOML alike. A pair written the other way round is easy to
miss (both sides are absolute paths), so the plain signs of a swap are refused with the
swapped spelling, before anything is built:

- a content whose source does not exist on the host while its target does;
- a symlink whose object does not exist on the host while the link's path does, or whose
  object is itself a link on the host that resolves to the link's path (``--symlink
  /usr/bin/dash=/bin/sh``: the image would get a link that points at itself).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from portable_service.errors import SpecError


def _exists(path: Path | PurePosixPath) -> bool:
    return os.path.lexists(str(path))


def check_content(source: Path, target: PurePosixPath, flag: bool) -> None:
    if _exists(source) or not _exists(target):
        return
    swapped = (f"--content {target}={source}" if flag
               else f"{{ source = \"{target}\", target = \"{source}\" }}")
    raise SpecError(f"content source {source} does not exist on this host, but {target} "
                    "does: contents read SOURCE=TARGET (host path, then image path)",
                    f"did you mean {swapped}?")


def check_symlink(link: PurePosixPath, obj: Path, flag: bool) -> None:
    swapped = (f"--symlink {obj}={link}" if flag
               else f"{{ symlink = \"{obj}\", object = \"{link}\" }}")
    if not _exists(obj) and _exists(link):
        raise SpecError(f"symlink object {obj} does not exist on this host, but {link} does: "
                        "symlinks read LINK=OBJECT (the link's path, then what it points to)",
                        f"did you mean {swapped}?")
    # the object is a link to the link's own path: written the other way round
    if obj.is_symlink() and _exists(link) and not Path(str(link)).is_symlink() \
            and os.path.realpath(obj) == os.path.realpath(str(link)):
        raise SpecError(f"symlink {link} -> {obj} would point at itself ({obj} is a link to "
                        f"{link} on this host): symlinks read LINK=OBJECT",
                        f"did you mean {swapped}?")
