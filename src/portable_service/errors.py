"""Typed errors. Library code raises these; the CLI turns them into one line and exit 2."""

from __future__ import annotations


class PortableServiceError(Exception):
    """A user-facing problem: ``message`` names it, ``hint`` says how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class SpecError(PortableServiceError):
    """The spec (file, flags or API arguments) is invalid."""


class UnitError(PortableServiceError):
    """A unit file is missing, unreadable, misnamed or of the wrong type."""


class TreeError(PortableServiceError):
    """Two entries claim the same image path, or a path is not allowed."""


class ClosureError(PortableServiceError):
    """A dependency of the image cannot be found or read."""


class ToolError(PortableServiceError):
    """An external tool is missing or failed."""


class ImageError(PortableServiceError):
    """An image cannot be read: not a squashfs image, truncated, corrupt or unsupported."""


class VerifyError(PortableServiceError):
    """The built image breaks a rule systemd-portabled applies."""


class TryFailed(PortableServiceError):
    """``try``: systemd refused to attach the image, or one of its units failed."""

    exit_code = 1


class HostError(ToolError):
    """This machine cannot run a throwaway systemd: not root, a tool missing, no root file
    system, the container did not boot."""

    exit_code = 3


class VerityError(PortableServiceError):
    """A hash tree, root hash or root-hash signature does not match its image, or is
    unreadable."""
