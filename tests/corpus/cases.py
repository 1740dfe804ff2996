"""The corpus: real services, each a folder with a spec, its units and a ``case.toml``.

``case.toml`` says what the case is and what the tool must say about it:

    about = "one line: what this case is"
    expect = "works" | "fails"       # what systemd does with a correct build of it
    spec = "../node"                 # optional: build another case's folder (images are shared)
    profile = "default"              # the portable profile to attach with
    start = ["name.service"]         # what the probe run starts (try picks its own units)
    needs = ["/host/path"]           # host files the spec takes (missing: the case skips)
    [build]   absent = ["/path"]     # paths the image must not carry
              refuses = "phrase"     # the build may instead refuse the spec (exit 2, one
                                     # line naming this): the user hears of it even earlier
    [verify]  exit = 0|1, says = []  # `portable-service verify` exit code, phrases in its output
    [try]     exit = 0|1, says = []  # `portable-service try` exit code, phrases in its output
    [probe]   kind = "http"|"redis"|"postgres"|"dns"|"file", ...

Defaults follow ``expect``: a case that works must verify clean (exit 0) and pass
``try`` (exit 0); one that fails must make ``try`` exit 1 (failed on systemd).
The probes talk to the services over loopback from the host (the containers
share its network), as a client would.
"""

from __future__ import annotations

import socket
import struct
import time
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Expect:
    """An exit code (None: not stated) and phrases that must appear in the output."""

    exit: int | None
    says: tuple[str, ...] = ()

    def misses(self, code: int, output: str) -> list[str]:
        """What of the expectation the command's result does not meet (empty: all met)."""
        wrong = [] if self.exit is None or code == self.exit else [f"exit {code}, not {self.exit}"]
        low = output.lower()
        return wrong + [f"no {s!r} in the output" for s in self.says if s.lower() not in low]

    def text(self) -> str:
        parts = [] if self.exit is None else [f"exit {self.exit}"]
        return ", ".join(parts + [repr(s) for s in self.says]) or "-"


@dataclass(frozen=True)
class Case:
    name: str
    about: str
    works: bool
    spec_dir: Path
    profile: str
    start: tuple[str, ...]
    needs: tuple[str, ...]
    absent: tuple[str, ...]
    refuses: str | None
    verify: Expect
    try_: Expect
    probe: dict[str, Any] = field(default_factory=dict)


def _expect(table: dict[str, Any] | None, default_exit: int | None) -> Expect:
    table = table or {}
    return Expect(table.get("exit", default_exit), tuple(table.get("says", ())))


def load_case(folder: Path) -> Case:
    data = tomllib.loads((folder / "case.toml").read_text())
    works = {"works": True, "fails": False}[data["expect"]]
    return Case(
        name=folder.name, about=data["about"], works=works,
        spec_dir=(folder / data.get("spec", ".")).resolve(),
        profile=data.get("profile", "default"),
        start=tuple(data.get("start", ())), needs=tuple(data.get("needs", ())),
        absent=tuple(data.get("build", {}).get("absent", ())),
        refuses=data.get("build", {}).get("refuses"),
        # a case that fails on systemd may still verify clean: verify cannot see everything
        verify=_expect(data.get("verify"), 0 if works else None),
        try_=_expect(data.get("try"), 0 if works else 1),
        probe=data.get("probe", {}),
    )


def load_cases() -> list[Case]:
    return [load_case(p.parent) for p in sorted(CORPUS.glob("*/case.toml"))]


# -- probes: a client's view of the service


GiveUp = Callable[[], str | None]


def _retry(what: str, attempt: Any, timeout: float, give_up: GiveUp | None) -> Any:
    """Call ``attempt`` until it returns, for ``timeout`` seconds (the service may be
    starting), or until ``give_up`` says why waiting is pointless (the unit failed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except (OSError, ValueError) as e:
            why = give_up() if give_up else None
            if why is not None:
                raise AssertionError(f"{what}: no answer ({e}): {why}") from e
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: no answer within {timeout:.0f} s: {e}") from e
            time.sleep(0.2)


def probe_http(port: int, path: str = "/", timeout: float = 15, give_up: GiveUp | None = None) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.read().decode()

    return _retry(f"GET http://127.0.0.1:{port}{path}", get, timeout, give_up)


def probe_redis(port: int, timeout: float = 15, give_up: GiveUp | None = None) -> str:
    """PING in the redis protocol (RESP); the server's reply line, e.g. '+PONG'."""

    def ping() -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).decode().strip()

    return _retry(f"redis PING on port {port}", ping, timeout, give_up)


def _pg_messages(s: socket.socket) -> Any:
    """Backend messages of the PostgreSQL protocol v3: (type, payload)."""
    buf = b""
    while True:
        while len(buf) < 5 or len(buf) < 1 + struct.unpack("!I", buf[1:5])[0]:
            data = s.recv(4096)
            if not data:
                raise ValueError("the server closed the connection")
            buf += data
        size = struct.unpack("!I", buf[1:5])[0]
        yield buf[:1], buf[5:1 + size]
        buf = buf[1 + size:]


def probe_postgres(port: int, user: str, timeout: float = 30, give_up: GiveUp | None = None) -> str:
    """``SELECT 1`` over the wire protocol (trust auth); the value of the one row."""

    def select_one() -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            params = b"user\0" + user.encode() + b"\0database\0postgres\0\0"
            s.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
            value = None
            for kind, payload in _pg_messages(s):
                if kind == b"E":
                    raise ValueError(payload.replace(b"\0", b" ").decode(errors="replace"))
                if kind == b"R" and struct.unpack("!I", payload[:4])[0] != 0:
                    raise AssertionError("the server asks for a password: not trust auth")
                if kind == b"Z" and value is None:  # ready: ask
                    q = b"SELECT 1\0"
                    s.sendall(b"Q" + struct.pack("!I", 4 + len(q)) + q)
                    value = ""
                elif kind == b"D":  # data row: count, then (length, bytes) per column
                    n = struct.unpack("!I", payload[2:6])[0]
                    value = payload[6:6 + n].decode()
                elif kind == b"Z":
                    s.sendall(b"X\0\0\0\4")
                    return value or ""
        raise ValueError("no answer")

    return _retry(f"SELECT 1 on port {port}", select_one, timeout, give_up)


def probe_dns(port: int, name: str, timeout: float = 15, give_up: GiveUp | None = None) -> str:
    """An A query over UDP; the first address of the answer, dotted."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack("!HHHHHH", 0x5053, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)

    def ask() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(query, ("127.0.0.1", port))
            reply = s.recv(512)
        ident, flags, _qd, answers = struct.unpack("!HHHH", reply[:8])
        if ident != 0x5053 or flags & 0xF:
            raise ValueError(f"rcode {flags & 0xF}")
        if not answers:
            raise ValueError("no answer record")
        # the answer is the last record here: name (a pointer), type, class, ttl, length, data
        return ".".join(str(b) for b in reply[-4:])

    return _retry(f"DNS A {name} on port {port}", ask, timeout, give_up)


def probe_network(probe: dict[str, Any], give_up: GiveUp | None = None) -> str:
    """Run a network probe; returns what it got, to compare with the case's expectation."""
    kind = probe["kind"]
    if kind == "http":
        return probe_http(probe["port"], probe.get("path", "/"), give_up=give_up)
    if kind == "redis":
        return probe_redis(probe["port"], give_up=give_up)
    if kind == "postgres":
        return probe_postgres(probe["port"], probe["user"], give_up=give_up)
    if kind == "dns":
        return probe_dns(probe["port"], probe["name"], give_up=give_up)
    raise ValueError(f"unknown probe kind {kind!r}")


def probe_ok(probe: dict[str, Any], got: str) -> bool:
    kind = probe["kind"]
    if kind == "http":
        if "body" in probe:
            return got == probe["body"]
        return got.startswith(probe["body_starts"])
    if kind == "redis":
        return got == "+PONG"
    if kind == "postgres":
        return got == "1"
    if kind == "dns":
        return got == probe["address"]
    raise ValueError(f"unknown probe kind {kind!r}")
