"""Helpers of the end-to-end tests: build with the project's pipeline, attach, probe."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from portable_service.builder.atomic import write_atomically
from portable_service.builder.pipeline import plan as plan_build
from portable_service.builder.spec import spec_from_mapping
from portable_service.harness.nspawn import Container
from portable_service.progress import QUIET
from portable_service.rules import verity as verity_rules
from tests.conftest import require


def static_program(source: Path, out: Path) -> Path:
    """A C test program linked statically: it runs in any image without a library closure."""
    proc = subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(source)],
                          capture_output=True, text=True, check=False)
    require(proc.returncode == 0 or "cannot find -lc" not in proc.stderr,
            "static glibc is not installed (apt-get install libc6-dev)")
    assert proc.returncode == 0, proc.stderr
    return out


def unit(name: str, text: str) -> dict[str, str]:
    return {"name": name, "text": text}


def build_image(out_dir: Path, settings: Mapping[str, Any],
                drop: PurePosixPath | None = None) -> Path:
    """Build with the real pipeline; ``drop`` removes one path from the planned tree
    before writing (the negative control of a mount point)."""
    spec = spec_from_mapping({"squash-compression": "gzip", **settings}, out_dir)
    plan = plan_build(spec)
    if drop is not None:
        entry = plan.tree.get(drop)
        assert entry is not None, f"{drop} is not in the image tree, nothing to drop"
        plan.tree.remove(drop)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / spec.image_name
    write_atomically(out, lambda tmp: plan.writer.write(plan.tree, tmp, plan.options,
                                                              QUIET))
    return out


@contextlib.contextmanager
def attached(c: Container, image: Path, *, profile: str = "default", now: bool = False,
             runtime: bool = True) -> Iterator[str]:
    """The image attached (its name is yielded); detached with --now afterwards (a detach
    that failed fails the test, unless the block failed first)."""
    result = c.attach(image, profile=profile, now=now, runtime=runtime)
    name = image.name.removesuffix(".raw")
    assert result.ok, f"attach of {image.name} failed on {c.release.suite}: {result.output}"
    try:
        yield name
    finally:
        detached = c.detach(name, runtime=runtime)
    assert detached.ok, f"detach of {name} failed on {c.release.suite}: {detached.output}"


def tcp_get(port: int, timeout: float = 10) -> str:
    """Connect from the host to 127.0.0.1:port (retrying while the service starts); the reply."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                chunks = []
                while data := s.recv(4096):
                    chunks.append(data)
                return b"".join(chunks).decode(errors="replace")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def failure_text(c: Container, unit_name: str) -> str:
    """systemd's own lines about a failed unit (journal), for assertion messages."""
    return "\n".join(ln for ln in c.journal(unit_name).splitlines() if ln.strip())


class Probe:
    """Asks the service every 50 ms from the host; remembers when each answer came."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ask(self) -> str | None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                return s.recv(4096).decode(errors="replace").strip() or None
        except OSError:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.answers.append((time.monotonic(), self._ask()))
            self._stop.wait(0.05)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def first(self, message: str) -> float | None:
        return next((t for t, a in self.answers if a == message), None)

    def wait_for(self, message: str, timeout: float = 20) -> float:
        """When ``message`` was first answered, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while (hit := self.first(message)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the service never answered {message!r}")
            time.sleep(0.02)
        return hit

    def downtime(self) -> float:
        """The longest stretch without an answer, between two answered probes."""
        longest, last_ok = 0.0, None
        for t, answer in self.answers:
            if answer is not None:
                if last_ok is not None:
                    longest = max(longest, t - last_ok)
                last_ok = t
        return longest


# how a start whose image is checked for verity ends, in the journal: the unit's own
# program ran, or device-mapper (after a good signature), or both ways of checking, failed
VERITY_ENDS = ("verity-demo-ran", verity_rules.NO_DEVICE_MAPPER,
               "worked neither via the kernel nor in userspace")


def journal_until(c: Container, cursor: str, ends: tuple[str, ...], tries: int = 10) -> str:
    """The journal after ``cursor``, read again (after ``journalctl --sync``) until one of
    ``ends`` is in it: the exec child's lines (the PKCS#7 check of a signature) can reach
    journald after PID 1 has said the start failed. After ``tries`` reads, what is there."""
    journal = c._journal_since(cursor)
    for _ in range(tries):
        if any(end in journal for end in ends):
            break
        c.run("journalctl", "--sync")
        time.sleep(0.5)
        journal = c._journal_since(cursor)
    return journal
