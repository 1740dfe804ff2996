"""verify for portable extensions and whole stacks (a base plus its extensions).

An extension is checked against its base the way portabled checks it at attach (the
release file's name and fields, the prefixes), and the stack is checked as the root the
units run in (fs/stack.py): every rule of look/verify.py runs on the merged view, so a
program of an extension whose library only the base has passes, and one neither has fails.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from portable_service.errors import ImageError
from portable_service.fs.stack import StackFS
from portable_service.fs.views import ImageFS, IndexedFS, open_image, read_text
from portable_service.look.facts import find_os_release
from portable_service.look.problems import ERROR, WARNING, Problem
from portable_service.look.verify import Target, _dedupe, gate, verify
from portable_service.rules import extensions as ext_rules
from portable_service.rules.osrelease import parse_os_release
from portable_service.rules.portabled import UNIT_DIRS, image_prefix

# rules of a single image that do not apply to a layer of a stack: the prefixes are the
# stack's (checked over every layer below), and units of extensions are not in the base's
# closure record
STACK_REPLACED = frozenset({"image-name", "portable-prefixes", "undeclared-unit"})


@dataclass(frozen=True)
class Layer:
    fs: ImageFS
    name: str  # the image file name, e.g. app_2.raw


def open_layer(path: Path) -> Layer:
    return Layer(IndexedFS(open_image(path)), path.name)


def is_extension(fs: ImageFS) -> bool:
    """An image with an extension-release folder and no os-release of its own."""
    path, _ = find_os_release(fs)
    try:
        names = fs.listdir(ext_rules.RELEASE_DIR)
    except (ImageError, FileNotFoundError):
        return False
    return path is None and any(n.startswith(ext_rules.RELEASE_PREFIX) for n in names)


def release_fields(fs: ImageFS, name: str) -> dict[str, str] | None:
    text = read_text(fs, ext_rules.release_path(name))
    return None if text is None else parse_os_release(text)


def check_release(ext: Layer, base: dict[str, str] | None) -> Iterator[Problem]:
    """The release file portabled opens for this file name, and its fields against the base."""
    path = ext_rules.release_path(ext.name)
    fields = release_fields(ext.fs, ext.name)
    if fields is None:
        try:
            others = [n for n in ext.fs.listdir(ext_rules.RELEASE_DIR)
                      if n.startswith(ext_rules.RELEASE_PREFIX)]
        except (ImageError, FileNotFoundError):
            others = []
        if others:
            other = others[0][len(ext_rules.RELEASE_PREFIX):]
            yield Problem(ERROR, "extension-release-name",
                          f"{ext_rules.RELEASE_DIR}/{others[0]}",
                          f"the release file is for an image named {other}, but for "
                          f"{ext.name} systemd opens {posixpath.basename(path)}: it refuses "
                          f"the extension ('{ext_rules.LACKS_RELEASE}'; systemd 252, 257 also "
                          "takes the name cut at the first '_')",
                          f"rename the image to {other}.raw, or rebuild it (the build names "
                          "the file after the image)")
        else:
            yield Problem(ERROR, "extension-release-missing", path,
                          f"no extension-release file: systemd refuses the extension "
                          f"('{ext_rules.LACKS_RELEASE}')",
                          "build it from a spec with base = (the build writes the file)")
        return
    if base is None:
        return
    mismatch = ext_rules.release_mismatch(base, fields)
    if mismatch is not None:
        reason, fix = mismatch
        yield Problem(ERROR, "extension-release-match", path,
                      f"{reason}: systemd refuses to attach it on this base "
                      f"('{ext_rules.MISMATCH}')", fix)


def check_overlay(ext: Layer) -> Iterator[Problem]:
    """Files outside /usr and /opt are never seen by the service (unit files aside:
    portabled reads those from the extension at attach)."""
    outside = [p for p, st in ext.fs.walk() if st.kind != "dir" and not ext_rules.is_overlaid(p)
               and posixpath.dirname(p) not in UNIT_DIRS]
    if outside:
        more = f" and {len(outside) - 1} more" if len(outside) > 1 else ""
        yield Problem(WARNING, "extension-outside-overlay", outside[0],
                      f"outside /usr and /opt{more}: systemd overlays only those of an "
                      "extension, so the service never sees it",
                      "move it under /opt or /usr, or into the base")


def check_conflicts(exts: Sequence[Layer]) -> Iterator[Problem]:
    """Two extensions with different files at one path: which one the service sees depends
    on the overlay order, which is easy to get wrong."""
    owner: dict[str, tuple[Layer, int, int]] = {}
    for ext in exts:
        for path, st in ext.fs.walk():
            if st.kind == "dir" or path.startswith(ext_rules.RELEASE_DIR + "/"):
                continue
            if path in owner:
                other, size, mode = owner[path]
                if (size, mode) != (st.size, st.mode) or other.fs.read(path) != ext.fs.read(path):
                    yield Problem(WARNING, "extension-conflict", path,
                                  f"both {other.name} and {ext.name} ship it, differently",
                                  "ship it in one layer only")
            owner[path] = (ext, st.size, st.mode)


def check_prefixes(base: Layer, exts: Sequence[Layer], prefixes: Sequence[str]
                   ) -> Iterator[Problem]:
    _, base_fields = find_os_release(base.fs)
    ext_fields = [release_fields(e.fs, e.name) or {} for e in exts]
    valid = ext_rules.valid_prefixes(base_fields, ext_fields)
    for refused in ext_rules.refused_prefixes(prefixes, valid):
        yield Problem(ERROR, "extension-prefixes", refused,
                      f"no layer lists the prefix {refused!r} in PORTABLE_PREFIXES (they allow "
                      f"{', '.join(valid or [])}): portabled refuses the attach (\"Selected "
                      f"matches '{refused}' {ext_rules.PREFIX_REFUSED} ...\")",
                      f"attach with the prefixes of the layers ({', '.join(valid or [])}), or "
                      f"build the extension whose units start with {refused} as pname "
                      f"{refused}")


def verify_stack(base: Layer, exts: Sequence[Layer], prefixes: Sequence[str],
                 target: Target | None = None) -> list[Problem]:
    """Every problem of the stack: each extension against the base, the prefixes, and the
    rules of one image over the merged root, for each prefix."""
    if is_extension(base.fs):
        return [Problem(ERROR, "extension-base", base.name,
                        f"the base {base.name} is itself an extension (an extension-release "
                        "file, no os-release): portabled refuses it as the root image "
                        "('lacks os-release data')",
                        "give the image at the bottom of the stack as the base, and this one "
                        "as an extension")]
    _, base_fields = find_os_release(base.fs)
    problems: list[Problem] = []
    for ext in exts:
        problems.extend(check_release(ext, base_fields))
        problems.extend(check_overlay(ext))
    problems.extend(check_conflicts(exts))
    if all(release_fields(e.fs, e.name) is not None for e in exts):
        # portabled refuses an extension without its release file before it looks at prefixes
        problems.extend(check_prefixes(base, exts, prefixes))
    merged = IndexedFS(StackFS(base.fs, [e.fs for e in exts]))
    for prefix in prefixes:
        problems.extend(p for p in verify(merged, f"{prefix}.raw", target)
                        if p.rule not in STACK_REPLACED)
    return _dedupe(problems)


def verify_extension(ext: Layer, base: Layer | None, target: Target | None = None
                     ) -> list[Problem]:
    """An extension alone (its release file and layout), or on its base (the whole stack
    under the extension's own prefix)."""
    if base is None:
        return [*check_release(ext, None), *check_overlay(ext)]
    return verify_stack(base, [ext], [image_prefix(ext.name)], target)


def check_written_extension(path: Path, image_name: str, base: Layer,
                            warn: Callable[[str], None]) -> None:
    """The build's gate for an extension: as check_written, on the stack it makes."""
    problems = verify_stack(base, [Layer(IndexedFS(open_image(path)), image_name)],
                            [image_prefix(image_name)])
    gate(problems, f"the extension would not work on {base.name}", warn)


def verify_layers(image: str, fs: ImageFS | None, base: str | None, target: Target
                  ) -> list[Problem] | None:
    """``verify`` of an extension (against ``base`` when given); None for a plain image,
    which look/verify.py checks. (A deployment descriptor is deploy.attach's to check.)"""
    layer = Layer(fs, Path(image).name) if fs is not None else open_layer(Path(image))
    if base is not None:
        return verify_extension(layer, open_layer(Path(base)), target)
    if is_extension(layer.fs):
        return verify_extension(layer, None, target)
    return None
