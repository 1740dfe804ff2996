"""Build systemd portable service images.

The pipeline, one module per stage::

    spec -> units -> closure -> image tree -> writer -> image

The public API is :func:`build` (keyword arguments named like the spec keys)
and :class:`Spec`, the typed spec that can be built in code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from portable_service.errors import PortableServiceError

if TYPE_CHECKING:
    from portable_service.api import build
    from portable_service.builder.spec import Spec

__all__ = ["PortableServiceError", "Spec", "build"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``build`` and ``Spec`` are loaded on first use (PEP 562): importing any module of
    the package runs this file, and the build pipeline's imports would otherwise be most
    of the start-up of a command that only reads an image."""
    if name == "build":
        from portable_service.api import build

        return build
    if name == "Spec":
        from portable_service.builder.spec import Spec

        return Spec
    raise AttributeError(f"module 'portable_service' has no attribute {name!r}")
