"""Run-time needs on real systemd 247, 252 and 257: a dynamic user that resolves, a locale
that loads, and python3 with its standard library; each against a control image without it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from portable_service.fs.views import open_image
from portable_service.look.verify import verify
from tests.conftest import require
from tests.e2e.conftest import HERE, require_e2e
from tests.e2e.lib import attached, build_image, unit

pytestmark = pytest.mark.e2e
NO_NSS = ["*/libnss_systemd.so.2"]  # the negative control: the image cannot resolve dynamic users


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/e2e/runtime_probe.c, linked dynamically against the host's glibc."""
    require_e2e()
    out = tmp_path_factory.mktemp("probe") / "runtime-probe"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(HERE / "runtime_probe.c")], check=True)
    return out


def probe_spec(probe: Path, pname: str, service: str, **extra: object) -> dict:
    return {"pname": pname, "version": "1",
            "units": [unit(f"{pname}.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                           f"Environment=LANG=C.UTF-8\n{service}"
                           "ExecStart=/usr/bin/runtime-probe\n")],
            "contents": [{"source": str(probe), "target": "/usr/bin/runtime-probe"}], **extra}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, probe: Path) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("identity")
    # trusted runs as root unless the unit asks for a dynamic user itself
    return {
        "default": build_image(base / "a", probe_spec(probe, "who", "")),
        "trusted": build_image(base / "b", probe_spec(probe, "whot", "DynamicUser=yes\n")),
        "control": build_image(base / "c", probe_spec(probe, "nonss", "", exclude=NO_NSS)),
        "control-trusted": build_image(base / "d", probe_spec(probe, "nonsst", "DynamicUser=yes\n",
                                                              exclude=NO_NSS)),
    }


def test_a_named_host_user_resolves(container, probe, tmp_path):
    """User=daemon (a user of the container's root): the host's passwd is bound in."""
    image = build_image(tmp_path, probe_spec(probe, "named", "User=daemon\n"))
    for profile in ("trusted", "default"):
        ok, out = run_probe(container, image, profile)
        assert ok and "probe: user=daemon uid=1" in out, (profile, out)


def run_probe(c, image: Path, profile: str) -> tuple[bool, str]:
    name = image.name.split("_", 1)[0]
    with attached(c, image, profile=profile):
        start = c.start(f"{name}.service")
        journal = c.journal(f"{name}.service")
    return start.ok, "\n".join(ln for ln in journal.splitlines() if "probe:" in ln)


@pytest.mark.parametrize("profile", ["default", "trusted"])
def test_dynamic_user_resolves(container, images, profile):
    ok, out = run_probe(container, images[profile], profile)
    assert ok, out
    user = next(ln for ln in out.splitlines() if "user=" in ln)
    assert "uid=0" not in user, out  # a dynamic user, not root
    assert user.split("user=", 1)[1].split()[0], out
    assert "locale=C.UTF-8" in out, out


@pytest.mark.parametrize("profile", ["default", "trusted"])
def test_without_nss_systemd_the_lookup_fails_as_databases_do(container, images, profile):
    ok, out = run_probe(container, images["control" if profile == "default" else "control-trusted"],
                        profile)
    assert not ok, out
    assert "could not look up effective user ID" in out, out


PY_CODE = ("import encodings, json, ssl, sqlite3, locale; "
           "print('python ok', json.dumps(sorted(['ssl', 'sqlite3'])), locale.getpreferredencoding())")


@pytest.fixture(scope="module")
def python_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_e2e()
    require(os.path.exists("/usr/lib/python3/dist-packages") or os.path.exists("/usr/bin/python3"),
            "python3 is not installed (apt-get install python3)")
    base = tmp_path_factory.mktemp("python")
    script = base / "hello.py"
    script.write_text(f"#!/usr/bin/python3\n{PY_CODE}\n")
    script.chmod(0o755)
    spec = {"pname": "py", "version": "1",
            "units": [unit("py.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                           "ExecStart=/usr/lib/py/hello.py\n")],
            "contents": [{"source": str(script), "target": "/usr/lib/py/hello.py"}]}
    return {"stdlib": build_image(base / "a", spec),
            "control": build_image(base / "b", {**spec, "pname": "pyno",
                                                "units": [unit("pyno.service",
                                                               spec["units"][0]["text"])],
                                                "exclude": ["/usr/lib/python3.*"]})}


def python_problems(image: Path) -> set[tuple[str, str]]:
    """What verify says about python in the image."""
    fs = open_image(image)
    try:
        return {(p.severity, p.path) for p in verify(fs, image.name)
                if p.rule == "python-stdlib-missing"}
    finally:
        fs.close()


def test_python_script_runs_with_its_standard_library(container, python_images):
    assert python_problems(python_images["stdlib"]) == set()
    with attached(container, python_images["stdlib"]):
        ok = container.start("py.service").ok
        journal = container.journal("py.service")
    assert ok, journal
    assert 'python ok ["sqlite3", "ssl"] utf-8' in journal.lower(), journal


def test_python_without_standard_library_dies_at_start(container, python_images):
    # verify says so before systemd does
    assert ("error", os.path.realpath("/usr/bin/python3")) in python_problems(
        python_images["control"])
    with attached(container, python_images["control"]):
        ok = container.start("pyno.service").ok
        journal = container.journal("pyno.service")
    assert not ok, journal
    assert "No module named 'encodings'" in journal, journal


@pytest.fixture(scope="module")
def tz_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_e2e()
    require(os.path.exists("/usr/share/zoneinfo/Europe/Berlin"), "apt-get install tzdata")
    base = tmp_path_factory.mktemp("tz")

    def spec(pname: str, **extra: object) -> dict:
        return {"pname": pname, "version": "1", **extra,
                "units": [unit(f"{pname}.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                               "Environment=TZ=Europe/Berlin\n"
                               "ExecStart=/usr/bin/date -d @0 \"+zone %%Z hour %%H\"\n")]}
    return {"zone": build_image(base / "a", spec("tz")),
            "control": build_image(base / "b", spec("tzno", exclude=["/usr/share/zoneinfo/*"]))}


def test_tz_in_a_unit_brings_its_zone(container, tz_images):
    for key, name, expected in (("zone", "tz", "zone CET hour 01"),
                                ("control", "tzno", "zone Europe hour 00")):
        with attached(container, tz_images[key]):
            ok = container.start(f"{name}.service").ok
            journal = container.journal(f"{name}.service")
        assert ok and expected in journal, (key, journal)
