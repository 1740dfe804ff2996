"""What an image says about itself, read the way portabled reads it.

Its os-release, the unit files portabled would find and attach for a prefix, and the
closure record our builds leave: inspect, diff, size and verify all start here.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

from portable_service.errors import ImageError
from portable_service.fs.views import ImageFS, Stat, read_text, resolve
from portable_service.rules.osrelease import parse_os_release
from portable_service.rules.portabled import (
    CLOSURE_RECORD_PATH,
    OS_RELEASE_PATHS,
    UNIT_DIRS,
    is_portable_unit,
    prefix_matches,
)


@dataclass(frozen=True)
class UnitFile:
    name: str
    path: str  # where portabled finds it, e.g. /etc/systemd/system/demo.service
    stat: Stat


def find_os_release(fs: ImageFS) -> tuple[str | None, dict[str, str]]:
    """Where portabled finds os-release (the first of the two paths), and its fields."""
    for path in OS_RELEASE_PATHS:
        text = read_text(fs, path)
        if text is not None:
            return path, parse_os_release(text)
    return None, {}


def unit_candidates(fs: ImageFS) -> dict[str, UnitFile]:
    """Every unit file name in portabled's search folders; /etc wins over /usr/lib."""
    found: dict[str, UnitFile] = {}
    seen: set[str] = set()
    for folder in UNIT_DIRS:
        real = resolve(fs, folder)
        if real is None or real in seen:  # /lib -> usr/lib: one folder, searched once
            continue
        seen.add(real)
        try:
            names = fs.listdir(real)
        except ImageError:  # not a folder: nothing is searched there
            continue
        for name in names:
            if is_portable_unit(name) and name not in found:
                path = posixpath.join(real, name)
                found[name] = UnitFile(name, posixpath.join(folder, name), fs.stat(path))
    return found


def attached_units(fs: ImageFS, prefix: str) -> list[UnitFile]:
    """The units portabled would attach for this prefix, before checking their files."""
    return [u for n, u in sorted(unit_candidates(fs).items()) if prefix_matches(n, prefix)]


def closure_record(fs: ImageFS) -> dict[str, Any] | None:
    """The closure our build recorded, or None (other builders, older images, bad JSON).

    The file is untrusted input like the rest of the image: anything but the shape our
    build writes (``roots`` of ``{path, reason}`` strings, ``parents`` mapping paths to
    paths, an optional list of ``units``) counts as no record.
    """
    text = read_text(fs, CLOSURE_RECORD_PATH, limit=64 << 20)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("roots"), list):
        return None
    roots = data["roots"]
    parents = data.get("parents") or {}
    units = data.get("units", [])
    if not (all(isinstance(r, dict) and isinstance(r.get("path"), str)
                and isinstance(r.get("reason", ""), str) for r in roots)
            and isinstance(parents, dict)
            and all(isinstance(v, str | None) for v in parents.values())
            and isinstance(units, list) and all(isinstance(u, str) for u in units)):
        return None
    return {"format": data.get("format"),
            "roots": [{"path": r["path"], "reason": r.get("reason", "")} for r in roots],
            "parents": parents, **({"units": units} if "units" in data else {})}
