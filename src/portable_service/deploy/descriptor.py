"""The deployment descriptor: one TOML file saying "this service is base X plus extensions
Y, Z, attached with profile P under prefixes Q", and the exact commands that do it.

```toml
base = "runtime_1.raw"
extensions = ["app_2.raw", "tools_1.raw"]   # in overlay order
profile = "default"
prefixes = ["app", "tools"]                 # default: the extensions' image prefixes
enable = ["app.service"]                    # enabled and started on attach
runtime = false                             # true: attach --runtime
```

Relative paths are relative to the descriptor's folder; the commands name every image by
its absolute path: ``portablectl reattach`` with a base given by name fails on systemd 252
and 257 with "No such file or directory" (seen here), by path it works.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portable_service.errors import SpecError
from portable_service.rules import PROFILES
from portable_service.rules.portabled import image_prefix, is_portable_unit, prefix_matches

KEYS = ("base", "extensions", "profile", "prefixes", "enable", "runtime")


@dataclass(frozen=True)
class Descriptor:
    path: Path  # the descriptor file
    base: Path
    extensions: tuple[Path, ...] = ()
    profile: str = "default"
    prefixes: tuple[str, ...] = ()
    enable: tuple[str, ...] = ()
    runtime: bool = False

    @property
    def images(self) -> tuple[Path, ...]:
        return (self.base, *self.extensions)


def is_descriptor(path: str | Path) -> bool:
    return str(path).endswith(".toml")


def _strings(value: Any, key: str, where: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{where}: {key} must be a list of non-empty strings",
                        f'write it as {key} = ["..."]')
    return tuple(value)


def _image(value: str, key: str, folder: Path, where: Path) -> Path:
    if not value.endswith(".raw"):
        raise SpecError(f"{where}: {key} {value!r} is not a .raw image file",
                        "name the image file portable-service build wrote (NAME_VERSION.raw)")
    p = Path(value).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else folder / p))


def load_descriptor(path: Path) -> Descriptor:
    """Read and check a descriptor; the image files need not exist yet (verify says so)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"descriptor {path} does not exist",
                        "write one (the README's 'Layered services' shows how)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read descriptor {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path} is not valid TOML: {e}", "fix the syntax at that line") from None
    for key in data:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.5)
            raise SpecError(f"{path}: unknown descriptor key {key!r}",
                            f"did you mean '{close[0]}'?" if close else
                            f"valid keys: {', '.join(KEYS)}")
    folder = path.absolute().parent
    if not isinstance(data.get("base"), str) or not data["base"]:
        raise SpecError(f"{path}: base is missing", 'name the base image: base = "runtime_1.raw"')
    base = _image(data["base"], "base", folder, path)
    extensions = tuple(_image(e, "extension", folder, path)
                       for e in _strings(data.get("extensions", []), "extensions", path))
    names = [p.name for p in (base, *extensions)]
    if len(set(names)) != len(names):
        raise SpecError(f"{path}: an image is named twice ({', '.join(names)})",
                        "name each layer once")
    profile = data.get("profile", "default")
    if profile not in PROFILES:
        raise SpecError(f"{path}: profile {profile!r} is unknown",
                        f"use one of: {', '.join(PROFILES)}")
    prefixes = _strings(data.get("prefixes", []), "prefixes", path) or tuple(
        dict.fromkeys(image_prefix(e.name) for e in extensions)) or (image_prefix(base.name),)
    for prefix in prefixes:
        if "_" in prefix or "/" in prefix:
            raise SpecError(f"{path}: prefix {prefix!r} cannot match a unit name",
                            "use the unit names' prefix, e.g. app for app.service")
    enable = _strings(data.get("enable", []), "enable", path)
    for unit in enable:
        if not is_portable_unit(unit):
            raise SpecError(f"{path}: enable names {unit!r}, not a unit portabled attaches",
                            "name a unit file, e.g. app.service")
        if not any(prefix_matches(unit, p) for p in prefixes):
            raise SpecError(f"{path}: enable names {unit}, which no prefix ({', '.join(prefixes)}) "
                            "attaches", f"add its prefix to prefixes, or drop {unit}")
    runtime = data.get("runtime", False)
    if not isinstance(runtime, bool):
        raise SpecError(f"{path}: runtime must be true or false, not {runtime!r}")
    return Descriptor(path, base, extensions, profile, prefixes, enable, runtime)


def _flags(d: Descriptor) -> list[str]:
    return ["--runtime"] * d.runtime + [f"--extension={e}" for e in d.extensions]


def attach_commands(d: Descriptor) -> list[list[str]]:
    """``portablectl attach`` of the stack, then ``systemctl enable --now`` of ``enable``."""
    cmds = [["portablectl", "attach", f"--profile={d.profile}", *_flags(d), str(d.base),
             *d.prefixes]]
    if d.enable:
        cmds.append(["systemctl", "enable", "--now", *["--runtime"] * d.runtime, *d.enable])
    return cmds


def detach_commands(d: Descriptor) -> list[list[str]]:
    """Undo :func:`attach_commands`: disable what was enabled (no link is left behind),
    then ``portablectl detach --now``, which stops every unit of the prefixes."""
    cmds = []
    if d.enable:
        cmds.append(["systemctl", "disable", *["--runtime"] * d.runtime, *d.enable])
    cmds.append(["portablectl", "detach", "--now", *_flags(d), str(d.base), *d.prefixes])
    return cmds


def reattach_command(d: Descriptor, now: bool = True) -> list[str]:
    """``portablectl reattach``: replaces the attached stack by this one in one step; with
    ``now`` portablectl restarts every unit that stays, starts the new and stops the gone."""
    return ["portablectl", "reattach", *["--now"] * now, f"--profile={d.profile}", *_flags(d),
            str(d.base), *d.prefixes]
