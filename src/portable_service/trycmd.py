"""``portable-service try IMAGE``: judge an image with a real, throwaway systemd.

Boots a cached Debian root with systemd-nspawn, attaches the image with
portablectl, starts its units, prints each unit's status and journal, and
reports success or the first failure in systemd's own words. Everything is
torn down afterwards, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from portable_service.errors import ImageError, VerifyError
from portable_service.harness import nspawn, roots
from portable_service.harness.nspawn import Container, UnitState
from portable_service.progress import Reporter

PROFILES = ("default", "nonetwork", "strict", "trusted")
TRIGGERS = (".socket", ".timer", ".path")
# systemd's summary lines say that a unit failed, not why; the cause comes before them
_SUMMARY = ("Failed with result", "Failed to start", "Main process exited", "Failed at step",
            "Control process exited")


@dataclass(frozen=True)
class Outcome:
    unit: str
    state: UnitState
    journal: str

    @property
    def failed(self) -> bool:
        return self.state.failed or self.state.load != "loaded"


def units_to_start(attached: Sequence[str]) -> list[str]:
    """What ``systemctl start`` gets: triggers and targets, plus services nothing triggers.

    A template (``name@.service``) needs an instance name, so it is left to
    ``--unit name@instance.service``.
    """
    triggered = {Path(u).stem for u in attached if u.endswith(TRIGGERS)}
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
        if ("ailed" in line or "rror" in line or "refusing" in line) and not any(
                s in line for s in _SUMMARY):
            return line
    for line in lines:
        if "ailed" in line:
            return line
    return lines[-1] if lines else "no message in the journal"


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


def try_image(image: Path, *, release_name: str = roots.DEFAULT_RELEASE, profile: str = "default",
              units: Sequence[str] = (), settle: float = 2.0, reporter: Reporter | None = None,
              out: TextIO = sys.stdout) -> list[Outcome]:
    """Attach and start ``image`` in a throwaway systemd; VerifyError on the first failure."""
    reporter = reporter or Reporter()
    nspawn.check_host()
    check_image(image)
    release = roots.get_release(release_name)
    if not roots.is_ready(release):
        reporter.info(f"first use of Debian {release.version}: creating its root (once)")
    root = roots.ensure_root(release, reporter)
    label = f"Debian {release.version} ({release.suite}, systemd {release.systemd})"
    with nspawn.booted(release, root) as c:
        reporter.info(f"booted {label} in {c.timings['ready']:.1f} s")
        with reporter.step(f"portablectl attach --profile={profile} {image.name}"):
            attach = c.attach(image, profile=profile)
        if not attach.ok:
            raise VerifyError(f"portablectl attach failed on systemd {release.systemd}: "
                              f"{first_cause(attach.output)}", _hint(image))
        attached = c.attached_units()
        chosen = list(units) or units_to_start(attached)
        for unit in sorted(set(attached) - set(chosen)):
            why = "a template" if "@." in unit else "started by its trigger on demand"
            reporter.info(f"not starting {unit} ({why}; name it with --unit to start it)")
        if not chosen:
            raise VerifyError("the image has no unit to start (only templates?)",
                              "name one with --unit NAME@INSTANCE.service")
        outcomes = _start_all(c, chosen, settle, reporter)
        _print(outcomes, out)
        c.detach(image.name.removesuffix(".raw"))
    failed = [o for o in outcomes if o.failed]
    if failed:
        o = failed[0]
        raise VerifyError(f"{o.unit} failed on {label}: {first_cause(o.journal)}",
                          f"see its journal above; {_hint(image)}")
    reporter.info(f"OK: {', '.join(o.unit for o in outcomes)} started on {label}")
    return outcomes


def _start_all(c: Container, chosen: Sequence[str], settle: float,
               reporter: Reporter) -> list[Outcome]:
    with reporter.step(f"systemctl start {' '.join(chosen)}"):
        for unit in chosen:
            c.start(unit)
        time.sleep(settle)  # a service that dies at once has done so by now
    outcomes = []
    for unit in chosen:
        state = c.unit_state(unit)
        outcomes.append(Outcome(unit, state, c.journal(unit)))
    return outcomes


def _print(outcomes: Sequence[Outcome], out: TextIO) -> None:
    for o in outcomes:
        verdict = "FAILED" if o.failed else "ok"
        print(f"--- {o.unit}: {o.state.active} ({o.state.sub}, result {o.state.result or '-'})"
              f" {verdict}", file=out)
        for line in o.journal.splitlines():
            print(f"    {line}", file=out)


def _hint(image: Path) -> str:
    return f"fix the unit or the spec and rebuild {image.name}"


def cmd_try(args: argparse.Namespace) -> int:
    try_image(Path(args.image), release_name=args.release, profile=args.profile,
              units=args.unit or (), settle=args.settle, reporter=Reporter(quiet=args.quiet))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "try", help="attach and start an image in a throwaway systemd (needs root)",
        description="Boot a throwaway Debian systemd with systemd-nspawn, attach IMAGE with "
                    "portablectl, start its units, print their status and journal, and tear "
                    "everything down. Needs root, systemd-nspawn and debootstrap; the Debian "
                    f"root is cached in {roots.DEFAULT_CACHE} (or $PORTABLE_SERVICE_ROOTS).")
    p.add_argument("image", help="the image, e.g. result/demo_1.0.raw")
    p.add_argument("--profile", default="default", choices=PROFILES,
                   help="portable profile to attach with (default: default)")
    p.add_argument("--unit", action="append", metavar="UNIT",
                   help="unit to start (repeatable; default: the image's sockets, timers, "
                        "paths, targets and the services nothing triggers)")
    p.add_argument("--release", default=roots.DEFAULT_RELEASE, choices=list(roots.RELEASES),
                   help=f"Debian release to boot (default: {roots.DEFAULT_RELEASE}; "
                        + ", ".join(f"{r.suite}: systemd {r.systemd}"
                                    for r in roots.RELEASES.values()) + ")")
    p.add_argument("--settle", type=float, default=2.0, metavar="SECONDS",
                   help="how long to let the units run before judging them (default: 2)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_try)
