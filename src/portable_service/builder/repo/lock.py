"""``portable.lock``: what a pinned build resolved, so the next build needs no resolving.

JSON, keys and packages sorted, one package a line-group: a lock file diffs well in
version control and two machines write the same bytes for the same resolution.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from portable_service.errors import SpecError

FORMAT = "portable-service lock 1"
LOCK_NAME = "portable.lock"


@dataclass(frozen=True)
class Repository:
    distribution: str
    mirror: str
    release: str  # as the spec names it (bookworm, stable, ...)
    codename: str  # as the Release file names it
    version: str  # the Release file's Version (12.8); empty for testing and sid
    architecture: str
    inrelease_sha256: str  # the signed Release file the package hashes were checked against
    suites: str = ""  # every suite read, with its InRelease sha256: "bookworm=... bookworm-security=..."


@dataclass(frozen=True)
class Request:
    """What the spec asked for: a lock answers one request only."""

    packages: tuple[str, ...]
    skip_packages: tuple[str, ...]


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    architecture: str
    sha256: str
    size: int
    filename: str  # pool path under the mirror
    source: str  # the Debian source package (name)
    source_version: str
    homepage: str = ""
    archive: str = ""  # the archive's URL the pool path is under ("": the repository's mirror)

    @property
    def deb_name(self) -> str:
        return os.path.basename(self.filename)


@dataclass(frozen=True)
class Lock:
    repository: Repository
    request: Request
    packages: tuple[LockedPackage, ...]

    def render(self) -> bytes:
        data = {
            "format": FORMAT,
            "repository": asdict(self.repository),
            "request": {"packages": sorted(self.request.packages),
                        "skip-packages": sorted(self.request.skip_packages)},
            "packages": [asdict(p) for p in sorted(self.packages, key=lambda p: (p.name, p.architecture))],
        }
        return (json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()

    def matches(self, repository: Repository, request: Request) -> str | None:
        """Why this lock does not answer the spec (None when it does)."""
        mine, theirs = self.repository, repository
        for what in ("distribution", "release", "architecture"):
            if getattr(mine, what) != getattr(theirs, what):
                return f"it was resolved for {what} {getattr(mine, what)!r}, the spec says " \
                       f"{getattr(theirs, what)!r}"
        if sorted(self.request.packages) != sorted(request.packages):
            return f"it was resolved for packages {sorted(self.request.packages)}, this build " \
                   f"resolves {sorted(request.packages)}"
        if sorted(self.request.skip_packages) != sorted(request.skip_packages):
            return "it was resolved with other skip-packages"
        return None


def read_lock(path: Path) -> Lock | None:
    """The lock at ``path``; None when there is none; a damaged one is an error."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror}", "fix its permissions") from None
    try:
        data = json.loads(raw)
        return parse_lock(data)
    except (ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{path} is not a portable-service lock file ({e})",
                        "restore it from version control, or rebuild with --update") from None


def parse_lock(data: Any) -> Lock:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"format is not {FORMAT!r}")
    repo = Repository(**{k: str(v) for k, v in data["repository"].items()})
    req = data["request"]
    request = Request(tuple(map(str, req["packages"])), tuple(map(str, req["skip-packages"])))
    packages = []
    for p in data["packages"]:
        fields: dict[str, Any] = {k: (int(v) if k == "size" else str(v)) for k, v in p.items()}
        packages.append(LockedPackage(**fields))
    return Lock(repo, request, tuple(packages))


def lock_changes(old: Lock, new: Lock) -> list[str]:
    """One line per package that was added, removed or changed version, sorted by name."""
    a = {p.name: p for p in old.packages}
    b = {p.name: p for p in new.packages}
    lines = []
    for name in sorted(set(a) | set(b)):
        if name not in a:
            lines.append(f"+ {name} {b[name].version}")
        elif name not in b:
            lines.append(f"- {name} {a[name].version}")
        elif a[name].version != b[name].version:
            lines.append(f"~ {name} {a[name].version} -> {b[name].version}")
        elif a[name].sha256 != b[name].sha256:
            lines.append(f"! {name} {a[name].version}: same version, other file (sha256 differs)")
    ra, rb = old.repository, new.repository
    repo = [f"~ repository {what}: {getattr(ra, what)} -> {getattr(rb, what)}"
            for what in ("release", "codename", "version", "architecture", "mirror")
            if getattr(ra, what) != getattr(rb, what)]
    return repo + lines


def is_lock_file(path: Path) -> bool:
    """A JSON file naming our lock format near its start (keys are sorted: "format" comes
    after a few others), not a squashfs image."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and FORMAT.encode() in head


def diff_lock_files(old: Path, new: Path) -> list[str] | None:
    """``diff`` of two lock files (None when they are not both lock files: images, then)."""
    if not (is_lock_file(old) and is_lock_file(new)):
        return None
    a, b = read_lock(old), read_lock(new)
    assert a is not None and b is not None
    return lock_changes(a, b)
