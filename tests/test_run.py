"""The seam for external tools: a child process is never left without an owner."""

from __future__ import annotations

import os
import signal

import pytest

from portable_service.run import interrupts_held


def _raise(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def test_signals_are_held_until_the_child_has_an_owner() -> None:
    old = signal.signal(signal.SIGTERM, _raise)
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("after the signal")  # still runs: the signal is held
            steps.append("after the block")  # never runs: delivered on leaving
    finally:
        signal.signal(signal.SIGTERM, old)
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGTERM) is old


def test_nothing_held_nothing_raised() -> None:
    old = signal.getsignal(signal.SIGINT)
    with interrupts_held():
        pass
    assert signal.getsignal(signal.SIGINT) is old
