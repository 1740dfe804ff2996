"""Nix store paths: the closure is the one Nix records, each store path copied whole.

A reference into ``/nix/store/HASH-NAME/...`` brings ``HASH-NAME`` and every
path of ``nix-store --query --requisites HASH-NAME``, as nixpkgs'
``portableService`` does. Files inside the store are not scanned for ELF or
script references: Nix already knows them (the ELF and script resolvers skip
store paths).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from portable_service.builder.closure import Context, Node, in_nix_store
from portable_service.errors import ClosureError
from portable_service.run import find_tool, run, tool_message


def store_path(path: PurePosixPath) -> PurePosixPath | None:
    """``/nix/store/HASH-NAME`` for any path at or below it."""
    if not in_nix_store(path) or len(path.parts) < 4:
        return None
    return PurePosixPath(*path.parts[:4])


def parse_requisites(text: str) -> list[PurePosixPath]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            p = PurePosixPath(line)
            if store_path(p) != p:
                raise ClosureError(f"nix-store printed {line!r}, which is not a store path",
                                   "check the Nix installation (nix-store --version)")
            out.append(p)
    return out


class NixResolver:
    """Resolver: a store path brings its recorded requisites (queried once per closure)."""

    def __init__(self, ctx: Context, nix_store: str | None = None) -> None:
        self.ctx = ctx
        self.nix_store = nix_store
        self._known: set[PurePosixPath] = set()

    def requisites(self, path: PurePosixPath) -> list[PurePosixPath]:
        tool = find_tool("nix-store", self.nix_store, reason=f"to read the closure of {path}")
        proc = run([tool, "--query", "--requisites", str(path)], check=False)
        if proc.returncode != 0:
            raise ClosureError(f"nix-store cannot give the closure of {path}: {tool_message(proc)}",
                               "is it a valid store path on this host? (nix-store --verify-path)")
        return parse_requisites(proc.stdout.decode(errors="surrogateescape"))

    def __call__(self, node: Node) -> Iterator[Node]:
        top = store_path(node.image)
        if top is None or top in self._known or str(node.host) != str(node.image):
            return
        requisites = self.requisites(top)
        self._known.update(requisites)  # a requisite's own closure is a subset of this one
        for req in requisites:
            yield Node(req, Path(req), f"Nix requisite of {top}", node.image)
