"""Cached Debian roots with systemd inside, made once with debootstrap and reused.

A root lives at ``<cache>/<suite>`` (default cache
``/var/cache/portable-service/roots``, or ``$PORTABLE_SERVICE_ROOTS``). It is
built in a ``.<suite>.partial-<pid>`` folder beside it and renamed into place
only when debootstrap succeeded and the stamp is written, so an interrupted
run never leaves a root that looks usable. Containers boot it with
``--volatile=overlay``: the cached root itself is never written to.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from portable_service.errors import ToolError
from portable_service.progress import QUIET, Reporter
from portable_service.run import find_tool, run

DEFAULT_CACHE = Path("/var/cache/portable-service/roots")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
STAMP = ".portable-service-root"
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "systemd-container")


@dataclass(frozen=True)
class Release:
    """A Debian release the harness boots."""

    suite: str
    version: str  # Debian's VERSION_ID
    systemd: int  # the systemd version it ships
    extra_packages: tuple[str, ...] = ()
    # systemd < 250 waits for udev to initialise a loop device before mounting it
    needs_udevd: bool = False

    @property
    def packages(self) -> tuple[str, ...]:
        return BASE_PACKAGES + self.extra_packages

    @property
    def stamp(self) -> str:
        return f"suite={self.suite}\npackages={','.join(self.packages)}\n"


RELEASES: dict[str, Release] = {
    r.suite: r
    for r in (
        Release("bullseye", "11", 247, extra_packages=("udev",), needs_udevd=True),
        Release("bookworm", "12", 252),
        Release("trixie", "13", 257),
    )
}
DEFAULT_RELEASE = "bookworm"


def get_release(suite: str) -> Release:
    try:
        return RELEASES[suite]
    except KeyError:
        raise ToolError(f"unknown release {suite!r}",
                        f"use one of: {', '.join(RELEASES)}") from None


def cache_dir() -> Path:
    return Path(os.environ.get("PORTABLE_SERVICE_ROOTS") or DEFAULT_CACHE)


def root_path(release: Release, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / release.suite


def is_ready(release: Release, cache: Path | None = None) -> bool:
    """A root counts only with a stamp naming the same suite and package list."""
    try:
        return (root_path(release, cache) / STAMP).read_text() == release.stamp
    except OSError:
        return False


def mirror_from_sources(text: str) -> str | None:
    """The first Debian archive URI in a deb822 sources file (not the security archive)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() != "URIs":
            continue
        for uri in value.split():
            if "security" not in uri:
                return uri.rstrip("/")
    return None


def mirror_from_list(text: str) -> str | None:
    """The first Debian archive URI in a one-line-style sources.list."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3 and words[0] == "deb":
            uris = [w for w in words[1:] if not w.startswith("[")]
            if uris and "security" not in uris[0]:
                return uris[0].rstrip("/")
    return None


def host_mirror() -> str:
    """The host's own Debian mirror ($PORTABLE_SERVICE_MIRROR wins), else deb.debian.org."""
    if os.environ.get("PORTABLE_SERVICE_MIRROR"):
        return os.environ["PORTABLE_SERVICE_MIRROR"].rstrip("/")
    candidates = [(Path("/etc/apt/sources.list.d/debian.sources"), mirror_from_sources),
                  (Path("/etc/apt/sources.list"), mirror_from_list)]
    for path, parse in candidates:
        with contextlib.suppress(OSError):
            found = parse(path.read_text(encoding="utf-8"))
            if found:
                return found
    return DEFAULT_MIRROR


def check_reachable(release: Release, mirror: str, timeout: float = 15) -> None:
    """Fail in seconds, not after a long debootstrap, when the mirror lacks the suite."""
    url = f"{mirror}/dists/{release.suite}/InRelease"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError as e:
        raise ToolError(f"the mirror {mirror} has no {release.suite} (HTTP {e.code} for {url})",
                        "set PORTABLE_SERVICE_MIRROR to a Debian mirror that carries it") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ToolError(f"cannot reach the Debian mirror {mirror}: {reason}",
                        "check the network, or set PORTABLE_SERVICE_MIRROR") from None


@contextlib.contextmanager
def _locked(cache: Path, suite: str) -> Iterator[None]:
    """One creator per suite at a time; the others wait and then reuse its root."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def mounts_below(path: Path) -> list[Path]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mountinfo."""
    prefix = str(path.resolve())
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Remove a (partial) root; debootstrap may have left /proc or /sys mounted in it."""
    for point in mounts_below(path):
        run(["umount", "--lazy", str(point)], check=False)
    if mounts_below(path):
        raise ToolError(f"cannot unmount everything below {path}",
                        f"unmount it by hand, then remove {path}")
    shutil.rmtree(path, ignore_errors=True)


def ensure_root(release: Release, reporter: Reporter = QUIET, cache: Path | None = None,
                mirror: str | None = None) -> Path:
    """The cached root for ``release``, created with debootstrap the first time."""
    cache = cache or cache_dir()
    final = root_path(release, cache)
    if is_ready(release, cache):
        return final
    debootstrap = find_tool("debootstrap", reason="to create the Debian root systemd boots from")
    mirror = mirror or host_mirror()
    check_reachable(release, mirror)
    with _locked(cache, release.suite):
        if is_ready(release, cache):  # another process made it while we waited
            return final
        for stale in cache.glob(f".{release.suite}.partial-*"):
            remove_tree(stale)
        if final.exists():  # an outdated root (other package list): replace it
            remove_tree(final)
        partial = cache / f".{release.suite}.partial-{os.getpid()}"
        reporter.info(f"creating the Debian {release.version} ({release.suite}) root in {final} "
                      f"from {mirror}: once, about a minute and 250 MB")
        start = time.monotonic()
        try:
            with reporter.step(f"debootstrap {release.suite} ({', '.join(release.packages)})"):
                run([debootstrap, "--variant=minbase", f"--include={','.join(release.packages)}",
                     release.suite, partial, mirror], timeout=1800)
            (partial / STAMP).write_text(release.stamp)
            os.rename(partial, final)
        except BaseException:
            remove_tree(partial)
            raise
        reporter.info(f"root ready in {time.monotonic() - start:.0f} s")
    return final
