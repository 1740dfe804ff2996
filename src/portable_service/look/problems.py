"""A problem ``verify`` finds: what every check of the read side returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    severity: str  # ERROR or WARNING
    rule: str  # short stable id, e.g. "os-release-missing"
    path: str  # the image path concerned
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}; fix: {self.fix}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)
