"""The spec table: TOML keys, aliases, relative paths, overrides, and every spec-level rule."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.spec import (
    SETTINGS,
    Content,
    Spec,
    Symlink,
    load_spec,
    spec_from_mapping,
)
from portable_service.builder.writers.options import parse_block_size, parse_compression
from portable_service.errors import SpecError

BASE = {"pname": "demo", "version": "1.0", "units": ["demo.service"]}


def spec(tmp_path: Path, **extra: object) -> Spec:
    return spec_from_mapping({**BASE, **extra}, tmp_path)


def test_defaults_are_the_references(tmp_path: Path) -> None:
    s = spec(tmp_path)
    # parsed once, when the spec is read
    assert s.squash_compression == parse_compression("xz -Xdict-size 100%")
    assert str(s.squash_compression) == "xz -Xdict-size 100%"
    assert s.squash_block_size == 1 << 20
    assert s.to_dict()["squash-block-size"] == "1M"
    assert s.image_name == "demo_1.0.raw"
    assert s.units[0].path == tmp_path / "demo.service"


def test_reference_spelling_squashfsTools_is_accepted(tmp_path: Path) -> None:
    s = spec(tmp_path, squashfsTools="/opt/sqfs")
    assert s.squashfs_tools == Path("/opt/sqfs")
    with pytest.raises(SpecError, match="given twice"):
        spec(tmp_path, squashfsTools="/a", **{"squashfs-tools": "/b"})


def test_unknown_key_names_the_closest(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        spec(tmp_path, homepgae="x")
    assert "unknown spec key 'homepgae'" in e.value.message
    assert e.value.hint == "did you mean 'homepage'?"


def test_inline_unit_and_relative_paths(tmp_path: Path) -> None:
    s = spec(tmp_path, units=[{"name": "demo.service", "text": "[Service]\n"}, "sub/demo.socket"])
    assert s.units[0].text == "[Service]\n" and s.units[0].path is None
    assert s.units[1].path == tmp_path / "sub/demo.socket"


def test_contents_same_path_and_moved(tmp_path: Path) -> None:
    s = spec(tmp_path, contents=["/usr/bin/env", {"source": "build/app", "target": "/opt/app"}])
    assert s.contents == (
        Content(Path("/usr/bin/env"), PurePosixPath("/usr/bin/env")),
        Content(tmp_path / "build/app", PurePosixPath("/opt/app")),
    )


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (["relative/path"], "not an absolute host path"),
        ([{"source": "/x", "target": "rel"}], "is not absolute"),
        ([{"source": "/x", "target": "/a/../b"}], "contains '..'"),
        ([{"source": "/x", "target": "/"}], "image root"),
        ([{"source": "/x", "taget": "/y"}], "did you mean 'target'"),
    ],
)
def test_bad_contents(tmp_path: Path, contents: list[object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec(tmp_path, contents=contents)


def test_symlinks(tmp_path: Path) -> None:
    s = spec(tmp_path, symlinks=[{"object": "/usr/bin/dash", "symlink": "/bin/sh"}])
    assert s.symlinks == (Symlink(PurePosixPath("/bin/sh"), Path("/usr/bin/dash")),)
    with pytest.raises(SpecError, match="needs both"):
        spec(tmp_path, symlinks=[{"object": "/usr/bin/dash"}])
    with pytest.raises(SpecError, match="not absolute"):
        spec(tmp_path, symlinks=[{"object": "/usr/bin/dash", "symlink": "bin/sh"}])


@pytest.mark.parametrize(
    ("pname", "message"),
    [
        ("", "pname is empty"),
        ("my_app", "contains '_'"),
        ("my/app", "not allowed in unit names"),
        ("my app", "not allowed in unit names"),
    ],
)
def test_bad_pname(tmp_path: Path, pname: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec(tmp_path, pname=pname)


@pytest.mark.parametrize("version", ["", "1/2", "1 2", "1\t2"])
def test_bad_version(tmp_path: Path, version: str) -> None:
    with pytest.raises(SpecError):
        spec(tmp_path, version=version)


def test_version_must_be_quoted(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        spec(tmp_path, version=1.10)
    assert "quote it" in (e.value.hint or "")


def test_homepage_must_be_a_url(tmp_path: Path) -> None:
    """The homepage is the SBOM's too: what its library refuses is refused by the spec, in
    one sentence, not by the SBOM step after the closure was made."""
    assert spec(tmp_path, homepage="https://example.org/x").homepage == "https://example.org/x"
    with pytest.raises(SpecError, match="homepage 'my service' is not a URL"):
        spec(tmp_path, homepage="my service")


def test_no_units(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no units"):
        spec(tmp_path, units=[])


def test_os_release_table(tmp_path: Path) -> None:
    s = spec(tmp_path, **{"os-release": {"ID": "myos", "VARIANT_ID": "svc"}})
    assert dict(s.os_release) == {"ID": "myos", "VARIANT_ID": "svc"}
    with pytest.raises(SpecError, match="field name"):
        spec(tmp_path, **{"os-release": {"lower": "x"}})


def test_load_spec_from_folder_with_overrides(tmp_path: Path) -> None:
    (tmp_path / "portable.toml").write_text(
        'pname = "demo"\nversion = "1.0"\nunits = ["demo.service"]\n'
    )
    s = load_spec(tmp_path, {"version": "2.0"})
    assert s.version == "2.0" and s.pname == "demo"
    assert s.units[0].path == tmp_path.resolve() / "demo.service"


def test_load_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("pname = \n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(bad)


def test_every_setting_has_help_and_a_flag() -> None:
    flags = [s.flag for s in SETTINGS]
    assert len(flags) == len(set(flags))
    assert all(s.help for s in SETTINGS)
    assert "--unit" in flags and "--content" in flags and "--symlink" in flags


@pytest.mark.parametrize(
    ("text", "size"), [("4K", 4096), ("128K", 131072), ("1M", 1 << 20), ("65536", 65536)]
)
def test_block_sizes(text: str, size: int) -> None:
    assert parse_block_size(text) == size


@pytest.mark.parametrize("text", ["2K", "2M", "100K", "big", ""])
def test_bad_block_sizes(text: str) -> None:
    with pytest.raises(SpecError):
        parse_block_size(text)


def test_compression_strings() -> None:
    c = parse_compression("xz -Xdict-size 100%")
    assert c.name == "xz" and c.options == ("-Xdict-size", "100%")
    assert parse_compression("zstd -Xcompression-level 19").mksquashfs_args() == [
        "-comp", "zstd", "-Xcompression-level", "19"]
    with pytest.raises(SpecError, match="unknown compressor"):
        parse_compression("brotli")
    with pytest.raises(SpecError, match="not a compressor option"):
        parse_compression("xz -b 4K")


def test_repeated_flags_add_to_the_files_lists(tmp_path: Path) -> None:
    (tmp_path / "portable.toml").write_text(
        'pname = "demo"\nversion = "1"\nunits = ["demo.service"]\ncontents = ["/usr/bin/true"]\n'
        'skip-packages = ["a", "b"]\nos-release = { ID = "x" }\nexclude = ["*.a"]\n')
    s = load_spec(tmp_path, {"contents": ["/usr/bin/env"], "skip-packages": ["+c", "-a"],
                             "os-release": ["VARIANT_ID=y", "ID=z"], "exclude": ["*.la"]})
    assert [str(c.source) for c in s.contents] == ["/usr/bin/true", "/usr/bin/env"]
    assert s.skip_packages == ("b", "c")
    assert dict(s.os_release) == {"ID": "z", "VARIANT_ID": "y"}
    assert s.exclude == ("*.a", "*.la")
    # an empty value empties the list first, as in mkosi
    s = load_spec(tmp_path, {"contents": ["", "/usr/bin/env"], "exclude": [""]})
    assert [str(c.source) for c in s.contents] == ["/usr/bin/env"]
    assert s.exclude == ()
