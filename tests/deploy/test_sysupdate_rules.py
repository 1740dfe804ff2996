"""rules/sysupdate.py against systemd's own test cases (257, src/test/test-string-util.c) and
the manifest rules of resource_load_from_web(); the manifest is also checked by sha256sum."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from portable_service.rules import sysupdate
from portable_service.rules.sysupdate import strverscmp_improved
from tests.conftest import require_tool

# test-string-util.c TEST(strverscmp_improved): each one is newer than all before it
ORDERED = ["~1", "", "ab", "abb", "abc", "0001", "002", "12", "122", "122.9", "123~rc1", "123",
           "123-a", "123-a.1", "123-a1", "123-a1.1", "123-3", "123-3.1", "123^patch1", "123^1",
           "123.a-1", "123.1-1", "123a-1", "124"]
NEWER = [("123.45-67.88", "123.45-67.89"), ("123.45-67.89", "123.45-67.89a"),
         ("123.45-67.ab", "123.45-67.89"), ("123.45-67.9", "123.45-67.89"),
         ("123.45-67", "123.45-67.89"), ("123.45-66.89", "123.45-67.89"),
         ("123.45-9.99", "123.45-67.89"), ("123.42-99.99", "123.45-67.89"),
         ("123-99.99", "123.45-67.89"), ("123~rc1-99.99", "123.45-67.89"),
         ("123~rc1-99.99", "123-45.67.89"), ("123~rc1-99.99", "123~rc2-67.89"),
         ("123~rc1-99.99", "123^aa2-67.89"), ("123~rc1-99.99", "123aa2-67.89"),
         ("123-99.99", "123^aa2-67.89"), ("123-99.99", "123aa2-67.89"),
         ("123^45-67.89", "123.45-67.89"), ("123^aa1-99.99", "123^aa2-67.89"),
         ("123^aa2-67.89", "123aa2-67.89"), ("123.aa2-67.89", "123aa2-67.89"),
         ("123.aa2-67.89", "123.ab2-67.89")]
SIGNS = [("123_aa2-67.89", "123aa+2-67.89", 0), ("123.", "123", 1), ("12_3", "123", -1),
         ("12_3", "12", 1), ("12_3", "12.3", 1), ("123.0", "123", 1), ("123_0", "123", 1),
         ("123..0", "123.0", -1), ("0_", "0", 0), ("_0_", "0", 0), ("_0", "0", 0),
         ("0", "0___", 0), ("", "_", 0), ("_", "", 0), ("", "~", 1), ("~", "", -1),
         ("~", "~", 0), ("1٠١٢٣٤٥٦٧٨٩", "1", 0)]


def sign(n: int) -> int:
    return (n > 0) - (n < 0)


def test_strverscmp_orders_like_systemd() -> None:
    for i, older in enumerate(ORDERED):
        assert strverscmp_improved(older, older) == 0
        for newer in ORDERED[i + 1:]:
            assert strverscmp_improved(older, newer) < 0, (older, newer)
            assert strverscmp_improved(newer, older) > 0, (newer, older)
    for older, newer in NEWER:
        assert strverscmp_improved(older, newer) < 0, (older, newer)
        assert strverscmp_improved(newer, older) > 0, (newer, older)
    for a, b, expected in SIGNS:
        assert sign(strverscmp_improved(a, b)) == expected, (a, b)


@pytest.mark.parametrize("version", ["1.0", "2", "1.0-rc1", "1.0+git5", "2024.12_1", "1,2"])
def test_versions_sysupdate_sees(version: str) -> None:
    assert sysupdate.version_problem(version) is None


@pytest.mark.parametrize("version,says", [
    ("1.0~rc1", "'~'"), ("1:2", "':'"), ("", "empty"), ("1 2", "' '"), ("1^2", "'^'"),
    ("1.raw2", "'.raw'"), ("..", "empty"),
])
def test_versions_sysupdate_cannot_see(version: str, says: str) -> None:
    problem = sysupdate.version_problem(version)
    assert problem is not None and says in problem


def test_manifest_lines_read_back_and_check_with_sha256sum(tmp_path: Path) -> None:
    sha256sum = require_tool("sha256sum")
    files = {"demo_1.0.raw": b"one", "demo_1.0.verity": b"two", "a b.raw": b"three"}
    text = ""
    for name, data in sorted(files.items()):
        (tmp_path / name).write_bytes(data)
        text += sysupdate.manifest_line(hashlib.sha256(data).hexdigest(), name)
    (tmp_path / "SHA256SUMS").write_text(text)
    proc = subprocess.run([sha256sum, "-c", "--strict", "SHA256SUMS"], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sysupdate.parse_manifest(text) == {n: hashlib.sha256(d).hexdigest()
                                             for n, d in files.items()}
    # what sha256sum writes itself (text marker) reads back the same
    own = subprocess.run([sha256sum, *sorted(files)], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert own == text


@pytest.mark.parametrize("text,says", [
    ("0" * 64 + "  a\n" + "0" * 64 + "  b", "newline"),
    ("0" * 63 + "   a\n", "not '<sha256>"),
    ("0" * 64 + "-*a\n", "not '<sha256>"),
    ("0" * 64 + " *sub/a\n", "plain file name"),
    ("\\" + "0" * 64 + "  a\n", "not '<sha256>"),
    ("0" * 64 + " *\\a\n", "backslash"),
])
def test_manifests_sysupdate_refuses(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        sysupdate.parse_manifest(text)


def test_match_pattern() -> None:
    assert sysupdate.match_pattern("demo", ".raw") == "demo_@v.raw"
    assert sysupdate.component_dir("demo") == "/etc/sysupdate.demo.d"
