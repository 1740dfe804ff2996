"""Progress on stderr: each step when it starts, a bar driven by work done, sizes in IEC units.

Two ways to show it, chosen once per run:

- on a terminal (and neither ``NO_COLOR`` nor ``TERM=dumb``): a live display, a spinner with
  the elapsed time for every running step (nested steps too) and a bar for counted work;
  a finished step leaves one line, ``==> TEXT (1.23 s)``;
- otherwise (a pipe, a log, ``NO_COLOR``, ``TERM=dumb``): plain lines, nothing redrawn, no
  box drawing, never wrapped: ``==> TEXT`` when a step starts, ``    done in 1.2 s`` when it
  ends, and a counted job at each quarter it reaches.

There is no time-remaining estimate: the rate of compression changes too much from one file
to the next for one to mean anything.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # rich is loaded when the live display is drawn: a tenth of a start-up
    from rich.console import Console
    from rich.progress import Progress, TaskID

PROG = "portable-service"


def human(n: float) -> str:
    """A byte count as people read it: 512 B, 1.5 KiB, 3.8 MiB (IEC units everywhere)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def live_wanted(stream: TextIO, env: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` gets the live display: a terminal that is not dumb, no NO_COLOR.

    NO_COLOR (no-color.org) asks for no colour; we take it to mean no redrawing either,
    as the people who set it mostly read logs and screen readers.
    """
    env = dict(os.environ) if env is None else env
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        return False
    return "NO_COLOR" not in env and env.get("TERM", "") != "dumb"


ANNOUNCE_AFTER = 0.5  # seconds a step runs before its plain "==> STEP" line is printed


@dataclass
class _Pending:
    """A running step in plain mode: whether its start line is out, and lines after it."""

    text: str
    start: float
    announced: bool = False
    lines_after: bool = False


class Reporter:
    """Say what the build is doing; silent when ``quiet``. Warnings are shown even then."""

    def __init__(self, quiet: bool = False, console: Console | None = None,
                 live: bool | None = None) -> None:
        self.quiet = quiet
        self._console = console
        self.live = live_wanted(sys.stderr) if live is None else live
        self._lock = threading.RLock()
        self._progress: Progress | None = None
        self._live_timer: threading.Timer | None = None
        self._tasks = 0  # running steps and bars: the live display stops at 0
        self._bar: TaskID | None = None
        self._bar_total = 0
        self._bar_done = 0
        self._bar_text = ""
        self._pending: list[_Pending] = []  # plain mode: the running steps, outermost first
        self._quarters = 0  # plain mode: the quarters of the bar already printed
        self.warnings: list[str] = []  # every warning of the run, for build --json

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # soft_wrap: a long line is the terminal's to fold, never cut into two by us
            self._console = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._console

    # -- lines

    def _line(self, text: str) -> None:
        with self._lock:
            self._announce_locked()  # the steps this line is part of, first
            self._print(text)

    def _print(self, text: str) -> None:
        if self.live:  # through the live display's console: above it while it runs
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            self._line(text)

    def note(self, text: str) -> None:
        """A line about the image (notes, verify findings): shown even when quiet."""
        self._line(f"{PROG}: {text}")

    def warn(self, text: str) -> None:
        # warnings are shown even when quiet: they are about the image
        self.warnings.append(text)
        self._line(f"{PROG}: warning: {text}")

    # -- the live display, shared by every running step

    def _start(self, description: str, total: float | None) -> TaskID:
        if self._progress is None:
            self._progress = _live_display(self.console)
            # drawn once a step has run for ANNOUNCE_AFTER: a quick run (or a mistake
            # found at once) leaves no flicker, and an error is the only line
            self._live_timer = threading.Timer(ANNOUNCE_AFTER, self._go_live,
                                               args=(self._progress,))
            self._live_timer.daemon = True
            self._live_timer.start()
        self._tasks += 1
        return self._progress.add_task(description, total=total)

    def _stop(self, task: TaskID) -> None:
        assert self._progress is not None
        self._progress.remove_task(task)
        self._tasks -= 1
        if self._tasks == 0:
            with self._lock:
                if self._live_timer is not None:
                    self._live_timer.cancel()
                if self._progress.live.is_started:
                    self._progress.stop()
                self._progress = None

    def _go_live(self, progress: Progress) -> None:
        with self._lock:
            if self._progress is progress and not progress.live.is_started:
                progress.start()

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Shown when it starts (a spinner with the elapsed time live) and when it ends."""
        if self.quiet:
            yield
            return
        start = time.monotonic()
        if self.live:
            task = self._start(text, None)
            try:
                yield
            finally:
                self._stop(task)
            self._line(f"==> {text} ({time.monotonic() - start:.2f} s)")
            return
        # plain lines: a step is announced once it has run for ANNOUNCE_AFTER (or when
        # something is printed inside it), so a quick step is one line, and a mistake
        # found at once is the error's one line, with nothing before it
        pending = _Pending(text, start)
        with self._lock:
            self._pending.append(pending)
        timer = threading.Timer(ANNOUNCE_AFTER, self._announce)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            with self._lock:
                self._pending.remove(pending)
        took = time.monotonic() - start
        if not pending.announced:
            self._line(f"==> {text} ({took:.2f} s)")
        else:
            # a step with lines inside it names itself again: its start is lines away
            inner = f": {text}" if pending.lines_after else ""
            self._line(f"    done in {took:.1f} s{inner}")

    def _announce(self) -> None:
        with self._lock:
            self._announce_locked()

    def _announce_locked(self) -> None:
        for p in self._pending:
            if not p.announced:
                p.announced = True
                self._print(f"==> {p.text}")
            else:
                p.lines_after = True

    @contextmanager
    def bytes_bar(self, text: str, total: int) -> Iterator[None]:
        """Counted work, in bytes, moved by :meth:`advance` or :meth:`update`."""
        if self.quiet:
            yield
            return
        with self._lock:
            self._bar_total, self._bar_done, self._bar_text, self._quarters = total, 0, text, 0
            if self.live:
                self._bar = self._start(text, total)
        try:
            yield
        finally:
            with self._lock:
                if self._bar is not None:
                    self._stop(self._bar)
                self._bar = None
                self._bar_total = 0

    def advance(self, nbytes: int) -> None:
        self.update(self._bar_done + nbytes)

    def update(self, done: int) -> None:
        """The counted work done so far (from another thread too: mksquashfs' progress)."""
        with self._lock:
            if not self._bar_total:
                return
            self._bar_done = min(done, self._bar_total)
            if self._bar is not None and self._progress is not None:
                self._progress.update(self._bar, completed=self._bar_done)
            elif not self.live:
                quarter = self._bar_done * 4 // self._bar_total
                while self._quarters < quarter:
                    self._quarters += 1
                    self._announce_locked()
                    self._print(f"    {self._bar_text}: {self._quarters * 25}% "
                               f"({human(self._bar_total * self._quarters // 4)} of "
                               f"{human(self._bar_total)})")


def _live_display(console: Console) -> Progress:
    """The live display: a spinner, the step, a bar and ``done/total`` for counted work."""
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Column
    from rich.text import Text

    class Amount(ProgressColumn):
        """``done/total MiB`` for counted work; nothing for a step (it has the spinner)."""

        def render(self, task: Task) -> Text:
            if task.total is None:
                return Text("")
            return Text(f"{human(task.completed)}/{human(task.total)}")

    class Bar(BarColumn):
        """A bar only for counted work: a step without a count shows no fake bar."""

        def render(self, task: Task) -> Text:  # type: ignore[override]
            if task.total is None:
                return Text("")
            return super().render(task)  # type: ignore[return-value]

    return Progress(
        # the description gives way (an ellipsis) before the numbers do
        SpinnerColumn(finished_text=" "),
        TextColumn("{task.description}",
                   table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
        Bar(bar_width=20), Amount(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(),
        console=console, transient=True)


QUIET = Reporter(quiet=True, live=False)
