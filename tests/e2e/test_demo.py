"""The reference's own test: demo.service + demo.socket, attach --now --runtime, detach."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.lib import build_image, tcp_get, unit

PORT = 18101
pytestmark = pytest.mark.e2e


def demo_settings(psdemo: Path, version: str = "1.0", message: str = "hello from demo 1.0"):
    return {
        "pname": "demo",
        "version": version,
        "units": [
            unit("demo.service", "[Unit]\nDescription=demo\n[Service]\n"
                 f"ExecStart=/usr/bin/psdemo sockserve '{message}'\n"),
            unit("demo.socket", f"[Socket]\nListenStream=127.0.0.1:{PORT}\n"
                 "[Install]\nWantedBy=sockets.target\n"),
        ],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}],
    }


def test_attach_now_socket_activation_detach(container, psdemo, tmp_path):
    c = container
    image = build_image(tmp_path, demo_settings(psdemo))
    attach = c.attach(image, now=True, runtime=True)
    assert attach.ok, attach.output
    try:
        # --now queues starts of both units at once, without waiting and in no fixed order.
        # When the service wins (seen on 247 and 257), it gets no socket and exits, and
        # systemd refuses the socket ("Socket service demo.service already active").
        # Either way --now started the service; then stop it, and (re)start the socket,
        # so that the connection below must go through socket activation.
        c.wait_for("demo.service")
        assert "Started demo" in c.journal("demo.service"), c.journal(None)[-2000:]
        c.systemctl("stop", "demo.service", check=True)
        c.systemctl("reset-failed", "demo.service")
        c.systemctl("start", "demo.socket", check=True)
        assert c.unit_state("demo.service").active == "inactive"
        assert c.unit_state("demo.socket").active == "active"
        assert tcp_get(PORT) == "hello from demo 1.0\n"
        state = c.wait_for("demo.service")
        assert state.active == "active", c.journal("demo.service")
        assert "socket-activated" in c.journal("demo.service")
        listed = c.portablectl("list", "--no-legend").stdout
        # attached with --runtime: portabled lists it as running-runtime (or attached-runtime)
        line = next(ln for ln in listed.splitlines() if ln.startswith("demo_1.0 "))
        assert line.split()[-1] in ("running-runtime", "attached-runtime"), line
    finally:
        detach = c.detach("demo_1.0", runtime=True, now=True)
    assert detach.ok, detach.output
    for name in ("demo.service", "demo.socket"):
        assert c.unit_state(name).load == "not-found", c.status(name)
    assert "demo_1.0" not in c.portablectl("list", "--no-legend").stdout
