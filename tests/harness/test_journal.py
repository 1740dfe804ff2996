"""Which journal lines belong to a unit, when journald lost a short-lived sender's cgroup.

The entries are cut from ``journalctl -o json`` of a unit whose sandbox failed on
systemd 252 (tests/e2e/test_try.py's broken image); on a busy machine journald reads the
exec child's /proc after it exited, and its lines come without ``_SYSTEMD_UNIT``.
"""

from __future__ import annotations

import json

from portable_service.harness.nspawn import unit_lines

PID1 = {"_PID": "1", "_UID": "0", "_SYSTEMD_UNIT": "init.scope"}
CHILD = {"_PID": "59", "_UID": "0", "_SYSTEMD_UNIT": "tryme.service"}
NODE = "Failed to create destination mount point node '/run/systemd/unit-root/var/lib/tryme'" \
       ": Read-only file system"
JOURNAL = [
    {**PID1, "UNIT": "other.service", "MESSAGE": "Started other.service."},
    {**PID1, "UNIT": "tryme.service", "MESSAGE": "Started tryme.service."},
    {**CHILD, "MESSAGE": NODE},
    {**CHILD, "UNIT": "tryme.service",
     "MESSAGE": "tryme.service: Failed to set up mount namespacing: /run/systemd/unit-root/"
                "var/lib/tryme: No such file or directory"},
    {**CHILD, "UNIT": "tryme.service", "MESSAGE_ID": "641257651c1b4ec9a8624d7a40a9e1e7",
     "MESSAGE": "tryme.service: Failed at step NAMESPACE spawning /usr/bin/psdemo"},
    {"_PID": "60", "_UID": "0", "_SYSTEMD_UNIT": "other.service", "MESSAGE": "other says hi"},
    {**PID1, "UNIT": "tryme.service",
     "MESSAGE": "tryme.service: Main process exited, code=exited, status=226/NAMESPACE"},
]


def dump(entries: list[dict[str, object]]) -> str:
    return "".join(json.dumps(e) + "\n" for e in entries)


def without_cgroup(entry: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in entry.items() if k != "_SYSTEMD_UNIT"}


def test_the_units_lines_as_journalctl_u_gives_them():
    lines = unit_lines(dump(JOURNAL), "tryme.service")
    assert lines == [e["MESSAGE"] for e in JOURNAL if "tryme" in str(e["MESSAGE"])]
    assert unit_lines(dump(JOURNAL), "other.service") == ["Started other.service.",
                                                          "other says hi"]


def test_a_child_whose_cgroup_journald_lost_keeps_its_lines():
    lost = [without_cgroup(e) if e.get("_PID") == "59" else e for e in JOURNAL]
    lines = unit_lines(dump(lost), "tryme.service")
    assert NODE in lines  # found by the PID of the lines naming the unit
    assert lines == unit_lines(dump(JOURNAL), "tryme.service")
    assert NODE not in unit_lines(dump(lost), "other.service")


def test_a_pid_reused_by_another_unit_is_not_taken():
    reused = [*JOURNAL, {"_PID": "59", "_UID": "0", "_SYSTEMD_UNIT": "other.service",
                         "MESSAGE": "a later process with the same PID"}]
    assert "a later process with the same PID" not in unit_lines(dump(reused), "tryme.service")


def test_pid1_lines_about_another_unit_and_bytes_messages():
    entries = [{**PID1, "UNIT": "tryme.service", "MESSAGE": list(b"caf\xc3\xa9 \xff")},
               {**PID1, "MESSAGE": "Reached target multi-user.target."}, {"MESSAGE": None}]
    assert unit_lines(dump(entries) + "not json\n", "tryme.service") == ["café \ufffd"]
