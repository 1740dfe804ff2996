"""What each portable profile sets, per systemd version (data/<N>/profile/<NAME>.conf).

portablectl attach links the profile as the unit's 10-profile.conf drop-in, read
after the unit file: its settings win over the unit's own for single-value keys.
The files differ between versions (252 drops TemporaryFileSystem=/run, 257
drops PrivateTmp= from "default", ...).
"""

from __future__ import annotations

from functools import cache

from portable_service.rules import PROFILES, data_text
from portable_service.rules.unitfile import assigned_values, bind_paths, read_unit_text

DEFAULT_PROFILE = "default"


@cache
def profile_sections(version: int, profile: str) -> dict[str, list[tuple[str, str]]]:
    """The profile's service.conf read as a unit file (section [Service]) for ``version``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown portable profile {profile!r}")
    return read_unit_text(data_text(version, f"profile/{profile}.conf")).sections


def setting(version: int, profile: str, key: str) -> str | None:
    """The profile's last value of ``key`` in [Service], or None when it does not set it."""
    values = assigned_values(profile_sections(version, profile), "Service", key)
    return values[-1] if values else None


def sets_yes(version: int, profile: str, key: str) -> bool:
    return is_yes(setting(version, profile, key))


def is_yes(value: str | None) -> bool:
    """systemd's parse_boolean, true side."""
    return value is not None and value.strip().lower() in ("1", "yes", "y", "true", "t", "on")


def run_mounts(version: int, profile: str) -> list[str]:
    """What the profile mounts below /run in the unit's root (the D-Bus and journal sockets,
    /run/systemd/notify): on the tmpfs the profile's TemporaryFileSystem=/run or
    MountAPIVFS=yes puts there (``trusted`` binds the host's whole /run instead)."""
    found = []
    for key in ("BindReadOnlyPaths", "BindPaths"):
        for value in assigned_values(profile_sections(version, profile), "Service", key):
            for word in value.split():
                target = bind_paths(word)[1]
                if target.startswith("/run/"):
                    found.append(target)
    if sets_yes(version, profile, "BindLogSockets"):  # 257: the journal's sockets
        found.append("/run/systemd/journal/socket")
    return found


def keeps_capability(version: int, profile: str, unit_lines: list[str], cap: str) -> bool:
    """Whether ``cap`` is in the bounding set of a unit whose own CapabilityBoundingSet=
    lines are ``unit_lines``, with the profile's drop-in read after them.

    systemd's config_parse_capability_set: the first list sets the set (all capabilities
    before it), later lists are added (OR), a "~" list is taken away, and an empty
    assignment leaves the empty set ("strict" has one: no capabilities at all).
    """
    cap = cap.upper()
    profile_lines = [v for k, v in profile_sections(version, profile).get("Service", [])
                     if k == "CapabilityBoundingSet"]
    kept: bool | None = None  # None: not set yet, every capability
    for value in (v.strip() for v in [*unit_lines, *profile_lines]):
        if not value:
            kept = False
            continue
        named = cap in {w.upper() for w in value.lstrip("~").split()}
        if value.startswith("~"):
            kept = not named if kept is None else kept and not named
        else:
            kept = named if kept is None else kept or named
    return kept is not False
