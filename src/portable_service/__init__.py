"""Build systemd portable service images.

The pipeline, one module per stage::

    spec -> units -> closure -> image tree -> writer -> image

The public API is :func:`build` (keyword arguments named like the spec keys)
and :class:`Spec`, the typed spec that can be built in code.
"""

from portable_service.api import build
from portable_service.builder.spec import Spec
from portable_service.errors import PortableServiceError

__all__ = ["PortableServiceError", "Spec", "build"]
__version__ = "0.1.0"
