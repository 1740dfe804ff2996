"""What systemd-portabled and the service manager ask of an image, stated once.

The builder lays out images by these facts and ``verify`` checks images against them;
both import them from here (REFERENCE.md sections 2 and 5 say where each comes from).
"""

from __future__ import annotations

import os
import posixpath
import stat

from portable_service.rules.extensions import OVERLAID

# the unit types portabled attaches; others in an image are ignored
UNIT_TYPES = (".service", ".socket", ".target", ".timer", ".path")
# the types that start another unit (a socket, a timer, a path)
TRIGGER_TYPES = (".socket", ".timer", ".path")
# where portabled looks for unit files in an image, the first folder winning a name
UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
# where our builds put the units (and the drop-ins merged into them)
BUILD_UNIT_DIR = "/etc/systemd/system"
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")
# not portabled's but our own: where our builds record the closure (what pulled each path
# in, the units given), read back by inspect, size and verify
CLOSURE_RECORD_PATH = "/usr/lib/portable-service/closure.json"

# mounted afresh in the unit's root at start (API file systems, MountAPIVFS='s /run, the
# private /tmp): they must exist in a read-only image, and what is in them does not matter
FRESH_MOUNTS = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp")
# bound over from the host at start: must exist as (empty) files
BOUND_FILES = ("/etc/resolv.conf", "/etc/machine-id")
# where StateDirectory=, CacheDirectory= and LogsDirectory= live: made at run time
STATE_ROOTS = ("/var/lib", "/var/cache", "/var/log")
# paths a service finds made at run time: never dependencies of an image
RUNTIME_ROOTS = FRESH_MOUNTS + STATE_ROOTS

# where portable extensions are overlaid: the folders must exist in a read-only base
# (rules/extensions.py), so every image carries them and can serve as a base
EXTENSION_MOUNTS = OVERLAID
# the scaffold every image carries: the folders and files above, the unit folder, os-release
SCAFFOLD_DIRS = (BUILD_UNIT_DIR, *FRESH_MOUNTS, *STATE_ROOTS, *EXTENSION_MOUNTS)
SCAFFOLD_FILES = (*BOUND_FILES, OS_RELEASE_PATHS[0])

# systemd's PATH for a service's bare program names (merged /usr); hosts without merged
# /usr add /sbin and /bin
SYSTEMD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin")
SPLIT_USR_PATH = (*SYSTEMD_PATH, "/sbin", "/bin")


def image_prefix(image_name: str) -> str:
    """portabled's unit prefix: the file name without .raw, cut at the first '_'."""
    base = posixpath.basename(image_name)
    if base.endswith(".raw"):
        base = base[: -len(".raw")]
    return base.split("_", 1)[0]


def prefix_matches(unit_name: str, prefix: str) -> bool:
    """portabled's match: the prefix itself, or the prefix followed by '-', '.' or '@'."""
    if not unit_name.startswith(prefix) or not prefix:
        return False
    rest = unit_name[len(prefix):]
    return rest == "" or rest[0] in "-.@"


def is_portable_unit(name: str) -> bool:
    """A unit file name portabled would attach (a type it takes, no folder)."""
    return name.endswith(UNIT_TYPES) and "/" not in name


def bind_source_is_folder(source: str) -> bool:
    """Whether a ``BindPaths=``/``BindReadOnlyPaths=`` source needs a folder to mount on.

    systemd mounts a folder only on a folder and anything else (a file, a socket such as
    /dev/log, a device) only on a non-folder: the wrong kind fails the start with 'Not a
    directory' (status=226/NAMESPACE). A missing destination it makes itself of the
    source's kind (namespace.c, make_mount_point_inode_from_path), which a read-only image
    cannot take. The source is on the host that runs the unit: judged by this machine's,
    and where this machine has none, a folder unless it is under /dev (device nodes and
    the journal's /dev/log socket) or named like a socket.
    """
    try:
        return stat.S_ISDIR(os.stat(source).st_mode)
    except (OSError, ValueError):
        return not (source.startswith("/dev/") or source.endswith((".sock", ".socket")))
