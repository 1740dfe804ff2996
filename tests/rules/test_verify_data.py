"""The stored systemd facts (src/portable_service/rules/data) are what each release's systemd
prints and ships: compared with the cached Debian roots (systemd 247, 252, 257)."""

from __future__ import annotations

import os

import pytest

from portable_service.harness import roots
from portable_service.rules import (
    PROFILES,
    SYSTEMD_BINARY,
    VERSIONS,
    data_text,
    data_version,
    dump_directives,
    profile_text,
    root_version,
)
from portable_service.rules import directives as d
from portable_service.rules import profiles as p
from tests.conftest import require, require_root, require_tool


@pytest.mark.parametrize("suite", list(roots.RELEASES))
def test_stored_facts_equal_the_roots(suite: str) -> None:
    require_root()
    require_tool("chroot")
    release = roots.RELEASES[suite]
    root = roots.root_path(release)
    require(roots.is_ready(release) and os.path.exists(root / SYSTEMD_BINARY),
            f"the {suite} root is not cached (run the e2e tests once)")
    version = root_version(root)
    assert version == release.systemd
    assert version in VERSIONS
    assert dump_directives(root) == data_text(version, "directives.txt")
    for profile in PROFILES:
        assert profile_text(root, profile) == data_text(version, f"profile/{profile}.conf"), \
            f"{suite}: profile {profile} differs; refresh with python -m portable_service.rules"


def test_known_keys_per_version() -> None:
    for v in VERSIONS:
        keys = d.known_keys(v)
        assert {"ExecStart", "User", "DynamicUser", "KillMode", "CPUQuota"} <= keys["Service"]
        assert {"ListenStream", "Accept", "Service"} <= keys["Socket"]
        assert {"WantedBy", "Alias"} <= keys["Install"]
        assert "ExecStrat" not in keys["Service"]
    assert d.versions_knowing("Service", "BindLogSockets") == (257,)
    assert d.versions_knowing("Service", "ExitType") == (252, 257)
    assert d.versions_knowing("Service", "ExecStart") == VERSIONS


@pytest.mark.parametrize(("section", "key", "near"), [
    ("Service", "ExecStrat", "ExecStart"),
    ("Service", "Execstart", "ExecStart"),  # systemd's keys are case-sensitive
    ("Service", "Restrat", "Restart"),
    ("Socket", "ListenStrem", "ListenStream"),
    ("Timer", "OnCalender", "OnCalendar"),
    ("Service", "Zzzzqqq", None),
])
def test_closest_key(section: str, key: str, near: str | None) -> None:
    assert d.closest(section, key) == near


def test_profiles_differ_between_versions() -> None:
    assert p.setting(247, "default", "TemporaryFileSystem") == "/run"
    assert p.setting(252, "default", "TemporaryFileSystem") is None
    assert p.sets_yes(252, "default", "PrivateTmp") and p.setting(257, "default", "PrivateTmp") is None
    for v in VERSIONS:
        assert p.sets_yes(v, "default", "DynamicUser")
        assert p.sets_yes(v, "strict", "MemoryDenyWriteExecute")
        assert p.sets_yes(v, "nonetwork", "PrivateNetwork")
        assert not p.sets_yes(v, "trusted", "DynamicUser")
        assert p.setting(v, "trusted", "MemoryDenyWriteExecute") is None


def test_what_each_profile_mounts_below_run() -> None:
    assert "/run/dbus/system_bus_socket" in p.run_mounts(252, "default")
    assert "/run/systemd/notify" in p.run_mounts(247, "strict")
    assert p.run_mounts(257, "strict") == ["/run/systemd/journal/socket"]  # BindLogSockets=yes
    for v in VERSIONS:
        assert p.run_mounts(v, "trusted") == []  # the host's /run, whole
        assert p.run_mounts(v, "nonetwork")


def test_the_bounding_set_with_the_profiles_lines() -> None:
    nsd = ["CAP_NET_BIND_SERVICE CAP_NET_RAW"]
    for v in VERSIONS:
        assert p.keeps_capability(v, "default", nsd, "CAP_NET_RAW")  # the unit's own, ORed
        assert p.keeps_capability(v, "default", [], "cap_setuid")  # the profile's
        assert not p.keeps_capability(v, "default", [], "CAP_SYS_TIME")
        assert not p.keeps_capability(v, "strict", nsd, "CAP_NET_BIND_SERVICE")  # emptied
        assert p.keeps_capability(v, "trusted", [], "CAP_SYS_TIME")  # not limited
        assert not p.keeps_capability(v, "trusted", nsd, "CAP_SYS_TIME")
        assert not p.keeps_capability(v, "trusted", ["~CAP_SYS_TIME"], "CAP_SYS_TIME")
        assert p.keeps_capability(v, "trusted", ["~CAP_SYS_TIME"], "CAP_CHOWN")


def test_data_version_picks_the_newest_not_newer() -> None:
    assert data_version(None) is None
    assert data_version(247) == 247
    assert data_version(250) == 247
    assert data_version(255) == 252
    assert data_version(260) == 257
    assert data_version(240) == 247  # older than any stored: the oldest facts
