"""Resolve ``packages`` against a Debian repository with apt itself, unprivileged.

apt runs in a private state folder (its own sources.list, lists, cache and an
empty dpkg status): nothing of the host's apt or dpkg state is read or
changed, and no root is needed. apt answers for a fresh root; the closure's own
package selection then drops what only ``skip-packages`` need (:func:`_prune`).

A release is read with its ``-updates`` and ``-security`` suites
(:func:`rules.debian.suites`), as a Debian system's sources.list names them, so
a pinned image carries the security fixes the archive has.

The chain of trust is checked here too, not only inside apt: each suite's
InRelease signature with the archive keyring (gpgv), its Packages file against
the signed hashes; the .deb files against the Packages hashes (fetch.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from portable_service.builder.repo.lock import LockedPackage, Repository
from portable_service.errors import ClosureError, PortableServiceError, ToolError
from portable_service.rules import debian
from portable_service.run import run


class RepositoryError(ClosureError):
    """The repository cannot be trusted or read: signature, checksum, network."""


@dataclass(frozen=True)
class Source:
    """Where packages come from, as the spec says it."""

    distribution: str
    release: str
    architecture: str
    mirror: str
    keyring: Path
    security_mirror: str = debian.SECURITY_MIRROR

    @property
    def suites(self) -> list[tuple[str, str]]:
        return debian.suites(self.release, self.mirror, self.security_mirror)

    @property
    def key(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", self.mirror.split("://", 1)[-1]).strip("_")
        where = hashlib.sha256(f"{self.mirror} {self.security_mirror}".encode()).hexdigest()[:8]
        return f"{slug}_{self.release}_{self.architecture}_{where}"


def cache_home() -> Path:
    """``$PORTABLE_SERVICE_CACHE``, else ``$XDG_CACHE_HOME/portable-service``, else ~/.cache/..."""
    explicit = os.environ.get("PORTABLE_SERVICE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "portable-service"


def host_mirror(suffix: str = "/debian", default: str = debian.DEFAULT_MIRROR) -> str:
    """The first Debian mirror the host's apt sources name, else deb.debian.org
    (``suffix="/debian-security"``: its security archive)."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    for text in texts:
        for m in re.finditer(r"(?m)^\s*(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+)", text):
            uri = m.group(1).rstrip("/")
            if uri.startswith(("http://", "https://")) and uri.endswith(suffix):
                return uri
    return default


class AptState:
    """A private apt: its folder, its options, and the files it downloaded."""

    def __init__(self, source: Source, folder: Path) -> None:
        self.source, self.folder = source, folder
        for sub in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d",
                    "etc/apt/trusted.gpg.d", "lists/partial", "archives/partial", "dpkg", "log"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        comps = " ".join(debian.COMPONENTS)
        (folder / "etc/apt/sources.list").write_text("".join(
            f"deb [arch={source.architecture} signed-by={source.keyring}] {archive} {suite} {comps}\n"
            for archive, suite in source.suites))

    def options(self) -> list[str]:
        f, arch = self.folder, self.source.architecture
        opts = {
            "Dir": "/", "Dir::Etc": f / "etc/apt", "Dir::Etc::sourcelist": f / "etc/apt/sources.list",
            "Dir::Etc::sourceparts": f / "etc/apt/sources.list.d",
            "Dir::Etc::parts": f / "etc/apt/apt.conf.d",
            "Dir::Etc::preferencesparts": f / "etc/apt/preferences.d",
            "Dir::Etc::trustedparts": f / "etc/apt/trusted.gpg.d",
            "Dir::State": f, "Dir::State::lists": f / "lists",
            "Dir::State::status": f / "dpkg/status", "Dir::Cache": f,
            "Dir::Cache::archives": f / "archives", "Dir::Log": f / "log",
            "APT::Architecture": arch, "APT::Architectures": arch,
            "APT::Install-Recommends": "false", "APT::Install-Suggests": "false",
            "APT::Get::List-Cleanup": "false", "APT::Sandbox::User": _user(),
            "Acquire::Languages": "none", "Acquire::GzipIndexes": "false",
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled": "false",
            "Acquire::Retries": "3", "Debug::NoLocking": "true",
            "pkgCacheGen::Essential": "none",
        }
        return [f"-o{k}={v}" for k, v in opts.items()]

    def apt(self, *args: str) -> bytes:
        # APT_CONFIG=/dev/null: the host's apt.conf (proxies aside, which come from the
        # environment) must not change what resolves
        proc = run(["apt-get", "-q", *self.options(), *args], check=False,
                   env={"APT_CONFIG": "/dev/null", "DEBIAN_FRONTEND": "noninteractive"})
        if proc.returncode != 0:
            raise _apt_error(proc.stderr.decode("utf-8", "replace") + proc.stdout.decode(
                "utf-8", "replace"), self.source)
        return proc.stdout

    def update(self) -> None:
        self.apt("update")

    def empty_status(self) -> None:
        """An empty dpkg status: apt resolves as for a fresh root; what the spec's
        ``skip-packages`` pull in is dropped afterwards (:func:`_prune`)."""
        (self.folder / "dpkg/status").write_text("")

    def index_files(self, archive: str, suite: str) -> tuple[Path, list[tuple[str, Path]]]:
        """A suite's InRelease file and the Packages files apt fetched: (signed-path, file)."""
        lists = self.folder / "lists"
        prefix = re.sub(r"[^A-Za-z0-9.-]", "_", archive.split("://", 1)[-1].rstrip("/"))
        inrelease = lists / f"{prefix}_dists_{suite}_InRelease"
        if not inrelease.exists():
            raise RepositoryError(f"{archive} has no signed InRelease file for {suite}",
                                  "check release and mirror (a Release.gpg-only mirror is not supported)")
        packages = []
        for comp in debian.COMPONENTS:
            name = f"{comp}/binary-{self.source.architecture}/Packages"
            path = lists / f"{prefix}_dists_{suite}_{comp}_binary-{self.source.architecture}_Packages"
            if path.exists():
                packages.append((name, path))
        if not packages and suite == self.source.release:
            raise RepositoryError(f"{archive} {suite} has no packages for "
                                  f"{self.source.architecture}", "check architecture and release")
        return inrelease, packages

    def resolve(self, names: tuple[str, ...]) -> list[tuple[str, str, int]]:
        """(url, .deb file name, size) of every package apt would install, sorted; the
        hashes are taken from the signed Packages files, not from this output."""
        out = self.apt("install", "--print-uris", "-qq", "-y", "--no-install-recommends", *names)
        found = []
        for line in out.decode("utf-8", "replace").splitlines():
            m = re.match(r"^'([^']+)' (\S+) (\d+)( \S+)?$", line.strip())
            if m:
                url = urllib.parse.unquote(m.group(1))
                found.append((url, url.rsplit("/", 1)[-1], int(m.group(3))))
        return sorted(found, key=lambda t: t[1])


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _apt_error(text: str, source: Source) -> PortableServiceError:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    sig = next((ln for ln in lines if "signature" in ln.lower() or "NO_PUBKEY" in ln
                or "not signed" in ln), None)
    if sig is not None:
        return RepositoryError(
            f"the Release file of {source.mirror} {source.release} is not signed by a key of "
            f"{source.keyring}: {sig.removeprefix('W: ').removeprefix('E: ')}",
            "check the mirror; install or update debian-archive-keyring, or name the right keyring")
    missing = next((ln for ln in lines if "Unable to locate package" in ln
                    or "has no installation candidate" in ln), None)
    if missing is not None:
        return ClosureError(f"{source.distribution} {source.release} ({source.architecture}): "
                            f"{missing.removeprefix('E: ')}",
                            "check the package name (apt-cache search NAME on a machine of that release)")
    errors = [ln.removeprefix("E: ") for ln in lines if ln.startswith("E: ")]
    fetch = next((ln for ln in lines if ln.startswith(("Err:", "W: Failed to fetch"))), None)
    message = errors[0] if errors else (fetch or (lines[-1] if lines else "apt-get failed"))
    if "does not have a Release file" in text or "404" in text:
        return RepositoryError(f"{source.mirror} has no release {source.release!r}: {message}",
                               "check release (bookworm, trixie, ...) and mirror")
    if "unmet dependencies" in text.lower() or "Broken" in text:
        detail = next((ln for ln in lines if "Depends:" in ln), message)
        return ClosureError(f"apt cannot resolve the packages for {source.release}: {detail}",
                            "add the missing package to packages, or take it out of skip-packages")
    return ToolError(f"apt-get failed for {source.mirror} {source.release}: {message}",
                     "check the network and the mirror")


def verify_index(inrelease: Path, packages: list[tuple[str, Path]], keyring: Path,
                 source: Source, suite: str) -> tuple[str, dict[str, str]]:
    """Check the signature and the Packages hashes ourselves; the Release file's fields."""
    proc = run(["gpgv", "--keyring", keyring, "--output", "-", inrelease], check=False)
    if proc.returncode != 0:
        why = next((ln for ln in proc.stderr.decode("utf-8", "replace").splitlines()
                    if "Can't check" in ln or "BAD" in ln or "no valid" in ln.lower()),
                   "no good signature")
        raise RepositoryError(f"the Release file (InRelease) of {source.mirror} {suite} has "
                              f"no good signature from {keyring}: {why.removeprefix('gpgv: ')}",
                              "check the mirror; install or update debian-archive-keyring")
    text = proc.stdout.decode("utf-8", "replace")
    fields, hashes = _release_fields(text)
    for name, path in packages:
        want = hashes.get(name)
        if want is None:
            raise RepositoryError(f"the signed Release file of {suite} lists no {name}",
                                  "check the mirror")
        got = sha256_file(path)
        if got != want:
            raise RepositoryError(f"{name} of {source.mirror} {suite} does not match the "
                                  f"signed Release file (sha256 {got[:16]}..., signed {want[:16]}...)",
                                  "the mirror is inconsistent or tampered with; retry later or use another")
    return hashlib.sha256(inrelease.read_bytes()).hexdigest(), fields


def _release_fields(text: str) -> tuple[dict[str, str], dict[str, str]]:
    fields: dict[str, str] = {}
    hashes: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith(" ") and section == "SHA256":
            parts = line.split()
            if len(parts) == 3:
                hashes[parts[2]] = parts[0]
        elif ":" in line and not line.startswith(" "):
            key, value = line.split(":", 1)
            section = key
            fields[key] = value.strip()
    return fields, hashes


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def stanzas(path: Path) -> Iterator[dict[str, str]]:
    """The stanzas of a Packages file (continuation lines joined)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        fields: dict[str, str] = {}
        key = None
        for line in f:
            line = line.rstrip("\n")
            if not line:
                if fields:
                    yield fields
                fields, key = {}, None
            elif line[0] in " \t" and key is not None:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields:
            yield fields


def _prune(resolved: list[dict[str, str]], names: tuple[str, ...], skip: tuple[str, ...],
           arch: str) -> set[str]:
    """Of apt's answer, the packages the host build would take: apt installs what
    ``skip-packages`` depend on too (systemd's libraries for libnss-systemd); the
    closure's own selection (:func:`closure.deb.select`) drops what only they need."""
    from portable_service.builder.closure.deb import Database, parse_status, select

    text = "\n".join("".join(f"{k}: {v}\n" for k, v in st.items()) + "Status: install ok installed\n"
                     for st in resolved)
    db = Database(parse_status(text), native_arch=arch)
    warnings: list[str] = []
    return {sel.package.name for sel in select(db, names, skip, warnings)}


def resolve(source: Source, names: tuple[str, ...], skip: tuple[str, ...],
            state: Path) -> tuple[Repository, list[LockedPackage]]:
    """apt's answer for ``names`` on ``source``, checked against the signed metadata."""
    apt = AptState(source, state)
    apt.empty_status()
    apt.update()
    index: dict[str, dict[str, str]] = {}  # URL of a .deb -> the fields a lock needs
    wanted = ("Package", "Version", "Architecture", "SHA256", "Size", "Filename", "Source",
              "Homepage", "Depends", "Pre-Depends", "Provides", "Installed-Size")
    signed: dict[str, str] = {}  # suite -> sha256 of its InRelease file
    fields: dict[str, str] = {}
    for archive, suite in source.suites:
        inrelease, packages = apt.index_files(archive, suite)
        signed[suite], suite_fields = verify_index(inrelease, packages, source.keyring, source, suite)
        if suite == source.release:
            fields = suite_fields
        for _, path in packages:
            for st in stanzas(path):
                index[f"{archive.rstrip('/')}/{st.get('Filename', '')}"] = \
                    {**{k: st[k] for k in wanted if k in st}, "archive": archive.rstrip("/")}
    uris = apt.resolve(names)
    by_url = {u[0]: u for u in uris}
    chosen = _prune([index[u] for u in sorted(by_url) if u in index], names, skip,
                    source.architecture)
    locked: list[LockedPackage] = []
    for url in sorted(by_url):
        st = index.get(url, {})
        fname = os.path.basename(url)
        if st:
            by_url.pop(url)
            if st["Package"] not in chosen:
                continue
            if "SHA256" not in st:
                raise RepositoryError(f"the Packages file lists no SHA256 for {fname}",
                                      "use a mirror that does (every Debian mirror does)")
            src = st.get("Source", st["Package"])
            src_name, _, src_version = src.partition(" ")
            locked.append(LockedPackage(
                name=st["Package"], version=st["Version"], architecture=st["Architecture"],
                sha256=st["SHA256"], size=int(st.get("Size", "0")), filename=st["Filename"],
                source=src_name, source_version=src_version.strip("()") or st["Version"],
                homepage=st.get("Homepage", ""), archive=st["archive"]))
    if by_url:
        raise RepositoryError(f"apt chose {', '.join(sorted(by_url))}, which the signed Packages "
                              "files do not list", "clear the cache and retry")
    repo = Repository(distribution=source.distribution, mirror=source.mirror,
                      release=source.release, codename=fields.get("Codename", source.release),
                      version=fields.get("Version", ""), architecture=source.architecture,
                      inrelease_sha256=signed[source.release],
                      suites=" ".join(f"{s}={signed[s]}" for _, s in source.suites))
    return repo, sorted(locked, key=lambda p: p.name)
