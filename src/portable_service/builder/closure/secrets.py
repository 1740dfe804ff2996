"""Host secrets never enter an image by reference.

Images get published. A source tree from anywhere (a symlink in a content folder, an ELF
file's PT_INTERP, a script's ``#!``) must not be able to pull a host secret into one: a path
the closure reached only by reference, not named in the spec (a ``contents`` entry and the
folders below it, a unit's program, a package's own file), is refused when it is not
readable by everyone on the host or lies in a well-known secret place. Naming it in
``contents`` is the only way in.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import PurePosixPath

from portable_service.builder.closure import FOLDER_ENTRY, Closure, Node, lstat_of
from portable_service.errors import ClosureError

# places whose files are secret whatever their mode says
SECRET_PLACES = (
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/ssh/ssh_host_*_key",
    "/etc/ssl/private", "/etc/ssl/private/*", "/root", "/root/*", "/home", "/home/*",
    "/etc/sudoers", "/etc/sudoers.d/*", "/var/lib/sss/*", "/etc/krb5.keytab",
)


def secret_place(path: PurePosixPath) -> bool:
    text = str(path)
    return any(fnmatch.fnmatchcase(text, pattern) for pattern in SECRET_PLACES)


def check_no_secrets(closure: Closure) -> None:
    """Raise ClosureError for the first secret the closure reached only by reference."""
    referenced: dict[PurePosixPath, bool] = {}

    def by_reference(node: Node) -> bool:
        # named: a root, a package's file, or an entry of a named folder
        chain = []
        current: Node | None = node
        while current is not None and current.image not in referenced:
            chain.append(current)
            parent = current.parent
            current = closure.nodes.get(parent) if parent is not None else None
        known = referenced.get(current.image, False) if current is not None else False
        for n in reversed(chain):
            known = n.parent is not None and n.package is None and (
                n.reason != FOLDER_ENTRY or known)
            referenced[n.image] = known
        return referenced[node.image]

    for node in closure:
        if not by_reference(node):
            continue
        why = _secret(node)
        if why is None:
            continue
        chain = " <- ".join(str(n.image) for n in reversed(closure.why(node.image)))
        raise ClosureError(
            f"{node.host} {why}, and only a reference brings it in ({chain}): a host secret "
            "never enters an image by reference",
            f"name {node.image} in contents if it is meant to be published, or fix the "
            "reference")


def _secret(node: Node) -> str | None:
    if secret_place(PurePosixPath(os.path.normpath(node.host))):
        return "lies in a secret place of the host"
    try:
        st = lstat_of(node)
    except OSError:
        return None  # missing or unreadable: the layout reports it
    if stat.S_ISLNK(st.st_mode):
        return None  # a link is not a secret; its target is checked on its own
    needed = 0o005 if stat.S_ISDIR(st.st_mode) else 0o004
    if st.st_mode & needed != needed:
        return f"is not readable by everyone on the host (mode {stat.S_IMODE(st.st_mode):04o})"
    return None
