"""inspect, ls, cat: what an image holds, read without root.

``inspect`` shows what ``portablectl inspect`` shows (os-release, portable
name, the units portabled would attach for the file name) plus the
container's facts and, for images we built, the roots of the closure.
"""

from __future__ import annotations

import functools
import posixpath
import time
from collections.abc import Iterator
from typing import Any

from portable_service.errors import ImageError
from portable_service.fs.views import ImageFS, ImageInfo, Stat, read_text, resolve
from portable_service.look.facts import attached_units, closure_record, find_os_release
from portable_service.progress import human
from portable_service.rules.portabled import image_prefix

OS_RELEASE_SHOWN = (
    "ID", "ID_LIKE", "VERSION_ID", "BUILD_ID", "IMAGE_ID", "IMAGE_VERSION", "SYSEXT_LEVEL",
    "PORTABLE_ID", "PORTABLE_PRETTY_NAME", "PORTABLE_PREFIXES", "PRETTY_NAME", "HOME_URL",
)


def count_entries(fs: ImageFS) -> dict[str, int]:
    counts: dict[str, int] = {}
    total = 0
    for _path, st in fs.walk():
        counts[st.kind] = counts.get(st.kind, 0) + 1
        total += st.size if st.kind == "file" else 0
    counts["bytes"] = total
    return counts


def inspect_image(fs: ImageFS, image: str, info: ImageInfo | None) -> dict[str, Any]:
    """Everything ``inspect`` shows, JSON-ready."""
    prefix = image_prefix(image)
    os_path, fields = find_os_release(fs)
    units = attached_units(fs, prefix)
    counts = count_entries(fs)
    record = closure_record(fs)
    data: dict[str, Any] = {
        "image": image,
        "prefix": prefix,
        "portable_pretty_name": fields.get("PORTABLE_PRETTY_NAME") or None,
        "operating_system": fields.get("PRETTY_NAME") or fields.get("NAME") or None,
        "os_release_path": os_path,
        "os_release": fields,
        "units": [{"name": u.name, "path": u.path, "kind": u.stat.kind} for u in units],
        "files": counts.get("file", 0),
        "folders": counts.get("dir", 0),
        "symlinks": counts.get("symlink", 0),
        "content_bytes": counts["bytes"],
        "closure_roots": record["roots"] if record else None,
    }
    if info is not None:
        data.update(format=info.format, compressor=info.compressor, block_size=info.block_size,
                    file_size=info.file_size, bytes_used=info.bytes_used,
                    mkfs_time=info.mkfs_time)
    return data


def render_inspect(data: dict[str, Any]) -> str:
    lines = [f"Image:             {data['image']}"]
    if data.get("portable_pretty_name"):
        lines.append(f"Portable service:  {data['portable_pretty_name']}")
    lines.append(f"Operating system:  {data.get('operating_system') or 'n/a'}")
    if data.get("format"):
        fmt = data["format"]
        if data.get("compressor"):
            fmt += f", {data['compressor']}, {human(data['block_size'] or 0)} blocks"
        lines.append(f"Format:            {fmt}")
    if data.get("file_size") is not None:
        lines.append(f"Size:              {human(data['file_size'])} "
                     f"({human(data['content_bytes'])} of file content)")
    else:
        lines.append(f"Content:           {human(data['content_bytes'])}")
    lines.append(f"Entries:           {data['files']} files, {data['folders']} folders, "
                 f"{data['symlinks']} symlinks")
    if data.get("mkfs_time") is not None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data["mkfs_time"]))
        lines.append(f"Made:              {stamp}")
    lines.append(f"os-release:        {data['os_release_path'] or 'missing'}")
    for key in OS_RELEASE_SHOWN:
        if key in data["os_release"]:
            lines.append(f"  {key}={data['os_release'][key]}")
    lines.append(f"Unit files (prefix {data['prefix']!r}):")
    if not data["units"]:
        lines.append("  none: portabled would refuse to attach this image")
    for u in data["units"]:
        note = "" if u["kind"] == "file" else f"  ({u['kind']}: see verify)"
        lines.append(f"  {u['name']}  {u['path']}{note}")
    if data.get("closure_roots"):
        lines.append("Closure roots:")
        for r in data["closure_roots"]:
            reason = f"  ({r['reason']})" if r.get("reason") else ""
            lines.append(f"  {r.get('path')}{reason}")
    return "\n".join(lines)


def cat_sources(fs: ImageFS, image: str) -> Iterator[tuple[str, str]]:
    """(path, text) of os-release and every unit file that would be attached."""
    os_path, _ = find_os_release(fs)
    if os_path is not None:
        yield os_path, read_text(fs, os_path) or ""
    for unit in attached_units(fs, image_prefix(image)):
        text = read_text(fs, unit.path)
        yield unit.path, text if text is not None else f"({unit.stat.kind}, not readable)\n"


def render_cat(fs: ImageFS, image: str) -> str:
    parts = []
    for path, text in cat_sources(fs, image):
        parts.append(f"# {path}\n{text}" + ("" if text.endswith("\n") else "\n"))
    return "\n".join(parts)


# -- ls and cat


def _lookup(fs: ImageFS, path: str) -> tuple[str, Stat]:
    if not path.startswith("/"):
        path = "/" + path
    real = resolve(fs, path)
    if real is None:
        raise ImageError(f"{path} is not in the image", "list its folder with ls to see what is")
    return real, fs.stat(real)


def ls_entries(fs: ImageFS, path: str, recursive: bool = False) -> list[tuple[str, Stat]]:
    """What ``ls`` lists: a folder's entries (with ``recursive``, every entry below it,
    named from the folder, as ``unsquashfs -lln``), or the one entry ``path`` names."""
    real, st = _lookup(fs, path)
    if st.kind != "dir":
        return [(posixpath.basename(real), st)]
    if recursive:  # one walk decodes each entry once; lookups would decode each path
        prefix = real.rstrip("/") + "/"
        return [(p[len(prefix):], s) for p, s in fs.walk() if p.startswith(prefix) and p != real]
    return [(name, fs.stat(posixpath.join(real, name))) for name in fs.listdir(real)]


def ls_lines(fs: ImageFS, path: str, long: bool, recursive: bool = False) -> list[str]:
    return [_ls_line(name, st, long) for name, st in ls_entries(fs, path, recursive)]


def _ls_line(name: str, st: Stat, long: bool) -> str:
    if not long:
        return name + ("/" if st.kind == "dir" else "")
    target = f" -> {st.target}" if st.kind == "symlink" and st.target is not None else ""
    return (f"{_mode_string(st.kind, st.mode)} {st.uid:>5} {st.gid:>5} {st.size:>10} "
            f"{_stamp(st.mtime)} {name}{target}")


# an image has few distinct modes and times: `ls -lR` of 65,000 entries formats each once
@functools.lru_cache(maxsize=4096)
def _stamp(mtime: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(mtime))


@functools.lru_cache(maxsize=4096)
def _mode_string(kind: str, mode: int) -> str:
    return Stat(kind, mode).mode_string()


def cat_file(fs: ImageFS, path: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A file's bytes in chunks (symlinks followed inside the image), so size is no limit."""
    real, st = _lookup(fs, path)
    if st.kind != "file":
        raise ImageError(f"{path} is a {st.kind}, not a file", "give the path of a file")
    stream = getattr(fs, "stream", None)  # a squashfs image: blocks decoded in parallel
    if stream is not None:
        yield from stream(real)
        return
    for offset in range(0, st.size, chunk):
        yield fs.read(real, offset, min(chunk, st.size - offset))
