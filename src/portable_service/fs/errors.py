"""The squashfs library's errors in the application's words.

The squashfs package is a library with errors of its own; every place the application
calls into it maps them here, so a user still sees one line (and the CLI's exit code).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from portable_service.errors import ImageError, PortableServiceError, SpecError, TreeError
from portable_service.squashfs.errors import (
    InputError,
    NotFoundError,
    OptionsError,
    SquashfsError,
)


class NotInImage(ImageError, FileNotFoundError):
    """A path that the image does not hold."""


def app_error(e: SquashfsError) -> PortableServiceError:
    """The application's error for one of the library's."""
    if isinstance(e, OptionsError):  # compressor options come from the spec
        return SpecError(e.message, e.hint)
    if isinstance(e, InputError):  # what the build gave the writer
        return TreeError(e.message, e.hint)
    if isinstance(e, NotFoundError):
        return NotInImage(e.message, e.hint)
    return ImageError(e.message, e.hint)  # a corrupt or unsupported image


@contextlib.contextmanager
def squashfs_errors() -> Iterator[None]:
    """Calls into the squashfs library inside this block raise the application's errors."""
    try:
        yield
    except SquashfsError as e:
        raise app_error(e) from None
