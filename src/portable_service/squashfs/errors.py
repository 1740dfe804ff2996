"""The squashfs package's errors: a closed set, all ImageError so the CLI prints one line."""

from __future__ import annotations

from portable_service.errors import ImageError


class CorruptImageError(ImageError):
    """A structure of the image is inconsistent (bad magic, bad sizes, bad references)."""


class OutOfBoundsError(CorruptImageError):
    """A read would go beyond the image, its table, or a sane limit."""


class UnsupportedError(ImageError):
    """A valid image uses something this implementation does not handle (e.g. lzo)."""


class NotFoundError(ImageError, FileNotFoundError):
    """A path is not in the image."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        ImageError.__init__(self, message, hint)


class InputError(ImageError):
    """The writer was given something it cannot put in an image (a device node, a fifo)."""
