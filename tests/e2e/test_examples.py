"""The examples users start from, built with the CLI and run by a real systemd."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from tests.conftest import REPO, require
from tests.e2e.lib import attached

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def example_images(tmp_path_factory) -> dict:
    import os

    from portable_service.api import build_image
    from portable_service.builder.spec import load_spec

    require(os.path.exists("/usr/sbin/lighttpd"), "lighttpd is not installed (apt-get install "
            "lighttpd)")
    out = tmp_path_factory.mktemp("examples")
    return {name: build_image(load_spec(REPO / "examples" / name), out)
            for name in ("demo", "lighttpd")}


def test_demo_example_starts_through_its_socket(container, example_images):
    c = container
    with attached(c, example_images["demo"]):
        assert c.start("demo.socket").ok, c.journal("demo.socket")
        assert c.unit_state("demo.service").active == "inactive"
        # a connection to the socket (through the container's root) starts the service
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(c.root / "run/demo.sock"))
        state = c.wait_for("demo.service")
        for _ in range(50):
            if "hello from demo 1.0" in c.journal("demo.service"):
                break
            time.sleep(0.1)
        journal = c.journal("demo.service")
    assert state.active == "active", journal
    assert "hello from demo 1.0" in journal


def test_lighttpd_example_serves_its_page(container, example_images):
    c = container
    with attached(c, example_images["lighttpd"]):
        assert c.start("web.service").ok, c.journal("web.service")
        state = c.wait_for("web.service")
        body = ""
        for _ in range(50):
            try:
                with urllib.request.urlopen("http://127.0.0.1:18081/", timeout=2) as r:
                    body = r.read().decode()
                break
            except OSError:
                if c.unit_state("web.service").active == "failed":
                    break
                time.sleep(0.1)
        journal = c.journal("web.service")
    assert state.active == "active", journal
    assert body == (REPO / "examples/lighttpd/html/index.html").read_text(), journal
