"""Image sizes of Debian-packaged services: one unit running the server, ``packages = [NAME]``.

    PYTHONPATH=src python3 benchmarks/packages_bench.py [--before OLD_SRC] [NAME ...]

Builds each image with the default compression (``xz -Xdict-size 100%``, 1M blocks) and
prints a Markdown table: paths in the closure, bytes before compression, image size.
With ``--before OLD_SRC`` (the ``src`` folder of another checkout, e.g. a ``git worktree``
of an older commit) the same specs are built with that code too, in a child process, and
the table compares the two. Packages that are not installed are passed over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# package -> the program a user's unit runs
SERVICES: dict[str, str] = {
    "lighttpd": "/usr/sbin/lighttpd -D -f /etc/lighttpd/lighttpd.conf",
    "nginx": "/usr/sbin/nginx -g 'daemon off;'",
    "redis-server": "/usr/bin/redis-server /etc/redis/redis.conf",
    "postgresql": "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main",
    "dnsmasq": "/usr/sbin/dnsmasq -k",
    "unbound": "/usr/sbin/unbound -d",
}

_CHILD = """
import json, sys, tempfile
from pathlib import Path
from portable_service.api import build_image
from portable_service.builder.pipeline import plan
from portable_service.builder.spec import spec_from_mapping
name, command = sys.argv[1], sys.argv[2]
spec = spec_from_mapping({"pname": "bench", "version": "1", "packages": [name],
                          "units": [{"name": "bench.service",
                                     "text": "[Service]\\nExecStart=" + command + "\\n"}]},
                         Path.cwd())
p = plan(spec)
raw = sum(n.host.lstat().st_size for n in p.closure if n.host.is_file() and not n.host.is_symlink())
with tempfile.TemporaryDirectory() as out:
    image = build_image(spec, Path(out), verify=False)
    print(json.dumps({"paths": len(p.closure.nodes), "raw": raw, "image": image.stat().st_size}))
"""


def measure(src: Path, name: str, command: str) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", _CHILD, name, command], env=env, cwd=cwd,
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv: list[str]) -> None:
    before = None
    if argv[:1] == ["--before"]:
        before, argv = Path(argv[1]).resolve(), argv[2:]
    here = Path(__file__).resolve().parent.parent / "src"
    names = argv or list(SERVICES)
    if before:
        print("| package | before: paths, unpacked, image | after: paths, unpacked, image | image |")
        print("|---|---|---|---|")
    else:
        print("| package | paths | unpacked | image |")
        print("|---|---|---|---|")
    for name in names:
        program = SERVICES[name].split()[0]
        if not os.path.exists(program):
            print(f"(skipped {name}: {program} is not installed)", file=sys.stderr)
            continue
        now = measure(here, name, SERVICES[name])
        if before:
            old = measure(before, name, SERVICES[name])
            print(f"| {name} | {old['paths']}, {mib(old['raw'])}, {mib(old['image'])} | "
                  f"{now['paths']}, {mib(now['raw'])}, {mib(now['image'])} | "
                  f"{now['image'] / old['image']:.0%} |")
        else:
            print(f"| {name} | {now['paths']} | {mib(now['raw'])} | {mib(now['image'])} |")


if __name__ == "__main__":
    main(sys.argv[1:])
