"""What systemd asks of a portable extension image, stated once.

Read by the extension builder (builder/extension.py), by ``verify`` of an extension or a
deployment descriptor (deploy/stack.py) and by the descriptor's commands. Sources:
systemd's src/portable/portable.c (``extract_image_and_extensions``, ``portable_attach``,
``prefix_matches_compatible``), src/shared/extension-util.c (``extension_release_validate``;
os-util.c in 252) and what systemd 252 and 257 did with test images here
(tests/e2e/test_layers.py).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence

# the folder and the file name an extension's release file must have: systemd 252 opens
# exactly "extension-release.<image file name without .raw>" ("app_2" for app_2.raw) and
# says "Image '...' lacks extension-release data, refusing." otherwise; 257 also takes the
# name cut at the first '_' or '+' ("app"), so the full name works on both
RELEASE_DIR = "/usr/lib/extension-release.d"
RELEASE_PREFIX = "extension-release."
# the only hierarchies an extension overlays onto its base (sysext's default
# SYSTEMD_SYSEXT_HIERARCHIES "/usr:/opt"); anything else in an extension is never seen by
# the service. The base must have each hierarchy as a folder: systemd cannot create the
# overlay's mount point in a read-only base (without /opt in the base, a program in an
# extension's /opt is "Failed to locate executable", status 203/EXEC; seen on 252 and 257)
OVERLAID = ("/usr", "/opt")
# the scope a portable service needs; an extension without SYSEXT_SCOPE= is good for
# both "system" and "portable"
PORTABLE_SCOPE = "portable"
DEFAULT_SCOPES = ("system", "portable")
# the value of ID= that matches any base, and skips the version comparison
ANY_ID = "_any"

# systemd's own words, for the one-line problems and for the tests that compare
MISMATCH = "extension-release metadata does not match the root's"
LACKS_RELEASE = "lacks extension-release data, refusing"
PREFIX_REFUSED = "are not compatible with portable service image"

# systemd 247's portablectl has no --extension (the option, ExtensionImages= and the
# extension-release checks came in later releases); 252 and 257 were checked here
FIRST_TESTED = 252


def image_name(file_name: str) -> str:
    """The image name systemd 252 derives from a file name: the base name without .raw."""
    base = posixpath.basename(file_name)
    return base[: -len(".raw")] if base.endswith(".raw") else base


def release_path(file_name: str) -> str:
    """Where the extension ``file_name`` (``app_2.raw``) must carry its release file."""
    return f"{RELEASE_DIR}/{RELEASE_PREFIX}{image_name(file_name)}"


def is_overlaid(path: str) -> bool:
    """Whether systemd overlays this extension path onto the base (/usr, /opt and below)."""
    return any(path == h or path.startswith(h + "/") for h in OVERLAID)


def scopes(fields: Mapping[str, str]) -> list[str]:
    value = fields.get("SYSEXT_SCOPE")
    return value.split() if value is not None else list(DEFAULT_SCOPES)


def release_mismatch(base: Mapping[str, str], ext: Mapping[str, str]) -> tuple[str, str] | None:
    """Why systemd refuses extension-release ``ext`` on a base with os-release ``base``
    (``extension_release_validate`` with the scope "portable"), and the fix; None when it
    matches.

    The order is systemd's: scope, ID (``_any`` matches every base and skips the rest),
    a base without VERSION_ID= and SYSEXT_LEVEL= (a rolling release) matches, then
    SYSEXT_LEVEL= when both set it, else VERSION_ID=.
    """
    if not ext:
        return "the extension-release file is empty", "rebuild the extension with base ="
    if PORTABLE_SCOPE not in scopes(ext):
        return (f"SYSEXT_SCOPE={ext.get('SYSEXT_SCOPE', '')} does not include "
                f"'{PORTABLE_SCOPE}'", f"set SYSEXT_SCOPE={PORTABLE_SCOPE} (or leave it out)")
    ext_id, base_id = ext.get("ID", ""), base.get("ID", "")
    if not ext_id:
        return "it has no ID=", f"set ID={base_id} (the base's) or ID={ANY_ID}"
    if ext_id == ANY_ID:
        return None
    if ext_id != base_id:
        return (f"ID={ext_id} but the base's os-release says ID={base_id}",
                f"set ID={base_id} (or ID={ANY_ID} for an extension that needs nothing of "
                "the base's distribution)")
    base_level, base_version = base.get("SYSEXT_LEVEL", ""), base.get("VERSION_ID", "")
    if not base_level and not base_version:
        return None
    ext_level = ext.get("SYSEXT_LEVEL", "")
    if base_level and ext_level:
        if base_level != ext_level:
            return (f"SYSEXT_LEVEL={ext_level} but the base's is {base_level}",
                    f"set SYSEXT_LEVEL={base_level}, or rebuild against this base")
        return None
    if base_version:
        ext_version = ext.get("VERSION_ID", "")
        if ext_version != base_version:
            said = f"VERSION_ID={ext_version}" if ext_version else "it has no VERSION_ID="
            return (f"{said} but the base's is {base_version}",
                    f"set VERSION_ID={base_version}, or rebuild against this base")
    return None


def valid_prefixes(base: Mapping[str, str], extensions: Iterable[Mapping[str, str]]
                   ) -> list[str] | None:
    """The prefixes portabled accepts for a stack: the union of the base's and every
    extension's PORTABLE_PREFIXES=, or None when none of them sets it (then any goes)."""
    found: list[str] | None = None
    for fields in (base, *extensions):
        if "PORTABLE_PREFIXES" in fields:
            found = (found or []) + fields["PORTABLE_PREFIXES"].split()
    return None if found is None else sorted(set(found))


def refused_prefixes(matches: Sequence[str], valid: Sequence[str] | None) -> list[str]:
    """The matches portabled refuses ('Selected matches ... are not compatible')."""
    if valid is None:
        return []
    return [m for m in matches if m not in valid]


def extension_release_fields(base: Mapping[str, str], pname: str, version: str,
                             extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The release file an extension of ``base`` gets: what systemd compares, copied from
    the base, the portable scope, the unit prefix, and the spec's own fields on top."""
    fields: dict[str, str] = {}
    fields["ID"] = base.get("ID", "")
    for key in ("VERSION_ID", "SYSEXT_LEVEL"):
        if base.get(key):
            fields[key] = base[key]
    fields["SYSEXT_SCOPE"] = PORTABLE_SCOPE
    fields["PORTABLE_PREFIXES"] = pname
    fields["IMAGE_ID"] = pname
    fields["IMAGE_VERSION"] = version
    fields.update(extra)
    return fields
