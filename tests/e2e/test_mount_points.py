"""Unit-aware mount points: each directive starts with our image, and fails without the
mount point the builder created (negative control built by the same pipeline with that one
entry dropped before writing)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.pipeline import plan
from portable_service.builder.spec import spec_from_mapping
from tests.conftest import unsquashfs_list
from tests.e2e.conftest import LOG_DIR
from tests.e2e.lib import build_image, unit

pytestmark = pytest.mark.e2e

# directive line, the path the unit probes (and the builder must create), what the probe says
CASES = {
    "StateDirectory": ("StateDirectory=mp-state", "/var/lib/mp-state", "folder, writable"),
    "CacheDirectory": ("CacheDirectory=mp-cache", "/var/cache/mp-cache", "folder, writable"),
    "LogsDirectory": ("LogsDirectory=mp-logs", "/var/log/mp-logs", "folder, writable"),
    "ConfigurationDirectory": ("ConfigurationDirectory=mp-conf", "/etc/mp-conf", "folder"),
    "BindPaths": ("BindPaths=/var/lib/portables:/srv/bind", "/srv/bind", "folder"),
    "BindReadOnlyPaths": ("BindReadOnlyPaths=/etc/os-release:/srv/os-release",
                          "/srv/os-release", "file: PRETTY_NAME="),
    "TemporaryFileSystem": ("TemporaryFileSystem=/srv/scratch:mode=1777", "/srv/scratch",
                            "folder, writable"),
    "ReadWritePaths": ("ReadWritePaths=/srv/rw", "/srv/rw", "folder"),
    "WorkingDirectory": ("WorkingDirectory=/srv/work", "/srv/work", "cwd=/srv/work"),
}


def unit_name(directive: str) -> str:
    return f"mp-{directive.lower()}.service"


def settings(psdemo: Path, version: str) -> dict:
    units = [
        unit(unit_name(d), "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
             f"{line}\nExecStart=/usr/bin/psdemo probe {path}\n")
        for d, (line, path, _) in CASES.items()
    ]
    return {"pname": "mp", "version": version, "units": units,
            "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}]}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, psdemo: Path) -> dict[str, Path]:
    """The full image, and per directive the same image less that one mount point."""
    out = tmp_path_factory.mktemp("mp")
    # every probed path is there because the builder read the units, not by accident
    tree = plan(spec_from_mapping(settings(psdemo, "1"), out)).tree
    for directive, (_, path, _) in CASES.items():
        entry = tree.get(PurePosixPath(path))
        assert entry is not None and entry.origin.startswith("mount point for"), (directive, entry)
    built = {"all": build_image(out, settings(psdemo, "1"))}
    for directive, (_, path, _) in CASES.items():
        built[directive] = build_image(out, settings(psdemo, f"no-{directive}"),
                                       drop=PurePosixPath(path))
    return built


@pytest.mark.parametrize("directive", list(CASES))
def test_directive_needs_its_mount_point(container, images, directive):
    c = container
    name = unit_name(directive)
    _, path, expected = CASES[directive]

    # with the mount point the builder created: the unit starts and sees the path
    attach = c.attach(images["all"])
    assert attach.ok, attach.output
    try:
        start = c.start(name)
        state = c.unit_state(name)
        journal = c.journal(name)
    finally:
        c.detach("mp_1")
    assert start.ok and state.active == "active", f"{name} on {c.release.suite}:\n{journal}"
    assert expected in journal, journal

    # the same image without it: systemd cannot set up the unit's sandbox
    bad = images[directive]
    attach = c.attach(bad)
    assert attach.ok, attach.output
    seen = len(c.journal(name).splitlines())
    try:
        c.start(name)
        state = c.unit_state(name)
        journal = "\n".join(c.journal(name).splitlines()[seen:])  # this start's lines
    finally:
        c.detach(bad.name.removesuffix(".raw"))
    step = "200/CHDIR" if directive == "WorkingDirectory" else "226/NAMESPACE"
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / f"mount-points-{c.release.suite}.txt", "a") as f:
        f.write(f"## {directive} without {path}: {state.active}/{state.result}\n{journal}\n")
    assert state.active == "failed", (
        f"{name} started on {c.release.suite} although {path} was dropped: "
        f"the mount point is not needed there\n{journal}")
    assert f"status={step}" in journal, journal


def test_runtime_directory_needs_no_mount_point(container, tmp_path, psdemo):
    """/run is a tmpfs in the unit's root under every profile: nothing to create."""
    c = container
    image = build_image(tmp_path, {
        "pname": "mprun", "version": "1",
        "units": [unit("mprun.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                       "RuntimeDirectory=mprun\nExecStart=/usr/bin/psdemo probe /run/mprun\n")],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}]})
    assert "/run/mprun" not in unsquashfs_list(image)
    for profile in ("default", "trusted"):
        attach = c.attach(image, profile=profile)
        assert attach.ok, attach.output
        try:
            start = c.start("mprun.service")
            journal = c.journal("mprun.service")
        finally:
            c.detach("mprun_1")
        assert start.ok, f"{profile} on {c.release.suite}: {journal}"
        assert "/run/mprun: folder, writable" in journal
