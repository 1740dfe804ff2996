"""``format = "ddi"``: the writer's file system becomes the root partition of a GPT disk image.

The file system is written to a temporary file beside the output (named like the build's
own temporaries, so a killed build's leftovers are cleaned the same way), then copied
into its partition.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from portable_service.disk import ddi
from portable_service.progress import Reporter

if TYPE_CHECKING:
    from portable_service.builder.pipeline import Plan


def seed_of(image_name: str) -> bytes:
    """What every derived UUID of the disk starts from: the image's name, so that two
    builds of one spec agree and two images never share a disk UUID by accident."""
    return b"portable-service ddi\0" + image_name.encode()


def write_ddi_image(plan: Plan, out: Path, reporter: Reporter) -> None:
    from portable_service.builder.pipeline import TMP_SUFFIX

    name = plan.spec.image_name
    fd, fs_name = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=TMP_SUFFIX,
                                   dir=out.parent)
    os.close(fd)
    filesystem = Path(fs_name)
    try:
        plan.writer.write(plan.tree, filesystem, plan.options, reporter)
        with reporter.step("placing the file system in a GPT disk image"):
            ddi.write_ddi(filesystem, out, seed=seed_of(name))
    finally:
        with contextlib.suppress(FileNotFoundError):
            filesystem.unlink()
