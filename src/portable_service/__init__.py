"""Build systemd portable service images.

The pipeline, one module per stage::

    spec -> units -> closure -> image tree -> writer -> image

The public API is :func:`build` (keyword arguments named like the spec keys)
and :class:`Spec`, the typed spec that can be built in code.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: importing typing costs start-up time
if TYPE_CHECKING:
    from portable_service.api import build
    from portable_service.builder.spec import Spec
    from portable_service.errors import PortableServiceError

__all__ = ["PortableServiceError", "Spec", "build"]
__version__ = "0.1.0"

# Loaded on first use (PEP 562): importing any module of the package runs this file, and a
# command that only reads an image, or a lower layer (portable_service.squashfs), must not
# pull in the whole builder, which costs 0.25 s at start-up.
_LAZY = {"build": "portable_service.api", "Spec": "portable_service.builder.spec",
         "PortableServiceError": "portable_service.errors"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'portable_service' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
