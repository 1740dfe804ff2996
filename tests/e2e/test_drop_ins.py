"""Drop-ins on real systemd 247, 252 and 257: portabled never reads a NAME.d/*.conf inside an
image, so the build merges the spec's drop-ins into the unit file, and they take effect."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.atomic import write_atomically
from portable_service.builder.pipeline import plan as plan_build
from portable_service.builder.spec import spec_from_mapping
from portable_service.progress import QUIET
from tests.e2e.lib import attached, build_image, tcp_get

pytestmark = pytest.mark.e2e

PORT = 18161
SERVICE = f"[Service]\nExecStart=/usr/bin/psdemo serve {PORT} stock\n"
DROP_IN = f"[Service]\nExecStart=\nExecStart=/usr/bin/psdemo serve {PORT} 'from the drop-in'\n"


def settings(psdemo: Path) -> dict[str, object]:
    return {"pname": "dropdemo", "version": "1",
            "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}]}


def test_merged_drop_in_takes_effect(container, psdemo, tmp_path):
    folder = tmp_path / "dropdemo.service.d"
    folder.mkdir()
    (folder / "10-message.conf").write_text(DROP_IN)
    (tmp_path / "dropdemo.service").write_text(SERVICE)
    image = build_image(tmp_path, {**settings(psdemo),
                                   "units": ["dropdemo.service", "dropdemo.service.d"]})
    with attached(container, image):
        assert container.systemctl("start", "dropdemo.service").ok
        assert tcp_get(PORT) == "from the drop-in\n"


def test_drop_in_inside_the_image_is_ignored(container, psdemo, tmp_path):
    """The negative control: the same drop-in shipped as a file in the image does nothing."""
    spec = spec_from_mapping({**settings(psdemo), "squash-compression": "gzip",
                              "units": [{"name": "dropdemo.service", "text": SERVICE}]}, tmp_path)
    plan = plan_build(spec)
    plan.tree.add_dir(PurePosixPath("/etc/systemd/system/dropdemo.service.d"))
    plan.tree.add_file(PurePosixPath("/etc/systemd/system/dropdemo.service.d/10-message.conf"),
                       data=DROP_IN.encode())
    image = tmp_path / spec.image_name
    write_atomically(image, lambda tmp: plan.writer.write(plan.tree, tmp, plan.options, QUIET))
    with attached(container, image):
        assert container.systemctl("start", "dropdemo.service").ok
        assert tcp_get(PORT) == "stock\n", "systemd applied a drop-in from inside the image"
