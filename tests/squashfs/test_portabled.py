"""A natively written image attached by a real systemd-portabled and started."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from portable_service.build import plan as plan_build
from portable_service.build import write_atomically
from portable_service.progress import QUIET, Reporter
from portable_service.spec import spec_from_mapping
from tests.conftest import REPO, require, require_root, require_tool

PORT = 18151
pytestmark = [pytest.mark.e2e, pytest.mark.root]


def _get(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return s.makefile().read()


@pytest.mark.parametrize("compression", ["xz -Xdict-size 100%", "zstd"])
def test_portabled_runs_a_native_image(tmp_path: Path, compression: str) -> None:
    require_root()
    for tool in ("systemd-nspawn", "debootstrap", "unshare", "nsenter", "gcc"):
        require_tool(tool)
    from portable_service.harness import nspawn, roots

    psdemo = tmp_path / "psdemo"
    proc = subprocess.run(["gcc", "-static", "-O2", "-o", str(psdemo),
                           str(REPO / "tests/e2e/psdemo.c")], capture_output=True, text=True,
                          check=False)
    require(proc.returncode == 0, f"cannot build psdemo: {proc.stderr[-200:]}")
    spec = spec_from_mapping({
        "pname": "nativedemo", "version": "1", "writer": "native",
        "squash-compression": compression,
        "units": [
            {"name": "nativedemo.service", "text": "[Service]\n"
             "ExecStart=/usr/bin/psdemo sockserve 'hello from a native image'\n"},
            {"name": "nativedemo.socket", "text": f"[Socket]\nListenStream=127.0.0.1:{PORT}\n"},
        ],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}],
    }, tmp_path)
    plan = plan_build(spec)
    assert plan.writer.name == "native"
    image = tmp_path / spec.image_name
    write_atomically(image, lambda tmp: plan.writer.write(plan.tree, tmp, plan.options, QUIET))
    release = roots.RELEASES["bookworm"]
    root = roots.ensure_root(release, Reporter(quiet=True))
    log_dir = Path(os.environ.get("PORTABLE_SERVICE_E2E_LOGS",
                                  "/var/tmp/portable-service-e2e-logs"))
    with nspawn.booted(release, root, log_dir=log_dir) as c:
        attach = c.attach(image, now=False, runtime=True)
        assert attach.ok, attach.output
        try:
            c.systemctl("start", "nativedemo.socket", check=True)
            assert _get(PORT) == "hello from a native image\n"
            assert c.wait_for("nativedemo.service").active == "active", \
                c.journal("nativedemo.service")
        finally:
            detach = c.detach("nativedemo_1", runtime=True, now=True)
        assert detach.ok, detach.output
