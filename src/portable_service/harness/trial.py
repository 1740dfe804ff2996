"""``portable-service try IMAGE``: judge an image with a real, throwaway systemd.

Boots a cached Debian root with systemd-nspawn (one per ``--release``), attaches the
image with portablectl, starts its units, watches them settle and judges each as
systemd sees it (harness/judge.py), then prints every unit's verdict with systemd's own
words for a failure. Everything is torn down afterwards, also on failure or Ctrl-C.
Exit codes: 0 good, 1 the image failed (TryFailed), 2 bad input, 3 cannot run here
(HostError).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from portable_service.deploy.attach import attach_stack, detach_stack
from portable_service.deploy.descriptor import Descriptor, is_descriptor, load_descriptor
from portable_service.errors import HostError, ImageError, PortableServiceError, TryFailed
from portable_service.harness import judge, nspawn, roots
from portable_service.harness.judge import Verdict
from portable_service.harness.nspawn import Container
from portable_service.harness.roots import Release
from portable_service.jsonout import add_json_flag, emit, wanted
from portable_service.progress import Reporter
from portable_service.rules import PROFILES
from portable_service.rules.portabled import TRIGGER_TYPES

# systemd's summary lines say that a unit failed, not why; the cause comes before them
_SUMMARY = ("Failed with result", "Failed to start", "Main process exited", "Failed at step",
            "Control process exited", "Job for ", "Scheduled restart job", "Start request "
            "repeated too quickly")
# lines of systemd (and of the program) that name a cause
_CAUSE = re.compile(r"ailed|rror|refusing|not loaded|not found|no such file|denied|"
                    r"timed out|timeout", re.IGNORECASE)
# the lines carrying the main process's status=N/NAME or signal=NAME
_EXITED = ("Main process exited", "Control process exited")
# status=200..243: systemd failed a step before exec (EXEC, NAMESPACE, CHDIR, USER, ...),
# and the child always logs why first
_EXEC_STEP = re.compile(r"status=2[0-4]\d/")
JOURNAL_RETRIES = 6
# seconds a unit's state must stay unchanged, after the window, before it is judged
QUIET = 1.0
DEFAULT_SETTLE = 3.0
DEFAULT_TIMEOUT = 30.0
JOURNAL_LINES = 20  # per unit in the report: a restart loop repeats itself
EXIT_CODES = ("exit codes: 0 every unit is good; 1 the image failed on systemd (attach refused "
              "or a unit failed); 2 a usage or input error; 3 this machine cannot run it "
              "(not root, systemd-nspawn or debootstrap missing, no Debian root)")


def units_to_start(attached: Sequence[str]) -> list[str]:
    """What ``systemctl start`` gets: triggers and targets, plus services nothing triggers.

    A template (``name@.service``) needs an instance name, so it is left to
    ``--unit name@instance.service``.
    """
    triggered = {Path(u).stem for u in attached if u.endswith(TRIGGER_TYPES)}
    chosen = []
    for unit in attached:
        if "@." in unit:
            continue
        if unit.endswith(".service") and Path(unit).stem in triggered:
            continue
        chosen.append(unit)
    return chosen


def first_cause(journal: str) -> str:
    """systemd's own first line saying what went wrong, e.g. a mount point it could not make."""
    lines = [ln.strip() for ln in journal.splitlines() if ln.strip()]
    for line in lines:
        if _CAUSE.search(line) and not any(s in line for s in _SUMMARY):
            return line
    for line in lines:
        if "ailed" in line:
            return line
    return lines[-1] if lines else "no message in the journal"


def _cause_missing(journal: str) -> bool:
    """A status=2xx (systemd's own exec-step codes, 200-243) without the lines naming why.

    The exec child logs the cause, then "Failed at step ..."; PID 1 logs the status line.
    The child's lines arrive in order, so once "Failed at step" is there, so is the cause.
    """
    lines = [ln for ln in journal.splitlines() if ln.strip()]
    if not any(_EXEC_STEP.search(ln) for ln in lines):
        return False
    return not any("Failed at step" in ln for ln in lines) or not any(
        _CAUSE.search(ln) and not any(s in ln for s in _SUMMARY) for ln in lines)


def systemd_words(journal: str, start_output: str = "") -> str:
    """The cause of a failure in systemd's words: the first line naming it and the last
    ``Main process exited, ... status=N/NAME`` line (the status code), joined by " / "."""
    lines = [ln.strip() for ln in (journal + "\n" + start_output).splitlines() if ln.strip()]
    cause = next((ln for ln in lines
                  if _CAUSE.search(ln) and not any(s in ln for s in _SUMMARY)), "")
    status = next((ln for ln in reversed(lines) if any(s in ln for s in _EXITED)), "")
    words = [w for w in (cause, status) if w]
    if not words:
        words = [next((ln for ln in reversed(lines) if "ailed" in ln), "")]
    return " / ".join(w for w in words if w)


def check_image(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"image {path} does not exist", "build it first, or fix the path")
    if not path.is_file():
        raise ImageError(f"{path} is not a file", "give the .raw image file")
    if path.suffix != ".raw":
        raise ImageError(f"{path.name} does not end in .raw: portablectl would not accept it",
                         "rename it to NAME_VERSION.raw")
    if "_" not in path.stem:
        raise ImageError(f"{path.name} has no '_' between name and version",
                         "name it NAME_VERSION.raw, as the build does")
    check_architecture(path)


def image_os_release(path: Path) -> dict[str, str]:
    """The image's os-release; empty when it cannot be read here (portablectl says why later)."""
    from portable_service.fs.views import open_image, read_text
    from portable_service.rules.osrelease import parse_os_release

    try:
        fs = open_image(path)
    except ImageError:
        return {}
    try:
        text = read_text(fs, "/etc/os-release") or read_text(fs, "/usr/lib/os-release") or ""
    except (ImageError, OSError):
        text = ""  # a damaged image: the attach step reports it in systemd's words
    finally:
        fs.close()
    return parse_os_release(text)


def default_releases(path: Path) -> tuple[str, ...]:
    """An image built from a release's packages (a pinned build names its VERSION_CODENAME)
    is tried on that release; any other on the default one."""
    codename = image_os_release(path).get("VERSION_CODENAME", "")
    return (codename,) if codename in roots.RELEASES else ()


def check_architecture(path: Path) -> None:
    """An image for another CPU cannot run in a container here: say so before booting one."""
    from portable_service.rules import debian

    arch = image_os_release(path).get("ARCHITECTURE")
    here = debian.SYSTEMD_ARCH.get(debian.host_dpkg_arch())
    if arch and here and arch != here:
        raise ImageError(f"{path.name} is built for {arch} (os-release ARCHITECTURE=), this "
                         f"machine is {here}: its programs cannot run here",
                         f"try it on a {arch} machine, or build it for {debian.host_dpkg_arch()}")


@dataclass(frozen=True)
class Outcome:
    """One unit's verdict on one release, with systemd's words for a failure."""

    verdict: Verdict
    cause: str  # systemd's own lines ("" when ok)
    journal: str
    triggered_by: str = ""  # set for a unit started by a socket, timer or path
    run_once: bool = False  # a timer's or path's service try ran itself (it was not started)

    @property
    def unit(self) -> str:
        return self.verdict.unit

    @property
    def failed(self) -> bool:
        return not self.verdict.ok

    @property
    def reason(self) -> str:
        """Our reason, then systemd's words: the one line a failure is reported with."""
        if not self.failed:
            return ""
        return f"{self.verdict.reason}: {self.cause}" if self.cause else self.verdict.reason

    def to_json(self) -> dict[str, object]:
        last = self.verdict.last
        return {"state": last.active, "sub": last.sub, "result": last.result,
                "restarts": self.verdict.restarts, "verdict": "FAILED" if self.failed else "ok",
                "cause": self.reason, "started_by": self.triggered_by or None,
                "run_once": self.run_once}


@dataclass(frozen=True)
class ReleaseRun:
    """``try`` on one release: the attach error or every unit's outcome."""

    release: Release
    outcomes: tuple[Outcome, ...] = ()
    attach_error: str = ""
    seconds: float = 0.0  # how long the units were watched
    history: tuple[judge.Sample, ...] = ()  # what the verdicts were taken from

    @property
    def label(self) -> str:
        r = self.release
        return f"Debian {r.version} ({r.suite}, systemd {r.systemd})"

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def ok(self) -> bool:
        return not self.attach_error and not self.failures

    @property
    def summary(self) -> str:
        if self.attach_error:
            return f"{self.label}: FAILED: {self.attach_error}"
        bad = self.failures
        if not bad:
            return (f"{self.label}: ok, {len(self.outcomes)} unit(s) good after "
                    f"{self.seconds:.1f} s")
        return (f"{self.label}: FAILED, {len(bad)} of {len(self.outcomes)} unit(s): "
                + ", ".join(o.unit for o in bad))

    def to_json(self) -> dict[str, object]:
        return {"attach": self.attach_error or "ok", "systemd": self.release.systemd,
                "verdict": "ok" if self.ok else "FAILED",
                "units": {o.unit: o.to_json() for o in self.outcomes}}


def resolve_releases(names: Sequence[str]) -> list[Release]:
    """``--release`` values (repeatable, or ``all``) as releases, oldest first, each once."""
    if not names:
        return [roots.get_release(roots.DEFAULT_RELEASE)]
    if "all" in names:
        return list(roots.RELEASES.values())
    chosen = {roots.get_release(n).suite for n in names}
    return [r for r in roots.RELEASES.values() if r.suite in chosen]


def try_image(image: Path, *, releases: Sequence[str] = (), profile: str = "default",
              units: Sequence[str] = (), settle: float = DEFAULT_SETTLE,
              timeout: float = DEFAULT_TIMEOUT, reporter: Reporter | None = None,
              out: TextIO = sys.stdout, as_json: bool | str = False,
              host_network: bool = False) -> list[ReleaseRun]:
    """Attach and start ``image`` on each release's systemd and judge its units.

    Prints every unit's verdict and a summary (or JSON); raises TryFailed (exit 1) when
    an attach was refused or a unit failed, HostError (exit 3) when this machine cannot
    boot a throwaway systemd.
    """
    reporter = reporter or Reporter()
    nspawn.check_host()
    stack = None
    if is_descriptor(image):  # a base and its extensions, attached together
        stack = load_descriptor(image)
        for layer in stack.images:
            check_image(layer)
        profile = stack.profile
    else:
        check_image(image)
    chosen = resolve_releases(releases or default_releases(stack.images[0] if stack else image))
    runs = []
    for release in chosen:
        run = try_on(image, release, profile=profile, units=units, settle=settle,
                     timeout=timeout, reporter=reporter, host_network=host_network,
                     stack=stack)
        runs.append(run)
        if not as_json:
            _print_run(run, out)
    if as_json:
        emit("try", {"ok": all(r.ok for r in runs),
                     "releases": {r.release.suite: r.to_json() for r in runs}},
             "pretty" if as_json is True else str(as_json), out)
    elif len(runs) > 1:
        _print_table(runs, out)
    failed = [r for r in runs if not r.ok]
    if failed:
        raise TryFailed(_failure_line(failed), f"see the journal above; {_hint(image)}"
                        if not as_json else _hint(image))
    reporter.info(f"OK: every unit of {image.name} is good on "
                  + ", ".join(r.label for r in runs))
    return runs


def _root(release: Release, reporter: Reporter) -> Path:
    if not roots.is_ready(release):
        reporter.info(f"first use of Debian {release.version}: creating its root (once)")
    try:
        return roots.ensure_root(release, reporter)
    except HostError:
        raise
    except PortableServiceError as e:  # no mirror, debootstrap failed: nothing to run on
        raise HostError(f"cannot create the Debian {release.version} root: {e.message}",
                        e.hint) from None
    except OSError as e:
        raise HostError(f"cannot create the Debian {release.version} root: "
                        f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}",
                        "check the space and permissions of the cache, or set "
                        "PORTABLE_SERVICE_ROOTS") from None


def try_on(image: Path, release: Release, *, profile: str = "default",
           units: Sequence[str] = (), settle: float = DEFAULT_SETTLE,
           timeout: float = DEFAULT_TIMEOUT, reporter: Reporter | None = None,
           host_network: bool = False, stack: Descriptor | None = None) -> ReleaseRun:
    """Boot ``release``, attach ``image``, start and judge its units; torn down on return.

    The container has a network of its own (loopback only) unless ``host_network``: a
    unit on trial cannot reach or serve the host's network.
    """
    reporter = reporter or Reporter(quiet=True)
    root = _root(release, reporter)
    label = ReleaseRun(release).label
    with nspawn.booted(release, root, private_network=not host_network,
                       reporter=reporter) as c:
        reporter.info(f"booted {label} in {c.timings['ready']:.1f} s")
        with reporter.step(f"portablectl attach --profile={profile} {image.name}"):
            attach = c.attach(image, profile=profile) if stack is None else \
                attach_stack(c, stack)
        if not attach.ok:
            return ReleaseRun(release, attach_error=f"portablectl attach failed: "
                                                    f"{first_cause(attach.output)}")
        attached = c.attached_units()
        chosen = list(units) or units_to_start(attached)
        for unit in sorted(set(attached) - set(chosen)):
            why = ("not named with --unit" if units else "a template" if "@." in unit
                   else "started by its trigger on demand")
            reporter.info(f"not starting {unit} ({why}; name it with --unit to start it)")
        if not chosen:
            raise TryFailed("the image has no unit to start (only templates?)",
                            "name one with --unit NAME@INSTANCE.service")
        run = _start_and_judge(c, release, chosen, settle, timeout, reporter,
                               run_jobs=not units)
        if stack is None:
            c.detach(image.name.removesuffix(".raw"))
        else:
            detach_stack(c, stack)
    return run


def _start_and_judge(c: Container, release: Release, chosen: Sequence[str], settle: float,
                     timeout: float, reporter: Reporter, *, run_jobs: bool = False
                     ) -> ReleaseRun:
    """Start ``chosen``, watch them (and what they trigger) settle, judge each; with
    ``run_jobs``, then run once each timer's or path unit's service it did not start
    meanwhile."""
    begin = time.monotonic()  # the timeout bounds the starts and the watch together
    with reporter.step(f"systemctl start {' '.join(chosen)}"):
        started = _start_all(c, chosen, timeout, begin)
    # what the sockets, timers and paths start is watched too: it may be missing, or run
    # (a timer that elapsed, a socket that got a connection) and fail
    first = c.unit_props(chosen)
    triggered = [t for u in chosen for t in first[u].targets if t not in chosen]
    names = list(dict.fromkeys([*chosen, *triggered]))
    with reporter.step(f"watching {len(names)} unit(s) settle (at least {settle:g} s, "
                       f"at most {timeout:g} s)"):
        history, timed_out = _watch(c, names, settle, timeout, begin)
    last = history[-1].units
    outcomes = []
    for unit in chosen:
        verdict = judge.judge(history, unit, timed_out=timed_out, timeout=timeout)
        problem = judge.trigger_problem(last[unit], last)
        if problem:
            verdict = Verdict(unit, False, problem, verdict.last, verdict.restarts)
        outcomes.append(_outcome(c, verdict, started.get(unit, "")))
    for unit in dict.fromkeys(triggered):
        if last[unit].load == "loaded" and judge.ran(history, unit):
            by = next(u for u in chosen if unit in first[u].targets)
            outcomes.append(_outcome(c, judge.judge(history, unit, timed_out=timed_out,
                                                    timeout=timeout, triggered=True),
                                     "", triggered_by=by))
    # a timer (or path) whose service is not loaded was judged FAILED above: nothing to run
    jobs = {job: u for u in chosen if u.endswith(JOB_TRIGGERS) for job in first[u].targets
            if job not in chosen and last[job].load == "loaded" and not judge.ran(history, job)}
    if run_jobs and jobs:
        outcomes += _run_jobs(c, jobs, settle, timeout, reporter)
    return ReleaseRun(release, tuple(outcomes), seconds=history[-1].at, history=tuple(history))


def _start_all(c: Container, units: Sequence[str], timeout: float,
               begin: float) -> dict[str, str]:
    """``systemctl start`` each unit within what is left of ``timeout`` since ``begin``;
    what each start printed. A start job that blocks (Type=notify never ready, a long
    oneshot) is left to the watch to judge."""
    started: dict[str, str] = {}
    for unit in units:
        try:
            left = max(timeout - (time.monotonic() - begin), 1.0)
            started[unit] = c.start(unit, timeout=left).output
        except PortableServiceError as e:  # the start job outlived the timeout
            started[unit] = str(e)
    return started


def _watch(c: Container, names: Sequence[str], settle: float, timeout: float,
           begin: float) -> tuple[list[judge.Sample], bool]:
    """The units' samples until they settled, or ``timeout`` since ``begin``."""
    return judge.watch(lambda: c.unit_props(names), time.monotonic, time.sleep,
                       window=settle, quiet=QUIET, timeout=timeout, start=begin)


def _run_jobs(c: Container, jobs: Mapping[str, str], settle: float, timeout: float,
              reporter: Reporter) -> list[Outcome]:
    """Each job (a timer's or path unit's service, to its trigger) run once, as the trigger
    would run it, and judged: a nightly job that fails must fail here, not at 3 a.m. on the
    server; so must the service a spool folder's path unit starts, before a file arrives."""
    begin = time.monotonic()
    names = list(jobs)
    with reporter.step(f"running {' '.join(names)} once (not started by its timer or path "
                       "while watched)"):
        started = _start_all(c, names, timeout, begin)
        history, timed_out = _watch(c, names, settle, timeout, begin)
    return [_outcome(c, judge.judge(history, job, timed_out=timed_out, timeout=timeout,
                                    triggered=True),
                     started[job], triggered_by=jobs[job], run_once=True) for job in names]


def _outcome(c: Container, verdict: Verdict, start_output: str,
             triggered_by: str = "", run_once: bool = False) -> Outcome:
    journal = c.journal(verdict.unit)
    for _ in range(JOURNAL_RETRIES):
        if verdict.ok or not _cause_missing(journal):
            break
        # the exec child's own line (logged before status=2xx) can reach journald after
        # PID 1's "Main process exited" on a busy machine
        c.run("journalctl", "--sync")
        time.sleep(0.5)
        journal = c.journal(verdict.unit)
    cause = "" if verdict.ok else systemd_words(journal, start_output)
    return Outcome(verdict, cause, journal, triggered_by, run_once)


# a trigger whose service try runs once when the trigger did not start it while watched:
# a timer that is not due (OnCalendar=daily), a path unit whose path did not change
JOB_TRIGGERS = (".timer", ".path")


def _did_not(trigger: str) -> str:
    return "did not fire" if trigger.endswith(".timer") else "did not trigger"


def _print_run(run: ReleaseRun, out: TextIO) -> None:
    print(f"=== {run.label}", file=out)
    if run.attach_error:
        print(f"    attach FAILED: {run.attach_error}", file=out)
    for o in run.outcomes:
        last = o.verdict.last
        by = (f" (run once by try: {o.triggered_by} {_did_not(o.triggered_by)} while watched)"
              if o.run_once
              else f" (started by {o.triggered_by})" if o.triggered_by else "")
        verdict = f"FAILED: {o.reason}" if o.failed else "ok"
        print(f"--- {o.unit}{by}: {last.active} ({last.sub}, result {last.result or '-'}, "
              f"restarts {o.verdict.restarts}) {verdict}", file=out)
        lines = [ln for ln in o.journal.splitlines() if ln.strip()]
        if len(lines) > JOURNAL_LINES:
            print(f"    ... {len(lines) - JOURNAL_LINES} earlier journal lines", file=out)
        for line in lines[-JOURNAL_LINES:]:
            print(f"    {line}", file=out)
    print(run.summary, file=out)


def _print_table(runs: Sequence[ReleaseRun], out: TextIO) -> None:
    print(f"{'release':<10} {'systemd':<8} {'verdict':<7} units", file=out)
    for r in runs:
        if r.attach_error:
            detail = f"attach refused: {r.attach_error}"
        else:
            bad = [o.unit for o in r.failures]
            detail = (f"{len(r.outcomes)} good" if not bad
                      else f"{len(bad)} of {len(r.outcomes)} failed: {', '.join(bad)}")
        print(f"{r.release.suite:<10} {r.release.systemd:<8} {'ok' if r.ok else 'FAILED':<7} "
              f"{detail}", file=out)


def _failure_line(failed: Sequence[ReleaseRun]) -> str:
    """One line for the error: the first failure in systemd's words, and how many more."""
    first = failed[0]
    if first.attach_error:
        line = f"on {first.label}, {first.attach_error}"
        more = len(first.failures)
    else:
        o = first.failures[0]
        line = f"{o.unit} failed on {first.label}: {o.reason}"
        more = len(first.failures) - 1
    more += sum(len(r.failures) + bool(r.attach_error) for r in failed[1:])
    return line + (f" (and {more} more failure(s), listed above)" if more else "")


def _hint(image: Path) -> str:
    return f"fix the unit or the spec and rebuild {image.name}"


def cmd_try(args: argparse.Namespace) -> int:
    try_image(Path(args.image), releases=args.release or (), profile=args.profile,
              units=args.unit or (), settle=args.settle, timeout=args.timeout,
              reporter=Reporter(quiet=args.quiet or bool(wanted(args))),
              as_json=wanted(args) or False,
              host_network=args.host_network)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "try", help="attach and start an image in a throwaway systemd (needs root)",
        description="Boot a throwaway Debian systemd with systemd-nspawn, attach IMAGE with "
                    "portablectl, start its units, watch them settle and judge each as "
                    "systemd sees it, print every unit's verdict with systemd's own words "
                    "for a failure, and tear everything down. Needs root, systemd-nspawn and "
                    "debootstrap; the Debian root is cached in "
                    f"{roots.DEFAULT_CACHE} (or $PORTABLE_SERVICE_ROOTS).",
        epilog=EXIT_CODES)
    p.add_argument("image", help="the image, e.g. result/demo_1.0.raw, or a deployment "
                   "descriptor (.toml: a base and its extensions)")
    p.add_argument("--profile", default="default", choices=PROFILES,
                   help="portable profile to attach with (default: default)")
    p.add_argument("--unit", action="append", metavar="UNIT",
                   help="unit to start (repeatable; default: the image's sockets, timers, "
                        "paths, targets and the services nothing triggers)")
    p.add_argument("--release", action="append", choices=[*roots.RELEASES, "all"],
                   help=f"Debian release to boot (repeatable, or all; default: "
                        f"{roots.DEFAULT_RELEASE}; "
                        + ", ".join(f"{r.suite}: systemd {r.systemd}"
                                    for r in roots.RELEASES.values()) + ")")
    p.add_argument("--settle", type=_seconds, default=DEFAULT_SETTLE, metavar="SECONDS",
                   help="watch the units at least this long, and until their state has not "
                        f"changed for {QUIET:g} s, before judging them (default: "
                        f"{DEFAULT_SETTLE:g})")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="judge the units after this long even if they still change; a unit "
                        f"still activating then has failed (default: {DEFAULT_TIMEOUT:g})")
    add_json_flag(p)  # the verdicts per release, per unit (docs/json.md)
    p.add_argument("--host-network", action="store_true",
                   help="share the host's network with the container (default: a network of "
                        "its own, loopback only)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_try)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} s is out of range (0 to 3600)")
    return value
