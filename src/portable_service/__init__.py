"""Build systemd portable service images.

The pipeline, one module per stage::

    spec -> units -> closure -> image tree -> writer -> image

The public API is :func:`build` (keyword arguments named like the spec keys)
and :class:`Spec`, the typed spec that can be built in code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from portable_service.api import build
    from portable_service.errors import PortableServiceError
    from portable_service.spec import Spec

__all__ = ["PortableServiceError", "Spec", "build"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # imported on first use: the command line starts (and takes Ctrl-C) before the
    # pipeline's modules load
    if name == "build":
        from portable_service.api import build

        return build
    if name == "Spec":
        from portable_service.spec import Spec

        return Spec
    if name == "PortableServiceError":
        from portable_service.errors import PortableServiceError

        return PortableServiceError
    raise AttributeError(f"module 'portable_service' has no attribute {name!r}")
