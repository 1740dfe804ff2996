"""The pure parts of ``portable-service try``: which units it starts, which line it reports."""

from __future__ import annotations

import pytest

from conftest import require_root, require_tool
from portable_service.cli import main
from portable_service.trycmd import first_cause, units_to_start


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
