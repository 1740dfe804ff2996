"""What a reattach from one descriptor to another changes, predicted from the images.

portabled attaches the units of every layer whose names match the prefixes (the base's
first, then each extension's in order: the first layer with a name wins). Every unit runs
in the whole stack, but a unit has to restart to see new files only when its unit file,
the layer it comes from, the base, or the profile changed; a unit of an untouched extension
keeps running (``portable-service reattach NEW --from OLD`` leaves it alone, where
``portablectl reattach --now`` restarts every unit that stays).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portable_service.deploy.descriptor import Descriptor
from portable_service.errors import ImageError
from portable_service.fs.views import read_bytes
from portable_service.look.extension import open_layer
from portable_service.look.facts import unit_candidates
from portable_service.rules.portabled import prefix_matches


@dataclass(frozen=True)
class StackUnit:
    name: str
    layer: Path  # the image it comes from
    text_digest: str


@dataclass
class Prediction:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: list[tuple[str, str]] = field(default_factory=list)  # (unit, why)
    kept: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed,
                "restarted": [{"unit": u, "why": w} for u, w in self.restarted],
                "unchanged": self.kept}

    def render(self) -> str:
        lines = [f"  + {u} (added: started when enabled)" for u in self.added]
        lines += [f"  - {u} (removed: stopped)" for u in self.removed]
        lines += [f"  ~ {u} (restarted: {why})" for u, why in self.restarted]
        lines += [f"  = {u} (keeps running)" for u in self.kept]
        head = (f"reattach: {len(self.added)} added, {len(self.removed)} removed, "
                f"{len(self.restarted)} restarted, {len(self.kept)} unchanged")
        return "\n".join([head, *lines])


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}",
                         "build the image, or fix the descriptor's path") from None
    return h.hexdigest()


def stack_units(d: Descriptor) -> dict[str, StackUnit]:
    """The units portabled attaches for this descriptor, with the layer of each."""
    found: dict[str, StackUnit] = {}
    for image in d.images:
        layer = open_layer(image)
        for name, unit in sorted(unit_candidates(layer.fs).items()):
            if name in found or not any(prefix_matches(name, p) for p in d.prefixes):
                continue
            text = read_bytes(layer.fs, unit.path) or b""
            found[name] = StackUnit(name, image, hashlib.sha256(text).hexdigest())
    return found


def predict(old: Descriptor, new: Descriptor) -> Prediction:
    before, after = stack_units(old), stack_units(new)
    digests: dict[Path, str] = {}

    def digest(p: Path) -> str:
        if p not in digests:
            digests[p] = file_digest(p)
        return digests[p]

    base_changed = old.base != new.base and digest(old.base) != digest(new.base)
    out = Prediction()
    out.added = sorted(set(after) - set(before))
    out.removed = sorted(set(before) - set(after))
    for name in sorted(set(before) & set(after)):
        o, n = before[name], after[name]
        if old.profile != new.profile:
            why = f"profile {old.profile} -> {new.profile}"
        elif base_changed:
            why = f"base {old.base.name} -> {new.base.name}"
        elif o.text_digest != n.text_digest:
            why = "its unit file changed"
        elif o.layer != n.layer and digest(o.layer) != digest(n.layer):
            why = f"its layer {o.layer.name} -> {n.layer.name}"
        else:
            out.kept.append(name)
            continue
        out.restarted.append((name, why))
    return out


def reattach_commands(old: Descriptor, new: Descriptor, p: Prediction) -> list[list[str]]:
    """Stop what goes, reattach without restarting, restart only what changed, start what
    is new and enabled."""
    from portable_service.deploy.descriptor import reattach_command

    rt = ["--runtime"] * new.runtime
    cmds: list[list[str]] = []
    gone_enabled = [u for u in p.removed if u in old.enable]
    if gone_enabled:
        cmds.append(["systemctl", "disable", *rt, *gone_enabled])
    if p.removed:
        cmds.append(["systemctl", "stop", *p.removed])
    cmds.append(reattach_command(new, now=False))
    if p.restarted:
        cmds.append(["systemctl", "try-restart", *[u for u, _ in p.restarted]])
    new_enabled = [u for u in new.enable if u not in old.enable or u in p.added]
    if new_enabled:
        cmds.append(["systemctl", "enable", "--now", *rt, *new_enabled])
    return cmds


def diff_descriptors(old: str, new: str, json_style: str | None) -> int:
    """``diff OLD.toml NEW.toml``: what reattaching NEW over OLD does to each unit; exit 1 when
    any unit is added, removed or restarted (as diff(1) when files differ)."""
    from portable_service.deploy.descriptor import load_descriptor
    from portable_service.jsonout import emit

    p = predict(load_descriptor(Path(old)), load_descriptor(Path(new)))
    if json_style:
        emit("diff-descriptors", p.to_dict(), json_style)
    else:
        print(p.render())
    return 1 if p.added or p.removed or p.restarted else 0
