"""Time the end-to-end harness per release: boot, and one attach/start/probe/stop/detach cycle.

    sudo PYTHONPATH=src python3 benchmarks/e2e_cycle.py [--cycles N] [RELEASE...]

Needs root, systemd-nspawn, gcc (static glibc) and the cached roots (made on
first use). The reference shell recipe (REFERENCE.md §4) takes about 0.3 s to
boot systemd 252 and 1.2 s per cycle; the ratio column compares against that.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from portable_service.api import build_image
from portable_service.builder.spec import spec_from_mapping
from portable_service.harness import nspawn, roots

HERE = Path(__file__).resolve().parent
RECIPE_BOOT, RECIPE_CYCLE = 0.3, 1.2
PORT = 18199


def make_image(work: Path) -> Path:
    prog = work / "psdemo"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(prog),
                    str(HERE.parent / "tests/e2e/psdemo.c")], check=True)
    spec = spec_from_mapping({
        "pname": "bench", "version": "1", "squash-compression": "gzip",
        "units": [{"name": "bench.service", "text": "[Service]\nStateDirectory=bench\n"
                   f"ExecStart=/usr/bin/psdemo serve {PORT} bench\n"}],
        "contents": [{"source": str(prog), "target": "/usr/bin/psdemo"}]}, work)
    return build_image(spec, work)


def probe() -> str:
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", PORT), timeout=2) as s:
                return s.recv(100).decode()
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("the service did not answer")


def measure(suite: str, image: Path, cycles: int) -> tuple[float, list[float]]:
    release = roots.RELEASES[suite]
    root = roots.ensure_root(release)
    start = time.monotonic()
    with nspawn.booted(release, root) as c:
        boot = time.monotonic() - start
        times = []
        for _ in range(cycles):
            t = time.monotonic()
            assert c.attach(image).ok
            assert c.start("bench.service").ok
            assert probe() == "bench\n"
            assert c.detach("bench_1").ok
            times.append(time.monotonic() - t)
    return boot, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("releases", nargs="*", default=list(roots.RELEASES))
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = make_image(Path(tmp))
        print(f"{'release':10} {'systemd':>7} {'boot s':>7} {'x recipe':>8} "
              f"{'cycle s':>8} {'x recipe':>8}")
        for suite in args.releases:
            boot, times = measure(suite, image, args.cycles)
            cycle = statistics.median(times)
            print(f"{suite:10} {roots.RELEASES[suite].systemd:>7} {boot:7.2f} "
                  f"{boot / RECIPE_BOOT:8.2f} {cycle:8.2f} {cycle / RECIPE_CYCLE:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
