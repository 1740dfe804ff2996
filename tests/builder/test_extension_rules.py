"""systemd's extension-release comparison (extension_release_validate, scope "portable").

The e2e tests (tests/e2e/test_layers.py) check the main cases against systemd 252 and 257;
these pin the order of the comparison for the rest.
"""

from __future__ import annotations

import pytest

from portable_service.rules import extensions as ext_rules

BASE = {"ID": "debian", "VERSION_ID": "12"}
GOOD = {"ID": "debian", "VERSION_ID": "12", "SYSEXT_SCOPE": "portable"}


@pytest.mark.parametrize("base, ext, refused", [
    (BASE, GOOD, None),
    (BASE, {"ID": "debian", "VERSION_ID": "12"}, None),  # no scope: system and portable
    (BASE, {**GOOD, "SYSEXT_SCOPE": "system"}, "SYSEXT_SCOPE=system"),
    (BASE, {**GOOD, "SYSEXT_SCOPE": "system portable"}, None),
    (BASE, {**GOOD, "ID": "fedora"}, "ID=fedora"),
    (BASE, {"ID": "_any", "SYSEXT_SCOPE": "portable"}, None),  # any OS, no version compared
    (BASE, {**GOOD, "VERSION_ID": "11"}, "VERSION_ID=11"),
    (BASE, {"ID": "debian"}, "no VERSION_ID="),
    ({"ID": "arch"}, {"ID": "arch"}, None),  # a rolling base has no version to compare
    ({**BASE, "SYSEXT_LEVEL": "2"}, {**GOOD, "SYSEXT_LEVEL": "2", "VERSION_ID": "11"}, None),
    ({**BASE, "SYSEXT_LEVEL": "2"}, {**GOOD, "SYSEXT_LEVEL": "3"}, "SYSEXT_LEVEL=3"),
    ({**BASE, "SYSEXT_LEVEL": "2"}, {**GOOD}, None),  # only one sets a level: versions
    (BASE, {"SYSEXT_SCOPE": "portable"}, "no ID="),
])
def test_release_mismatch(base: dict[str, str], ext: dict[str, str], refused: str | None) -> None:
    got = ext_rules.release_mismatch(base, ext)
    if refused is None:
        assert got is None
    else:
        assert got is not None and refused in got[0] and got[1]


def test_prefixes_are_the_union_of_the_layers() -> None:
    valid = ext_rules.valid_prefixes({"PORTABLE_PREFIXES": "runtime"},
                                     [{"PORTABLE_PREFIXES": "app"}, {}])
    assert valid == ["app", "runtime"]
    assert ext_rules.refused_prefixes(["app", "other"], valid) == ["other"]
    assert ext_rules.valid_prefixes({}, [{}]) is None  # nobody restricts: any prefix
    assert ext_rules.refused_prefixes(["x"], None) == []


def test_release_file_name_is_the_image_name() -> None:
    assert ext_rules.release_path("/srv/app_2.raw") == \
        "/usr/lib/extension-release.d/extension-release.app_2"
    assert ext_rules.is_overlaid("/opt/app/run") and ext_rules.is_overlaid("/usr")
    assert not ext_rules.is_overlaid("/optx") and not ext_rules.is_overlaid("/etc/app.conf")
