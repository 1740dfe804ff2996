"""The corpus (tests/corpus/): real services built, verified and run on systemd 247, 252, 257.

Each case folder states what the tool must say about it (see tests/corpus/cases.py):
the build, `portable-service verify` and `portable-service try` through the real CLI,
and, for services that work, a client's probe (HTTP GET, redis PING, SELECT 1, a DNS
query, the timer's file) against the image attached in the release's shared container.
Images are built once per case folder; one container boots per release.

``PORTABLE_SERVICE_CORPUS_RESULTS=FILE`` appends one JSON line per check (case, release,
step, expected, got, ok): tests/corpus/table.py turns them into the table of TESTING.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from portable_service.harness.nspawn import Container
from tests.conftest import REPO, require, unsquashfs_list
from tests.corpus.cases import Case, load_cases, probe_network, probe_ok
from tests.e2e.conftest import RELEASES, require_e2e
from tests.e2e.lib import attached

pytestmark = pytest.mark.e2e
CASES = load_cases()
PROBED = [c for c in CASES if c.probe]
RESULTS = os.environ.get("PORTABLE_SERVICE_CORPUS_RESULTS")
# try runs at once: each boots a container and mostly sleeps while its units settle
TRY_WORKERS = int(os.environ.get("PORTABLE_SERVICE_CORPUS_JOBS", "4"))


@dataclass(frozen=True)
class Built:
    image: Path | None
    returncode: int
    output: str


def record(case: Case, release: str, step: str, expected: str, got: str, ok: bool) -> None:
    """One line of the corpus table (only when asked for, by tests/corpus/table.py)."""
    if RESULTS:
        with open(RESULTS, "a") as f:
            f.write(json.dumps({"case": case.name, "release": release, "step": step,
                                "expected": expected, "got": got, "ok": ok}) + "\n")


def portable_service(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "portable_service", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def summary(output: str, limit: int = 3) -> str:
    """The lines that carry the verdict: errors first, else the last lines."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    picked = [ln for ln in lines if "error" in ln.lower() or "FAILED" in ln] or lines[-limit:]
    return " / ".join(picked[:limit])


def needs_met(case: Case) -> None:
    for path in case.needs:
        require(Path(path).exists(),
                f"{case.name} needs {path} on the build host (scripts/bootstrap.sh --test)")


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Case], Built]:
    """Build a case's spec folder once with `portable-service build`; later calls reuse it.

    A folder only failing cases use is built with --no-verify: their images are meant to
    be wrong, and try must see them on systemd.
    """
    require_e2e()
    done: dict[Path, Built] = {}
    out_root = tmp_path_factory.mktemp("corpus")

    def get(case: Case) -> Built:
        needs_met(case)
        if case.spec_dir not in done:
            users = [c for c in CASES if c.spec_dir == case.spec_dir]
            flags = [] if any(c.works for c in users) else ["--no-verify"]
            out = out_root / case.spec_dir.name
            proc = portable_service("build", str(case.spec_dir), "-o", str(out), *flags)
            image = Path(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
            done[case.spec_dir] = Built(image, proc.returncode, proc.stdout + proc.stderr)
        return done[case.spec_dir]

    return get


def refused(b: Built, case: Case) -> bool:
    """The build refused the spec as the case allows: exit 2, one error line with its phrase."""
    errors = [ln for ln in b.output.splitlines() if "error:" in ln]
    return (case.refuses is not None and b.returncode == 2 and len(errors) == 1
            and case.refuses.lower() in errors[0].lower() and "Traceback" not in b.output)


def built_image(build: Callable[[Case], Built], case: Case, release: str = "-",
                step: str = "") -> Path:
    """The case's image; a build that refused the spec as the case allows ends the check
    as passed (the user was told at build time), any other failed build fails it."""
    b = build(case)
    if b.image is None and refused(b, case):
        record(case, release, step, f"refused at build ({case.refuses!r})", "refused at build",
               True)
        pytest.skip(f"{case.name}: the build refused it: {summary(b.output)}")
    if b.image is None:
        pytest.fail(f"{case.name} did not build (exit {b.returncode}): {summary(b.output)}")
    return b.image


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_build(build, case):
    b = build(case)
    present = []
    if b.image is not None and case.absent:
        listing = unsquashfs_list(b.image)
        present = [p for p in case.absent if p in listing]
    ok = (b.returncode == 0 and not present) or refused(b, case)
    got = f"exit {b.returncode}" + (f", carries {', '.join(present)}" if present else "")
    if b.returncode != 0:
        got += f": {summary(b.output)}"
    expected = "exit 0" + (", leaves out " + ", ".join(case.absent) if case.absent else "")
    if case.refuses:
        expected += f" (or refuses: {case.refuses!r})"
    record(case, "-", "build", expected, got, ok)
    assert b.returncode == 0 or refused(b, case), b.output
    assert not present, f"{case.name}: the image carries {present}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_verify(build, case):
    image = built_image(build, case, step="verify")
    proc = portable_service("verify", str(image))
    output = proc.stdout + proc.stderr
    misses = case.verify.misses(proc.returncode, output)
    record(case, "-", "verify", case.verify.text(),
           f"exit {proc.returncode}: {summary(output)}", not misses)
    assert not misses, f"{case.name}: verify {misses}\n{output}"


@pytest.fixture(scope="session")
def tried(request: pytest.FixtureRequest,
          build: Callable[[Case], Built]) -> Callable[[Case, str], subprocess.CompletedProcess[str]]:
    """`portable-service try` of every case on a release, run side by side (each try boots
    its own container and mostly waits for units to settle); cases sharing an image run one
    after the other, as their services listen on the same port."""
    done: dict[tuple[str, str], subprocess.CompletedProcess[str]] = {}

    def run_group(group: list[Case], release: str) -> None:
        for case in group:
            if (case.name, release) in done:
                continue
            image = built_image(build, case)
            done[case.name, release] = portable_service(
                "try", str(image), "--release", release, "--profile", case.profile)

    def get(case: Case, release: str) -> subprocess.CompletedProcess[str]:
        if (case.name, release) not in done:
            # the cases of this release that this session runs (-k may have picked some)
            chosen = {item.callspec.params["case"].name for item in request.session.items
                      if getattr(item, "originalname", "") == "test_try"
                      and item.callspec.params["release"] == release}
            groups: dict[Path, list[Case]] = {}
            for c in CASES:
                if c.name in chosen | {case.name} and build(c).image is not None:
                    groups.setdefault(c.spec_dir, []).append(c)
            with ThreadPoolExecutor(max_workers=TRY_WORKERS) as pool:
                for f in [pool.submit(run_group, g, release) for g in groups.values()]:
                    f.result()
        if (case.name, release) not in done:
            built_image(build, case, release, "try")  # ends with the build's own message
        return done[case.name, release]

    return get


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_try(tried, case, release):
    proc = tried(case, release)
    output = proc.stdout + proc.stderr
    misses = case.try_.misses(proc.returncode, output)
    record(case, release, "try", case.try_.text(),
           f"exit {proc.returncode}: {summary(proc.stderr)}", not misses)
    assert not misses, f"{case.name} on {release}: try {misses}\n{output}"


def _probe_in(c: Container, case: Case) -> str:
    """Start the case's units in the attached image and ask the service, as a client would."""
    for unit in case.start:
        start = c.start(unit)
        assert start.ok, f"{unit}: {start.output}\n{c.journal(unit)}"
    probe = case.probe

    def failed() -> str | None:
        """systemd's words, once a started unit failed: no answer will come then."""
        dead = [u for u in case.start if c.unit_state(u).active == "failed"]
        return " / ".join(summary(c.journal(u)) for u in dead) or None

    if probe["kind"] != "file":
        return probe_network(probe, failed)
    # the timer's job: its file appears in the StateDirectory (kept in /var/lib/private
    # under DynamicUser=, with /var/lib/NAME a link to it) and the job exited 0
    path = c.root / probe["path"].lstrip("/")
    deadline = time.monotonic() + 15
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    state = c.wait_for(probe["unit"], ("inactive", "failed"))
    assert (state.result, state.exit_status) == ("success", "0"), (
        f"{probe['unit']}: {state}\n{c.journal(probe['unit'])}")
    return path.read_text().strip() if path.exists() else ""


@pytest.mark.parametrize("case", PROBED, ids=lambda c: c.name)
def test_probe(container, build, case):
    c = container
    release = c.release.suite
    image = built_image(build, case, release, "probe")
    with attached(c, image, profile=case.profile):
        try:
            got = _probe_in(c, case)
        except AssertionError as e:
            record(case, release, "probe", case.probe["kind"], f"{e}".splitlines()[0], False)
            raise
        # the probe's answer came from a service that stays up: no restarts, not failed
        states = {u: c.unit_state(u) for u in case.start}
        restarts = {u: c.systemctl("show", "-p", "NRestarts", "--value", u).stdout.strip()
                    for u in case.start}
        journal = "\n".join(c.journal(u) for u in case.start)
    ok = probe_ok(case.probe, got) if case.probe["kind"] != "file" else got.isdigit()
    if case.probe["kind"] == "file":
        got = f"file written, {case.probe['unit']} exited 0" if ok else got
    steady = all(not s.failed for s in states.values()) and set(restarts.values()) <= {"0", ""}
    record(case, release, "probe", case.probe["kind"], got[:60], ok and steady)
    assert ok, f"{case.name} on {release}: the probe got {got!r}\n{journal}"
    assert steady, f"{case.name} on {release}: {states} restarts {restarts}\n{journal}"


def test_corpus_is_consistent():
    """The cases can run side by side: one loopback port per image, outside the other tests'
    ports; each states what a user would see, and names files its folder has."""
    ports: dict[int, Path] = {}
    for case in CASES:
        spec = tomllib.loads((case.spec_dir / "portable.toml").read_text())
        for entry in spec["units"]:
            name = entry if isinstance(entry, str) else entry["name"]
            assert (case.spec_dir / name).exists(), f"{case.name}: {name} is not in its folder"
        if case.works:
            assert case.probe and case.start, f"{case.name} works: it needs a probe"
            assert (case.try_.exit, case.verify.exit) == (0, 0)
        else:
            assert case.try_.exit == 1 and case.try_.says, f"{case.name}: try's words?"
        texts = [f.read_text(errors="replace") for f in case.spec_dir.rglob("*") if f.is_file()]
        for found in {int(p) for t in texts for p in re.findall(r"\b18[0-9]{3}\b", t)}:
            owner = ports.setdefault(found, case.spec_dir)
            assert owner == case.spec_dir, f"port {found}: {owner.name} and {case.spec_dir.name}"
        if case.probe.get("port"):
            assert ports.get(case.probe["port"]) == case.spec_dir, f"{case.name}: probe port"
    others = set()
    for test in (REPO / "tests").rglob("test_*.py"):
        if test.name != "test_corpus.py":
            others |= {int(p) for p in re.findall(r"\b18[0-9]{3}\b", test.read_text())}
    assert not others & set(ports), f"ports shared with other tests: {others & set(ports)}"
