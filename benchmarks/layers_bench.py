"""Layered services benchmark: N Python apps as standalone images against one Python runtime
base plus N extensions, and the time to upgrade one app on a real systemd.

    python3 benchmarks/layers_bench.py [--n 2 10] [--repeat 5] [--release bookworm]

Sizes: each app is a small Python server (/opt/appK/app.py run by the host's python3);
standalone, every image carries python3 and its standard library; layered, the base
carries them once and each extension only the app. Both are built by this tool with the
same packing (mksquashfs, --compression). Times (needs root and the e2e roots): in a booted
container, upgrading app1 from version 1 to 2, until the new version answers: the stack
with ``portable-service reattach NEW --from OLD`` (portablectl reattach, then a restart of
the one changed unit) against the standalone image with ``portablectl detach --now`` then
``portablectl attach --now`` (what the standalone image needs). Prints the load average.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from portable_service.api import build_image
from portable_service.builder.spec import spec_from_mapping
from portable_service.deploy.descriptor import attach_commands, load_descriptor
from portable_service.deploy.predict import predict, reattach_commands

APP = """import socket, sys
port, message = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen()
while True:
    c, _ = s.accept()
    c.sendall((message + "\\n").encode())
    c.close()
"""
PORT0 = 18500
PYTHON = "/usr/bin/python3"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def app_settings(work: Path, k: int, version: str, compression: str,
                 base: Path | None, pname: str = "app") -> dict[str, object]:
    src = work / f"src-app{k}-{version}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "app.py").write_text(APP)
    settings: dict[str, object] = {
        "pname": f"{pname}{k}", "version": version, "squash-compression": compression,
        "units": [{"name": f"{pname}{k}.service", "text": "[Service]\nExecStart="
                   f"{PYTHON} /opt/app{k}/app.py {PORT0 + k} 'app{k} {version}'\n"}],
        "contents": [{"source": str(src), "target": f"/opt/app{k}"}]}
    if base is not None:
        settings["base"] = str(base)
    return settings


def build(work: Path, settings: dict[str, object], out: str) -> Path:
    return build_image(spec_from_mapping(settings, work), work / out)


def runtime(work: Path, compression: str) -> Path:
    return build(work, {"pname": "pyrt", "version": "1", "squash-compression": compression,
                        "units": [{"name": "pyrt-info.service", "text":
                                   f"[Service]\nType=oneshot\nExecStart={PYTHON} -c pass\n"}]},
                 "layered")


def sizes(work: Path, n: int, compression: str, base: Path) -> tuple[int, int, float, float]:
    t0 = time.monotonic()
    standalone = sum(build(work, app_settings(work, k, "1", compression, None),
                           f"standalone{n}").stat().st_size for k in range(1, n + 1))
    t1 = time.monotonic()
    layered = base.stat().st_size + sum(
        build(work, app_settings(work, k, "1", compression, base), f"layered{n}").stat().st_size
        for k in range(1, n + 1))
    t2 = time.monotonic()
    return standalone, layered, t1 - t0, t2 - t1


def upgrade_times(work: Path, release: str, repeat: int, compression: str,
                  base: Path) -> tuple[list[float], list[float], list[float]]:
    from e2e.lib import tcp_get

    from portable_service.harness import nspawn, roots

    rel = roots.RELEASES[release]
    # the standalone app is called solo1 (its image must not share app1's file name)
    alone = [build(work, app_settings(work, 1, v, compression, None, "solo"), "up-alone")
             for v in ("1", "2")]
    ext = [build(work, app_settings(work, 1, v, compression, base), "up-ext") for v in ("1", "2")]
    portables = Path("/var/lib/portables")

    def descriptor(name: str, e: Path) -> Path:
        path = work / f"{name}.toml"
        path.write_text(f'base = "{portables / base.name}"\nextensions = ["{portables / e.name}"]\n'
                        'runtime = true\n')
        return path

    layered_s: list[float] = []
    stack_again_s: list[float] = []
    standalone_s: list[float] = []
    with nspawn.booted(rel, roots.root_path(rel)) as c:
        for image in (base, *alone, *ext):
            c.copy_image(image)
        host_d = []
        for name, e in (("v1", ext[0]), ("v2", ext[1])):
            host = work / f"{name}-host.toml"
            host.write_text(f'base = "{base}"\nextensions = ["{e}"]\nruntime = true\n')
            host_d.append(load_descriptor(host))
        d1, d2 = load_descriptor(descriptor("v1", ext[0])), load_descriptor(descriptor("v2", ext[1]))
        port = PORT0 + 1

        def run(cmd: list[str]) -> None:
            r = c.run(*cmd, timeout=120)
            assert r.ok, r.output

        for _ in range(repeat):
            # layered: attach v1, then time the upgrade to v2
            for cmd in attach_commands(d1):
                run(cmd)
            run(["systemctl", "start", "app1.service"])
            assert tcp_get(port) == "app1 1\n"
            t = time.monotonic()
            for cmd in reattach_commands(d1, d2, predict(host_d[0], host_d[1])):
                run(cmd)
            while tcp_get(port) != "app1 2\n":
                time.sleep(0.01)
            layered_s.append(time.monotonic() - t)
            # the same stack upgraded the other way: detach v2 entirely, attach v1 --now
            t = time.monotonic()
            run(["portablectl", "detach", "--now", "--runtime", f"--extension={d2.extensions[0]}",
                 str(d2.base), "app1"])
            run(["portablectl", "attach", "--now", "--runtime", f"--extension={d1.extensions[0]}",
                 str(d1.base), "app1"])
            while tcp_get(port) != "app1 1\n":
                time.sleep(0.01)
            stack_again_s.append(time.monotonic() - t)
            run(["portablectl", "detach", "--now", "--runtime", f"--extension={d1.extensions[0]}",
                 str(d1.base), "app1"])
            # standalone: attach v1, then time detach + attach of v2
            run(["portablectl", "attach", "--now", "--runtime", f"{portables / alone[0].name}"])
            assert tcp_get(port) == "app1 1\n"
            t = time.monotonic()
            run(["portablectl", "detach", "--now", "--runtime", f"{portables / alone[0].name}"])
            run(["portablectl", "attach", "--now", "--runtime", f"{portables / alone[1].name}"])
            while tcp_get(port) != "app1 2\n":
                time.sleep(0.01)
            standalone_s.append(time.monotonic() - t)
            run(["portablectl", "detach", "--now", "--runtime", f"{portables / alone[1].name}"])
    return layered_s, stack_again_s, standalone_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2, 10])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--release", default="bookworm")
    ap.add_argument("--compression", default="xz -Xdict-size 100%")
    ap.add_argument("--no-times", action="store_true", help="sizes only (no root needed)")
    args = ap.parse_args()
    print(f"load average at start: {loadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = runtime(work, args.compression)
        print(f"base {base.name}: {base.stat().st_size:,} bytes ({args.compression})")
        print("| N apps | N standalone images | base + N extensions | ratio | build time "
              "standalone / layered |")
        print("|---|---|---|---|---|")
        for n in args.n:
            alone, layered, t_alone, t_layered = sizes(work, n, args.compression, base)
            print(f"| {n} | {alone:,} B | {layered:,} B | {alone / layered:.1f}x smaller | "
                  f"{t_alone:.1f} s / {t_layered:.1f} s |", flush=True)
        if not args.no_times:
            lay, again, alone_t = upgrade_times(work, args.release, args.repeat,
                                                args.compression, base)
            ma = statistics.median(alone_t)
            print(f"upgrade app1 on {args.release}, {args.repeat} runs, until the new version "
                  "answers (median, min-max; ratio: standalone detach + attach / this):")
            for label, xs in (("reattach NEW --from OLD (layered)", lay),
                              ("detach --now + attach --now (layered stack)", again),
                              ("detach --now + attach --now (standalone image)", alone_t)):
                m = statistics.median(xs)
                print(f"  {label}: {m:.2f} s ({min(xs):.2f}-{max(xs):.2f}), {ma / m:.2f}x")
    print(f"load average at end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
