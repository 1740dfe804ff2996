"""Run-time needs no ELF header or ``#!`` line names: identity, locales, CA certificates,
time zones and the standard libraries of interpreters.

Each is shipped only when something in the closure or a unit asks for it, with a
``reason`` (and parent) that ``why`` shows:

- **identity**: a service under portabled's default profile runs as a dynamic
  user (``DynamicUser=yes``); glibc's ``getpwuid`` finds it only through
  ``libnss_systemd.so.2``, an ``/etc/nsswitch.conf`` naming ``systemd``, and
  systemd's user database at ``/run/systemd/userdb`` (bound into the unit by
  :func:`adapt_units`, since the default profile gives the unit a fresh /run).
  Rule: the closure has glibc (``libc.so.6``) and the spec has a service unit.
- **locales**: ``LANG=``/``LC_ALL=``/``LC_*=`` in a unit's ``Environment=``
  brings that locale (folder form, else the whole ``locale-archive``) and, for
  a charset other than UTF-8, its gconv module.
- **CA certificates**: a TLS library (libssl, libgnutls, libnss3, libmbedtls,
  libwolfssl) brings ``/etc/ssl/certs`` (the bundle and OpenSSL's hash links).
- **time zones**: ``TZ=`` in ``Environment=`` brings that zone's file, or the
  whole zoneinfo when the value is only known at run time.
- **interpreters**: python3 (also a virtualenv's ``bin/python``), perl and ruby
  bring the standard library folders the interpreter itself reports.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import mmap
import os
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from portable_service import run as run_mod
from portable_service.builder.closure import Closure, Context, Node, excluded, in_nix_store
from portable_service.builder.spec import Spec
from portable_service.builder.units import Unit, parse_unit_text
from portable_service.errors import ToolError
from portable_service.rules.debian import CA_PACKAGE, LOCALES_PACKAGE, TZ_PACKAGE

P = PurePosixPath

# -- identity

NSS_SYSTEMD = "libnss_systemd.so.2"
# systemd's user database (varlink sockets, io.systemd.DynamicUser among them)
USERDB = P("/run/systemd/userdb")
NSSWITCH = P("/etc/nsswitch.conf")
PASSWD = P("/etc/passwd")
GROUP = P("/etc/group")
# the databases nss-systemd answers; the others keep whatever the image has
NSS_DATABASES = ("passwd", "group")
NSSWITCH_TEXT = (
    "# written by portable-service: users systemd allocates (DynamicUser=) resolve\n"
    "# through libnss_systemd.so.2 and /run/systemd/userdb\n"
    "passwd:         files systemd\n"
    "group:          files systemd\n"
    "shadow:         files\n"
    "hosts:          files dns\n"
)
# root and nobody as Debian names them; nss-systemd would synthesize both, but
# programs that read /etc/passwd themselves (not through NSS) find them too
PASSWD_TEXT = ("root:x:0:0:root:/root:/bin/sh\n"
               "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP_TEXT = "root:x:0:\nnogroup:x:65534:\n"
IDENTITY_REASON = ("NSS module: getpwuid() of a dynamic user (DynamicUser=yes, the default "
                   "profile) needs it")
BIND_USERDB = f"BindReadOnlyPaths=-{USERDB}"
# what `why` says about the files the build writes for identity
GENERATED_WHY = {
    NSSWITCH: "passwd and group through nss-systemd, for a service's dynamic user",
    PASSWD: "root and nobody, for programs that read /etc/passwd themselves",
    GROUP: "root and nogroup, for programs that read /etc/group themselves",
}

# -- CA certificates

TLS_LIBRARY = re.compile(r"^lib(ssl|gnutls|nss3|mbedtls|wolfssl)\.so(\.|$)")
# Debian's Node.js loads some of its own builtins from node-* packages, at paths compiled
# into libnode (its config: NODE_SHARED_BUILTIN_ACORN_PATH=/usr/share/nodejs/acorn/...);
# without them node aborts at start ("Cannot load externalized builtin")
NODE_LIBRARY = re.compile(r"^libnode\.so(\.|$)")
NODE_BUILTIN = re.compile(rb"NODE_SHARED_BUILTIN_\w+_PATH=(/[\w./+-]+)")
CA_BUNDLE = P("/etc/ssl/certs/ca-certificates.crt")
CA_FOLDER = P("/etc/ssl/certs")
# OpenSSL's OPENSSLDIR on Debian: SSL_CTX_set_default_verify_paths() reads certs/ here
OPENSSL_DIR_FILES = (P("/usr/lib/ssl/certs"), P("/usr/lib/ssl/openssl.cnf"))

# -- time zones and locales

ZONEINFO = P("/usr/share/zoneinfo")
LOCALE_DIR = P("/usr/lib/locale")
LOCALE_ARCHIVE = LOCALE_DIR / "locale-archive"
LOCALE_VARS = ("LANG", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE",
               "LC_MONETARY", "LC_MESSAGES", "LC_PAPER", "LC_NAME", "LC_ADDRESS",
               "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION")
# glibc does not build C.UTF-8 in: without its folder, setlocale(LC_ALL, "") fails
# under LANG=C.UTF-8 (checked with Debian 12's 2.36 and Debian 13's 2.41).
# The service manager passes the host's LANG= (/etc/locale.conf) to every service,
# and C.UTF-8 is the common one: an image with glibc always gets it.
C_UTF8_REASON = ("C.UTF-8 locale: glibc does not build it in, and services inherit the "
                 "host's LANG= (often C.UTF-8)")
# a POSIX TZ rule (EST5EDT, <+03>-3, UTC0) needs no file
_POSIX_TZ = re.compile(r"^[A-Za-z<][^/]*[0-9]")

# -- interpreters

PYTHON = re.compile(r"^python3?(\.\d+)?$")
PERL = re.compile(r"^perl(5[.\d]*)?$")
RUBY = re.compile(r"^ruby(\d[.\d]*)?$")
PYTHON_QUERY = ("import json, site, sys; print(json.dumps({'path': sys.path, 'prefix': sys.prefix, "
                "'base': sys.base_prefix, 'site': site.getsitepackages()}))")
PERL_QUERY = ('use Config; print join("\\n", "INC", @INC, "SKIP", '
              '@Config{qw(sitelibexp sitearchexp vendorlibexp vendorarchexp)}), "\\n"')
RUBY_QUERY = "puts RbConfig::CONFIG.values_at('rubylibdir', 'rubyarchdir')"


def needs_identity(spec: Spec) -> bool:
    """A service runs its programs, and under the default profile always as a dynamic user."""
    return any(".service" in u.name for u in spec.units)


# how every name the resolver acts on begins: libc.so.6, TLS_LIBRARY, PYTHON, PERL, RUBY
_LEADS = ("lib", "python", "perl", "ruby")


class RuntimeResolver:
    """Resolver: the run-time files a node implies (identity, CA certificates, stdlibs)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.identity = needs_identity(ctx.spec)
        self._libc_done = False
        self._ca_done = False
        self._openssl_done = False
        self._queried: set[str] = set()

    def __call__(self, node: Node) -> Iterator[Node]:
        name = node.image.name
        if not name.startswith(_LEADS):
            return  # most nodes: none of the names below, told without a pattern
        if in_nix_store(node.image):
            return
        if name == "libc.so.6" and not self._libc_done:
            self._libc_done = True
            if self.identity:
                yield from self._nss(node)
            for folder in (LOCALE_DIR / "C.utf8", LOCALE_DIR / "C.UTF-8"):  # 2.35+, older Debian
                if os.path.isdir(self.ctx.in_root(str(folder))):  # a pinned build's root
                    yield Node(folder, Path(self.ctx.in_root(str(folder))), C_UTF8_REASON)
                    break
        if TLS_LIBRARY.match(name):
            yield from self._certificates(node)
        if NODE_LIBRARY.match(name):
            yield from self._node_builtins(node)
        # a package's files are data unless a unit runs them (see scripts.py)
        interpreter = PYTHON.match(name) or PERL.match(name) or RUBY.match(name)
        if interpreter and node.package is None and node.image == P(str(node.host)) \
                and _runnable(node.host):
            if PYTHON.match(name):
                yield from self._python(node)
            elif PERL.match(name):
                yield from self._interpreter(node, [str(node.host), "-e", PERL_QUERY], _perl_dirs)
            elif RUBY.match(name):
                yield from self._interpreter(node, [str(node.host), "-e", RUBY_QUERY],
                                             lambda out: [p for p in out.splitlines() if p])

    # identity

    def _nss(self, libc: Node) -> Iterator[Node]:
        host = libc.host.parent / NSS_SYSTEMD  # same spelling as the image path: links resolve
        if not host.exists():
            self.ctx.missing(
                f"{NSS_SYSTEMD} is not {self.ctx.here}: a service's dynamic user (DynamicUser=yes "
                "under the default profile) would not resolve, and programs that look up their "
                "user (getpwuid) fail", "apt-get install libnss-systemd")
            return
        # a root of its own: the service's user needs it, not libc (and `size` shows its cost)
        yield Node(libc.image.parent / NSS_SYSTEMD, host, IDENTITY_REASON)

    def finish(self) -> None:
        """Identity files: made for the image, after the closure shows what the user ships."""
        closure, spec = self.ctx.closure, self.ctx.spec
        if not identity_shipped(closure):
            return
        if not excluded(NSSWITCH, spec.exclude):
            own = closure.nodes.get(NSSWITCH)
            if own is None:
                closure.generated[NSSWITCH] = NSSWITCH_TEXT.encode()
            else:
                text = own.host.read_text(encoding="utf-8", errors="surrogateescape")
                merged = merge_nsswitch(text)
                if merged != text:
                    del closure.nodes[NSSWITCH]
                    closure.generated[NSSWITCH] = merged.encode("utf-8", "surrogateescape")
                    closure.warnings.append(
                        f"{NSSWITCH} from {own.host}: added 'systemd' to its "
                        f"{'/'.join(NSS_DATABASES)} lines, so dynamic users resolve")
        for path, text in ((PASSWD, PASSWD_TEXT), (GROUP, GROUP_TEXT)):
            if path not in closure.nodes and not excluded(path, spec.exclude):
                closure.generated[path] = text.encode()

    # CA certificates

    def _certificates(self, lib: Node) -> Iterator[Node]:
        """The CA folder once for any TLS library; OpenSSL's own folder once for libssl."""
        in_root = self.ctx.in_root  # a pinned build's store is the release's (repo/cacerts.py)
        if not self._ca_done:
            self._ca_done = True
            if os.path.exists(in_root(str(CA_BUNDLE))):
                yield Node(CA_FOLDER, Path(in_root(str(CA_FOLDER))),
                           f"CA certificates for the TLS library {lib.image.name}", lib.image,
                           whole=True)
            else:
                self.ctx.closure.warnings.append(
                    f"{lib.image} is a TLS library, but there is no {CA_BUNDLE} "
                    f"{self.ctx.here}: the image gets no CA certificates "
                    f"({self.ctx.how_to_get(CA_PACKAGE, 'apt-get install ca-certificates')})")
        if lib.image.name.startswith("libssl") and not self._openssl_done:
            self._openssl_done = True
            for path in OPENSSL_DIR_FILES:
                if os.path.lexists(in_root(str(path))):
                    yield Node(path, Path(in_root(str(path))),
                               f"OpenSSL's folder for {lib.image.name}", lib.image)

    def _node_builtins(self, lib: Node) -> Iterator[Node]:
        """The builtins a libnode loads from files (Debian's Node.js): each path it names."""
        try:
            with open(lib.host, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                paths = sorted({found.decode() for found in NODE_BUILTIN.findall(m)})
        except (OSError, ValueError):
            return  # unreadable: the walk's own check says so
        for path in paths:
            host = self.ctx.in_root(path)
            if os.path.exists(host):
                yield Node(P(path), Path(host), f"builtin {lib.image.name} loads", lib.image)
            else:
                self.ctx.missing(
                    f"{lib.image} loads the Node.js builtin {path}, which is not {self.ctx.here}",
                    self.ctx.how_to_get("its node-* package",
                                 "install the node-* package that ships it (apt-get install "
                                 "nodejs brings them)"))

    # interpreters

    def _python(self, node: Node) -> Iterator[Node]:
        key = str(node.host)
        if key in self._queried:
            return
        self._queried.add(key)
        info = self._ask(node, [key, "-I", "-c", PYTHON_QUERY])
        if info is None:
            return
        try:
            found = json.loads(info)
            paths: list[str] = found["path"]
            prefix, base = found["prefix"], found["base"]
            sites = set(found["site"])
        except (ValueError, KeyError, TypeError):
            self.ctx.missing(f"{node.image} did not report its sys.path",
                             "check that it is a working python3")
            return
        reason = f"standard library of {node.image} (its sys.path)"
        for p in paths:
            if not p.startswith("/") or not os.path.exists(p):
                continue
            in_venv = prefix != base and (p == prefix or p.startswith(prefix.rstrip("/") + "/"))
            is_site = p in sites or os.path.basename(p) in ("site-packages", "dist-packages")
            if is_site and not in_venv:
                continue  # the host's third-party packages: ship them with contents if wanted
            yield from library_folder(P(p), reason, node.image)
        if prefix != base:
            cfg = P(prefix) / "pyvenv.cfg"
            if os.path.exists(cfg):
                yield Node(cfg, Path(cfg), f"virtualenv of {node.image}", node.image)
        if not any(os.path.exists(os.path.join(p, "encodings")) for p in paths):
            self.ctx.missing(
                f"{node.image} has no standard library on this host (no 'encodings' in "
                f"{':'.join(paths)}): it would die at start with \"No module named 'encodings'\"",
                "install the interpreter's standard library (apt-get install python3)")

    def _interpreter(self, node: Node, argv: list[str],
                     parse: Callable[[str], list[str]]) -> Iterator[Node]:
        key = str(node.host)
        if key in self._queried or node.host.is_symlink():
            return
        self._queried.add(key)
        out = self._ask(node, argv)
        if out is None:
            return
        for p in parse(out):
            if p.startswith("/") and os.path.isdir(p):
                yield from library_folder(P(p), f"standard library of {node.image}", node.image)

    def _ask(self, node: Node, argv: list[str]) -> str | None:
        try:
            proc = run_mod.run(argv, check=False, timeout=30)
        except (ToolError, OSError) as e:
            self.ctx.missing(f"cannot ask {node.image} for its library folders: {e}",
                             "check that the interpreter runs on this host")
            return None
        if proc.returncode != 0:
            self.ctx.missing(
                f"{node.image} fails on this host when asked for its library folders "
                f"(exit {proc.returncode}): {run_mod.tool_message(proc)}",
                "install the interpreter's standard library, or fix the interpreter")
            return None
        return proc.stdout.decode("utf-8", "surrogateescape")


# Marks a library folder's files as data, as a Debian package's are (see Node.package):
# the standard library's own executable scripts (#!/usr/local/bin/python in cgi.py)
# are not programs the units run, so their #! lines are not followed.
LIBRARY_FILES = "interpreter library"
# Below a library folder, not part of what runs: the static library and objects for
# building extensions (python's config-3.X-<triplet>), and third-party packages,
# which pyenv-style layouts keep inside the standard library folder.
SKIPPED_BELOW = ("config-*", "site-packages", "dist-packages")


def library_folder(folder: PurePosixPath, reason: str, parent: PurePosixPath) -> Iterator[Node]:
    """A library folder and everything below it, as data; ELF modules still bring libraries."""
    if not os.path.isdir(folder):
        return
    yield Node(folder, Path(folder), reason, parent, package=LIBRARY_FILES)
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not any(fnmatch.fnmatchcase(d, g) for g in SKIPPED_BELOW))
        here = P(top)
        for name in dirs + sorted(files):
            if not os.path.exists(here / name):
                continue  # a link that dangles on the host too (rdoc's fonts without fonts-lato)
            yield Node(here / name, Path(here / name), "in library folder", here,
                       package=LIBRARY_FILES)
            if name in dirs and os.path.islink(here / name):
                # os.walk does not enter it, and the link's target, marked as data, would
                # come without its entries
                target = P(os.path.realpath(here / name))
                if target != folder and folder not in target.parents:
                    yield from library_folder(target, f"target of {here / name}", here / name)


def _runnable(path: Path) -> bool:
    """An executable file (a link to one counts: a virtualenv's bin/python)."""
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _perl_dirs(out: str) -> list[str]:
    """@INC without the site and vendor folders (third-party modules)."""
    inc, _, skip = out.partition("\nSKIP\n")
    skipped = {s for s in skip.splitlines() if s}
    return [p for p in inc.splitlines()[1:] if p and p not in skipped and "/local/" not in p]


def identity_shipped(closure: Closure) -> bool:
    return any(n.image.name == NSS_SYSTEMD and n.reason == IDENTITY_REASON for n in closure)


def merge_nsswitch(text: str) -> str:
    """A user's nsswitch.conf with ``systemd`` added to its passwd and group lines."""
    out, seen = [], set()
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        db = key.strip()
        if sep and db in NSS_DATABASES and not line.lstrip().startswith("#"):
            seen.add(db)
            sources, hash_, comment = rest.partition("#")
            if "systemd" not in sources.split():
                line = f"{key}:{sources.rstrip()} systemd" + (
                    f"  {hash_}{comment}" if hash_ else "")
        out.append(line)
    for db in NSS_DATABASES:
        if db not in seen:
            out.append(f"{db}:{' ' * (15 - len(db))}files systemd")
    return "\n".join(out) + "\n"


# -- what the units' environment asks for

def unit_environment(unit: Unit) -> list[tuple[str, str]]:
    """(NAME, value) of every ``Environment=`` assignment, in order."""
    out = []
    for section in unit.exec_sections():
        for value in unit.values(section, "Environment"):
            try:
                words = shlex.split(value)
            except ValueError:
                words = value.split()
            for word in words:
                name, sep, val = word.partition("=")
                if sep:
                    out.append((name, val))
    return out


def zone_requests(unit: Unit) -> Iterator[tuple[str, str]]:
    """(zone, directive) of each time zone a unit names: ``Environment=TZ=``, and
    ``PassEnvironment=TZ`` (the manager's own TZ, known only on the server: every zone)."""
    for section in unit.exec_sections():
        if any("TZ" in v.split() for v in unit.values(section, "PassEnvironment")):
            yield "$TZ", f"PassEnvironment=TZ in {unit.unit_name}"
    for name, value in unit_environment(unit):
        if name == "TZ":
            yield value, f"Environment={name}={value} in {unit.unit_name}"


def locale_requests(unit: Unit) -> Iterator[tuple[str, str]]:
    """(locale, directive) of each locale a unit's ``Environment=`` names (LANG, LC_*)."""
    for name, value in unit_environment(unit):
        if name in LOCALE_VARS:
            yield value, f"Environment={name}={value} in {unit.unit_name}"


def _builtin_locale(value: str) -> bool:
    """A locale glibc has built in, or one known only at run time (nothing to ship)."""
    return value in ("", "C", "POSIX") or "$" in value or "%" in value


def needs_locales(value: str) -> bool:
    """Whether a locale is neither built into glibc nor C.UTF-8 (libc-bin gives that)."""
    return not _builtin_locale(value) and value.partition(".")[0] != "C"


def root_nodes(spec: Spec, units: list[Unit], ctx: Context) -> Iterator[Node]:
    """The time zones and locales the units' ``Environment=`` names, from the host (or a
    pinned build's root: the release's tzdata, locales and gconv modules)."""
    for unit in units:
        for zone, directive in zone_requests(unit):
            yield from _zone(zone, directive, ctx)
        for value, directive in locale_requests(unit):
            yield from _locale(value, directive, ctx)


def _zone(value: str, directive: str, ctx: Context) -> Iterator[Node]:
    zone = value[1:] if value.startswith(":") else value
    if not zone:
        return
    if "$" in zone or "%" in zone:
        # known only at run time: every zone
        zones = ctx.in_root(str(ZONEINFO))
        if os.path.isdir(zones):
            yield Node(ZONEINFO, Path(zones), f"time zones for {directive}")
        else:
            ctx.missing(f"{directive}: there is no {ZONEINFO} {ctx.here}",
                        ctx.how_to_get(TZ_PACKAGE, "apt-get install tzdata"))
        return
    path = P(zone) if zone.startswith("/") else ZONEINFO / zone
    host = ctx.in_root(str(path))
    if os.path.exists(host):
        yield Node(path, Path(host), f"time zone of {directive}")
    elif not _POSIX_TZ.match(zone) or "/" in zone:
        ctx.missing(f"{directive}: time zone file {path} is not {ctx.here}",
                    ctx.how_to_get(TZ_PACKAGE, "apt-get install tzdata") + ", or fix the zone name")


def normalize_codeset(codeset: str) -> str:
    """glibc's _nl_normalize_codeset: letters lowered, digits kept, the rest dropped."""
    norm = "".join(c.lower() if c.isalpha() else c for c in codeset if c.isalnum())
    return norm if not norm.isdigit() else "iso" + norm


def _locale(value: str, directive: str, ctx: Context) -> Iterator[Node]:
    if _builtin_locale(value):
        return
    lang, dot, rest = value.partition(".")
    codeset, at, modifier = rest.partition("@")
    names = [value]
    if dot:
        names.append(f"{lang}.{normalize_codeset(codeset)}{at}{modifier}")
    reason = f"locale of {directive}"
    folder = next((LOCALE_DIR / n for n in names
                   if os.path.isdir(ctx.in_root(str(LOCALE_DIR / n)))), None)
    archive = ctx.in_root(str(LOCALE_ARCHIVE))
    if folder is not None:
        yield Node(folder, Path(ctx.in_root(str(folder))), reason)
    elif os.path.exists(archive) and set(names) & _archive_locales(archive):
        yield Node(LOCALE_ARCHIVE, Path(archive), reason)
    else:
        ctx.missing(f"{directive}: locale {value} is not installed {ctx.here}",
                    "add it to /etc/locale.gen and run locale-gen (apt-get install locales)"
                    if ctx.root is None else
                    f"fix its name: {LOCALES_PACKAGE} of the release has every locale it makes")
        return
    if dot and normalize_codeset(codeset) != "utf8":
        yield from _gconv(normalize_codeset(codeset), directive, Path(ctx.in_root("/usr/lib")))


def _archive_locales(archive: str) -> set[str]:
    try:
        proc = run_mod.run(["localedef", "--list-archive", archive], check=False)
    except ToolError:
        return set()
    return set(proc.stdout.decode(errors="replace").split())


def _gconv(codeset: str, directive: str, lib: Path = Path("/usr/lib")) -> Iterator[Node]:
    """The gconv configuration and the module for a non-UTF-8 charset (iconv, mbrtowc);
    ``lib`` is where the image's /usr/lib is read from (a pinned build's root)."""
    folders = [f for f in sorted(lib.glob("*/gconv")) if f.is_dir()]
    if not folders:
        return
    folder = folders[0]
    image = P("/usr/lib") / folder.relative_to(lib).as_posix()
    reason = f"charset conversion for {directive}"
    for entry in sorted(os.listdir(folder)):
        if entry.startswith("gconv-modules") or \
                normalize_codeset(entry.removesuffix(".so")) == codeset:
            yield Node(image / entry, folder / entry, reason)


# -- the units: reach systemd's user database

def adapt_units(units: list[Unit], closure: Closure) -> list[Unit]:
    """Services bind ``/run/systemd/userdb`` when the image resolves dynamic users.

    The default profile mounts a fresh tmpfs on /run (``MountAPIVFS=``); without
    the bind, nss-systemd has no socket to ask. ``-`` keeps a host without the
    folder working. A repeated ``[Service]`` header adds to the section.

    A unit with a static ``User=NAME`` also binds the host's /etc/passwd and
    /etc/group: systemd's user database serves only dynamic users (no
    systemd-userdbd runs on Debian 11-13), so under ``trusted``, where NAME must
    be a host user, the image could not otherwise name it (and under the default
    profile systemd itself takes a host user of that name over a dynamic one).
    """
    if not identity_shipped(closure):
        return units
    files_in_image = all(p in closure.generated or p in closure.nodes for p in (PASSWD, GROUP))
    out = []
    for unit in units:
        if unit.name.endswith(".service") and "/" not in unit.name:
            lines = []
            if str(USERDB) not in unit.text:
                lines += ["# added by portable-service: nss-systemd asks systemd's user "
                          "database for dynamic users", BIND_USERDB]
            if files_in_image and static_user(unit) and BIND_HOST_USERS not in unit.text:
                lines += [f"# added by portable-service: User={static_user(unit)} is a user "
                          "of the host", BIND_HOST_USERS]
            if lines:
                text = unit.text.rstrip("\n") + "\n\n[Service]\n" + "\n".join(lines) + "\n"
                unit = dataclasses.replace(unit, text=text, sections=parse_unit_text(text))
        out.append(unit)
    return out


BIND_HOST_USERS = f"BindReadOnlyPaths=-{PASSWD} -{GROUP}"
_YES = ("1", "yes", "y", "true", "t", "on")


def static_user(unit: Unit) -> str | None:
    """The ``User=`` name of a unit that does not ask for a dynamic user itself (root aside)."""
    users = unit.values("Service", "User")
    dynamic = unit.values("Service", "DynamicUser")
    if not users or users[-1] in ("root", "0") or "%" in users[-1]:
        return None
    if dynamic and dynamic[-1].lower() in _YES:
        return None
    return users[-1]
