"""Progress on stderr: nested steps with timing, and a byte bar for long writes."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)


class Reporter:
    """Say what the build is doing; silent when ``quiet``."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False)
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def warn(self, text: str) -> None:
        # warnings are shown even when quiet: they are about the image
        print(f"portable-service: warning: {text}", file=sys.stderr)

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        if not self.quiet:
            self.console.print(f"[bold]==>[/bold] {text} [dim]({time.monotonic() - start:.2f} s)[/dim]")

    @contextmanager
    def bytes_bar(self, text: str, total: int) -> Iterator[None]:
        """A bar advanced by :meth:`advance`; only drawn on a terminal."""
        if self.quiet or not self.console.is_terminal:
            yield
            return
        with Progress(TextColumn(text), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                      console=self.console, transient=True) as bar:
            self._bar, self._task = bar, bar.add_task(text, total=total)
            try:
                yield
            finally:
                self._bar = self._task = None

    def advance(self, nbytes: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, nbytes)


QUIET = Reporter(quiet=True)


def human(n: float) -> str:
    """A byte count as people read it: 512 B, 1.5 KiB, 3.8 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
