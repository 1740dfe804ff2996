"""The spec: one settings table drives the TOML file, the CLI flags, the API and the docs.

A spec comes from a TOML file (``portable.toml``), from flags, or from code;
all three pass through :data:`SETTINGS`, so names, defaults and checks are
defined once.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from portable_service.builder import pairs
from portable_service.builder.writers.options import (
    DEFAULT_COMPRESSION,
    Compression,
    block_size_text,
    check_squashfs_compression,
    parse_block_size,
    parse_compression,
    split_compression,
)
from portable_service.errors import SpecError

# the spec's text; the Spec holds them parsed (Compression, bytes)
DEFAULT_BLOCK_SIZE = "1M"
DEFAULT_COMPRESSION_PARSED = parse_compression(DEFAULT_COMPRESSION)
DEFAULT_BLOCK_BYTES = parse_block_size(DEFAULT_BLOCK_SIZE)
WRITERS = ("auto", "mksquashfs", "native", "erofs")
FORMATS = ("raw", "ddi")  # a bare file system, or a GPT Discoverable Disk Image


@dataclass(frozen=True)
class UnitSource:
    """A unit given as a file (``path``) or inline (``text``); ``name`` is its file name.

    A folder ``NAME.d`` given as a unit is a drop-in folder: its ``*.conf`` files
    are shipped as ``etc/systemd/system/NAME.d/``.
    """

    name: str
    path: Path | None = None
    text: str | None = None


@dataclass(frozen=True)
class Symlink:
    symlink: PurePosixPath
    object: Path


@dataclass(frozen=True)
class Content:
    """A host path to ship: at ``target`` in the image (the same path unless moved)."""

    source: Path
    target: PurePosixPath


@dataclass(frozen=True)
class Spec:
    """Everything a build needs. Construct it with :func:`spec_from_mapping` or directly."""

    pname: str
    version: str
    units: tuple[UnitSource, ...]
    description: str | None = None
    homepage: str | None = None
    symlinks: tuple[Symlink, ...] = ()
    contents: tuple[Content, ...] = ()
    squashfs_tools: Path | None = None
    # parsed once, when the spec is read (a str given in code is parsed in __post_init__)
    squash_compression: Compression = DEFAULT_COMPRESSION_PARSED
    squash_block_size: int = DEFAULT_BLOCK_BYTES
    os_release: tuple[tuple[str, str], ...] = ()
    writer: str = "auto"
    format: str = "raw"
    packages: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    allow_missing: bool = False
    skip_packages: tuple[str, ...] | None = None  # None: closure.deb.DEFAULT_SKIP
    package_data: tuple[str, ...] | None = None  # None: closure.deb.DEFAULT_DATA
    package_docs: bool = False
    verity: bool = False
    verity_key: str | None = None  # a PEM file (absolute) or a pkcs11: URI
    verity_certificate: Path | None = None
    base: Path | None = None  # set: build a portable extension of this image or spec
    # pinned builds (builder/repo): packages come from this repository, not the host
    distribution: str | None = None
    release: str | None = None
    architecture: str | None = None  # None: the build host's
    mirror: str | None = None  # None: the host's configured Debian mirror
    security_mirror: str | None = None  # None: the host's, else deb.debian.org/debian-security
    keyring: Path | None = None  # None: rules.debian.ARCHIVE_KEYRING
    lock_file: Path | None = None  # None: portable.lock beside the spec

    def __post_init__(self) -> None:
        # a Spec built in code may spell these as in the spec file: parse them here, once
        if isinstance(self.squash_compression, str):
            object.__setattr__(self, "squash_compression",
                               split_compression(self.squash_compression))
        if isinstance(self.squash_block_size, str | int) and not isinstance(
                self.squash_block_size, bool):
            object.__setattr__(self, "squash_block_size",
                               parse_block_size(self.squash_block_size))

    @property
    def image_name(self) -> str:
        return f"{self.pname}_{self.version}.raw"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view, keyed like the TOML spec."""
        out = {s.key: _jsonable(getattr(self, s.attr)) for s in SETTINGS}
        out["os-release"] = dict(self.os_release)
        out["squash-block-size"] = block_size_text(self.squash_block_size)
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Compression):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items() if v is not None}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path | PurePosixPath):
        return str(value)
    return value


# -- parsers: (raw value, folder relative paths are resolved against, key) -> value


def _str(value: Any, base: Path, key: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{key} must be a string, not {type(value).__name__} ({value!r})",
                        f'quote it: {key} = "{value}"')
    return value


def _opt_str(value: Any, base: Path, key: str) -> str | None:
    return None if value is None else _str(value, base, key)


def _bool(value: Any, base: Path, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise SpecError(f"{key} must be true or false, not {value!r}")


def _str_list(value: Any, base: Path, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{key} must be a list of strings")
    return tuple(value)


def _check_length(text: str, key: str) -> None:
    if len(text.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise SpecError(f"{key} is longer than {PATH_MAX} bytes, Linux's limit for a path",
                        "give a shorter path")


def _package_names(value: Any, base: Path, key: str) -> tuple[str, ...]:
    """Package names replacing a default list, or ``+NAME``/``-NAME`` editing it: not both."""
    names = _str_list(value, base, key)
    signed = [n for n in names if n[:1] in ("+", "-")]
    if signed and len(signed) != len(names):
        plain = next(n for n in names if n[:1] not in ("+", "-"))
        raise SpecError(f"{key} mixes names that replace the default list with +NAME/-NAME "
                        "that edit it", f"write '+{plain}' to add {plain} to the default list, "
                        "or give the whole list without + and -")
    if any(not n.lstrip("+-") for n in names):
        raise SpecError(f"{key} has an empty package name", "remove the empty entry")
    return names


def _host_path(value: Any, base: Path, key: str) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise SpecError(f"{key} must be a non-empty path")
    _check_length(str(value), key)
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _opt_host_path(value: Any, base: Path, key: str) -> Path | None:
    return None if value is None else _host_path(value, base, key)


def _key_source(value: Any, base: Path, key: str) -> str | None:
    """A signing key: a PEM file (resolved like other host paths) or a PKCS#11 URI as given."""
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("pkcs11:"):
        return value
    return str(_host_path(value, base, key))


def image_path(value: Any, key: str) -> PurePosixPath:
    """An absolute, normalised path inside the image; ``..`` is refused, not resolved."""
    if not isinstance(value, str | PurePosixPath) or not str(value):
        raise SpecError(f"{key} must be a non-empty absolute path")
    text = str(value)
    _check_length(text, key)
    if not text.startswith("/"):
        raise SpecError(f"{key} {text!r} is not absolute", f"write it as '/{text}'")
    if ".." in text.split("/"):
        raise SpecError(f"{key} {text!r} contains '..'", "name the path without '..'")
    p = PurePosixPath(text)
    if p == PurePosixPath("/"):
        raise SpecError(f"{key} cannot be the image root '/'", "name a path below '/'")
    return p


def _list_of(value: Any, key: str, single: tuple[type, ...], what: str) -> list[Any]:
    """A list setting; one bare item stands for a list of one."""
    if isinstance(value, single):
        return [value]
    if not isinstance(value, list | tuple):
        raise SpecError(f"{key} must be a list of {what}")
    return list(value)


def _units(value: Any, base: Path, key: str) -> tuple[UnitSource, ...]:
    items = _list_of(value, key, (str, Path, Mapping, UnitSource),
                     "unit files or { name, text } tables")
    return tuple(_unit(item, base, key) for item in items)


def _unit(item: Any, base: Path, key: str) -> UnitSource:
    if isinstance(item, UnitSource):
        return item
    if isinstance(item, str | Path):
        path = _host_path(item, base, key)
        return UnitSource(name=path.name, path=path)
    if isinstance(item, Mapping):
        _check_keys(item, {"name", "text"}, f"{key} entry")
        name, text = item.get("name"), item.get("text")
        if not isinstance(name, str) or not isinstance(text, str):
            raise SpecError(f"an inline unit needs 'name' and 'text' strings, got {dict(item)!r}")
        return UnitSource(name=name, text=text)
    raise SpecError(f"{key} entry {item!r} is neither a path nor a {{ name, text }} table")


def _symlinks(value: Any, base: Path, key: str) -> tuple[Symlink, ...]:
    items = _list_of(value, key, (Mapping, Symlink), "{ object, symlink } tables")
    return tuple(_symlink(item, base, key) for item in items)


def _symlink(item: Any, base: Path, key: str) -> Symlink:
    if isinstance(item, Symlink):
        return item
    spelled = isinstance(item, str)
    if isinstance(item, str) and "=" in item:  # LINK=OBJECT, as the flag takes it
        link, obj = item.split("=", 1)
        item = {"symlink": link, "object": obj}
    if not isinstance(item, Mapping):
        raise SpecError(f"{key} entry {item!r} must be {{ object = ..., symlink = ... }}")
    _check_keys(item, {"object", "symlink"}, f"{key} entry")
    if "object" not in item or "symlink" not in item:
        raise SpecError(f"{key} entry {dict(item)!r} needs both 'object' and 'symlink'")
    made = Symlink(symlink=image_path(item["symlink"], "symlink"),
                   object=_host_path(item["object"], base, "symlink object"))
    pairs.check_symlink(made.symlink, made.object, flag=spelled)
    return made


def _contents(value: Any, base: Path, key: str) -> tuple[Content, ...]:
    items = _list_of(value, key, (str, Path, Mapping, Content), "paths or { source, target } tables")
    return tuple(_content(item, base, key) for item in items)


def _content(item: Any, base: Path, key: str) -> Content:
    if isinstance(item, Content):
        return item
    spelled = isinstance(item, str)
    if isinstance(item, str) and "=" in item:  # SOURCE=TARGET, as the flag takes it
        source, target = item.split("=", 1)
        item = {"source": source, "target": target}
    if isinstance(item, str | Path):
        text = str(item)
        if not text.startswith("/"):
            raise SpecError(
                f"content {text!r} is not an absolute host path",
                f"use {{ source = {text!r}, target = '/...' }} to place a relative path",
            )
        return Content(source=Path(text), target=image_path(text, "content"))
    if isinstance(item, Mapping):
        _check_keys(item, {"source", "target"}, f"{key} entry")
        if "source" not in item:
            raise SpecError(f"{key} entry {dict(item)!r} needs 'source'")
        src = _host_path(item["source"], base, "content source")
        target = item.get("target", str(src))
        content = Content(source=src, target=image_path(target, "content target"))
        pairs.check_content(content.source, content.target, flag=spelled)
        return content
    raise SpecError(f"{key} entry {item!r} is neither a path nor a {{ source, target }} table")


_OS_RELEASE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _os_release(value: Any, base: Path, key: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, list | tuple):  # KEY=VALUE strings, as the flag takes them
        pairs = {}
        for item in value:
            if isinstance(item, tuple) and len(item) == 2:
                pairs[item[0]] = item[1]
            elif isinstance(item, str) and "=" in item:
                k, v = item.split("=", 1)
                pairs[k] = v
            else:
                raise SpecError(f"{key} entry {item!r} must be KEY=VALUE")
        value = pairs
    if not isinstance(value, Mapping):
        raise SpecError(f"{key} must be a table of os-release fields, e.g. {{ ID = \"debian\" }}")
    out = []
    for k, v in value.items():
        if not isinstance(k, str) or not _OS_RELEASE_KEY.match(k):
            raise SpecError(f"os-release field name {k!r} is invalid", "use upper case, digits and _")
        if not isinstance(v, str | int | float):
            raise SpecError(f"os-release field {k} must be a string")
        out.append((k, str(v)))
    return tuple(sorted(out))


def _compression(value: Any, base: Path, key: str) -> Compression:
    if isinstance(value, Compression):  # a flag's value, parsed before the merge
        return value
    # checked against the writer's compressors by check_spec (squashfs and erofs differ)
    return split_compression(_str(value, base, key))


def _block_size(value: Any, base: Path, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return parse_block_size(value)
    return parse_block_size(_str(value, base, key))


def _writer(value: Any, base: Path, key: str) -> str:
    text = _str(value, base, key)
    if text not in WRITERS:
        raise SpecError(f"writer {text!r} is unknown", f"use one of: {', '.join(WRITERS)}")
    return text


def _format(value: Any, base: Path, key: str) -> str:
    text = _str(value, base, key)
    if text not in FORMATS:
        raise SpecError(f"format {text!r} is unknown", f"use one of: {', '.join(FORMATS)}")
    return text


def is_url(text: str) -> bool:
    """Whether the SBOM's library takes ``text`` as a URL (a homepage)."""
    from spdx_tools.spdx.validation.uri_validators import validate_url

    return not validate_url(text)


@dataclass(frozen=True)
class Setting:
    """One spec key: its TOML name, flag, parser, default and help, in one place."""

    key: str
    parse: Callable[[Any, Path, str], Any]
    help: str
    required: bool = False
    repeatable: bool = False  # a flag given many times builds a list
    metavar: str | None = None
    aliases: tuple[str, ...] = ()
    is_bool: bool = False
    flag_name: str | None = None  # singular for list keys: --unit, --content

    @property
    def attr(self) -> str:
        return self.key.replace("-", "_")

    @property
    def flag(self) -> str:
        return "--" + (self.flag_name or self.key)


SETTINGS: tuple[Setting, ...] = (
    Setting("pname", _str, "service name: image prefix and unit prefix (no '_')", required=True),
    Setting("version", _str, "image version (no '/' or white space)", required=True),
    Setting("units", _units, "unit file (or NAME.d drop-in folder); inline in TOML as "
            "{ name, text }", required=True, repeatable=True, metavar="FILE", flag_name="unit"),
    Setting("description", _opt_str, "PORTABLE_PRETTY_NAME in os-release"),
    Setting("homepage", _opt_str, "HOME_URL in os-release and the SBOM's homepage: a URL"),
    Setting("symlinks", _symlinks, "absolute symlink in the image to a host object, "
            "included with its closure", repeatable=True, metavar="LINK=OBJECT", flag_name="symlink"),
    Setting("contents", _contents, "host path to include (folders recursively); "
            "SOURCE=TARGET places it elsewhere", repeatable=True, metavar="PATH", flag_name="content"),
    Setting("squashfs-tools", _opt_host_path, "mksquashfs to use: a file, or a folder with "
            "bin/mksquashfs", aliases=("squashfsTools",), metavar="PATH"),
    Setting("squash-compression", _compression, f"compressor and options (default '{DEFAULT_COMPRESSION}')",
            metavar="STR"),
    Setting("squash-block-size", _block_size, f"block size, 4K to 1M (default {DEFAULT_BLOCK_SIZE})",
            metavar="SIZE"),
    Setting("os-release", _os_release, "os-release field to set or override",
            repeatable=True, metavar="KEY=VALUE"),
    Setting("writer", _writer, "file system writer: auto (mksquashfs when installed, else "
            "native), mksquashfs, native, or erofs (mkfs.erofs)", metavar="NAME"),
    Setting("format", _format, "raw (a bare file system, the default) or ddi (a GPT "
            "Discoverable Disk Image holding it)", metavar="NAME"),
    Setting("packages", _str_list, "installed Debian package to include: all its files but "
            "units and docs, and of its dependencies what the programs load (see package-data)",
            repeatable=True, metavar="NAME", flag_name="package"),
    Setting("exclude", _str_list, "glob of image paths to leave out of the closure",
            repeatable=True, metavar="GLOB"),
    Setting("allow-missing", _bool, "warn, instead of failing, when a library, interpreter or "
            "unit program cannot be found",
            is_bool=True),
    Setting("skip-packages", _package_names, "Debian package never followed as a dependency of "
            "packages: NAMEs replace the default list (init, debconf, dpkg, adduser, ...), "
            "+NAME adds to it, -NAME takes from it",
            repeatable=True, metavar="NAME", flag_name="skip-package"),
    Setting("package-data", _package_names, "dependency of packages shipped whole, as data "
            "(others give only the libraries and programs the closure reaches): NAMEs replace "
            "the default list (ca-certificates, tzdata, media-types, ...), +NAME adds, -NAME takes",
            repeatable=True, metavar="NAME"),
    Setting("package-docs", _bool, "keep the documentation, man pages and locales of packages",
            is_bool=True),
    Setting("verity", _bool, "also write NAME.verity (dm-verity hash tree) and NAME.roothash "
            "beside the image", is_bool=True),
    Setting("verity-key", _key_source, "sign the root hash (NAME.roothash.p7s) with this PEM "
            "private key or pkcs11: URI; implies verity", metavar="KEY"),
    Setting("verity-certificate", _opt_host_path, "the signing key's X.509 certificate (PEM)",
            metavar="CERT"),
    Setting("base", _opt_host_path, "build a portable extension of this image (.raw) or spec: "
            "only what it lacks, with an extension-release file", metavar="PATH"),
    Setting("distribution", _opt_str, "take packages from this distribution's repository "
            "(debian), not from the host", metavar="NAME"),
    Setting("release", _opt_str, "release of the distribution to take packages from "
            "(bookworm, trixie, ...)", metavar="NAME"),
    Setting("architecture", _opt_str, "Debian architecture of a pinned build (amd64, arm64, ...; "
            "default: the build host's)", metavar="ARCH"),
    Setting("mirror", _opt_str, "repository URL of a pinned build (default: the host's Debian "
            "mirror)", metavar="URL"),
    Setting("security-mirror", _opt_str, "security archive URL of a pinned build (default: the "
            "host's debian-security mirror)", metavar="URL"),
    Setting("keyring", _opt_host_path, "keyring the repository's Release file must be signed "
            "with (default: debian-archive-keyring's)", metavar="FILE"),
    Setting("lock-file", _opt_host_path, "lock file of a pinned build (default: portable.lock "
            "beside the spec)", metavar="FILE"),
)

_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS} | {
    a: s for s in SETTINGS for a in s.aliases
}


def _check_keys(mapping: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    valid = list(valid)
    for k in mapping:
        if k not in valid:
            close = difflib.get_close_matches(str(k), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
            raise SpecError(f"unknown {where} key {str(k)!r}", hint)


MAX_DEPTH = 8  # the deepest a spec nests: a list of tables of strings
PATH_MAX = 4096  # Linux's limit for a path, and so for every path a spec names
MAX_VALUE = 1 << 20  # the largest value any setting holds: an inline unit file


def check_raw(value: Any, key: str, depth: int = 0) -> None:
    """Refuse what no setting can hold before parsing: deep nesting, NUL bytes, huge paths.

    A NUL byte cuts a path or an os-release value short where C code reads it
    (mksquashfs, systemd's os-release parser then says "Bad message").
    """
    if depth > MAX_DEPTH:
        raise SpecError(f"spec key '{key}' nests deeper than any setting does",
                        "write it as the README's table shows")
    if isinstance(value, str | PurePosixPath | Path):
        text = str(value)
        if "\0" in text:
            raise SpecError(f"spec key '{key}' contains a NUL byte", "remove it")
        if len(text.encode("utf-8", "surrogateescape")) > MAX_VALUE:
            raise SpecError(f"spec key '{key}' has a value longer than {MAX_VALUE} bytes",
                            "no setting holds that much (a unit file is at most 1 MiB)")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            check_raw(str(k), key, depth + 1)
            check_raw(v, key, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            check_raw(v, key, depth + 1)


def spec_from_mapping(data: Mapping[str, Any], base: Path) -> Spec:
    """Parse and check a spec given as a mapping of TOML keys (aliases and snake_case accepted)."""
    normalized: dict[str, Any] = {}
    for raw_key, value in data.items():
        check_raw(value, str(raw_key))
        key = str(raw_key).replace("_", "-") if str(raw_key) not in _BY_KEY else str(raw_key)
        if key not in _BY_KEY:
            _check_keys({raw_key: value}, [s.key for s in SETTINGS], "spec")
        setting = _BY_KEY[key]
        if setting.key in normalized:
            raise SpecError(f"spec key '{setting.key}' is given twice (also as an alias)")
        normalized[setting.key] = value
    kwargs: dict[str, Any] = {}
    for s in SETTINGS:
        if s.key not in normalized or (normalized[s.key] is None and not s.required):
            if s.required:
                raise SpecError(f"spec key '{s.key}' is missing", f"set it in the spec or with {s.flag}")
            continue
        kwargs[s.attr] = s.parse(normalized[s.key], base, s.key)
    if (kwargs.get("release") or kwargs.get("distribution")) and kwargs.get("lock_file") is None:
        kwargs["lock_file"] = base / "portable.lock"  # beside the spec (builder/repo/lock.py)
    spec = Spec(**kwargs)
    check_spec(spec)
    return spec


def load_spec(path: Path, overrides: Mapping[str, Any] | None = None) -> Spec:
    """Read a TOML spec (a file, or a folder holding portable.toml); ``overrides`` win.

    Overrides are flag values, already keyed like the spec; their relative
    paths are relative to the working directory, the file's to its folder.
    """
    file = path / "portable.toml" if path.is_dir() else path
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file {file} does not exist",
                        "write one (the README's 'A spec' shows how) or pass --pname, "
                        "--version and --unit") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read spec file {file}: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{file} is not valid TOML: {e}", "fix the syntax at that line") from None
    except RecursionError:
        raise SpecError(f"{file} nests arrays or tables too deeply to read",
                        "write it as the README's table shows") from None
    base = file.parent.resolve()
    parsed = {k: v for k, v in data.items()}
    return _merge(parsed, base, overrides or {})


def spec_from_flags(overrides: Mapping[str, Any]) -> Spec:
    return _merge({}, Path.cwd(), overrides)


def _merge(file_data: dict[str, Any], base: Path, overrides: Mapping[str, Any]) -> Spec:
    # Flag values are parsed against the working directory before merging, so
    # a relative --unit means the same thing with or without a spec file.
    cwd = Path.cwd()
    data = dict(file_data)
    for key, value in overrides.items():
        setting = _BY_KEY[key]
        in_file = data.pop(key, None)
        for alias in setting.aliases:
            in_file = data.pop(alias, in_file)
        if setting.repeatable and isinstance(value, list | tuple):
            data[key] = _add_to_list(setting, in_file, list(value), base, cwd)
        else:
            data[key] = setting.parse(value, cwd, key)
    return spec_from_mapping(data, base)


def _add_to_list(setting: Setting, in_file: Any, values: list[Any], base: Path,
                 cwd: Path) -> tuple[Any, ...]:
    """A repeated flag adds to the file's list, as mkosi's do; an empty value empties it
    first (``--content ''``). ``+NAME``/``-NAME`` edit a plain package list in place."""
    key = setting.key
    if "" in values:
        values = values[len(values) - values[::-1].index(""):]
        in_file = None
    added: tuple[Any, ...] = setting.parse(values, cwd, key) if values else ()
    if in_file is None:
        return added
    from_file: tuple[Any, ...] = setting.parse(in_file, base, key)
    signed = [n for n in added if isinstance(n, str) and n[:1] in ("+", "-")]
    if setting.parse is _package_names and signed and len(signed) == len(added) and not any(
            n[:1] in ("+", "-") for n in from_file):
        kept = [n for n in from_file if f"-{n}" not in added]
        return (*kept, *(n[1:] for n in added if n[0] == "+" and n[1:] not in kept))
    return (*from_file, *added)


_UNIT_NAME_CHARS = re.compile(r"^[A-Za-z0-9:\-.\\]+$")


def check_spec(spec: Spec) -> None:
    """The spec-level rules; unit files and paths on disk are checked by later stages."""
    if not spec.pname:
        raise SpecError("pname is empty", "set pname to the service's name, e.g. pname = \"demo\"")
    if "_" in spec.pname:
        raise SpecError(
            f"pname {spec.pname!r} contains '_': systemd cuts the image name at the first '_'",
            f"use '-' instead: {spec.pname.replace('_', '-')!r}",
        )
    if not _UNIT_NAME_CHARS.match(spec.pname) or spec.pname.startswith("."):
        raise SpecError(
            f"pname {spec.pname!r} has characters not allowed in unit names",
            "use letters, digits, ':', '-' and '.'",
        )
    if not spec.version:
        raise SpecError("version is empty", "set version, e.g. version = \"1.0\"")
    if "/" in spec.version or any(c.isspace() for c in spec.version):
        raise SpecError(f"version {spec.version!r} contains '/' or white space",
                        "use a plain version such as 1.0")
    fields = [("description", spec.description), ("homepage", spec.homepage),
              *((f"os-release {k}", v) for k, v in spec.os_release)]
    for what, value in fields:
        if value is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise SpecError(f"{what} {value!r} contains a control character: os-release values "
                            "are one line of text, and systemd refuses the image otherwise",
                            "remove it (a line break, tab or NUL)")
    if spec.homepage is not None and not is_url(spec.homepage):
        raise SpecError(f"homepage {spec.homepage!r} is not a URL: it is os-release's HOME_URL "
                        "and the SBOM's homepage of the image", "write it as https://example.org/")
    if not spec.units:
        raise SpecError("no units given", "name at least one unit file (units = [\"demo.service\"])")
    # the compressor's name and options were read once; which ones are valid is the writer's
    if spec.writer != "erofs":  # erofs: its writer checks them (builder/writers/erofs.py)
        check_squashfs_compression(spec.squash_compression)
