"""What systemd-sysupdate (257) asks of a download folder and of a host, stated once.

From systemd 257's sysupdate.d(5), systemd-sysupdate(8) and its sources
(src/sysupdate/sysupdate-resource.c ``resource_load_from_web``, sysupdate-pattern.c
``pattern_match``, sysupdate-transfer.c, sysupdate.c; src/basic/string-util.c
``version_is_valid``; src/fundamental/string-util-fundamental.c ``strverscmp_improved``;
src/import/pull-common.c ``verify_gpg``). ``publish`` writes folders by these facts and
``host-config`` writes hosts' transfer files by them.
"""

from __future__ import annotations

import re
import string

# The manifest a url-file source is listed by: Path= with "/SHA256SUMS" appended. Each line is
# 64 hex digits, a space, ' ' or '*' (sha256sum's text/binary marker), a file name, '\n'
# (a last line without '\n' is "Truncated manifest"). A line starting with '\' (sha256sum's
# escaped names) is refused, so are names with control characters or a '/'.
MANIFEST = "SHA256SUMS"
# Verify=yes (the default) fetches Path=/SHA256SUMS.gpg, a detached signature of the manifest,
# and runs "gpg --verify" (gpg2, else gpg, from PATH) against one keyring: the first that exists.
SIGNATURE = "SHA256SUMS.gpg"
KEYRING_PATHS = ("/etc/systemd/import-pubring.gpg", "/usr/lib/systemd/import-pubring.gpg")

# Where Debian 13 installs it (package systemd-container); Debian 12 (systemd 252) does not
# build sysupdate at all, nor importctl.
SYSUPDATE_BINARY = "/usr/lib/systemd/systemd-sysupdate"
MIN_SYSTEMD = 257
# 257 reads transfer files named *.transfer (*.conf still, with a warning) from
# /etc/sysupdate.d (…/run, /usr/local/lib, /usr/lib), or, with --component=NAME, from
# /etc/sysupdate.NAME.d. All transfers of one folder move together to one version, so a
# service with its own versions gets its own component: the host's own sysupdate.d (its OS
# update) is left alone.
TRANSFER_SUFFIX = ".transfer"


def component_dir(component: str) -> str:
    return f"/etc/sysupdate.{component}.d"


# "@v" stands for the version in a MatchPattern=; it is mandatory.
VERSION_WILDCARD = "@v"
# InstancesMax= below 2 is bumped to 2; unset, a regular-file target keeps 3.
INSTANCES_MAX_MIN = 2
DEFAULT_FILE_INSTANCES_MAX = 3
# Verify= defaults to yes.
VERIFY_DEFAULT = True

# version_is_valid(): not empty, a valid file name part, and only these characters
# (semver's, plus ',' and '_'). Anything else never matches "@v", so the version is invisible.
VERSION_CHARS = frozenset(string.ascii_letters + string.digits + ".,_-+")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def match_pattern(pname: str, suffix: str) -> str:
    """The MatchPattern= for ``<pname>_<version><suffix>`` (portabled's image name)."""
    return f"{pname}_{VERSION_WILDCARD}{suffix}"


def version_problem(version: str, suffixes: tuple[str, ...] = (".raw",)) -> str | None:
    """Why sysupdate would not see this version in a file name, or None.

    pattern_match() cuts "@v" at the first occurrence of the literal that follows it, so a
    version holding one of the file name suffixes would be cut short.
    """
    if not version or version in (".", ".."):
        return "it is empty"
    bad = sorted({c for c in version if c not in VERSION_CHARS})
    if bad:
        return (f"it holds {', '.join(repr(c) for c in bad)}: systemd-sysupdate takes only "
                "letters, digits and . , _ - + in a version")
    for suffix in suffixes:
        if suffix in version:
            return f"it holds {suffix!r}, where systemd-sysupdate's pattern ends the version"
    return None


def manifest_name_problem(name: str) -> str | None:
    """Why resource_load_from_web() would refuse this name in a manifest line, or None."""
    if not name or name in (".", "..") or "/" in name:
        return "not a plain file name"
    if name.startswith("\\"):
        return "starts with a backslash (sha256sum's escape marker, which sysupdate refuses)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds a control character"
    return None


def manifest_line(sha256: str, name: str) -> str:
    """One line as ``sha256sum`` writes it (text marker: two spaces); sysupdate reads both."""
    return f"{sha256}  {name}\n"


def parse_manifest(text: str) -> dict[str, str]:
    """{name: sha256} from a manifest, by the rules resource_load_from_web() applies;
    ValueError names the first line it would refuse."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.split("\n")[:-1] if text else [], start=1):
        if len(line) < 66 or not _HEX64.fullmatch(line[:64]) or line[64] != " " \
                or line[65] not in " *":
            raise ValueError(f"line {number} is not '<sha256> <marker><name>'")
        name = line[66:]
        problem = manifest_name_problem(name)
        if problem:
            raise ValueError(f"line {number}: the name {name!r} is {problem}")
        entries[name] = line[:64].lower()
    if text and not text.endswith("\n"):
        raise ValueError("the last line does not end with a newline")
    return entries


# -- strverscmp_improved(): the order sysupdate ranks versions by (newest installed, candidate,
# which instance InstancesMax= removes first)

def _valid_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "~-^.")


def _cmp(a: str | int | bool, b: str | int | bool) -> int:
    return int(a > b) - int(a < b)  # type: ignore[operator]


def strverscmp_improved(a: str, b: str) -> int:
    """systemd's version comparison: <0 when a is older, 0 when equal, >0 when newer."""
    i = j = 0
    na, nb = len(a), len(b)
    while True:
        while i < na and not _valid_char(a[i]):
            i += 1
        while j < nb and not _valid_char(b[j]):
            j += 1
        ca, cb = a[i] if i < na else "", b[j] if j < nb else ""
        if ca == "~" or cb == "~":
            r = _cmp(ca != "~", cb != "~")
            if r:
                return r
            i, j = i + 1, j + 1
            ca, cb = a[i] if i < na else "", b[j] if j < nb else ""
        if not ca or not cb:
            return _cmp(ca, cb)
        for sep in "-^.":
            if ca == sep or cb == sep:
                r = _cmp(ca != sep, cb != sep)
                if r:
                    return r
                i, j = i + 1, j + 1
                ca, cb = a[i] if i < na else "", b[j] if j < nb else ""
        if (ca.isascii() and ca.isdigit()) or (cb.isascii() and cb.isdigit()):
            ea, eb = i, j
            while ea < na and a[ea].isascii() and a[ea].isdigit():
                ea += 1
            while eb < nb and b[eb].isascii() and b[eb].isdigit():
                eb += 1
            r = _cmp(ea != i, eb != j)
            if r:
                return r
            while i < na and a[i] == "0":
                i += 1
            while j < nb and b[j] == "0":
                j += 1
            r = _cmp(ea - i, eb - j) or _cmp(a[i:ea], b[j:eb])
            if r:
                return r
        else:
            ea, eb = i, j
            while ea < na and a[ea].isascii() and a[ea].isalpha():
                ea += 1
            while eb < nb and b[eb].isascii() and b[eb].isalpha():
                eb += 1
            m = min(ea - i, eb - j)
            r = _cmp(a[i:i + m], b[j:j + m]) or _cmp(ea - i, eb - j)
            if r:
                return r
        i, j = ea, eb
