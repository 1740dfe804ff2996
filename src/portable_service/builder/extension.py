"""Portable extensions: a spec with ``base`` becomes an image that carries only what its base
lacks, its units and an extension-release file (rules/extensions.py says what systemd asks).

The build resolves the spec's closure as for any image, lays out the tree, then keeps only
the entries the base does not already hold with the same content (compared by path, kind,
mode and bytes: the base is read with the project's squashfs reader, or, for a base given as
a spec, from that spec's planned tree). systemd overlays only /usr and /opt of an extension
onto its base, so what is left elsewhere is refused (a path the spec asked for) or left out
with a warning (a file the build generates, such as /etc/ld.so.cache); a mount point a unit
needs outside /usr and /opt must already be in the base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from portable_service.builder.layout import CLOSURE_RECORD, render_os_release
from portable_service.builder.spec import Spec, load_spec
from portable_service.errors import ImageError, SpecError, TreeError
from portable_service.fs.tree import ROOT, Entry, ImageTree, Kind
from portable_service.fs.views import ImageFS, IndexedFS, TreeFS, open_image, read_text, resolve
from portable_service.progress import QUIET, Reporter
from portable_service.rules import extensions as ext_rules
from portable_service.rules.osrelease import parse_os_release
from portable_service.rules.portabled import OS_RELEASE_PATHS

P = PurePosixPath
# where an extension's units go: portabled reads unit files from the extension image at
# attach, and /usr is what the extension contributes to the unit's root anyway
EXTENSION_UNIT_DIR = P("/usr/lib/systemd/system")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Base:
    """The image an extension extends, as files (``fs``) and its os-release fields."""

    fs: ImageFS
    name: str  # the base's image file name, e.g. runtime_1.raw
    os_release: dict[str, str]


def os_release_of(fs: ImageFS) -> dict[str, str]:
    for path in OS_RELEASE_PATHS:
        text = read_text(fs, path)
        if text is not None:
            return parse_os_release(text)
    return {}


def open_base(path: Path, plan_spec: Callable[[Spec], ImageTree],
              reporter: Reporter = QUIET) -> Base:
    """The base named by ``base =``: an image file, or a spec (file or folder) that
    ``plan_spec`` lays out (the pipeline's own planning, given by it)."""
    if path.suffix == ".raw" or (path.is_file() and path.suffix != ".toml"):
        if not path.is_file():
            raise SpecError(f"base image {path} does not exist",
                            "build the base first, or name its spec (base = \"../runtime\")")
        fs: ImageFS = IndexedFS(open_image(path))
        name = path.name
    else:
        spec = load_spec(path)
        if spec.base is not None:
            raise SpecError(f"base {path} is itself an extension (of {spec.base})",
                            "name the image at the bottom of the stack as the base")
        with reporter.step(f"planning the base {spec.image_name}"):
            fs = TreeFS(plan_spec(spec))
        name = spec.image_name
    fields = os_release_of(fs)
    if not fields.get("ID"):
        raise SpecError(f"base {path} has no os-release ID=: portabled refuses it as a base, "
                        "and an extension must copy its ID", "build the base with this tool")
    return Base(fs, name, fields)


def same_in_base(base: ImageFS, entry: Entry) -> bool:
    """The base holds this path with the same kind, mode and content."""
    path = str(entry.path)
    try:
        st = base.stat(path)
    except (ImageError, FileNotFoundError):
        return False
    if entry.kind is Kind.DIR:
        return st.kind == "dir"
    if entry.kind is Kind.SYMLINK:
        return st.kind == "symlink" and (st.target or base.readlink(path)) == entry.target
    if st.kind != "file" or st.size != entry.size or st.mode != entry.mode:
        return False
    with entry.open() as mine:
        offset = 0
        while True:
            chunk = mine.read(CHUNK)
            if not chunk:
                return True
            if base.read(path, offset, len(chunk)) != chunk:
                return False
            offset += len(chunk)


def _asked_for(entry: Entry) -> bool:
    """A path the spec named (contents, symlinks), rather than one the closure or the
    build added: leaving it out silently would lose what the user asked for."""
    return entry.origin.startswith(("content", "object of symlink", "symlink /", "in folder"))


def extension_tree(spec: Spec, tree: ImageTree, base: Base) -> tuple[ImageTree, list[str]]:
    """The extension's tree from the full tree of ``spec``; returns it and warnings."""
    out = ImageTree()
    warnings: list[str] = []
    left_out: list[str] = []
    for entry in tree:
        path = str(entry.path)
        if entry.path == ROOT or entry.path == CLOSURE_RECORD or entry.origin == "scaffold":
            continue  # the base's scaffold and closure record serve the whole stack
        if entry.origin.startswith("unit "):
            out.add(Entry(EXTENSION_UNIT_DIR / entry.path.name, Kind.FILE, entry.mode,
                          data=entry.data, source=entry.source, origin=entry.origin))
            continue
        if same_in_base(base.fs, entry):
            continue
        if ext_rules.is_overlaid(path):
            if entry.kind is Kind.DIR:
                out.add_dir(entry.path, entry.mode, origin=entry.origin)
            else:
                out.add(entry)
            continue
        if entry.origin.startswith("mount point"):
            if resolve(base.fs, path) is None:
                raise TreeError(
                    f"{path} ({entry.origin}) is not in the base {base.name}: systemd mounts "
                    "it in the unit's root, and an extension cannot add it (only /usr and /opt "
                    "are overlaid), so the start fails ('Read-only file system')",
                    f"add {path} to the base (a unit of the base with the same directive, or "
                    f"contents = [{{ source = \"EMPTY_FOLDER\", target = \"{path}\" }}]) and "
                    "rebuild it")
            continue
        if entry.kind is Kind.DIR:
            continue  # a folder outside /usr and /opt: its files decide below
        if _asked_for(entry):
            raise TreeError(
                f"{path} ({entry.origin}) lies outside /usr and /opt: systemd overlays only "
                f"those of an extension onto the base {base.name}, so the service would "
                "never see it",
                f"place it under /opt/{spec.pname}/ or /usr/ with {{ source, target }}, or "
                "put it into the base")
        left_out.append(path)
    if left_out:
        shown = ", ".join(left_out[:4]) + (f" and {len(left_out) - 4} more" if len(left_out) > 4
                                           else "")
        warnings.append(f"left out of the extension {shown}: outside /usr and /opt, which "
                        f"are all systemd overlays; the service sees the base's instead")
    for hierarchy in ext_rules.OVERLAID:
        if out.get(P(hierarchy)) is None:
            continue
        real = resolve(base.fs, hierarchy)
        if real is None or base.fs.stat(real).kind != "dir":
            raise TreeError(
                f"the extension has {hierarchy} but the base {base.name} has no {hierarchy} "
                "folder: systemd cannot overlay it onto a read-only base, so the programs "
                "there are missing at start (status 203/EXEC)",
                f"rebuild the base with this version (every image now has {hierarchy}), or "
                "place the files under /usr")
    fields = ext_rules.extension_release_fields(base.os_release, spec.pname, spec.version,
                                                dict(spec.os_release))
    for key, value in (("PORTABLE_PRETTY_NAME", spec.description),
                       ("HOME_URL", spec.homepage)):
        if value:
            fields.setdefault(key, value)
    out.add_file(P(ext_rules.release_path(spec.image_name)), data=render_os_release(fields),
                 origin="extension-release")
    return out, warnings
