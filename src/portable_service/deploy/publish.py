"""publish: keep a download folder that systemd-sysupdate (url-file sources) reads.

The folder holds ``<pname>_<version>.raw`` (and its verity sidecars), a ``SHA256SUMS`` that
names every file in it, sorted, in sha256sum's format, and optionally ``SHA256SUMS.gpg``.
A host may read it at any moment, so the order of writes is the guarantee:

1. every new file is copied under a hidden temporary name (hashed while copied) and synced;
2. nothing is renamed before every check passed (a different image under a version already
   published, a version sysupdate cannot see, one that pruning would drop at once): an error
   leaves the folder as it was;
3. the new files get their names (no manifest names them yet, so no reader asks for them);
4. the new manifest (and its signature) replace the old ones by rename;
5. only then are pruned files deleted, so the manifest never names a missing file.

Publishing the same image again changes nothing (idempotent). One publisher at a time
(a lock file in the folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path
from typing import Any

from portable_service.errors import PortableServiceError
from portable_service.progress import QUIET, Reporter
from portable_service.rules import sysupdate
from portable_service.rules.portabled import image_prefix
from portable_service.rules.verity import SIDECAR_SUFFIXES as VERITY_SIDECARS
from portable_service.rules.verity import sidecar_names
from portable_service.run import find_tool, run

LOCK = ".publish.lock"
TEMP_PREFIX = ".#publish-"
SUFFIXES = (".raw", *VERITY_SIDECARS)
_CHUNK = 1 << 20


class PublishError(PortableServiceError):
    """The download folder cannot take these images as they are."""


@dataclass(frozen=True)
class ImageRelease:
    """One image version to publish: the image and the sidecars found beside it."""

    pname: str
    version: str
    sources: tuple[Path, ...]  # the .raw first


@dataclass(frozen=True)
class Signer:
    """Who signs SHA256SUMS: a gpg key (id, fingerprint or user id) and its gpg home."""

    key: str
    homedir: Path | None = None


@dataclass(frozen=True)
class PublishResult:
    folder: Path
    added: tuple[str, ...]
    unchanged: tuple[str, ...]
    pruned: tuple[str, ...]
    manifest: tuple[tuple[str, str], ...]  # (name, sha256), sorted by name
    signed: bool


def release_of(image: Path) -> ImageRelease:
    """pname and version from the file name (what portabled and sysupdate go by)."""
    name = image.name
    if not name.endswith(".raw"):
        raise PublishError(f"{image} is not named <pname>_<version>.raw",
                           "publish the image 'portable-service build' wrote (result/)")
    stem = name.removesuffix(".raw")
    pname, sep, version = stem.partition("_")
    if not sep or not pname or pname != image_prefix(name):
        raise PublishError(f"{name} has no '_' between pname and version",
                           "hosts find versions as <pname>_<version>.raw: rename it so")
    problem = sysupdate.version_problem(version, SUFFIXES)
    if problem:
        raise PublishError(f"the version {version!r} of {name} cannot be published: {problem}",
                           "build it with a version made of letters, digits and . , _ - +")
    if not image.is_file():
        raise PublishError(f"{image} is not a file" if image.exists() else f"{image} does not exist",
                           "give the path of a built image")
    sidecars = [image.with_name(n) for n in sidecar_names(name)]
    return ImageRelease(pname, version, (image, *[s for s in sidecars if s.is_file()]))


def version_of(name: str, pname: str) -> str | None:
    """The version of a file of ``pname`` in the folder (image or sidecar), else None."""
    if not name.startswith(pname + "_"):
        return None
    rest = name[len(pname) + 1:]
    # longest suffix first: NAME.roothash.p7s is not NAME.roothash
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if rest.endswith(suffix) and rest != suffix:
            version = rest[: -len(suffix)]
            return version if sysupdate.version_problem(version, SUFFIXES) is None else None
    return None


def newest_first(versions: Sequence[str]) -> list[str]:
    return sorted(versions, key=cmp_to_key(sysupdate.strverscmp_improved), reverse=True)


def read_manifest(folder: Path) -> dict[str, str]:
    path = folder / sysupdate.MANIFEST
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise PublishError(f"{path} is not UTF-8 text", "remove or repair it") from None
    try:
        return sysupdate.parse_manifest(text)
    except ValueError as e:
        raise PublishError(f"{path} is not a manifest systemd-sysupdate reads: {e}",
                           "remove or repair it, then publish again") from None


def render_manifest(entries: dict[str, str]) -> str:
    # sorted by the bytes of the name, as "sha256sum *" lists them in the C locale
    names = sorted(entries, key=lambda n: n.encode())
    return "".join(sysupdate.manifest_line(entries[n], n) for n in names)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _copy_hashed(source: Path, dest: Path) -> str:
    """Copy and hash the bytes in one read: the hash is of the bytes that were copied."""
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(dest, "xb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(dest, 0o644)
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(path, 0o644)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_signer(signer: Signer) -> Path:
    """gpg and a secret key for ``signer.key``, before anything is written."""
    gpg = find_tool("gpg", reason="to sign SHA256SUMS (--gpg-key)")
    proc = run([gpg, *_home(signer), "--batch", "--list-secret-keys", "--", signer.key],
               check=False)
    if proc.returncode != 0:
        where = f" in {signer.homedir}" if signer.homedir else ""
        raise PublishError(f"gpg has no secret key {signer.key!r}{where}",
                           "give the id, fingerprint or user id of a key 'gpg "
                           "--list-secret-keys' shows (--gpg-homedir for another keyring)")
    return gpg


def _home(signer: Signer) -> list[str]:
    return ["--homedir", str(signer.homedir)] if signer.homedir else []


def sign(gpg: Path, signer: Signer, manifest: Path, out: Path) -> None:
    """A detached binary signature, what systemd-pull hands to "gpg --verify SIG -"."""
    run([gpg, *_home(signer), "--batch", "--yes", "--no-tty", "--local-user", signer.key,
         "--detach-sign", "--output", out, manifest])


def publish(images: Sequence[Path], folder: Path, *, keep: int | None = None,
            signer: Signer | None = None, reporter: Reporter = QUIET) -> PublishResult:
    """Add ``images`` to the download folder (made if missing); see the module docstring."""
    if keep is not None and keep < 1:
        raise PublishError(f"--keep {keep}: at least the newest version must stay",
                           "give --keep 1 or more (2 lets hosts roll back to the one before)")
    releases = [release_of(Path(i)) for i in images]
    seen: dict[tuple[str, str], Path] = {}
    for r in releases:
        key = (r.pname, r.version)
        if key in seen and seen[key].resolve() != r.sources[0].resolve():
            raise PublishError(f"{seen[key]} and {r.sources[0]} are both {r.pname} {r.version}",
                               "publish one of them")
        seen[key] = r.sources[0]
    gpg = check_signer(signer) if signer else None
    if folder.exists() and not folder.is_dir():
        raise PublishError(f"{folder} is not a folder", "give --to a folder (made if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    with _locked(folder):
        for stale in folder.glob(TEMP_PREFIX + "*"):  # left by a publish that was killed
            stale.unlink(missing_ok=True)
        if signer is None and (folder / sysupdate.SIGNATURE).exists():
            raise PublishError(f"{folder} is signed ({sysupdate.SIGNATURE}); a new manifest "
                               "without a signature would not match it",
                               "give --gpg-key, or delete SHA256SUMS.gpg to stop signing")
        old = read_manifest(folder)
        missing = sorted(n for n in old if not (folder / n).is_file())
        for name in missing:
            reporter.warn(f"{folder / sysupdate.MANIFEST} names {name}, which is not there: "
                          "dropped from the manifest")
        entries = {n: h for n, h in old.items() if n not in missing}
        try:
            added, unchanged, staged = _stage(releases, folder, entries, temps, reporter)
            pruned = _prune(releases, entries, keep)
            for temp, name in staged:
                os.rename(temp, folder / name)  # not in any manifest yet: no reader asks
                temps.remove(temp)
            changed = bool(added or pruned or missing)
            signed = False
            if changed or not (folder / sysupdate.MANIFEST).exists():
                manifest_tmp = folder / f"{TEMP_PREFIX}{sysupdate.MANIFEST}-{os.getpid()}"
                temps.append(manifest_tmp)
                _write_synced(manifest_tmp, render_manifest(entries).encode())
                sig_tmp = folder / f"{TEMP_PREFIX}{sysupdate.SIGNATURE}-{os.getpid()}"
                if gpg is not None and signer is not None:
                    temps.append(sig_tmp)
                    sign(gpg, signer, manifest_tmp, sig_tmp)
                os.rename(manifest_tmp, folder / sysupdate.MANIFEST)
                temps.remove(manifest_tmp)
                if gpg is not None:
                    # a host reading between the two renames sees a signature of the old
                    # manifest: verification fails, it refuses and retries later
                    os.rename(sig_tmp, folder / sysupdate.SIGNATURE)
                    temps.remove(sig_tmp)
                    signed = True
                _sync_dir(folder)
            elif gpg is not None and signer is not None and \
                    not (folder / sysupdate.SIGNATURE).exists():
                sig_tmp = folder / f"{TEMP_PREFIX}{sysupdate.SIGNATURE}-{os.getpid()}"
                temps.append(sig_tmp)
                sign(gpg, signer, folder / sysupdate.MANIFEST, sig_tmp)
                os.rename(sig_tmp, folder / sysupdate.SIGNATURE)
                temps.remove(sig_tmp)
                signed = True
            for name in pruned:
                (folder / name).unlink(missing_ok=True)
            if pruned:
                _sync_dir(folder)
        finally:
            for temp in temps:
                temp.unlink(missing_ok=True)
    listing = tuple(sorted(entries.items(), key=lambda e: e[0].encode()))
    return PublishResult(folder, tuple(added), tuple(unchanged), tuple(pruned), listing,
                         signed or gpg is not None)


def _stage(releases: Sequence[ImageRelease], folder: Path, entries: dict[str, str],
           temps: list[Path], reporter: Reporter) -> tuple[list[str], list[str],
                                                           list[tuple[Path, str]]]:
    """Copy every new file under a temporary name; refuse a changed published one.

    Updates ``entries`` with the new files; returns (added, unchanged, [(temp, name)]).
    """
    added: list[str] = []
    unchanged: list[str] = []
    staged: list[tuple[Path, str]] = []
    for release in releases:
        published = _versions(entries, release.pname)
        for other in published:
            if other != release.version and \
                    sysupdate.strverscmp_improved(other, release.version) == 0:
                raise PublishError(f"{release.pname} {release.version} ranks equal to the "
                                   f"published {other}: systemd-sysupdate cannot tell them apart",
                                   "use a version that orders after it")
        names = [s.name for s in release.sources]
        for source in release.sources:
            temp = folder / f"{TEMP_PREFIX}{source.name}-{os.getpid()}"
            temps.append(temp)
            with reporter.step(f"copying {source.name}"):
                digest = _copy_hashed(source, temp)
            old = entries.get(source.name)
            if old is None:
                staged.append((temp, source.name))
                added.append(source.name)
                entries[source.name] = digest
                continue
            temps.remove(temp)
            temp.unlink()
            if old != digest:
                raise PublishError(
                    f"{source.name} is published already with other contents (sha256 "
                    f"{old[:12]}…, this one {digest[:12]}…): hosts that have {release.pname} "
                    f"{release.version} would never fetch it",
                    "give the new build a new version (portable-service build --version ...)")
            unchanged.append(source.name)
        # a sidecar published before but not beside the image now: the set would differ
        for name in [n for n in entries if version_of(n, release.pname) == release.version]:
            if name not in names and name not in added:
                raise PublishError(f"{name} is published for {release.pname} "
                                   f"{release.version}, but is not beside {release.sources[0]}",
                                   "publish the image with the same sidecars, or a new version")
        newest = newest_first([*published, release.version])[0]
        if newest != release.version and release.version not in published:
            reporter.warn(f"{release.pname} {release.version} is older than the published "
                          f"{newest}: hosts update only to the newest version")
    return added, unchanged, staged


def _versions(entries: dict[str, str], pname: str) -> list[str]:
    return sorted({v for n in entries if (v := version_of(n, pname)) is not None})


def _prune(releases: Sequence[ImageRelease], entries: dict[str, str],
           keep: int | None) -> list[str]:
    """Names to drop so that each published pname keeps its ``keep`` newest versions."""
    if keep is None:
        return []
    pruned: list[str] = []
    for pname in sorted({r.pname for r in releases}):
        ranked = newest_first(_versions(entries, pname))
        dropped = set(ranked[keep:])
        for r in releases:
            if r.pname == pname and r.version in dropped:
                raise PublishError(f"{pname} {r.version} is older than the {keep} newest "
                                   f"published versions ({', '.join(ranked[:keep])}): --keep "
                                   f"{keep} would remove it at once",
                                   "publish a newer version, or raise --keep")
        for name in sorted(entries, key=lambda n: n.encode()):
            if version_of(name, pname) in dropped:
                pruned.append(name)
    for name in pruned:
        del entries[name]
    return pruned


def render_result(result: PublishResult) -> list[str]:
    """What the verb prints: one line per file touched, then the folder (the last line)."""
    lines = [f"added {n}" for n in result.added]
    lines += [f"unchanged {n}" for n in result.unchanged]
    lines += [f"pruned {n}" for n in result.pruned]
    versions = sorted({posixpath.splitext(n)[0] for n, _ in result.manifest if n.endswith(".raw")})
    lines.append(f"{sysupdate.MANIFEST}: {len(result.manifest)} files ({', '.join(versions) or 'none'})"
                 + (f", signed ({sysupdate.SIGNATURE})" if result.signed else ""))
    lines.append(str(result.folder))
    return lines


def cmd_publish(args: Any) -> int:
    signer = Signer(args.gpg_key, Path(args.gpg_homedir) if args.gpg_homedir else None) \
        if args.gpg_key else None
    if args.gpg_homedir and not args.gpg_key:
        raise PublishError("--gpg-homedir without --gpg-key", "name the key to sign with")
    result = publish([Path(i) for i in args.images], Path(args.to), keep=args.keep,
                     signer=signer, reporter=Reporter(quiet=args.quiet))
    print("\n".join(render_result(result)))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("publish", help="add images to a download folder systemd-sysupdate reads",
                       description="Copy images (and their verity sidecars) into a download "
                       "folder with a sorted, complete SHA256SUMS (optionally signed), for hosts "
                       "that update with systemd-sysupdate (see host-config).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="<pname>_<version>.raw files")
    p.add_argument("--to", required=True, metavar="DIR", help="the download folder (made if missing)")
    p.add_argument("--keep", type=int, metavar="N",
                   help="keep only the N newest versions of each published pname (default: all)")
    p.add_argument("--gpg-key", metavar="KEY",
                   help="sign SHA256SUMS with this gpg key: writes SHA256SUMS.gpg (hosts verify it "
                   "with Verify=yes)")
    p.add_argument("--gpg-homedir", metavar="DIR", help="gpg home holding the key (default: gpg's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_publish)
