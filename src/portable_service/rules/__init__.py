"""Facts about systemd that verify checks units against, stored per systemd version.

The data files beside this module are what systemd itself prints or ships in
each Debian release the project tests on (tests/rules/test_verify_data.py
compares them with the cached roots): ``data/<N>/directives.txt`` is
``systemd --dump-configuration-items`` of systemd N, ``data/<N>/profile/<NAME>.conf``
is ``/usr/lib/systemd/portable/profile/<NAME>/service.conf``.
Refresh them with ``python -m portable_service.rules ROOT...``.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

from portable_service.run import run

# the systemd versions with stored data: Debian 11, 12 and 13
VERSIONS = (247, 252, 257)
PROFILES = ("default", "nonetwork", "strict", "trusted")
SYSTEMD_BINARY = "lib/systemd/systemd"
PROFILE_DIR = "usr/lib/systemd/portable/profile"


def data_text(version: int, name: str) -> str:
    return resources.files(__name__).joinpath("data", str(version), name).read_text()


def data_version(version: int | None) -> int | None:
    """The stored version whose facts hold for systemd ``version``: the newest one not newer."""
    if version is None:
        return None
    older = [v for v in VERSIONS if v <= version]
    return older[-1] if older else VERSIONS[0]


# -- reading the facts from a root (the data files are these outputs, verbatim)


def root_version(root: Path) -> int:
    out = run(["chroot", str(root), f"/{SYSTEMD_BINARY}", "--version"]).stdout.decode()
    m = re.match(r"systemd (\d+)", out)
    if m is None:
        raise ValueError(f"{root}: cannot read the systemd version from {out[:60]!r}")
    return int(m.group(1))


def dump_directives(root: Path) -> str:
    """What systemd in ``root`` knows: every section and key of unit files (no boot needed)."""
    return run(["chroot", str(root), f"/{SYSTEMD_BINARY}",
                "--dump-configuration-items"]).stdout.decode()


def profile_text(root: Path, profile: str) -> str:
    return (root / PROFILE_DIR / profile / "service.conf").read_text()


@cache
def _package_dir() -> Path:
    return Path(str(resources.files(__name__)))


def refresh(root: Path) -> int:
    """Store ``root``'s facts as data files; returns its systemd version."""
    version = root_version(root)
    out = _package_dir() / "data" / str(version)
    (out / "profile").mkdir(parents=True, exist_ok=True)
    (out / "directives.txt").write_text(dump_directives(root))
    for profile in PROFILES:
        (out / "profile" / f"{profile}.conf").write_text(profile_text(root, profile))
    return version
