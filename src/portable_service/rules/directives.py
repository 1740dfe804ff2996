"""The unit-file keys each systemd version knows, per section (data/<N>/directives.txt).

systemd logs "Unknown key name 'K' in section 'S', ignoring." for any other
key and goes on without it; keys starting with "X-" it ignores silently.
"""

from __future__ import annotations

import difflib
from functools import cache

from portable_service.rules import VERSIONS, data_text

# the sections systemd reads in each portable unit type; others: "Unknown section ..., ignoring"
SECTIONS_OF = {
    ".service": ("Unit", "Service", "Install"),
    ".socket": ("Unit", "Socket", "Install"),
    ".timer": ("Unit", "Timer", "Install"),
    ".path": ("Unit", "Path", "Install"),
    ".target": ("Unit", "Install"),
}


@cache
def known_keys(version: int) -> dict[str, frozenset[str]]:
    """Section -> keys systemd ``version`` parses (a stored version, see rules.data_version)."""
    out: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in data_text(version, "directives.txt").splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = out.setdefault(line[1:-1], set())
        elif "=" in line and current is not None:
            current.add(line.split("=", 1)[0])
    return {s: frozenset(k) for s, k in out.items()}


def sections_of(unit_name: str) -> tuple[str, ...]:
    return next((s for t, s in SECTIONS_OF.items() if unit_name.endswith(t)), ())


def versions_knowing(section: str, key: str) -> tuple[int, ...]:
    return tuple(v for v in VERSIONS if key in known_keys(v).get(section, ()))


def closest(section: str, key: str) -> str | None:
    """The known key of ``section`` (any version) nearest to a misspelt ``key``."""
    keys = sorted(set().union(*(known_keys(v).get(section, frozenset()) for v in VERSIONS)))
    by_lower = {k.lower(): k for k in keys}
    if key.lower() in by_lower:  # systemd's keys are case-sensitive: ExecStart, not Execstart
        return by_lower[key.lower()]
    found = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return found[0] if found else None


def home_section(key: str, among: tuple[str, ...]) -> str | None:
    """The section of ``among`` where ``key`` belongs, when it was put in the wrong one."""
    return next((s for s in among for v in VERSIONS if key in known_keys(v).get(s, ())), None)
