"""Debian packages: every file of an installed package and of its run-time dependencies.

Read from dpkg's database (``/var/lib/dpkg/status``, ``info/PKG.list``,
``diversions``). ``Depends`` and ``Pre-Depends`` are followed through
alternatives (``A | B``) and virtual packages (``Provides``) to what is
installed. Left out, because a portable service never runs them:

- packages on the skip list (:data:`DEFAULT_SKIP`, the spec's ``skip-packages``
  replaces it): they serve maintainer scripts or the host's init, and would
  bring systemd, perl and dpkg along. A dependency that one of them can
  satisfy is dropped as a whole (``systemd-sysv | lsb-base``);
- documentation, man pages, locales (:data:`DOC_PATHS`), unless the spec says
  ``package-docs = true``.

Of ``A | B`` with neither chosen yet, the lighter installed package is taken.
Real run-time needs of the files that are included (libraries, interpreters
of programs a unit runs) are then found by the ELF and script resolvers.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from portable_service.closure import Context, Node, present
from portable_service.errors import ClosureError
from portable_service.spec import Spec

ADMIN_DIR = Path("/var/lib/dpkg")
DEFAULT_SKIP: tuple[str, ...] = (
    "adduser", "cdebconf", "debconf", "debconf-2.0", "dpkg", "init-system-helpers",
    "install-info", "lsb-base", "systemd", "systemd-sysv", "sysvinit-utils", "ucf",
)
DOC_PATHS: tuple[str, ...] = (
    "/usr/share/doc", "/usr/share/man", "/usr/share/locale", "/usr/share/info", "/usr/share/lintian",
)
_DPKG_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "i386": "i386",
              "armv7l": "armhf", "riscv64": "riscv64", "ppc64le": "ppc64el", "s390x": "s390x"}
_VERSION_OR_RESTRICTION = re.compile(r"\s*(\([^)]*\)|\[[^\]]*\]|<[^>]*>)")


@dataclass(frozen=True)
class Package:
    name: str
    arch: str
    version: str = ""
    depends: tuple[tuple[str, ...], ...] = ()  # groups of alternatives, Pre-Depends first
    provides: tuple[str, ...] = ()
    installed_size: int = 0  # KiB

    @property
    def key(self) -> str:
        return f"{self.name}:{self.arch}"


def parse_relations(text: str) -> tuple[tuple[str, ...], ...]:
    """``a (>= 1), b:any | c [amd64]`` -> (("a",), ("b", "c")): names only, arch qualifiers cut."""
    groups = []
    for group in text.split(","):
        names = []
        for alt in group.split("|"):
            name = _VERSION_OR_RESTRICTION.sub("", alt).strip().split(":", 1)[0]
            if name:
                names.append(name)
        if names:
            groups.append(tuple(names))
    return tuple(groups)


def parse_status(text: str) -> list[Package]:
    """Installed packages from dpkg's status file (paragraphs of RFC 822 fields)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and key is not None:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if not fields.get("Package") or fields.get("Status", "").split()[-1:] != ["installed"]:
            continue
        deps = parse_relations(fields.get("Pre-Depends", "")) + parse_relations(fields.get("Depends", ""))
        provides = tuple(g[0] for g in parse_relations(fields.get("Provides", "")))
        size = fields.get("Installed-Size", "0")
        out.append(Package(fields["Package"], fields.get("Architecture", "all"), fields.get("Version", ""),
                           deps, provides, int(size) if size.isdigit() else 0))
    return out


class Database:
    """The installed packages, by name and by what they provide."""

    def __init__(self, packages: list[Package], native_arch: str | None = None,
                 admin_dir: Path = ADMIN_DIR) -> None:
        self.admin_dir = admin_dir
        self.native = native_arch or _DPKG_ARCH.get(os.uname().machine, os.uname().machine)
        self.by_name: dict[str, list[Package]] = {}
        self.providers: dict[str, list[Package]] = {}
        for p in packages:
            self.by_name.setdefault(p.name, []).append(p)
            for v in p.provides:
                self.providers.setdefault(v, []).append(p)

    @classmethod
    def load(cls, admin_dir: Path = ADMIN_DIR) -> Database:
        status = admin_dir / "status"
        try:
            text = status.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            raise ClosureError(f"{status} does not exist: this host has no dpkg database",
                               "packages works on Debian-like hosts; use contents instead") from None
        except OSError as e:
            raise ClosureError(f"cannot read {status}: {e.strerror}", "fix its permissions") from None
        return cls(parse_status(text), admin_dir=admin_dir)

    def candidates(self, name: str, for_arch: str) -> list[Package]:
        """Installed packages that satisfy ``name`` for a package of ``for_arch``, best first."""
        real = self.by_name.get(name, [])
        found = real + [p for p in self.providers.get(name, []) if p not in real]
        arch = self.native if for_arch == "all" else for_arch
        return sorted(found, key=lambda p: (p.arch not in (arch, "all"), p.arch != arch))

    def files(self, pkg: Package) -> list[str]:
        info = self.admin_dir / "info"
        for name in (f"{pkg.name}:{pkg.arch}.list", f"{pkg.name}.list"):
            try:
                return (info / name).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
            except FileNotFoundError:
                continue
        return []

    def diversions(self) -> dict[str, tuple[str, str]]:
        """diverted path -> (where it really is, the diverting package)."""
        try:
            lines = (self.admin_dir / "diversions").read_text(errors="surrogateescape").splitlines()
        except OSError:
            return {}
        return {lines[i]: (lines[i + 1], lines[i + 2]) for i in range(0, len(lines) - 2, 3)}


@dataclass(frozen=True)
class Selected:
    package: Package
    chain: tuple[str, ...]  # how it was reached: the package asked for ... this one


def select(db: Database, wanted: tuple[str, ...], skip: tuple[str, ...],
           warnings: list[str]) -> list[Selected]:
    """The packages to ship, in the order they were reached (breadth first)."""
    skipped = set(skip)
    chosen: dict[str, Selected] = {}
    queue: deque[Selected] = deque()
    for name in wanted:
        found = db.candidates(name, db.native)
        if not found:
            raise ClosureError(f"package {name} is not installed on this host",
                               f"apt-get install {name}")
        queue.append(Selected(found[0], (name,)))
    while queue:
        sel = queue.popleft()
        if sel.package.key in chosen:
            continue
        chosen[sel.package.key] = sel
        for group in sel.package.depends:
            if any(alt in skipped for alt in group):
                continue  # the host's init or packaging machinery: not needed in an image
            options = [p for alt in group for p in db.candidates(alt, sel.package.arch)
                       if p.name not in skipped]
            if any(p.key in chosen for p in options):
                continue
            if not options:
                warnings.append(f"package {sel.package.name} depends on {' | '.join(group)}, "
                                "which is not installed; left out")
                continue
            lightest = min(options, key=lambda p: (p.installed_size, p.name))
            queue.append(Selected(lightest, (*sel.chain, lightest.name)))
    return list(chosen.values())


def is_doc(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in DOC_PATHS)


def package_nodes(spec: Spec, ctx: Context, admin_dir: Path = ADMIN_DIR) -> Iterator[Node]:
    """Roots for the spec's ``packages``: each file dpkg lists for the selected packages."""
    db = Database.load(admin_dir)
    skip = spec.skip_packages if spec.skip_packages is not None else DEFAULT_SKIP
    diversions = db.diversions()
    for sel in select(db, spec.packages, skip, ctx.closure.warnings):
        pkg = sel.package
        reason = f"file of package {pkg.name} ({' -> '.join(sel.chain)})"
        for line in db.files(pkg):
            if not line.startswith("/") or line == "/.":
                continue
            if not spec.package_docs and is_doc(line):
                continue
            diverted = diversions.get(line)
            path = diverted[0] if diverted and diverted[1] != pkg.name else line
            if not present(path, ctx):
                continue  # dropped by the host's dpkg path-exclude, or removed by hand
            p = PurePosixPath(path)
            yield Node(p, Path(path), reason, package=pkg.name)
