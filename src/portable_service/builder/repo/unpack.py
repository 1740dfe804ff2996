"""Unpack .deb files into a private root: no maintainer scripts, no root, no dpkg database.

``dpkg-deb --fsys-tarfile`` gives the data archive; the members are written
here, so a member can neither climb out of the root (``..``, a path through a
symlink that leaves it) nor bring a device node. The root is merged-/usr as
Debian 12 and later install it (``rules.debian.MERGED_USR``): a package's
``/lib/x`` lands in ``/usr/lib/x``. Documentation and unit files are left
packed (the host closure's rules, ``closure.deb.is_doc``/``is_unit``); each
package's copyright file is kept aside for the SBOM.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from portable_service.builder.closure.deb import is_doc, is_unit
from portable_service.builder.repo.apt import RepositoryError
from portable_service.rules import debian
from portable_service.run import run


@dataclass
class Unpacked:
    """The root and what each path in it came from."""

    root: Path
    owners: dict[str, str] = field(default_factory=dict)  # image path -> package
    copyright: dict[str, bytes] = field(default_factory=dict)  # package -> copyright file
    left_out: dict[str, int] = field(default_factory=dict)  # what was not unpacked, counted
    listing: dict[str, list[str]] = field(default_factory=dict)  # package -> its paths (dpkg's .list)


def make_root(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "usr").mkdir(exist_ok=True)
    for name in debian.MERGED_USR:
        if name in ("lib32", "libx32"):
            continue  # only multilib systems have them; a package that ships one makes it
        (root / "usr" / name).mkdir(exist_ok=True)
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"usr/{name}")


def image_path(member: str) -> PurePosixPath | None:
    """The absolute, merged-/usr path of a tar member; None for the root itself."""
    parts = [p for p in member.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"{member!r} climbs out of the root")
    if not parts:
        return None
    if parts[0] in debian.MERGED_USR:
        parts = ["usr", *parts]
    return PurePosixPath("/", *parts)


def unpack(debs: dict[str, Path], root: Path, docs: bool = False) -> Unpacked:
    make_root(root)
    out = Unpacked(root)
    dir_modes: dict[Path, int] = {}
    for name in sorted(debs):
        data = run(["dpkg-deb", "--fsys-tarfile", debs[name]]).stdout
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for member in tar:
                    _extract(tar, member, name, out, docs, dir_modes)
        except (tarfile.TarError, ValueError) as e:
            raise RepositoryError(f"{debs[name].name} cannot be unpacked: {e}",
                                  f"delete it from the cache ({debs[name]}) and build again") from None
    write_dpkg_database(debs, out)
    for path, mode in sorted(dir_modes.items(), reverse=True):
        os.chmod(path, mode)
    return out


# the fields of a package's control file the closure's package rules read (closure/deb.py)
STATUS_FIELDS = ("Package", "Architecture", "Version", "Source", "Installed-Size", "Pre-Depends",
                 "Depends", "Provides", "Multi-Arch")


def write_dpkg_database(debs: dict[str, Path], out: Unpacked) -> None:
    """The root's /var/lib/dpkg as dpkg would leave it (status, info/NAME.list), so the
    closure's package rules (closure/deb.py) read the root as they read the host."""
    admin = out.root / "var/lib/dpkg"
    (admin / "info").mkdir(parents=True, exist_ok=True)
    stanzas = []
    for name in sorted(debs):
        text = run(["dpkg-deb", "-f", debs[name], *STATUS_FIELDS]).stdout.decode("utf-8", "replace")
        fields = {}
        for line in text.splitlines():
            key, sep, value = line.partition(": ")
            if sep and key in STATUS_FIELDS:
                fields[key] = value
        fields["Status"] = "install ok installed"
        stanzas.append("".join(f"{k}: {v}\n" for k, v in fields.items()))
        (admin / "info" / f"{name}.list").write_text(
            "/.\n" + "".join(f"{p}\n" for p in out.listing.get(name, [])))
    (admin / "status").write_text("\n".join(stanzas))


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, package: str, out: Unpacked,
             docs: bool, dir_modes: dict[Path, int]) -> None:
    path = image_path(member.name)
    if path is None:
        return
    text = str(path)
    if text == f"/usr/share/doc/{package}/copyright" and member.isfile():
        f = tar.extractfile(member)
        if f is not None:
            out.copyright[package] = f.read()
    if (not docs and is_doc(text)) or is_unit(text):
        out.left_out["documentation" if is_doc(text) else "unit files"] = \
            out.left_out.get("documentation" if is_doc(text) else "unit files", 0) + 1
        return
    dest = out.root / text.lstrip("/")
    _check_inside(out.root, dest.parent)
    mode = owned_mode(stat.S_IMODE(member.mode), member.uid, member.gid)
    if member.isdir():
        out.listing.setdefault(package, []).append(text)
        if dest.is_symlink():
            return  # a merged-/usr link (or a package's own link) stands for the folder
        dest.mkdir(parents=True, exist_ok=True)
        os.chmod(dest, mode | 0o700)  # we must write into it; the real mode is set at the end
        dir_modes[dest] = mode
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        if dest.is_dir() and not dest.is_symlink():
            raise ValueError(f"{text} is a folder in one package and a file in {package}")
        dest.unlink()
    if member.issym():
        os.symlink(member.linkname, dest)
    elif member.islnk():
        target = image_path(member.linkname)
        if target is None:
            raise ValueError(f"hard link {member.name!r} to the root")
        source = out.root / str(target).lstrip("/")
        _check_inside(out.root, source.parent)  # a hard link must not bring in a host file
        os.link(source, dest)
    elif member.isfile():
        f = tar.extractfile(member)
        assert f is not None
        with open(dest, "wb") as w:
            while chunk := f.read(1 << 20):
                w.write(chunk)
        os.chmod(dest, mode)
    else:
        out.left_out["device nodes and fifos"] = out.left_out.get("device nodes and fifos", 0) + 1
        return
    out.owners[text] = package
    out.listing.setdefault(package, []).append(text)


def owned_mode(mode: int, uid: int, gid: int) -> int:
    """The mode the image gives a member owned by a package's user or group (``/var/log/
    lighttpd`` is ``0750 www-data``): the root's copy is the build user's, so the owner is
    applied here as :func:`builder.layout.place` applies a host file's owner."""
    from portable_service.builder.layout import readable_by_others

    if uid != 0:
        mode &= ~stat.S_ISUID
    if gid != 0:
        mode &= ~stat.S_ISGID
    return mode | readable_by_others(mode, uid, gid)


def _check_inside(root: Path, folder: Path) -> None:
    """A folder to write into must stay inside the root (a package's symlink may not lead out)."""
    real = os.path.realpath(folder)
    base = os.path.realpath(root)
    if real != base and not real.startswith(base + "/"):
        raise ValueError(f"{folder.relative_to(root)} leads out of the root through a symlink")
