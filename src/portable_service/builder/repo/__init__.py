"""Pinned builds: ``packages`` from a Debian repository and ``portable.lock``, not from the host.

With ``distribution`` and ``release`` set, the build

1. reads ``portable.lock`` beside the spec, or (first build, ``build --update``)
   resolves ``packages`` with apt in a private state folder (:mod:`.apt`),
   checking the InRelease signature with the archive keyring and the Packages
   hashes, and writes the lock (:mod:`.lock`);
2. takes each locked .deb from the cache (``$XDG_CACHE_HOME/portable-service/debs``),
   downloading only what is missing, each checked against its locked sha256 (:mod:`.fetch`);
3. unpacks them into a private root, without maintainer scripts or root (:mod:`.unpack`);
4. runs the usual closure against that root (``closure.resolve(..., root=)``): the
   package rules read the root's dpkg database (written from the packages' control
   files), the ELF loader model, ``#!`` interpreters and symlinks resolve in the root
   (its libraries, its loader), not on the build host. So a pinned image carries what a
   host build of the same packages would: the named packages whole, of their
   dependencies what the programs load and run.

The image is then a function of the spec, the lock file and the units: the same on
any machine (byte for byte, ``tests/e2e/test_pinned.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from portable_service.builder.closure.deb import DEFAULT_SKIP, effective
from portable_service.builder.repo import alternatives, apt, cacerts, fetch, unpack
from portable_service.builder.repo.lock import Lock, LockedPackage, Repository, Request, read_lock
from portable_service.builder.spec import Spec
from portable_service.errors import SpecError
from portable_service.progress import QUIET, Reporter
from portable_service.rules import debian

DISTRIBUTIONS = ("debian",)


def check_pinned(spec: Spec) -> None:
    if spec.distribution is None or spec.release is None:
        raise SpecError("a pinned build needs both distribution and release",
                        'set e.g. distribution = "debian" and release = "bookworm"')
    if spec.distribution not in DISTRIBUTIONS:
        raise SpecError(f"distribution {spec.distribution!r} is not supported",
                        f"use one of: {', '.join(DISTRIBUTIONS)}")
    arch = spec.architecture or debian.host_dpkg_arch()
    if arch not in debian.SYSTEMD_ARCH:
        raise SpecError(f"architecture {arch!r} is not a Debian architecture this tool knows",
                        f"use one of: {', '.join(sorted(debian.SYSTEMD_ARCH))}")
    if not spec.packages:
        raise SpecError("a pinned build (release set) needs packages",
                        'name the Debian packages to ship, e.g. packages = ["lighttpd"]')
    if spec.mirror is not None and not spec.mirror.startswith(("http://", "https://", "file:/")):
        raise SpecError(f"mirror {spec.mirror!r} is not an http(s) or file URL",
                        'e.g. mirror = "http://deb.debian.org/debian"')


def source_of(spec: Spec) -> apt.Source:
    assert spec.distribution is not None and spec.release is not None
    return apt.Source(
        distribution=spec.distribution, release=spec.release,
        architecture=spec.architecture or debian.host_dpkg_arch(),
        mirror=(spec.mirror or apt.host_mirror()).rstrip("/"),
        keyring=spec.keyring or Path(debian.ARCHIVE_KEYRING),
        security_mirror=(spec.security_mirror
                         or apt.host_mirror("/debian-security", debian.SECURITY_MIRROR)).rstrip("/"))


def request_of(spec: Spec) -> Request:
    """What apt resolves: the spec's packages and what the run-time rules need of the release."""
    return Request((*spec.packages, *_runtime_packages(spec)),
                   effective(spec.skip_packages, DEFAULT_SKIP))


@dataclass(frozen=True)
class Pinned:
    """A prepared pinned build: the root to build from and what it was made of."""

    lock: Lock
    root: Path
    owners: dict[str, str]  # image path -> package
    copyright: dict[str, bytes]  # package -> its copyright file
    spec: Spec  # the spec the closure runs with (the root as contents, os-release)
    fetched: int  # .deb files downloaded this time


def lock_for(spec: Spec, update: bool, state: Path, reporter: Reporter = QUIET) -> Lock:
    """The lock the build uses: read, or resolved and written (first build, ``--update``)."""
    source, request = source_of(spec), request_of(spec)
    assert spec.lock_file is not None
    lock = None if update else read_lock(spec.lock_file)
    if lock is not None:
        probe = Repository(source.distribution, source.mirror, source.release, "", "",
                           source.architecture, "")
        why = lock.matches(probe, request)
        added = sorted(set(request.packages) - set(spec.packages) - set(lock.request.packages))
        if why is not None and added:
            why += f" (of those, {', '.join(added)} for the run-time rules)"
        if why is not None:
            raise SpecError(f"{spec.lock_file} does not answer this spec: {why}",
                            "run build --update to resolve the packages again")
        return lock
    if not source.keyring.is_file():
        raise SpecError(f"keyring {source.keyring} does not exist",
                        "apt-get install debian-archive-keyring, or set keyring to the right file")
    with reporter.step(f"resolving {', '.join(request.packages)} in {source.distribution} "
                       f"{source.release} ({source.architecture}) with apt"):
        repository, packages = apt.resolve(source, request.packages, request.skip_packages,
                                           state / source.key)
    lock = Lock(repository, request, tuple(packages))
    _write(spec.lock_file, lock.render())
    reporter.info(f"wrote {spec.lock_file} ({len(packages)} packages)")
    return lock


def _runtime_packages(spec: Spec) -> tuple[str, ...]:
    """Packages the run-time rules (closure/runtime.py) need from the release: the user
    database module for services (the dynamic user), unless the spec opts out, the
    C.UTF-8 locale, the CA certificates, the time zones when a unit names one, every
    compiled locale when a unit names another than C.UTF-8. Only what the rules reach of
    them is shipped."""
    from portable_service.builder.closure import excluded
    from portable_service.builder.closure.runtime import (
        NSS_SYSTEMD,
        locale_requests,
        needs_locales,
        zone_requests,
    )
    from portable_service.builder.units import load_units

    services = any(u.name.endswith(".service") for u in spec.units)
    opted_out = excluded(PurePosixPath("/usr/lib") / NSS_SYSTEMD, spec.exclude) or any(
        p.endswith(NSS_SYSTEMD) for p in spec.exclude)
    extra = []
    if services and not opted_out and debian.NSS_PACKAGE not in spec.packages:
        extra.append(debian.NSS_PACKAGE)
    # C.UTF-8 for every image with glibc: the release's, which a locale of another glibc is not
    if debian.LOCALE_PACKAGE not in spec.packages:
        extra.append(debian.LOCALE_PACKAGE)
    # the trust store, should a TLS library be reached (not known before the closure runs)
    if debian.CA_PACKAGE not in spec.packages:
        extra.append(debian.CA_PACKAGE)
    units = load_units(spec)
    if debian.TZ_PACKAGE not in spec.packages and any(next(zone_requests(u), None)
                                                       for u in units):
        extra.append(debian.TZ_PACKAGE)
    if debian.LOCALES_PACKAGE not in spec.packages and any(
            needs_locales(value) for u in units for value, _ in locale_requests(u)):
        extra.append(debian.LOCALES_PACKAGE)
    return tuple(extra)


def prepare(spec: Spec, workdir: Path, update: bool = False, reporter: Reporter = QUIET) -> Pinned:
    """Lock, fetch and unpack; the root is made in ``workdir`` (the caller removes it)."""
    cache = apt.cache_home()
    lock = lock_for(spec, update, cache / "apt", reporter)
    with reporter.step(f"fetching {len(lock.packages)} packages into {cache / 'debs'}"):
        debs, fetched = fetch.fetch_all(lock.packages, lambda p: download_url(spec, lock, p),
                                        cache / "debs", reporter.info)
    root = workdir / "root"
    with reporter.step(f"unpacking {len(debs)} packages into a private root"):
        unpacked = unpack.unpack(debs, root, docs=spec.package_docs)
        cacerts.make_store(root, unpacked.owners)
        alternatives.make_links(debs, root)
    closure_spec = replace(spec, os_release=(*os_release(lock.repository), *spec.os_release))
    return Pinned(lock, root, unpacked.owners, unpacked.copyright, closure_spec, fetched)


def download_url(spec: Spec, lock: Lock, pkg: LockedPackage) -> str:
    """Where a locked package is fetched: its archive, or the spec's mirror in its place."""
    base = pkg.archive or lock.repository.mirror
    if spec.mirror and base == lock.repository.mirror:
        base = spec.mirror
    elif spec.security_mirror and base != lock.repository.mirror:
        base = spec.security_mirror
    return f"{base.rstrip('/')}/{pkg.filename}"


def os_release(repo: Repository) -> tuple[tuple[str, str], ...]:
    """The image's os-release says what its files are: the release's, not the build host's."""
    major = repo.version.split(".", 1)[0]
    name = "Debian GNU/Linux"
    pretty = f"{name} {major} ({repo.codename})" if major else f"{name} {repo.codename}"
    fields = [("ID", repo.distribution), ("PRETTY_NAME", pretty),
              ("VERSION_CODENAME", repo.codename),
              ("ARCHITECTURE", debian.SYSTEMD_ARCH.get(repo.architecture, repo.architecture))]
    if major:
        fields.insert(1, ("VERSION_ID", major))
    return tuple(fields)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        raise SpecError(f"cannot write {path}: {e.strerror}", "check the folder's permissions") from None
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = ["Lock", "LockedPackage", "Pinned", "check_pinned", "lock_for", "prepare"]
