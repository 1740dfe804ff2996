"""The same image under each portable profile behaves as the profile says."""

from __future__ import annotations

import pytest

from tests.e2e.lib import attached, build_image, port_closed, tcp_get, unit

pytestmark = pytest.mark.e2e
PORT = 18121


@pytest.fixture(scope="module")
def image(tmp_path_factory, psdemo):
    return build_image(tmp_path_factory.mktemp("profiles"), {
        "pname": "prof", "version": "1.0",
        "units": [unit("prof.service", f"[Service]\nExecStart=/usr/bin/psdemo report {PORT}\n")],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}]})


def report(c, profile, image) -> tuple[dict[str, str], bool]:
    """(fields the service printed, whether the host reached it over TCP)."""
    with attached(c, image, profile=profile):
        assert c.start("prof.service").ok, c.journal("prof.service")
        assert c.wait_for("prof.service").active == "active", c.journal("prof.service")
        # it prints its report, then either listens or says why it cannot
        for _ in range(100):
            journal = c.journal("prof.service").split("Started")[-1]
            if "listening on" in journal or "inet socket:" in journal:
                break
            c.run("sleep", "0.1")
        reachable = not port_closed(PORT) and tcp_get(PORT, timeout=2) == "report\n"
    fields = {}
    for line in journal.splitlines():
        if line.startswith("psdemo: ") and ("=" in line or ":\t" in line):
            key, _, value = line[8:].replace(":\t", "=", 1).partition("=")
            fields[key.strip()] = value.strip()
        if "inet socket:" in line:
            fields["inet"] = line.split("inet socket:", 1)[1].strip()
    return fields, reachable


def host_caps(c) -> str:
    status = c.read_file("/proc/1/status")
    return next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapBnd:"))


def test_default_dynamic_user_with_network(container, image):
    fields, reachable = report(container, "default", image)
    assert fields["uid"] != "0", fields
    assert fields["CapBnd"] != host_caps(container), fields  # a reduced bounding set
    assert "inet" not in fields, fields
    assert reachable


def test_nonetwork_has_no_inet(container, image):
    fields, reachable = report(container, "nonetwork", image)
    assert fields["uid"] != "0", fields
    assert "not supported" in fields.get("inet", ""), fields
    assert not reachable


def test_strict_no_capabilities_no_network(container, image):
    fields, reachable = report(container, "strict", image)
    assert fields["uid"] != "0", fields
    assert int(fields["CapBnd"], 16) == 0, fields
    assert fields["NoNewPrivs"] == "1", fields
    assert "not supported" in fields.get("inet", ""), fields
    assert not reachable


def test_trusted_runs_as_root_with_network(container, image):
    fields, reachable = report(container, "trusted", image)
    assert fields["uid"] == "0", fields
    assert fields["CapBnd"] == host_caps(container), fields
    assert fields["NoNewPrivs"] == "0", fields
    assert reachable
