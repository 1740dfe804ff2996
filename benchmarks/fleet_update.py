"""Time the fleet update on systemd 257: publish -> the host's update unit -> serving.

    sudo PYTHONPATH=src python3 benchmarks/fleet_update.py [--rounds N]

Boots the Debian 13 root of tests/e2e/test_fleet.py (trixie plus gpg, made once in its own
cache), serves a folder that ``publish`` keeps (signed) on 127.0.0.1, configures the host
with ``host-config`` and, per round, publishes a new version and starts the update unit while
a probe asks the service every 50 ms. The same host then does the swap by hand, the standard
way without sysupdate (copy the image in, ``portablectl detach --now``, ``attach --now``), and
with a bare ``portablectl reattach --now``. Prints the medians and the ratios against the
by-hand swap, with the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' Probe

from portable_service.api import build_image
from portable_service.builder.spec import spec_from_mapping
from portable_service.deploy import hostconfig
from portable_service.deploy.publish import Signer, publish
from portable_service.harness import nspawn, roots
from tests.e2e.lib import Probe

HERE = Path(__file__).resolve().parent
PORT, HTTP_PORT = 18481, 18482
RELEASE = roots.Release("trixie", "13", 257, extra_packages=("gpg",))


def make_image(work: Path, prog: Path, version: str) -> Path:
    spec = spec_from_mapping({
        "pname": "bench", "version": version, "squash-compression": "gzip",
        "units": [{"name": "bench.service", "text": "[Service]\n"
                   f"ExecStart=/usr/bin/psdemo serve {PORT} 'bench {version}'\n"
                   "[Install]\nWantedBy=multi-user.target\n"}],
        "contents": [{"source": str(prog), "target": "/usr/bin/psdemo"}]}, work)
    out = work / f"v{version}"
    out.mkdir()
    return build_image(spec, out)


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                             "127.0.0.1", "--directory", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield f"http://127.0.0.1:{HTTP_PORT}/"
    finally:
        proc.terminate()
        proc.wait()


def install(c: nspawn.Container, tree: Path) -> None:
    for path in sorted(tree.rglob("*")):
        dest = c.root / path.relative_to(tree)
        if path.is_symlink():
            dest.unlink(missing_ok=True)
            dest.symlink_to(path.readlink())
        elif path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            shutil.copy2(path, dest)
    c.run("systemctl", "daemon-reload", check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = roots.cache_dir()
    root = roots.ensure_root(RELEASE, cache=base.with_name(base.name + "-fleet"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prog = work / "psdemo"
        subprocess.run(["gcc", "-static", "-O2", "-o", str(prog),
                        str(HERE.parent / "tests/e2e/psdemo.c")], check=True)
        home = work / "gnupg"
        home.mkdir(mode=0o700)
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                        "--quick-gen-key", "bench <bench@example.org>", "ed25519", "sign",
                        "never"], check=True, capture_output=True)
        keyring = work / "ring.gpg"
        keyring.write_bytes(subprocess.run(["gpg", "--homedir", str(home), "--export"],
                                           check=True, capture_output=True).stdout)
        signer = Signer("bench@example.org", home)
        versions = [str(v) for v in range(1, 3 * args.rounds + 2)]
        images = {v: make_image(work, prog, v) for v in versions}
        www = work / "www"
        www.mkdir()
        fleet: dict[str, list[float]] = {"publish": [], "to_serving": [], "unit": [],
                                         "downtime": []}
        by_hand: list[float] = []
        reattach: list[float] = []
        with http_server(www) as url, nspawn.booted(RELEASE, root) as c:
            publish([images["1"]], www, signer=signer, keep=2)
            s = hostconfig.settings_for(images["1"], url, keyring=keyring, settle=3)
            hostconfig.write_tree(hostconfig.host_files(s), work / "host")
            install(c, work / "host")
            assert c.run("systemctl", "start", "bench-update.service", timeout=120).ok
            queue = versions[1:]
            for _ in range(args.rounds):
                v = queue.pop(0)
                with Probe(PORT) as probe:
                    start = time.monotonic()
                    publish([images[v]], www, signer=signer, keep=2)
                    fleet["publish"].append(time.monotonic() - start)
                    t = time.monotonic()
                    result = c.run("systemctl", "start", "bench-update.service", timeout=120)
                    fleet["unit"].append(time.monotonic() - t)
                    assert result.ok, c.journal("bench-update.service")
                    fleet["to_serving"].append(probe.wait_for(f"bench {v}") - start)
                fleet["downtime"].append(probe.downtime())
                old = c.run("sh", "-c", "sed -n 's|^RootImage=.*/||p' "
                            "/etc/systemd/system.attached/bench.service.d/20-portable.conf"
                            ).stdout.strip().removesuffix(".raw")
                # by hand: copy in, detach --now, attach --now
                v = queue.pop(0)
                with Probe(PORT) as probe:
                    shutil.copyfile(images[v], c.root / f"var/lib/portables/bench_{v}.raw")
                    c.portablectl("detach", "--now", "--enable", old, check=True)
                    c.portablectl("attach", "--now", "--enable", f"bench_{v}", check=True)
                    probe.wait_for(f"bench {v}")
                by_hand.append(probe.downtime())
                # a bare reattach --now (what the update unit runs after sysupdate)
                w = queue.pop(0)
                with Probe(PORT) as probe:
                    shutil.copyfile(images[w], c.root / f"var/lib/portables/bench_{w}.raw")
                    c.portablectl("reattach", "--now", "--enable", f"bench_{w}", check=True)
                    probe.wait_for(f"bench {w}")
                reattach.append(probe.downtime())
                # back to the published line for the next round
                c.portablectl("detach", "--now", "--enable", f"bench_{w}", check=True)
                for name in (f"bench_{v}.raw", f"bench_{w}.raw"):
                    (c.root / "var/lib/portables" / name).unlink()
                c.run("systemctl", "start", "bench-update.service", timeout=120)
        load = Path("/proc/loadavg").read_text().split()[:3]
    med = {k: statistics.median(v) for k, v in fleet.items()}
    hand = statistics.median(by_hand)
    bare = statistics.median(reattach)
    print(f"load average {' '.join(load)}; {args.rounds} rounds, medians")
    print(f"publish (copy, hash, manifest, gpg signature)  {med['publish']:.3f} s")
    print(f"publish -> new version answering               {med['to_serving']:.3f} s")
    print(f"update unit (check-new, fetch, verify, reattach, {s.settle} s settle) {med['unit']:.3f} s")
    print(f"downtime, update unit (reattach --now)         {med['downtime']:.3f} s "
          f"({hand / med['downtime']:.1f}x shorter than by hand)")
    print(f"downtime, bare portablectl reattach --now      {bare:.3f} s "
          f"({hand / bare:.1f}x shorter than by hand)")
    print(f"downtime, by hand: detach --now + attach --now {hand:.3f} s (1x)")


if __name__ == "__main__":
    main()
