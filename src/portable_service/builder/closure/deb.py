"""Debian packages: what a service needs of an installed package, not every file of its dependencies.

Read from dpkg's database (``/var/lib/dpkg/status``, ``info/PKG.list``,
``diversions``). ``Depends`` and ``Pre-Depends`` are followed through
alternatives (``A | B``, the lighter installed side) and virtual packages
(``Provides``) to what is installed, passing over the skip list
(:data:`DEFAULT_SKIP`; ``skip-packages``): the host's init and packaging
machinery. A dependency that one of them can satisfy is dropped as a whole
(``systemd-sysv | lsb-base``).

Of the packages reached, these are shipped whole (every file dpkg lists):

- the named packages (``packages``); a metapackage (one that ships nothing
  but documentation, like ``postgresql``) stands for its dependencies;
- a package that ships a program a unit runs, or a file a unit reads
  (``/usr/bin/python3`` -> ``python3.11`` is a file of ``python3.11-minimal``):
  the program's own data (Python's standard library) comes with it;
- packages built from the same Debian source as one of those (``nginx`` ->
  ``nginx-common``, ``dnsmasq`` -> ``dnsmasq-base``, ``python3.11-minimal`` ->
  ``libpython3.11-stdlib``): they split one program's files, configuration and data;
  of these two kinds, the programs in ``/usr/bin`` and ``/usr/sbin``
  (:data:`PROGRAM_DIRS`) come only when a unit runs them (``redis-tools`` gives
  ``redis-server``'s binary, not ``redis-cli`` and ``redis-benchmark``);
- data packages (:data:`DEFAULT_DATA`; ``package-data``): CA certificates,
  time zones, media types, ... which programs read by path, with what their
  maintainer scripts made (:data:`MADE_BY_SCRIPTS`: the CA bundle in /etc/ssl/certs).

Every other dependency (libc6, libssl3, perl for an admin script) contributes
only what the closure of the programs reaches: the libraries the ELF resolver
finds, the interpreter of a script a unit runs, a file a unit names. So libc6
brings libc.so.6 and not its gconv modules, and a daemon whose package depends
on perl for a helper script carries no perl. Name such a package in
``package-data`` to ship it whole.

Never shipped: a package's unit files and init scripts (:data:`UNIT_PATHS`):
portabled attaches every unit file in the image whose name matches the image's
prefix, so a package's ``nginx.service`` in an image called ``nginx`` would be
attached and enabled next to the user's and run with stock configuration. The
units in an image are the ones the spec names. Documentation, man pages and
locales (:data:`DOC_PATHS`) are left out unless ``package-docs = true``, and a
package file that the spec's ``contents`` provide is the user's.

``skip-packages`` and ``package-data`` replace their default lists; written
``["+NAME", "-NAME"]`` they add to or take from it (:func:`effective`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from portable_service.builder.closure import Context, Node, present
from portable_service.builder.spec import Spec
from portable_service.errors import ClosureError

ADMIN_DIR = Path("/var/lib/dpkg")
DEFAULT_SKIP: tuple[str, ...] = (
    "adduser", "cdebconf", "debconf", "debconf-2.0", "dpkg", "init-system-helpers",
    "install-info", "lsb-base", "systemd", "systemd-sysv", "sysvinit-utils", "ucf",
)
# Dependencies that programs read as data, by path: shipped whole when reached.
DEFAULT_DATA: tuple[str, ...] = (
    "ca-certificates", "libmagic-mgc", "media-types", "mime-support", "netbase", "publicsuffix",
    "tzdata",
)
# Files a data package's maintainer script makes (so dpkg does not list them).
MADE_BY_SCRIPTS: dict[str, tuple[str, ...]] = {
    "ca-certificates": ("/etc/ssl/certs",),  # update-ca-certificates: the bundle and hash links
}
DOC_PATHS: tuple[str, ...] = (
    "/usr/share/doc", "/usr/share/man", "/usr/share/locale", "/usr/share/info", "/usr/share/lintian",
)
# Folders of programs: a dependency's programs come only when a unit runs them.
PROGRAM_DIRS: tuple[str, ...] = ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/games")
# Where packages put units (system and user, generators too) and SysV init scripts.
UNIT_PATHS: tuple[str, ...] = (
    "/lib/systemd/system", "/lib/systemd/user", "/lib/systemd/system-generators",
    "/lib/systemd/user-generators", "/usr/lib/systemd/system", "/usr/lib/systemd/user",
    "/usr/lib/systemd/system-generators", "/usr/lib/systemd/user-generators",
    "/etc/systemd/system", "/etc/systemd/user", "/etc/init.d",
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
    source: str = ""  # the Debian source package; dpkg leaves it out when it is the name
    # (path, md5 of the file as the package shipped it): configuration an admin may edit
    conffiles: tuple[tuple[str, str], ...] = ()

    @property
    def source_name(self) -> str:
        return self.source or self.name

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


def parse_conffiles(text: str) -> tuple[tuple[str, str], ...]:
    """dpkg's ``Conffiles:`` lines, ``PATH MD5 [obsolete|remove-on-upgrade]``: the live ones."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0].startswith("/"):
            out.append((words[0], words[1]))
    return tuple(out)


def changed_conffile(path: str, md5: str) -> bool:
    """Whether the host's copy differs from what the package shipped (an admin's edit)."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 16), b""):
                digest.update(chunk)
    except OSError:
        return False  # missing or unreadable: reported where it is read
    return digest.hexdigest() != md5


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
        source = fields.get("Source", "").split(" ", 1)[0]  # "glibc (2.36-9)": the name only
        out.append(Package(fields["Package"], fields.get("Architecture", "all"), fields.get("Version", ""),
                           deps, provides, int(size) if size.isdigit() else 0, source,
                           parse_conffiles(fields.get("Conffiles", ""))))
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


def effective(given: tuple[str, ...] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list setting against its default: None keeps it, ``+NAME``/``-NAME`` edit it, names replace it.

    The spec parser has already refused a list that mixes the two forms.
    """
    if given is None:
        return default
    if not any(g[:1] in ("+", "-") for g in given):
        return given
    out = list(default)
    for g in given:
        name = g[1:]
        if g[0] == "+" and name not in out:
            out.append(name)
        elif g[0] == "-" and name in out:
            out.remove(name)
    return tuple(out)


def _under(path: str, folders: tuple[str, ...]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in folders)


def is_doc(path: str) -> bool:
    return _under(path, DOC_PATHS)


def is_unit(path: str) -> bool:
    """A unit file, drop-in, generator or init script, or a folder of them."""
    return _under(path, UNIT_PATHS)


@dataclass(frozen=True)
class Whole:
    """A package shipped with every file, and why."""

    selected: Selected
    why: str  # "named in packages", "package-data", "built from source nginx"
    # False: its programs (files in PROGRAM_DIRS) come only when a unit runs them
    programs: bool = True


def _ships_only_docs(db: Database, pkg: Package) -> bool:
    files = db.files(pkg)
    return bool(files) and all(
        not line.startswith("/") or line == "/." or is_doc(line) or os.path.isdir(line)
        for line in files)


def _spelled(path: str, real_dirs: dict[str, str]) -> str:
    """``path`` with its folder's symlinks resolved (/bin/x -> /usr/bin/x), folders cached."""
    folder, name = os.path.split(path)
    real = real_dirs.get(folder)
    if real is None:
        real = real_dirs[folder] = os.path.realpath(folder)
    return os.path.join(real, name)


def _link_chain(path: str, real_dirs: dict[str, str]) -> set[str]:
    """``path`` and every link on the way to its file, spelled as the host's folders resolve."""
    out: set[str] = set()
    current = path
    while len(out) < 40:  # a loop of links ends here too
        spelled = _spelled(current, real_dirs)
        if spelled in out:
            break
        out.add(spelled)
        if not os.path.islink(spelled):
            break
        current = os.path.normpath(os.path.join(os.path.dirname(spelled), os.readlink(spelled)))
    return out


def owners(db: Database, chosen: list[Selected], used: Sequence[PurePosixPath]) -> dict[str, str]:
    """Selected package name -> the used path (a program a unit runs, a file it reads) it ships."""
    real_dirs: dict[str, str] = {}
    wanted: dict[str, str] = {}
    for u in used:
        for spelled in _link_chain(str(u), real_dirs):
            wanted.setdefault(spelled, str(u))
    out: dict[str, str] = {}
    for sel in chosen:
        for line in db.files(sel.package):
            if line.startswith("/") and (hit := wanted.get(_spelled(line, real_dirs))) is not None \
                    and not os.path.isdir(line):
                out.setdefault(sel.package.name, hit)
                break
    return out


def whole_packages(db: Database, chosen: list[Selected], data: tuple[str, ...],
                   used: Sequence[PurePosixPath] = ()) -> list[Whole]:
    """Of the selected packages, the ones shipped whole (see the module's rule), in order."""
    named: set[str] = set()  # names of the named packages and of what metapackages stand for
    metas: set[str] = set()
    for sel in chosen:  # breadth first: a package's parent in its chain is decided before it
        if len(sel.chain) == 1 or sel.chain[-2] in metas:
            named.add(sel.package.name)
            if _ships_only_docs(db, sel.package):
                metas.add(sel.package.name)
    running = owners(db, chosen, used)
    sources = {s.package.source_name: s.package.name for s in chosen
               if s.package.name in named or s.package.name in running}
    out = []
    wanted_data = set(data)
    for sel in chosen:
        pkg = sel.package
        if pkg.name in named:
            out.append(Whole(sel, "named in packages" if len(sel.chain) == 1
                             else f"dependency of metapackage {sel.chain[-2]}"))
        elif pkg.name in wanted_data:
            out.append(Whole(sel, "package-data"))
        elif pkg.name in running:
            out.append(Whole(sel, f"ships {running[pkg.name]}, which a unit uses", programs=False))
        elif pkg.source_name in sources:
            out.append(Whole(sel, f"built from source {pkg.source_name}, as "
                                  f"{sources[pkg.source_name]} is", programs=False))
    return out


def _provided_by_contents(spec: Spec, path: PurePosixPath) -> bool:
    """Whether the spec's ``contents`` put a file of their own at ``path`` (or above it)."""
    for c in spec.contents:
        if c.target == path:
            # two folders merge: the package's other entries stay
            return not (c.source.is_dir() and not c.source.is_symlink() and os.path.isdir(path))
        if c.target in path.parents:
            if c.source.is_symlink() or not c.source.is_dir():
                return True  # a file of the user's where the package has a folder
            if os.path.lexists(c.source / path.relative_to(c.target)):
                return True
    return False


def _listing(items: list[str], most: int = 8) -> str:
    return ", ".join(items[:most]) + (f", ... ({len(items) - most} more)" if len(items) > most else "")


def package_nodes(spec: Spec, ctx: Context, admin_dir: Path = ADMIN_DIR,
                  used: list[PurePosixPath] | None = None) -> Iterator[Node]:
    """Roots for the spec's ``packages``: the files of the packages shipped whole.

    ``used`` are the programs the units run and the files they read: a selected
    package that ships one is shipped whole, as its program's own data.
    """
    db = Database.load(admin_dir)
    skip = effective(spec.skip_packages, DEFAULT_SKIP)
    data = effective(spec.package_data, DEFAULT_DATA)
    diversions = db.diversions()
    chosen = select(db, spec.packages, skip, ctx.closure.warnings)
    whole = whole_packages(db, chosen, data, used or [])
    units: list[str] = []
    replaced: list[str] = []
    not_run: list[str] = []
    real_dirs: dict[str, str] = {}
    run: set[str] = set().union(*(_link_chain(str(u), real_dirs) for u in used or []))
    for w in whole:
        pkg = w.selected.package
        reason = f"file of package {pkg.name} ({' -> '.join(w.selected.chain)}; {w.why})"
        conffiles = dict(pkg.conffiles)
        for line in db.files(pkg):
            if not line.startswith("/") or line == "/.":
                continue
            if not spec.package_docs and is_doc(line):
                continue
            if is_unit(line):
                if not os.path.isdir(ctx.in_root(line)):
                    units.append(os.path.basename(line))
                continue
            if not w.programs and os.path.dirname(line) in PROGRAM_DIRS and \
                    not os.path.isdir(ctx.in_root(line)):
                if _spelled(line, real_dirs) not in run:
                    not_run.append(os.path.basename(line))
                continue  # a unit that runs it brings it itself
            diverted = diversions.get(line)
            path = diverted[0] if diverted and diverted[1] != pkg.name else line
            host = ctx.in_root(path)  # the path itself, but in a pinned build's root
            if not present(host, ctx) or not os.path.exists(host):
                # dropped by the host's dpkg path-exclude, removed by hand, unreadable (said
                # by present), or a link to what no installed package ships (nginx's
                # modules folder): it would dangle
                continue
            p = PurePosixPath(path)
            if _provided_by_contents(spec, p):
                if not os.path.isdir(host):
                    replaced.append(f"{p} ({pkg.name})")
                continue
            if line in conffiles and changed_conffile(host, conffiles[line]):
                raise ClosureError(
                    f"{path} of package {pkg.name} was changed on this host (dpkg's checksum "
                    "differs): the image would publish this host's edits, secrets included",
                    f"ship the version you mean with contents = [\"{path}\"] (or "
                    "{ source, target }), or exclude it")
            yield Node(p, Path(host), reason, package=pkg.name)
        for made in MADE_BY_SCRIPTS.get(pkg.name, ()):
            if os.path.isdir(ctx.in_root(made)):
                # not package nodes: the entries' links bring their targets (dpkg lists the
                # folder itself, and a package's folder does not bring its entries)
                folder = PurePosixPath(made)
                for name in sorted(os.listdir(ctx.in_root(made))):
                    yield Node(folder / name, Path(ctx.in_root(made), name),
                               f"made by {pkg.name}'s maintainer script", folder)
    notes = ctx.closure.notes
    shipped = {w.selected.package.key for w in whole}
    rest = sorted({s.package.name for s in chosen if s.package.key not in shipped})
    notes.append(f"packages shipped whole: {', '.join(w.selected.package.name for w in whole)}")
    if rest:
        notes.append(f"packages that give only what the programs load or run: {_listing(rest)} "
                     "(package-data = [\"+NAME\"] ships one whole)")
    if units:
        notes.append(f"left out {len(units)} unit files of packages: {_listing(sorted(set(units)))} "
                     "(the image's units are the ones the spec names)")
    if not_run:
        notes.append(f"left out {len(not_run)} programs of dependencies that no unit runs: "
                     f"{_listing(sorted(set(not_run)))}")
    if replaced:
        notes.append(f"contents replace {len(replaced)} files of packages: {_listing(replaced)}")
