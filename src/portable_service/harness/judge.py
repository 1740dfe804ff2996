"""Judge units as systemd sees them once they have settled; pure logic, no container.

``try`` samples each unit's properties (``systemctl show``) over a settle
window and hands the samples here. A unit that only *looked* fine at one
moment (a restart loop between two crashes, a service that dies a second
after its start, a timer whose service is missing) must come out FAILED, so
the verdict is taken over the whole history of samples, not the last one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from portable_service.rules.portabled import TRIGGER_TYPES

# the properties `systemctl show` is asked for; Triggers= lists what a .timer, .socket or
# .path starts (a timer's Unit= lands there too)
PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "Result", "NRestarts",
              "ExecMainCode", "ExecMainStatus", "Type", "RemainAfterExit", "Triggers", "Accept")
# ActiveStates on the way somewhere else; a unit in one of them has not settled
TRANSITIONAL = ("activating", "deactivating", "reloading", "refreshing")
# ExecMainCode is a siginfo si_code: CLD_EXITED, CLD_KILLED, CLD_DUMPED
CLD_EXITED = "1"


@dataclass(frozen=True)
class UnitProps:
    """One sample of a unit's properties, as ``systemctl show`` printed them."""

    name: str
    load: str = ""  # LoadState: loaded, not-found, bad-setting, masked, ...
    active: str = ""  # ActiveState
    sub: str = ""  # SubState: running, exited, dead, auto-restart, listening, waiting, ...
    result: str = ""  # Result: success, exit-code, signal, resources, start-limit-hit, ...
    restarts: int = 0  # NRestarts (services only); reset by a manual start
    main_code: str = ""  # ExecMainCode
    main_status: str = ""  # ExecMainStatus
    type: str = ""  # Type= of a service
    remain_after_exit: bool = False
    triggers: tuple[str, ...] = ()
    accept: bool = False  # Accept=yes of a socket: a service instance per connection

    @classmethod
    def from_show(cls, name: str, props: Mapping[str, str]) -> UnitProps:
        restarts = props.get("NRestarts", "") or "0"
        return cls(name=name, load=props.get("LoadState", ""), active=props.get("ActiveState", ""),
                   sub=props.get("SubState", ""), result=props.get("Result", ""),
                   restarts=int(restarts) if restarts.isdigit() else 0,
                   main_code=props.get("ExecMainCode", ""),
                   main_status=props.get("ExecMainStatus", ""), type=props.get("Type", ""),
                   remain_after_exit=props.get("RemainAfterExit", "") == "yes",
                   triggers=tuple(props.get("Triggers", "").split()),
                   accept=props.get("Accept", "") == "yes")

    @property
    def targets(self) -> tuple[str, ...]:
        """The units it starts: ``Triggers=``, or for an ``Accept=yes`` socket (whose
        Triggers= is empty: systemd makes an instance per connection) an instance of the
        template it makes them from, ``NAME@.service``."""
        if self.accept and not self.triggers and self.name.endswith(".socket"):
            return (accept_instance(self.name),)
        return self.triggers

    @property
    def is_trigger(self) -> bool:
        return self.name.endswith(TRIGGER_TYPES)

    @property
    def is_service(self) -> bool:
        return self.name.endswith(".service")

    @property
    def key(self) -> tuple[object, ...]:
        """What counts as a change of state while settling."""
        return (self.load, self.active, self.sub, self.result, self.restarts, self.main_code,
                self.main_status)

    @property
    def exit_text(self) -> str:
        """The main process's end as systemd writes it: ``status=1`` or ``signal=9``."""
        if not self.main_code or self.main_code == "0":
            return ""
        return f"{'status' if self.main_code == CLD_EXITED else 'signal'}={self.main_status}"


@dataclass(frozen=True)
class Sample:
    """All units at one moment; ``at`` is seconds since the units were started."""

    at: float
    units: Mapping[str, UnitProps]


@dataclass(frozen=True)
class Verdict:
    unit: str
    ok: bool
    reason: str  # why it failed, in our words ("" when ok); the journal adds systemd's
    last: UnitProps
    restarts: int


def parse_show(output: str, names: Sequence[str]) -> dict[str, UnitProps]:
    """``systemctl show -p ... A B C``: blocks separated by a blank line, in argument order."""
    blocks: list[dict[str, str]] = [{}]
    for line in output.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        if "=" in line:
            k, v = line.split("=", 1)
            blocks[-1][k] = v
    blocks = [b for b in blocks if b]
    by_id = {b.get("Id", ""): b for b in blocks}
    found = {}
    for i, name in enumerate(names):
        # a unit that is not loaded may show under its own name only by position
        block = by_id.get(name) or (blocks[i] if i < len(blocks) else {})
        found[name] = UnitProps.from_show(name, block)
    return found


def settled(history: Sequence[Sample], *, window: float, quiet: float) -> bool:
    """True when the window has passed and no unit changed (or moves) in the last ``quiet`` s.

    A unit already known to have failed (restarts, auto-restart seen, failed) does not
    hold the others up: more samples cannot make it good.
    """
    if not history or history[-1].at < window:
        return False
    last = history[-1]
    for name, now in last.units.items():
        if _failed_for_good(history, name):
            continue
        if now.active in TRANSITIONAL:
            return False
        for sample in reversed(history):
            if last.at - sample.at > quiet:
                break
            if sample.units[name].key != now.key:
                return False
        if last.at - history[0].at < quiet:
            return False
    return True


def _failed_for_good(history: Sequence[Sample], name: str) -> bool:
    units = [s.units[name] for s in history]
    # NRestarts counts from our own start: any restart is the unit's own doing
    return (any(u.sub == "auto-restart" for u in units) or units[-1].restarts > 0
            or units[-1].active == "failed")


def ran(history: Sequence[Sample], name: str) -> bool:
    """Whether a unit did anything in the window (a triggered one usually waits)."""
    return any(u.active != "inactive" or u.result not in ("success", "") or u.restarts
               or u.main_code not in ("", "0") for u in (s.units[name] for s in history))


def judge(history: Sequence[Sample], name: str, *, timed_out: bool = False,
          triggered: bool = False, timeout: float | None = None) -> Verdict:
    """The verdict on one unit over all samples (the last one after settling).

    A ``triggered`` unit (started by a socket, timer or path) may also have run and ended:
    inactive with result success. A unit still changing when the watch ``timed_out`` is
    said to be so after ``timeout`` seconds, the limit (the last sample may come a little
    later: a start the harness retried for its own fault took some of the time).
    """
    units = [s.units[name] for s in history]
    first, last = units[0], units[-1]
    seconds = history[-1].at

    def verdict(reason: str) -> Verdict:
        return Verdict(name, not reason, reason, last, last.restarts)

    if last.load != "loaded":
        return verdict(f"not loaded (LoadState={last.load or 'unknown'})")
    # NRestarts is reset by our own start, so any restart seen is one the unit made itself
    if last.restarts > 0 or last.restarts != first.restarts:
        exits = f", last {last.exit_text}" if last.exit_text else ""
        return verdict(f"restart loop: restarted {last.restarts} times in {seconds:.1f} s{exits}"
                       f" (now {last.active}/{last.sub})")
    if any(u.sub == "auto-restart" for u in units):
        return verdict(f"restart loop: in auto-restart after its main process exited"
                       f"{' with ' + last.exit_text if last.exit_text else ''}")
    if last.active == "failed":
        exits = f", {last.exit_text}" if last.exit_text and last.is_service else ""
        return verdict(f"failed (result {last.result}{exits})")
    if last.active in TRANSITIONAL:
        how = f" (Type={last.type}, {last.sub})" if last.type else f" ({last.sub})"
        limit = timeout if timeout is not None else seconds
        return verdict(f"still {last.active} after {limit:.0f} s{how}" if timed_out
                       else f"still {last.active}{how}")
    if triggered and last.active == "inactive" and last.result in ("success", ""):
        return verdict("")
    if last.is_service:
        return verdict(_service_reason(last))
    if last.active != "active":
        return verdict(f"not active ({last.active}/{last.sub})")
    return verdict("")


def _service_reason(u: UnitProps) -> str:
    if u.active == "active" and u.sub == "running":
        return ""
    if u.type == "oneshot":
        if u.active == "active" and u.remain_after_exit:
            return ""
        if (u.active == "inactive" and u.result == "success"
                and u.main_status in ("0", "")):
            return ""
    if u.active == "inactive" and u.result == "success":
        why = f" ({u.exit_text})" if u.exit_text else ""
        return (f"not running: its main process exited{why} although Type={u.type or 'simple'}"
                " (a job that should end: Type=oneshot)")
    if u.active == "inactive" and u.result != "success":
        return f"not running (result {u.result}, {u.exit_text or 'no exit status'})"
    return f"not running ({u.active}/{u.sub})"


ACCEPT_INSTANCE = "try"  # the instance loaded to see that an Accept=yes socket's template loads


def accept_instance(socket: str) -> str:
    """An instance of the template an ``Accept=yes`` socket makes one of per connection."""
    return f"{socket.removesuffix('.socket')}@{ACCEPT_INSTANCE}.service"


def trigger_problem(unit: UnitProps, triggered: Mapping[str, UnitProps]) -> str:
    """Why a socket, timer or path cannot do its job: the unit it triggers is not loaded
    (for an ``Accept=yes`` socket: the template of its per-connection instances)."""
    if not unit.is_trigger:
        return ""
    if not unit.targets:
        return "triggers no unit"
    for name in unit.targets:
        other = triggered.get(name)
        if other is not None and other.load != "loaded":
            if name not in unit.triggers:
                template = name.replace(f"@{ACCEPT_INSTANCE}.", "@.")
                return (f"Accept=yes starts an instance of {template} per connection, and it "
                        f"is not loaded (LoadState={other.load})")
            return f"the unit it triggers, {name}, is not loaded (LoadState={other.load})"
    return ""


def watch(sample: Callable[[], Mapping[str, UnitProps]], clock: Callable[[], float],
          sleep: Callable[[float], None], *, window: float, quiet: float, timeout: float,
          interval: float = 0.2, start: float | None = None) -> tuple[list[Sample], bool]:
    """Sample until :func:`settled` or ``timeout``; returns the samples and whether it timed out.

    Times count from ``start`` (when the units were started; default: now).
    """
    start = clock() if start is None else start
    history = [Sample(clock() - start, dict(sample()))]
    while True:
        if settled(history, window=window, quiet=quiet):
            return history, False
        if history[-1].at >= timeout:
            return history, True
        sleep(interval)
        history.append(Sample(clock() - start, dict(sample())))
