"""The .deb cache: a file is used only when its sha256 is the locked one.

Downloads go to a temporary name and are renamed into the cache after the hash
matched, so the cache holds only verified files; a cached file whose hash no
longer matches (a damaged disk, a tampered cache) fails the build instead of
being trusted or silently replaced.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from portable_service.builder.repo.apt import RepositoryError, sha256_file
from portable_service.builder.repo.lock import LockedPackage


def fetch_all(packages: tuple[LockedPackage, ...] | list[LockedPackage],
              url_of: Callable[[LockedPackage], str], cache: Path,
              say: Callable[[str], None] = lambda line: None) -> tuple[dict[str, Path], int]:
    """Package name -> its verified .deb in ``cache``; also how many were downloaded."""
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    fetched = 0
    for pkg in packages:
        path = cache / pkg.deb_name
        if path.exists():
            got = sha256_file(path)
            if got != pkg.sha256:
                raise RepositoryError(
                    f"cached {path} does not match portable.lock (sha256 {got[:16]}..., locked "
                    f"{pkg.sha256[:16]}...): the cache was changed",
                    f"delete it (rm {path}); the next build downloads and checks it again")
        else:
            _download(url_of(pkg), path, pkg)
            say(f"fetched {pkg.deb_name} ({pkg.size} bytes)")
            fetched += 1
        out[pkg.name] = path
    return out, fetched


def _download(url: str, path: Path, pkg: LockedPackage) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{pkg.deb_name}.", suffix=".part", dir=path.parent)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", None) or e
                raise RepositoryError(
                    f"cannot download {url}: {reason}",
                    "check the network; a version the mirror dropped is on snapshot.debian.org "
                    "(mirror = \"https://snapshot.debian.org/archive/debian/DATE\"), or run build "
                    "--update for the current one") from None
        if h.hexdigest() != pkg.sha256:
            raise RepositoryError(f"{url} does not match its signed hash (sha256 "
                                  f"{h.hexdigest()[:16]}..., expected {pkg.sha256[:16]}...)",
                                  "the mirror served another file; retry or use another mirror")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
