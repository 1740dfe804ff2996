"""A long-running server with state, a timer, a template instance, and an upgrade."""

from __future__ import annotations

import time

import pytest

from tests.e2e.lib import attached, build_image, port_closed, tcp_get, unit

pytestmark = pytest.mark.e2e

SERVER_PORT = 18111
UPGRADE_PORT = 18112


def psdemo_content(psdemo):
    return [{"source": str(psdemo), "target": "/usr/bin/psdemo"}]


def test_state_directory_server_probed_from_host(container, psdemo, tmp_path):
    c = container
    image = build_image(tmp_path, {
        "pname": "stateful", "version": "1.0",
        "units": [unit("stateful.service", "[Service]\nStateDirectory=stateful\n"
                       f"ExecStart=/usr/bin/psdemo serve {SERVER_PORT} 'stateful server'\n")],
        "contents": psdemo_content(psdemo)})
    with attached(c, image):
        start = c.start("stateful.service")
        assert start.ok, c.journal("stateful.service")
        assert tcp_get(SERVER_PORT) == "stateful server\n"
        # DynamicUser= keeps the state below /var/lib/private, written by a non-root uid
        state = c.read_file("/var/lib/private/stateful/hello.txt")
        assert state.startswith("hello from psdemo uid=")
        assert "uid=0\n" not in state
        # the state survives a restart: the file grows
        assert c.systemctl("restart", "stateful.service").ok
        assert tcp_get(SERVER_PORT) == "stateful server\n"
        assert c.read_file("/var/lib/private/stateful/hello.txt").count("hello") == 2
    assert c.unit_state("stateful.service").load == "not-found"
    assert port_closed(SERVER_PORT)


def test_timer_fires_and_template_instance(container, psdemo, tmp_path):
    c = container
    image = build_image(tmp_path, {
        "pname": "tick", "version": "1.0",
        "units": [
            unit("tick.timer", "[Timer]\nOnActiveSec=1\nAccuracySec=1ms\n"),
            unit("tick.service", "[Service]\nType=oneshot\n"
                 "ExecStart=/usr/bin/psdemo say tick fired\n"),
            unit("tick-greet@.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                 "ExecStart=/usr/bin/psdemo say greeting %i\n"),
        ],
        "contents": psdemo_content(psdemo)})
    with attached(c, image):
        assert c.systemctl("start", "tick.timer").ok, c.journal("tick.timer")
        assert c.unit_state("tick.timer").active == "active"
        deadline = time.monotonic() + 15
        while "tick fired" not in c.journal("tick.service") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "tick fired" in c.journal("tick.service"), c.journal(None)[-3000:]
        assert c.unit_state("tick.service").result == "success"

        start = c.start("tick-greet@world.service")
        assert start.ok, c.journal("tick-greet@world.service")
        assert "greeting world" in c.journal("tick-greet@world.service")
        # the instance runs from the image: the journal records which one
        portable = c.run("journalctl", "-b", "-o", "cat", "--no-pager",
                         "PORTABLE=tick_1.0.raw").stdout
        assert "greeting world" in portable or "tick fired" in portable, portable


def test_upgrade_with_reattach(container, psdemo, tmp_path):
    c = container

    def version(v):
        return build_image(tmp_path / v, {
            "pname": "upg", "version": v,
            "units": [unit("upg.service", "[Service]\n"
                           f"ExecStart=/usr/bin/psdemo serve {UPGRADE_PORT} 'upg {v}'\n")],
            "contents": psdemo_content(psdemo)})

    old, new = version("1.0"), version("2.0")
    assert c.attach(old).ok
    try:
        assert c.start("upg.service").ok, c.journal("upg.service")
        assert tcp_get(UPGRADE_PORT) == "upg 1.0\n"
        c.copy_image(new)
        if c.release.systemd < 248:
            # reattach came with systemd 248: 247 upgrades by detach + attach
            assert "Unknown command verb reattach" in c.portablectl("reattach", "upg_2.0").output
            assert c.detach("upg_1.0", now=True).ok
            assert c.attach(new, now=True).ok
        else:
            # the old image is found by its prefix; --now restarts the units
            c.settle()
            reattach = c.portablectl("reattach", "--now", "--runtime", "upg_2.0")
            c.settle()
            assert reattach.ok, reattach.output
        root_image = c.systemctl("show", "-p", "RootImage", "upg.service").stdout
        assert root_image.strip() == "RootImage=/var/lib/portables/upg_2.0.raw", root_image
        assert c.wait_for("upg.service").active == "active", c.journal("upg.service")
        deadline = time.monotonic() + 10
        while (reply := tcp_get(UPGRADE_PORT)) != "upg 2.0\n" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reply == "upg 2.0\n"
    finally:
        for name in ("upg_2.0", "upg_1.0"):
            c.detach(name)
    assert port_closed(UPGRADE_PORT)
