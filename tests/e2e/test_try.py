"""``portable-service try``: the users' way to the same judge, through the real CLI.

Every verdict is checked against systemd itself on 247, 252 and 257: one image whose
units all fail in a different way (each must be FAILED, with systemd's own words) and
one whose units are all good.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from tests.e2e.conftest import HERE, RELEASES, require_e2e
from tests.e2e.lib import build_image, static_program, unit

pytestmark = pytest.mark.e2e
PORT = 18131
BAD_SOCKET_PORT = 18132
GOOD_SOCKET_PORT = 18133
DEAF_SOCKET_PORT = 18134
ACCEPT_SOCKET_PORTS = (18135, 18136)  # Accept=yes: the bad image's, the good image's
TRYDEMO = "/usr/bin/trydemo"


@pytest.fixture(scope="session")
def trydemo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/e2e/trydemo.c linked statically: runs in any image without a library closure."""
    require_e2e()
    return static_program(HERE / "trydemo.c", tmp_path_factory.mktemp("bin") / "trydemo")


def server_spec(psdemo: Path, version: str) -> dict:
    return {"pname": "tryme", "version": version,
            "units": [unit("tryme.service", "[Service]\nStateDirectory=tryme\n"
                           f"ExecStart=/usr/bin/psdemo serve {PORT} tried\n")],
            "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}]}


def service(name: str, body: str) -> dict[str, str]:
    return unit(name, f"[Service]\n{body}\n")


# unit -> (its text, what `try` must say about it: our reason, then systemd's words)
BAD = {
    "trybad-loop.service": (f"Restart=on-failure\nRestartSec=1\nExecStart={TRYDEMO} exit 1",
                            ["restart loop", "status=1/FAILURE"]),
    # the default RestartSec=100ms: five quick crashes, then start-limit-hit
    "trybad-burst.service": (f"Restart=on-failure\nExecStart={TRYDEMO} exit 1",
                             ["restart loop", "status=1/FAILURE"]),
    "trybad-late.service": (f"ExecStart={TRYDEMO} late 1500 1",
                            ["status=1/FAILURE"]),
    "trybad-once.service": (f"Type=oneshot\nExecStart={TRYDEMO} exit 1",
                            ["status=1/FAILURE"]),
    "trybad-noexec.service": ("ExecStart=/usr/bin/not-in-the-image",
                              ["status=203/EXEC", "/usr/bin/not-in-the-image"]),
    # the services these two would start are not in the image
    "trybad-orphan.timer": ("", ["trybad-orphan.service, is not loaded", "Refusing to start"]),
    "trybad-orphansock.socket": ("", ["trybad-orphansock.service, is not loaded",
                                      "not loaded, refusing"]),
    "trybad-orphanpath.path": ("", ["trybad-orphanpath.service, is not loaded",
                                    "Refusing to start"]),
    # Accept=yes without the template of its per-connection instances
    "trybad-orphanaccept.socket": (
        f"[Socket]\nListenStream=127.0.0.1:{ACCEPT_SOCKET_PORTS[0]}\nAccept=yes\n",
        ["Accept=yes starts an instance of trybad-orphanaccept@.service per connection, "
         "and it is not loaded (LoadState=not-found)"]),
}
GOOD = {
    "trygood.service": f"[Service]\nExecStart={TRYDEMO} run\n",
    "trygood-once.service": f"[Service]\nType=oneshot\nExecStart={TRYDEMO} exit 0\n",
    "trygood-kept.service": (f"[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                             f"ExecStart={TRYDEMO} exit 0\n"),
    "trygood-tick.timer": "[Timer]\nOnActiveSec=1\nAccuracySec=1ms\n",
    "trygood-tick.service": f"[Service]\nType=oneshot\nExecStart={TRYDEMO} exit 0\n",
    "trygood-web.socket": f"[Socket]\nListenStream=127.0.0.1:{GOOD_SOCKET_PORT}\n",
    "trygood-web.service": f"[Service]\nExecStart={TRYDEMO} accept hi\n",
    # Accept=yes: Triggers= is empty, an instance of the template runs per connection
    "trygood-echo.socket": f"[Socket]\nListenStream=127.0.0.1:{ACCEPT_SOCKET_PORTS[1]}\n"
                           "Accept=yes\n",
    "trygood-echo@.service": f"[Service]\nStandardInput=socket\nExecStart={TRYDEMO} exit 0\n",
}


# a socket whose service cannot start: only a connection shows it (see `poking`)
DEAF = {"trybad-deaf.socket": f"[Socket]\nListenStream=127.0.0.1:{DEAF_SOCKET_PORT}\n",
        "trybad-deaf.service": "[Service]\nExecStart=/usr/bin/not-in-the-image-either\n"}


@contextlib.contextmanager
def poking(port: int) -> Iterator[list[str]]:
    """Connect to 127.0.0.1:port every 0.2 s while the block runs; yields the replies.

    The container shares the host's network, so a socket of the image gets a connection
    soon after each release's ``try`` started it, and its service runs within the window.
    """
    replies: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            with (contextlib.suppress(OSError),
                  socket.create_connection(("127.0.0.1", port), timeout=1) as s):
                replies.append(s.recv(100).decode(errors="replace"))
            stop.wait(0.2)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield replies
    finally:
        stop.set()
        thread.join()


def bad_spec(trydemo: Path) -> dict:
    texts = {name: text for name, (text, _) in BAD.items()}
    texts["trybad-orphan.timer"] = "[Timer]\nOnActiveSec=1h\n"
    texts["trybad-orphansock.socket"] = f"[Socket]\nListenStream=127.0.0.1:{BAD_SOCKET_PORT}\n"
    texts["trybad-orphanpath.path"] = "[Path]\nPathExists=/run/trybad-flag\n"
    units = [unit(n, t) if not n.endswith(".service") else service(n, t)
             for n, t in texts.items()] + [unit(n, t) for n, t in DEAF.items()]
    # allow-missing: the build would refuse the ExecStart= that is not in the image
    return {"pname": "trybad", "version": "1.0", "units": units, "allow-missing": True,
            "contents": [{"source": str(trydemo), "target": TRYDEMO}]}


def good_spec(trydemo: Path) -> dict:
    return {"pname": "trygood", "version": "1.0",
            "units": [unit(n, t) for n, t in GOOD.items()],
            "contents": [{"source": str(trydemo), "target": TRYDEMO}]}


def test_every_way_to_fail_is_reported_in_systemds_words(cli, trydemo, tmp_path):
    image = build_image(tmp_path, bad_spec(trydemo))
    with poking(DEAF_SOCKET_PORT):  # from the host: the container shares its network
        proc = cli("try", str(image), "--release", "all", "--json", "--host-network")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["format"] == "portable-service/try/1" and doc["ok"] is False
    report = doc["releases"]
    assert sorted(report) == sorted(RELEASES)
    for suite in RELEASES:
        units = report[suite]["units"]
        assert report[suite]["verdict"] == "FAILED"
        assert sorted(units) == sorted([*BAD, *DEAF]), units
        # started by its socket for a connection, the service failed: that is reported
        deaf = units["trybad-deaf.service"]
        assert deaf["verdict"] == "FAILED" and "status=203/EXEC" in deaf["cause"], (suite, deaf)
        for name, (_, words) in BAD.items():
            got = units[name]
            assert got["verdict"] == "FAILED", (suite, name, got)
            for w in words:
                assert w in got["cause"], (suite, name, got)
        assert units["trybad-loop.service"]["restarts"] >= 1, units["trybad-loop.service"]
        # start-limit-hit on 252 and 257; 247 keeps the last exit-code
        assert units["trybad-burst.service"]["state"] == "failed", units["trybad-burst.service"]
        assert units["trybad-late.service"]["state"] == "failed", units["trybad-late.service"]
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "failed on Debian 11" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_good_units_pass_on_every_release(cli, trydemo, tmp_path):
    image = build_image(tmp_path, good_spec(trydemo))
    with poking(GOOD_SOCKET_PORT) as replies:
        proc = cli("try", str(image), "--release", "bullseye", "--release", "bookworm",
                   "--release", "trixie", "--host-network")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hi\n" in replies
    # the socket started its service for a connection; the service was judged too
    assert proc.stdout.count("--- trygood-web.service (started by trygood-web.socket): "
                             "active (running") == 3, proc.stdout
    for name in ("trygood.service", "trygood-once.service", "trygood-kept.service",
                 "trygood-tick.timer", "trygood-web.socket", "trygood-echo.socket"):
        assert proc.stdout.count(f"--- {name}: ") == 3, proc.stdout
    # the timer fired within the window: its service was judged too
    assert proc.stdout.count("--- trygood-tick.service (started by trygood-tick.timer): "
                             "inactive (dead, result success") == 3, proc.stdout
    assert "FAILED" not in proc.stdout
    table = proc.stdout.splitlines()[-4:]
    assert table[0].split() == ["release", "systemd", "verdict", "units"]
    assert [row.split()[:3] for row in table[1:]] == [
        ["bullseye", "247", "ok"], ["bookworm", "252", "ok"], ["trixie", "257", "ok"]]


def test_stuck_activating_and_a_unit_not_there(cli, trydemo, tmp_path):
    # Type=notify, but the program never tells systemd it is ready
    image = build_image(tmp_path, {
        "pname": "tryslow", "version": "1.0",
        "units": [service("tryslow.service", f"Type=notify\nTimeoutStartSec=120\n"
                                             f"ExecStart={TRYDEMO} run")],
        "contents": [{"source": str(trydemo), "target": TRYDEMO}]})
    proc = cli("try", str(image), "--release", "all", "--timeout", "4", "--json",
               "--unit", "tryslow.service", "--unit", "tryslow-nope.service")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)["releases"]
    for suite in RELEASES:
        slow = report[suite]["units"]["tryslow.service"]
        assert (slow["verdict"], slow["state"]) == ("FAILED", "activating"), (suite, slow)
        assert slow["cause"].startswith("still activating after 4 s"), (suite, slow)
        nope = report[suite]["units"]["tryslow-nope.service"]
        assert nope["verdict"] == "FAILED", (suite, nope)
        assert nope["cause"].startswith("not loaded (LoadState=not-found)"), (suite, nope)
        assert "Unit tryslow-nope.service not found" in nope["cause"], (suite, nope)


@pytest.mark.parametrize("release", RELEASES)
def test_try_reports_success(cli, psdemo, tmp_path, release):
    image = build_image(tmp_path, server_spec(psdemo, "1.0"))
    proc = cli("try", str(image), "--release", release, "--settle", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "--- tryme.service: active (running, result success, restarts 0) ok" in proc.stdout
    assert f"listening on 127.0.0.1:{PORT}" in proc.stdout
    assert "OK: every unit of tryme_1.0.raw is good on Debian" in proc.stderr


def test_try_reports_systemds_own_message(cli, psdemo, tmp_path):
    image = build_image(tmp_path, server_spec(psdemo, "broken"),
                        drop=PurePosixPath("/var/lib/tryme"))
    proc = cli("try", str(image), "--settle", "0.5")
    assert proc.returncode == 1, proc.stderr
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("portable-service: error:")]
    assert len(error) == 1, proc.stderr
    assert "tryme.service failed on Debian 12" in error[0]
    assert "/var/lib/tryme" in error[0] and "Read-only file system" in error[0], proc.stdout
    assert "status=226/NAMESPACE" in error[0], proc.stdout
    assert "Traceback" not in proc.stderr
    assert "FAILED" in proc.stdout


def test_try_attach_failure_is_one_line(cli, psdemo, tmp_path):
    image = build_image(tmp_path, server_spec(psdemo, "1.0"))
    wrong = image.with_name("other_1.0.raw")  # prefix no longer matches its units
    image.rename(wrong)
    proc = cli("try", str(wrong), "--settle", "0.5")
    assert proc.returncode == 1, proc.stderr
    assert "portablectl attach failed" in proc.stderr
    # the image's PORTABLE_PREFIXES names its own prefix; systemd says so
    assert "Acceptable prefix matches are: tryme" in proc.stderr, proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if "error:" in ln]) == 1


def test_try_without_nspawn_names_the_packages(cli, tmp_path, psdemo):
    image = build_image(tmp_path, server_spec(psdemo, "1.0"))
    proc = cli("try", str(image), env={"PATH": str(tmp_path)})
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "portable-service: error: systemd-nspawn not found in PATH (needed to boot a throwaway "
        "systemd); install it: apt-get install systemd-container debootstrap"]


def test_a_timer_that_did_not_fire_has_its_job_run_once(cli, trydemo, tmp_path):
    """A nightly job cannot wait for the night: with the default choice of units, the
    service of a timer that did not fire while watched is run once, as the timer would run
    it, and judged (a failing one fails `try`); so is the service of a path unit whose path
    did not change (a spool folder's worker, before a file arrives). Named with --unit,
    only what is named runs."""
    image = build_image(tmp_path, {
        "pname": "tryjob", "version": "1.0",
        "units": [unit("tryjob-good.timer", "[Timer]\nOnCalendar=daily\n"),
                  service("tryjob-good.service", f"Type=oneshot\nExecStart={TRYDEMO} exit 0"),
                  unit("tryjob-bad.timer", "[Timer]\nOnCalendar=*-*-* 03:00:00\n"),
                  service("tryjob-bad.service", f"Type=oneshot\nExecStart={TRYDEMO} exit 3"),
                  unit("tryjob-spool.path", "[Path]\nPathExists=/run/tryjob-spool-never\n"),
                  service("tryjob-spool.service", f"Type=oneshot\nExecStart={TRYDEMO} exit 4")],
        "contents": [{"source": str(trydemo), "target": TRYDEMO}]})
    proc = cli("try", str(image), "--release", "all", "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)["releases"]
    for suite in RELEASES:
        units = report[suite]["units"]
        assert sorted(units) == ["tryjob-bad.service", "tryjob-bad.timer",
                                 "tryjob-good.service", "tryjob-good.timer",
                                 "tryjob-spool.path", "tryjob-spool.service"], units
        good, bad = units["tryjob-good.service"], units["tryjob-bad.service"]
        assert (good["verdict"], good["run_once"], good["started_by"]) == (
            "ok", True, "tryjob-good.timer"), (suite, good)
        assert (bad["verdict"], bad["run_once"]) == ("FAILED", True), (suite, bad)
        assert "status=3" in bad["cause"], (suite, bad)
        assert units["tryjob-bad.timer"]["verdict"] == "ok"
        spool = units["tryjob-spool.service"]
        assert (spool["verdict"], spool["run_once"], spool["started_by"]) == (
            "FAILED", True, "tryjob-spool.path"), (suite, spool)
        assert "status=4" in spool["cause"], (suite, spool)
        assert units["tryjob-spool.path"]["verdict"] == "ok"
    text = cli("try", str(image))
    assert "--- tryjob-spool.service (run once by try: tryjob-spool.path did not trigger " \
        "while watched): " in text.stdout, text.stdout
    named = cli("try", str(image), "--unit", "tryjob-bad.timer", "--json")
    assert named.returncode == 0, named.stdout + named.stderr
    assert list(json.loads(named.stdout)["releases"]["bookworm"]["units"]) == ["tryjob-bad.timer"]
