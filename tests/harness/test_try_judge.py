"""The judge of ``try`` over property sequences (no root, no container).

tests/harness/try_recorded.json holds what ``try`` sampled on systemd 247, 252 and 257 for the
good and the bad image of tests/e2e/test_try.py (rebuilt with tests/e2e/record_try.py);
the e2e tests check the same verdicts live. The short sequences written out below are
the same shapes, cut to the case at hand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from portable_service.harness.judge import (
    Sample,
    UnitProps,
    judge,
    parse_show,
    ran,
    settled,
    trigger_problem,
    watch,
)
from portable_service.harness.trial import systemd_words

RUNNING = dict(load="loaded", active="active", sub="running", result="success", type="simple")
CRASHED = dict(main_code="1", main_status="1")


def svc(**changes: object) -> UnitProps:
    return UnitProps(**{"name": "x.service", **RUNNING, **changes})  # type: ignore[arg-type]


def history(states: Sequence[UnitProps], step: float = 0.2) -> list[Sample]:
    return [Sample(round(i * step, 3), {s.name: s}) for i, s in enumerate(states)]


def test_a_running_service_is_good():
    h = history([svc()] * 20)
    v = judge(h, "x.service")
    assert v.ok and v.reason == "" and v.restarts == 0


def test_a_restart_loop_fails_even_when_it_looks_running_at_the_end():
    # Restart=on-failure, RestartSec=1: running, crash, auto-restart, running again
    states = ([svc()] * 2 + [svc(active="activating", sub="auto-restart", result="exit-code",
                                 **CRASHED)] * 5
              + [svc(restarts=1, **CRASHED)] * 5)
    v = judge(history(states), "x.service")
    assert not v.ok
    assert v.reason.startswith("restart loop: restarted 1 times in 2.2 s, last status=1")
    assert v.last.active == "active"  # the last sample alone would have said "good"


def test_auto_restart_before_the_first_restart_is_a_failure():
    states = [svc(active="activating", sub="auto-restart", result="exit-code", **CRASHED)] * 8
    v = judge(history(states), "x.service")
    assert not v.ok and v.reason == "restart loop: in auto-restart after its main process " \
                                    "exited with status=1"


def test_a_service_that_dies_late_fails_and_an_early_look_would_not_see_it():
    states = [svc()] * 8 + [svc(active="failed", sub="failed", result="exit-code",
                                **CRASHED)] * 10
    h = history(states)
    early = [s for s in h if s.at <= 1.4]
    assert judge(early, "x.service").ok
    # the window keeps the judge from deciding that early
    assert not settled(early, window=3, quiet=1)
    v = judge(h, "x.service")
    assert not v.ok and v.reason == "failed (result exit-code, status=1)"


def test_oneshots():
    done = svc(type="oneshot", active="inactive", sub="dead", main_code="1", main_status="0")
    assert judge(history([done] * 5), "x.service").ok
    kept = svc(type="oneshot", remain_after_exit=True, active="active", sub="exited")
    assert judge(history([kept] * 5), "x.service").ok
    failed = svc(type="oneshot", active="failed", sub="failed", result="exit-code", **CRASHED)
    assert judge(history([failed] * 5), "x.service").reason == "failed (result exit-code, status=1)"
    # a simple service whose program ends is not running: say what would make it a job
    ended = svc(active="inactive", sub="dead", main_code="1", main_status="0")
    reason = judge(history([ended] * 5), "x.service").reason
    assert reason.startswith("not running: its main process exited (status=0)")
    assert "Type=oneshot" in reason
    # started by a timer, the same end is the normal one
    assert judge(history([ended] * 5), "x.service", triggered=True).ok


def test_still_activating_past_the_timeout():
    stuck = svc(type="notify", active="activating", sub="start")
    h = history([stuck] * 151)
    assert not settled(h, window=3, quiet=1)
    v = judge(h, "x.service", timed_out=True)
    assert not v.ok and v.reason == "still activating after 30 s (Type=notify, start)"


def test_a_unit_that_is_not_there():
    v = judge(history([UnitProps("nope.service", load="not-found", active="inactive",
                                 sub="dead")]), "nope.service")
    assert not v.ok and v.reason == "not loaded (LoadState=not-found)"


def test_a_trigger_needs_its_unit_loaded():
    timer = UnitProps("t.timer", load="loaded", active="inactive", sub="dead",
                      result="success", triggers=("t.service",))
    missing = UnitProps("t.service", load="not-found", active="inactive", sub="dead")
    here = UnitProps("t.service", load="loaded", active="inactive", sub="dead")
    assert trigger_problem(timer, {"t.service": missing}) == (
        "the unit it triggers, t.service, is not loaded (LoadState=not-found)")
    assert trigger_problem(timer, {"t.service": here}) == ""
    waiting = UnitProps("t.timer", load="loaded", active="active", sub="waiting",
                        triggers=("t.service",))
    assert judge(history([waiting] * 3), "t.timer").ok
    assert not judge(history([timer] * 3), "t.timer").ok  # inactive: its start was refused
    assert not ran(history([here] * 3), "t.service")
    assert ran(history([here, here.__class__("t.service", load="loaded", active="active",
                                             sub="running")]), "t.service")


def test_settled_waits_for_a_quiet_period_after_the_window():
    changing = [svc(active="activating", sub="start")] * 14 + [svc()] * 20
    h = history(changing)
    at = next(s.at for i, s in enumerate(h) if settled(h[:i + 1], window=1, quiet=1))
    assert at == 3.8  # running from 2.8 s, quiet for 1 s
    # a unit that has failed for good does not hold the others up
    loop = [svc(active="activating", sub="auto-restart", result="exit-code", **CRASHED),
            svc(restarts=1)] * 10
    assert settled(history(loop)[:16], window=3, quiet=1)


def test_watch_stops_when_settled_or_at_the_timeout():
    now = [0.0]
    script = iter([svc(active="activating", sub="start")] * 5 + [svc()] * 100)

    def sample() -> dict[str, UnitProps]:
        return {"x.service": next(script)}

    def sleep(s: float) -> None:
        now[0] += s

    h, timed_out = watch(sample, lambda: now[0], sleep, window=2, quiet=1, timeout=30)
    assert not timed_out and 2.0 <= h[-1].at <= 2.3
    now[0] = 0.0
    stuck = iter([svc(type="notify", active="activating", sub="start")] * 1000)
    h, timed_out = watch(lambda: {"x.service": next(stuck)}, lambda: now[0], sleep,
                         window=2, quiet=1, timeout=5)
    assert timed_out and 5.0 <= h[-1].at <= 5.3


def test_parse_show_reads_blocks_in_order():
    out = ("Id=a.service\nLoadState=loaded\nActiveState=activating\nSubState=auto-restart\n"
           "Result=exit-code\nNRestarts=3\nExecMainCode=1\nExecMainStatus=1\nType=simple\n"
           "RemainAfterExit=no\nTriggers=\n\n"
           "Id=a.timer\nLoadState=loaded\nActiveState=inactive\nSubState=dead\n"
           "Result=success\nTriggers=a.service b.service\n\n"
           "Id=gone.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\n")
    got = parse_show(out, ["a.service", "a.timer", "gone.service"])
    assert got["a.service"].restarts == 3 and got["a.service"].exit_text == "status=1"
    assert got["a.service"].sub == "auto-restart"
    assert got["a.timer"].triggers == ("a.service", "b.service")
    assert got["gone.service"].load == "not-found"
    assert UnitProps("k", main_code="2", main_status="9").exit_text == "signal=9"


def test_systemd_words_name_the_cause_and_the_status():
    journal = ("Started x.service.\n"
               "x.service: Failed to locate executable /usr/bin/gone: No such file or directory\n"
               "x.service: Failed at step EXEC spawning /usr/bin/gone: No such file or directory\n"
               "x.service: Main process exited, code=exited, status=203/EXEC\n"
               "x.service: Failed with result 'exit-code'.\n")
    assert systemd_words(journal) == (
        "x.service: Failed to locate executable /usr/bin/gone: No such file or directory / "
        "x.service: Main process exited, code=exited, status=203/EXEC")
    loop = ("x.service: Main process exited, code=exited, status=1/FAILURE\n"
            "x.service: Scheduled restart job, restart counter is at 1.\n") * 3
    assert systemd_words(loop) == "x.service: Main process exited, code=exited, status=1/FAILURE"
    assert systemd_words("t.timer: Refusing to start, unit t.service to trigger not loaded.\n"
                         "Failed to start t.timer.\n") == (
        "t.timer: Refusing to start, unit t.service to trigger not loaded.")
    assert systemd_words("", "Failed to start nope.service: Unit nope.service not found.") == (
        "Failed to start nope.service: Unit nope.service not found.")
    assert systemd_words("") == ""


def test_a_missing_exec_step_line_is_noticed():
    from portable_service.harness.trial import _cause_missing

    status = "x.service: Main process exited, code=exited, status=203/EXEC\n"
    assert _cause_missing(status)
    cause = "x.service: Failed to locate executable /x: No such file\n"
    step = "x.service: Failed at step EXEC spawning /x: No such file or directory\n"
    assert _cause_missing(cause + status)  # the child's last line is not there yet
    assert not _cause_missing(cause + step + status)
    assert not _cause_missing("x.service: Main process exited, code=exited, status=1/FAILURE\n")


RECORDED = json.loads((Path(__file__).parent / "try_recorded.json").read_text())
SUITES = ("bullseye", "bookworm", "trixie")


def recorded(key: str) -> list[Sample]:
    """The samples ``try`` took, rebuilt from each unit's recorded changes."""
    data = RECORDED[key]
    samples = []
    for at in data["times"]:
        units = {}
        for name, changes in data["units"].items():
            fields = [f for when, f in changes if when <= at][-1]
            units[name] = UnitProps(name=name, **{**fields, "triggers": tuple(fields["triggers"])})
        samples.append(Sample(at, units))
    return samples


def verdicts(history: list[Sample]) -> dict[str, str]:
    """unit -> "ok" or the reason, as the try verb takes them: triggers, then what they started."""
    last = history[-1].units
    triggered = {t for u in last.values() for t in u.triggers}
    out = {}
    for name, props in last.items():
        if name in triggered:
            if props.load == "loaded" and ran(history, name):
                out[name] = judge(history, name, triggered=True).reason or "ok"
            continue
        out[name] = (trigger_problem(props, last) or judge(history, name).reason) or "ok"
    return out


@pytest.mark.parametrize("suite", SUITES)
def test_recorded_good_units_are_good(suite):
    history = recorded(f"good/{suite}")
    assert settled(history, window=3, quiet=1)
    assert verdicts(history) == {name: "ok" for name in (
        "trygood.service", "trygood-once.service", "trygood-kept.service", "trygood-tick.timer",
        "trygood-tick.service", "trygood-web.socket", "trygood-web.service")}


@pytest.mark.parametrize("suite", SUITES)
def test_recorded_bad_units_fail_each_for_its_reason(suite):
    history = recorded(f"bad/{suite}")
    got = verdicts(history)
    expected = {
        "trybad-loop.service": "restart loop",
        "trybad-burst.service": "restart loop",
        "trybad-late.service": "failed (result exit-code, status=1)",
        "trybad-once.service": "failed (result exit-code, status=1)",
        "trybad-noexec.service": "failed (result exit-code, status=203)",
        "trybad-deaf.service": "failed (result exit-code, status=203)",
        "trybad-orphan.timer": "the unit it triggers, trybad-orphan.service, is not loaded",
        "trybad-orphansock.socket": "the unit it triggers, trybad-orphansock.service, is not "
                                    "loaded",
        "trybad-orphanpath.path": "the unit it triggers, trybad-orphanpath.service, is not "
                                  "loaded",
    }
    for name, start in expected.items():
        assert got[name].startswith(start), (suite, name, got[name])
    # the socket whose service failed did not stay good either
    assert got["trybad-deaf.socket"] != "ok", got


# on 247 the starts of the image's other units (udev settles before each) outlast the
# late service's 1.5 s, so the first sample there already shows it dead
@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_recorded_late_death_fools_an_early_look(suite):
    """What the old ``try`` did: one look before the service died said it was fine."""
    history = recorded(f"bad/{suite}")
    early = [s for s in history if s.units["trybad-late.service"].active == "active"]
    assert early, "the recording missed the service while it ran"
    assert judge(early, "trybad-late.service").ok
    assert not settled(early, window=3, quiet=1) or early[-1].at >= 3
    assert not judge(history, "trybad-late.service").ok


def test_an_accept_socket_is_judged_by_the_template_of_its_instances():
    """Accept=yes: Triggers= is empty (systemd makes an instance per connection); the
    socket is good when an instance of NAME@.service loads, not "triggers no unit"."""
    sock = UnitProps(name="echo.socket", load="loaded", active="active", sub="listening",
                     result="success", accept=True)
    instance = "echo@try.service"
    assert sock.targets == (instance,)
    assert trigger_problem(sock, {instance: UnitProps(name=instance, load="loaded")}) == ""
    missing = trigger_problem(sock, {instance: UnitProps(name=instance, load="not-found")})
    assert missing == ("Accept=yes starts an instance of echo@.service per connection, and it "
                       "is not loaded (LoadState=not-found)")
    plain = UnitProps(name="echo.socket", load="loaded", active="active", sub="listening")
    assert plain.targets == () and trigger_problem(plain, {}) == "triggers no unit"
    assert UnitProps.from_show("echo.socket", {"Accept": "yes"}).accept


def test_a_unit_past_the_timeout_is_said_to_be_so_at_the_limit():
    """The last sample may come after the limit (a start the harness retried for its own
    fault took some of the time): the reason names the limit, not the late sample."""
    stuck = svc(type="notify", active="activating", sub="start")
    late = history([stuck] * 5, step=1.2)  # the last sample at 4.8 s, the limit 4 s
    v = judge(late, "x.service", timed_out=True, timeout=4)
    assert v.reason == "still activating after 4 s (Type=notify, start)"
    assert judge(late, "x.service", timed_out=True).reason.startswith("still activating after 5 s")
