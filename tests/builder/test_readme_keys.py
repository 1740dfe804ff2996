"""README's table of spec keys says what SETTINGS says: every key, alias, flag and default."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from portable_service.builder.closure.deb import DEFAULT_DATA, DEFAULT_SKIP
from portable_service.builder.spec import SETTINGS, Setting, Spec
from tests.conftest import REPO

# defaults the Spec cannot show as a value: found at build time
DYNAMIC = {"squashfs-tools": "`mksquashfs` from PATH", "os-release": "host's `ID`, `VERSION_ID`"}


def readme_rows() -> dict[str, tuple[str, str, str]]:
    """{key: (key cell, flag cell, default cell)} of the table under '### Keys'."""
    text = (REPO / "README.md").read_text()
    table = text.split("### Keys", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].split("`")[1]] = (cells[0], cells[1], cells[2])
    return rows


def expected_default(s: Setting) -> str:
    if s.required:
        return "required"
    if s.key in DYNAMIC:
        return DYNAMIC[s.key]
    if s.key == "skip-packages":
        return f"`{' '.join(sorted(DEFAULT_SKIP))}`"
    if s.key == "package-data":
        return f"`{' '.join(sorted(DEFAULT_DATA))}`"
    value = Spec(pname="x", version="1", units=()).to_dict()[s.key]
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"`{value}`"
    return f"`{value}`"


def test_every_setting_has_a_row_and_every_row_a_setting() -> None:
    assert sorted(readme_rows()) == sorted(s.key for s in SETTINGS)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_row_matches_the_setting(setting: Setting) -> None:
    key_cell, flag_cell, default_cell = readme_rows()[setting.key]
    assert re.findall(r"`([^`]+)`", key_cell) == [setting.key, *setting.aliases]
    flag = f"{setting.flag} {setting.metavar}" if setting.metavar else setting.flag
    assert flag_cell.split(" or ")[0] == f"`{flag}`"
    assert default_cell == expected_default(setting)


def test_spec_fields_are_the_settings() -> None:
    """One row of SETTINGS per field of Spec: the table covers everything a build reads."""
    assert [f.name for f in fields(Spec)] == [s.attr for s in SETTINGS]
