"""Typed errors. Library code raises these; the CLI turns them into one line and an exit code.

The exit codes are the same for every verb (the README's and docs/json.md's table is
EXIT_CODES, checked by tests/cli/test_exit_codes.py).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 3

# code -> (what it means, which verbs give it)
EXIT_CODES: dict[int, tuple[str, str]] = {
    EXIT_OK: ("success: the image was built; nothing was found", "every verb"),
    EXIT_FINDINGS: ("findings: `verify` found errors, `try` saw the image fail on systemd, "
                    "`diff` found changes (as diff(1) does), the `why` path is not in the "
                    "closure", "verify, try, diff, why"),
    EXIT_USAGE: ("usage or input error: a bad flag or spec, a missing or unreadable file, not "
                 "an image, a build systemd would refuse", "every verb"),
    EXIT_CANNOT_RUN: ("cannot run here: not root, systemd-nspawn or debootstrap missing, the "
                      "Debian root could not be created, the container did not boot", "try"),
}


class PortableServiceError(Exception):
    """A user-facing problem: ``message`` names it, ``hint`` says how to fix it."""

    exit_code = EXIT_USAGE

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

    exit_code = EXIT_FINDINGS


class HostError(ToolError):
    """This machine cannot run a throwaway systemd: not root, a tool missing, no root file
    system, the container did not boot."""

    exit_code = EXIT_CANNOT_RUN


class VerityError(PortableServiceError):
    """A hash tree, root hash or root-hash signature does not match its image, or is
    unreadable."""
