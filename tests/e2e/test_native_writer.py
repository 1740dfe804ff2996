"""Images from the pure-Python writer, attached and run by systemd 247, 252 and 257."""

from __future__ import annotations

import pytest

from tests.e2e.lib import attached, build_image, tcp_get, unit

pytestmark = pytest.mark.e2e

PORT = 18151


@pytest.mark.parametrize("compression", ["xz -Xdict-size 100%", "zstd", "lzo"])
def test_native_image_attaches_and_serves(container, psdemo, tmp_path, compression):
    c = container
    image = build_image(tmp_path, {
        "pname": "nativedemo", "version": "1", "writer": "native",
        "squash-compression": compression,
        "units": [
            # ExecStartPre= runs a dynamically linked host program: its libraries come
            # from the closure, written by the native writer too
            unit("nativedemo.service", "[Service]\nExecStartPre=/usr/bin/env true\n"
                 "ExecStart=/usr/bin/psdemo sockserve 'hello from a native image'\n"),
            unit("nativedemo.socket", f"[Socket]\nListenStream=127.0.0.1:{PORT}\n"),
        ],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}],
    })
    with attached(c, image) as name:
        assert name == "nativedemo_1"
        assert c.systemctl("start", "nativedemo.socket").ok
        assert tcp_get(PORT) == "hello from a native image\n"
        state = c.wait_for("nativedemo.service")
        assert state.active == "active", c.journal("nativedemo.service")
