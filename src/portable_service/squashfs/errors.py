"""The squashfs package's errors: a closed set of its own, with a message and a hint.

The package is a library below the application: it never raises the application's
errors. The application maps these to its own where it calls in
(:mod:`portable_service.fs.errors`), so the CLI still prints one line.
"""

from __future__ import annotations


class SquashfsError(Exception):
    """Every error of the package: ``message`` names it, ``hint`` may say what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class CorruptImageError(SquashfsError):
    """A structure of the image is inconsistent (bad magic, bad sizes, bad references)."""


class OutOfBoundsError(CorruptImageError):
    """A read would go beyond the image, its table, or a sane limit."""


class UnsupportedError(SquashfsError):
    """A valid image uses something this implementation does not handle (e.g. lzo)."""


class NotFoundError(SquashfsError, FileNotFoundError):
    """A path is not in the image."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        SquashfsError.__init__(self, message, hint)


class InputError(SquashfsError):
    """The writer was given something it cannot put in an image (a device node, a fifo)."""


class OptionsError(SquashfsError):
    """The compressor options asked for are unknown, out of range or not offered here."""
