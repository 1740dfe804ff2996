"""Hostile and odd specs: every one is one line on stderr and exit 2, never a traceback.

The property test feeds random TOML-shaped values to every setting with a fixed seed, so a
CI run repeats exactly and stays bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portable_service.builder.spec import SETTINGS, spec_from_mapping
from portable_service.errors import PortableServiceError, SpecError

UNIT = "[Service]\nExecStart=/usr/bin/env true\n"
BASE = 'pname = "demo"\nversion = "1"\nunits = ["demo.service"]\n'

CASES = {
    "deep-array": BASE + "contents = " + "[" * 3000 + "]" * 3000 + "\n",
    "deep-table": BASE + "os-release = " + "{ A = " * 800 + '"x"' + " }" * 800 + "\n",
    "nul-in-path": BASE + 'contents = ["/usr/bin/\\u0000true"]\n',
    "nul-in-description": BASE + 'description = "a\\u0000b"\n',
    "newline-in-homepage": BASE + 'homepage = "https://x\\ny"\n',
    "nul-in-os-release": BASE + 'os-release = { VARIANT = "a\\u0000" }\n',
    "tab-in-os-release": BASE + 'os-release = { VARIANT = "a\\tb" }\n',
    "long-path": BASE + 'contents = ["/' + "a" * 5000 + '"]\n',
    "newline-in-unit-name": 'pname = "demo"\nversion = "1"\n'
                            'units = [{ name = "demo\\nx.service", text = "[Service]\\n" }]\n',
    "newline-in-nested-key": BASE + 'contents = [{ "so\nurce" = "x" }]\n',
    "nul-in-unit-text": 'pname = "demo"\nversion = "1"\n'
                        'units = [{ name = "demo.service", text = "[Service]\\u0000\\n" }]\n',
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_spec_is_one_line_and_exit_2(cli, tmp_path: Path, name: str) -> None:
    (tmp_path / "demo.service").write_text(UNIT)
    (tmp_path / "portable.toml").write_text(CASES[name])
    proc = cli("build", "-q")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("portable-service: error: ")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert len(proc.stderr) < 600, "the message repeats a huge value"
    assert not (tmp_path / "result").exists() or not any((tmp_path / "result").iterdir())


# values as TOML can spell them
toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=400, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.dictionaries(st.sampled_from([s.key for s in SETTINGS] + ["bogus"]), toml_values,
                            max_size=6))
def test_random_specs_raise_only_spec_errors(tmp_path: Path, data: dict[str, Any]) -> None:
    try:
        spec_from_mapping(data, tmp_path)
    except PortableServiceError as e:
        assert "\n" not in str(e), "the error would spread over several lines"
    # anything else (TypeError, RecursionError, ValueError...) fails the test


def test_spec_error_names_the_key() -> None:
    with pytest.raises(SpecError, match="'contents' contains a NUL byte"):
        spec_from_mapping({"pname": "demo", "version": "1", "units": ["demo.service"],
                           "contents": ["/a\0b"]}, Path("/"))


def test_interrupt_at_any_moment_of_start_up_is_quiet(tmp_path: Path) -> None:
    """Ctrl-C while the command loads its modules or parses flags: no traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    (tmp_path / "demo.service").write_text(UNIT)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    # as the console script does it, from the moment its entry point is imported (a Ctrl-C
    # inside Python's own start-up, or the package's import, is Python's to report)
    code = ("import sys; from portable_service.__main__ import run; "
            "sys.stderr.write('up\\n'); sys.stderr.flush(); run()")
    for delay in [0.0, 0.01, 0.02, 0.04, 0.06, 0.08, 0.11, 0.15, 0.2, 0.3, 0.45]:
        proc = subprocess.Popen([sys.executable, "-c", code, "build", "--pname", "demo",
                                 "--version", "1", "--unit", "demo.service", "-q"],
                                cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        assert proc.stderr.readline() == "up\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, f"after {delay} s: {err}"
        assert proc.returncode in (0, 130), f"after {delay} s: exit {proc.returncode}: {err}"


def test_an_interrupt_lost_in_a_callback_is_delivered_again() -> None:
    """A Ctrl-C raised in a callback Python runs for itself (as the import lock's, when the
    build loads a module late) is "ignored" with a traceback and lost; the command's hook
    raises it again, in the command's own flow, where it ends the command in one line."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys, time, weakref\n"
            "from portable_service.__main__ import deliver_lost_interrupts\n"
            "if sys.argv[1] == 'hook':\n"
            "    sys.unraisablehook = deliver_lost_interrupts\n"
            "class Lock: pass\n"
            "def callback(_):\n"
            "    raise KeyboardInterrupt\n"
            "lock = Lock()\n"
            "ref = weakref.ref(lock, callback)\n"
            "try:\n"
            "    del lock\n"
            "    for _ in range(100):\n"
            "        time.sleep(0.01)\n"
            "    print('went on')\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for mode, said in (("hook", "interrupted"), ("plain", "went on")):
        done = subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.stdout == said + "\n", (mode, done.stdout, done.stderr)
        assert ("Traceback" in done.stderr) == (mode == "plain"), (mode, done.stderr)


def test_an_interrupt_behind_another_error_is_one_line(capsys) -> None:
    """A Ctrl-C while a late-loaded module defines a class reaches the command as a
    RuntimeError caused by the KeyboardInterrupt (a full run saw it inside pyelftools):
    it ends the command as a Ctrl-C does. Any other RuntimeError is not hidden."""
    import argparse

    from portable_service.cli import main

    def loading(_args: object) -> int:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Error calling __set_name__ on 'cached_property'") from e

    def broken(_args: object) -> int:
        raise RuntimeError("a bug")

    for func, code in ((loading, 130), (broken, None)):
        parser = argparse.ArgumentParser()
        parser.add_argument("--debug", action="store_true")
        parser.set_defaults(func=func, verb="build")
        if code is None:
            with pytest.raises(RuntimeError, match="a bug"):
                main([], parser=parser)
            continue
        assert main([], parser=parser) == code
        err = capsys.readouterr().err
        assert err == "portable-service: interrupted; no image was written or changed\n", err


def test_long_inline_unit_is_not_a_path(tmp_path: Path) -> None:
    comments = "".join(f"# line {n} of a long unit\n" for n in range(2000))
    spec = spec_from_mapping({"pname": "demo", "version": "1", "units": [
        {"name": "demo.service", "text": comments + "[Service]\nExecStart=/bin/true\n"}]},
        tmp_path)
    assert len(spec.units[0].text or "") > 40_000
