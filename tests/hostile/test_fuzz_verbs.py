"""Every read verb on mutated images (fixed seed, bounded): exit 0, 1 or 2 with one line,
never a traceback or a hang. The reader alone is fuzzed in tests/squashfs; this covers what
the verbs do with what it returns (os-release, units, the closure record, listings)."""

from __future__ import annotations

import contextlib
import io
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from portable_service import build
from portable_service.cli import main
from tests.conftest import require_tool

CASES = 150
CASE_SECONDS = 20
VERBS = [["inspect", "--json", "IMG"], ["ls", "-l", "IMG", "/etc"], ["verify", "IMG"],
         ["size", "IMG"], ["cat", "IMG", "/etc/os-release"], ["diff", "GOOD", "IMG"]]


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        at = rng.randrange(len(buf))
        if kind < 0.5:
            buf[at] ^= 1 << rng.randrange(8)
        elif kind < 0.8:
            buf[at:at + 4] = rng.randbytes(4)
        elif kind < 0.95:
            buf[at:at + 8] = b"\xff" * 8
        else:
            del buf[at:]
            break
    return bytes(buf)


class Timeout(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def expire(_sig: int, _frame: object) -> None:
        raise Timeout
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_read_verbs_on_mutated_images(tmp_path: Path) -> None:
    require_tool("mksquashfs")
    (tmp_path / "fz.service").write_text("[Service]\nExecStart=/usr/bin/env true\n"
                                         "StateDirectory=fz\n")
    good = build(pname="fz", version="1", units=["fz.service"], squash_compression="gzip",
                 squash_block_size="4K", output_dir=tmp_path / "good", base_dir=tmp_path)
    data = good.read_bytes()
    rng = random.Random(17)
    codes: dict[int, int] = {}
    for n in range(CASES):
        case = tmp_path / "case" / "fz_1.raw"
        case.parent.mkdir(exist_ok=True)
        case.write_bytes(mutate(data, rng))
        for verb in VERBS:
            argv = [str(case) if a == "IMG" else str(good) if a == "GOOD" else a for a in verb]
            out, err = io.TextIOWrapper(io.BytesIO()), io.TextIOWrapper(io.BytesIO())
            try:
                with deadline(CASE_SECONDS), contextlib.redirect_stdout(out), \
                        contextlib.redirect_stderr(err):
                    code = main(argv)
            except Timeout:
                pytest.fail(f"case {n}: {' '.join(verb)} ran over {CASE_SECONDS} s")
            except BaseException as e:  # the finding: anything the CLI did not turn into a line
                (tmp_path / f"crash{n}.raw").write_bytes(case.read_bytes())
                raise AssertionError(f"case {n}: {' '.join(verb)}: {type(e).__name__}: {e}") from e
            assert code in (0, 1, 2), f"case {n}: {' '.join(verb)} exit {code}"
            if code == 2:
                err.flush()
                text = err.buffer.getvalue().decode()  # type: ignore[attr-defined]
                assert text.count("\n") == 1, text
            codes[code] = codes.get(code, 0) + 1
    assert codes.get(2, 0) > CASES  # mutations do get noticed
