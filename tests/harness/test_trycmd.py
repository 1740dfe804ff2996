"""The pure parts of ``portable-service try``: which units it starts, which line it reports."""

from __future__ import annotations

import os

import pytest

from portable_service.cli import main
from portable_service.harness.trial import first_cause, units_to_start
from tests.conftest import require_root, require_tool


def test_triggered_services_and_templates_are_not_started_directly():
    attached = ["demo.service", "demo.socket", "demo-tick.service", "demo-tick.timer",
                "demo-web.service", "demo-worker@.service", "demo.target"]
    assert units_to_start(attached) == ["demo.socket", "demo-tick.timer", "demo-web.service",
                                        "demo.target"]


def test_first_cause_skips_systemds_summary_lines():
    journal = (
        "Started mp.service.\n"
        "Failed to create destination mount point node '/run/systemd/unit-root/var/lib/mp': "
        "Read-only file system\n"
        "mp.service: Failed at step NAMESPACE spawning /usr/bin/psdemo: No such file\n"
        "mp.service: Main process exited, code=exited, status=226/NAMESPACE\n"
        "mp.service: Failed with result 'exit-code'.\n")
    assert first_cause(journal).startswith("Failed to create destination mount point node")
    assert first_cause("x.service: Failed with result 'exit-code'.\n") == (
        "x.service: Failed with result 'exit-code'.")
    assert first_cause("") == "no message in the journal"


@pytest.mark.parametrize(("name", "message"), [
    ("demo_1.0.img", "does not end in .raw"),
    ("demo.raw", "has no '_' between name and version"),
    ("missing_1.0.raw", "does not exist"),
])
def test_bad_image_argument_is_one_line(tmp_path, capsys, name, message):
    if name != "missing_1.0.raw":
        (tmp_path / name).write_bytes(b"hsqs")
    # the image is checked after root and the tools
    require_root()
    for tool in ("systemd-nspawn", "debootstrap", "unshare", "nsenter"):
        require_tool(tool)
    assert main(["try", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_try_as_non_root_exits_3_with_one_line(capsys, tmp_path):
    """Exit 3 (cannot run here) is told apart from 1 (the image failed) and 2 (bad input)."""
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(65534)  # the real uid stays root, so the test can come back
    try:
        code = main(["try", str(tmp_path / "demo_1.0.raw")])
    finally:
        if as_root:
            os.seteuid(0)
    assert code == 3
    assert capsys.readouterr().err.strip().splitlines() == [
        "portable-service: error: booting a throwaway systemd needs root; "
        "run it as root (e.g. with sudo)"]


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["try", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("0 every unit is good", "1 the image failed on systemd",
                  "2 a usage or input error", "3 this machine cannot run it"):
        assert words in text, text


@pytest.mark.parametrize("argv", [["--settle", "soon"], ["--release", "buster"],
                                  ["--timeout", "-1"]])
def test_bad_flags_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(["try", "x_1.raw", *argv])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_no_debian_root_exits_3(tmp_path, capsys, monkeypatch):
    """The root cannot be created (no mirror here): this machine cannot run it, exit 3."""
    require_root()
    for tool in ("systemd-nspawn", "debootstrap", "unshare", "nsenter"):
        require_tool(tool)
    (tmp_path / "demo_1.0.raw").write_bytes(b"hsqs")
    monkeypatch.setenv("PORTABLE_SERVICE_ROOTS", str(tmp_path / "roots"))
    monkeypatch.setenv("PORTABLE_SERVICE_MIRROR", "http://127.0.0.1:9/debian")
    assert main(["try", str(tmp_path / "demo_1.0.raw"), "-q"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("portable-service: error: cannot create the Debian 12 root: "
                             "cannot reach the Debian mirror http://127.0.0.1:9/debian"), err
