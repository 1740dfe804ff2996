"""Record what ``try`` samples on real systemd, for tests/harness/test_try_judge.py (needs root).

    cd WORKTREE && PYTHONPATH=src:. python -m tests.e2e.record_try > tests/harness/try_recorded.json

Builds the good and the bad image of tests/e2e/test_try.py, runs ``try`` on each release
and writes, per image and release, every unit's properties each time they changed, and
the times of all samples: enough to rebuild each sample the judge saw.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from portable_service.harness import judge, roots
from portable_service.harness.trial import try_on
from tests.e2e.lib import build_image, static_program
from tests.e2e.test_try import DEAF_SOCKET_PORT, GOOD_SOCKET_PORT, HERE, bad_spec, good_spec, poking


def compact(history: tuple[judge.Sample, ...]) -> dict[str, object]:
    changes: dict[str, list[object]] = {}
    for sample in history:
        for name, props in sample.units.items():
            fields = dataclasses.asdict(props)
            del fields["name"]
            seen = changes.setdefault(name, [])
            if not seen or seen[-1][1] != fields:  # type: ignore[index]
                seen.append([round(sample.at, 3), fields])
    return {"times": [round(s.at, 3) for s in history], "units": changes}


def main() -> None:
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trydemo = Path(tmp) / "trydemo"
        static_program(HERE / "trydemo.c", trydemo)
        for name, spec, port in (("bad", bad_spec(trydemo), DEAF_SOCKET_PORT),
                                 ("good", good_spec(trydemo), GOOD_SOCKET_PORT)):
            image = build_image(Path(tmp) / name, spec)
            for release in roots.RELEASES.values():
                with poking(port):
                    run = try_on(image, release)
                out[f"{name}/{release.suite}"] = compact(run.history)
                print(f"{name} on {release.suite}: {'ok' if run.ok else 'FAILED'}",
                      file=sys.stderr)
    print(json.dumps(out, sort_keys=True, separators=(",", ":")))


if __name__ == "__main__":
    main()
