"""size: where an image's bytes go, by folder, by file and (for our images) by closure root.

Sizes are file content bytes before compression (what a reader gets back),
so they add up across folders; the image file itself is smaller.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from portable_service.fs.views import ImageFS, Stat
from portable_service.look.facts import closure_record
from portable_service.progress import human

BAR_WIDTH = 30


@dataclass(frozen=True)
class SizeReport:
    total: int
    folders: list[tuple[str, int]]  # largest first
    files: list[tuple[str, int]]
    roots: list[tuple[str, str, int]] | None  # (root, reason, bytes) when recorded

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "folders": [{"path": p, "bytes": n} for p, n in self.folders],
            "files": [{"path": p, "bytes": n} for p, n in self.files],
            "closure_roots": None if self.roots is None else [
                {"path": p, "reason": r, "bytes": n} for p, r, n in self.roots],
        }


def _entry_bytes(st: Stat) -> int:
    return st.size if st.kind in ("file", "symlink") else 0


def folder_totals(entries: dict[str, Stat]) -> dict[str, int]:
    """Bytes below each folder (files and link targets), every level counted."""
    totals: dict[str, int] = {p: 0 for p, st in entries.items() if st.kind == "dir"}
    for path, st in entries.items():
        n = _entry_bytes(st)
        if not n:
            continue
        parent = posixpath.dirname(path)
        while True:
            totals[parent] = totals.get(parent, 0) + n
            if parent == "/":
                break
            parent = posixpath.dirname(parent)
    return totals


def root_totals(entries: dict[str, Stat], record: dict[str, Any]) -> list[tuple[str, str, int]]:
    """Bytes each closure root brings in; a path shared by roots counts for the first that
    pulled it in (the build resolves breadth-first), paths outside the closure go to
    '(scaffold and units)'."""
    roots = {r["path"]: r["reason"] for r in record["roots"]}
    parents: dict[str, str | None] = record.get("parents") or {}
    sums: dict[str, int] = dict.fromkeys(roots, 0)
    other = 0
    for path, st in entries.items():
        n = _entry_bytes(st)
        if not n:
            continue
        root = _root_of(path, roots, parents)
        if root is None:
            other += n
        else:
            sums[root] += n
    out = [(p, roots[p], n) for p, n in sums.items()]
    out.sort(key=lambda t: (-t[2], t[0]))
    if other:
        out.append(("(scaffold and units)", "", other))
    return out


def _root_of(path: str, roots: dict[str, str], parents: dict[str, str | None]) -> str | None:
    seen = set()
    current: str | None = path
    while current is not None and current not in seen:
        if current in roots:
            return current
        seen.add(current)
        current = parents.get(current)
    # not recorded node by node: the nearest recorded root above it (a folder root)
    for parent in _ancestors(path):
        if parent in roots:
            return parent
    return None


def _ancestors(path: str) -> list[str]:
    out = []
    while path != "/":
        path = posixpath.dirname(path)
        out.append(path)
    return out


def size_report(fs: ImageFS, entries: dict[str, Stat], top: int = 15) -> SizeReport:
    totals = folder_totals(entries)
    total = totals.get("/", 0)
    folders = sorted(((p, n) for p, n in totals.items() if p != "/"), key=lambda t: (-t[1], t[0]))
    files = sorted(((p, st.size) for p, st in entries.items() if st.kind == "file"),
                   key=lambda t: (-t[1], t[0]))
    record = closure_record(fs)
    roots = root_totals(entries, record) if record is not None else None
    return SizeReport(total, folders[:top], files[:top], roots)


def _bar(n: int, total: int) -> str:
    if total <= 0:
        return ""
    filled = round(BAR_WIDTH * n / total)
    return "█" * filled + "·" * (BAR_WIDTH - filled)


def _table(title: str, rows: list[tuple[str, int]], total: int, extra: list[str] | None = None
           ) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("size", justify="right")
    table.add_column("share", justify="right")
    table.add_column("", no_wrap=True)
    table.add_column("path", overflow="fold")
    if extra is not None:
        table.add_column("why")
    for i, (path, n) in enumerate(rows):
        share = f"{100 * n / total:.1f}%" if total else "-"
        cells = [human(n), share, _bar(n, total), path]
        if extra is not None:
            cells.append(extra[i])
        table.add_row(*cells)
    return table


def print_report(report: SizeReport, console: Console) -> None:
    console.print(f"content: {human(report.total)} (uncompressed)")
    console.print(_table("largest folders", report.folders, report.total))
    console.print(_table("largest files", report.files, report.total))
    if report.roots is not None:
        rows = [(p, n) for p, _r, n in report.roots]
        console.print(_table("by closure root", rows, report.total,
                             extra=[r for _p, r, _n in report.roots]))
    else:
        console.print("closure roots: not recorded in this image "
                      "(only images built by portable-service record them)")
