"""The SBOM: an SPDX 2.3 JSON document of what an image carries, written with ``spdx-tools``.

Every build writes it beside the image (``<pname>_<version>.spdx.json``) and into
the image (:data:`IMAGE_SBOM`, so ``inspect --sbom`` works for any of our images):

- one SPDX package for the image, one per Debian package a file came from, with
  its version, source package, download location (the .deb in the mirror, for a
  pinned build), and the licences its copyright file names (DEP-5 ``License:``
  fields, mapped to SPDX identifiers where Debian's short names have one);
- one SPDX file per regular file in the image, with its SHA-1 (required by SPDX)
  and SHA-256, contained by the package it came from; files the build made or
  took from the host outside any package are contained by the image package and
  say so in their comment.

Nothing in it depends on the build machine or the time (``SOURCE_DATE_EPOCH``):
the document is byte-identical whenever the image is.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import posixpath
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from portable_service.builder.spec import Spec, is_url
from portable_service.errors import ToolError
from portable_service.fs.tree import ImageTree, Kind
from portable_service.fs.views import ImageFS

if TYPE_CHECKING:
    from portable_service.builder.closure import Closure
    from portable_service.builder.repo import Pinned

IMAGE_SBOM = PurePosixPath("/usr/lib/portable-service/sbom.spdx.json")
NAMESPACE = "https://portable-service.invalid/spdx"
HOST_FILE = "a file of the build host that no Debian package ships"
MADE_FILE = "made by the build"

# Debian's short licence names (copyright-format 1.0) -> SPDX identifiers
DEBIAN_TO_SPDX = {
    "apache-2.0": "Apache-2.0", "artistic": "Artistic-1.0-Perl", "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause", "bsd-4-clause": "BSD-4-Clause", "cc0-1.0": "CC0-1.0",
    "expat": "MIT", "mit": "MIT", "gpl-1": "GPL-1.0-only", "gpl-1+": "GPL-1.0-or-later",
    "gpl-2": "GPL-2.0-only", "gpl-2+": "GPL-2.0-or-later", "gpl-3": "GPL-3.0-only",
    "gpl-3+": "GPL-3.0-or-later", "lgpl-2": "LGPL-2.0-only", "lgpl-2+": "LGPL-2.0-or-later",
    "lgpl-2.1": "LGPL-2.1-only", "lgpl-2.1+": "LGPL-2.1-or-later", "lgpl-3": "LGPL-3.0-only",
    "lgpl-3+": "LGPL-3.0-or-later", "isc": "ISC", "zlib": "Zlib", "openssl": "OpenSSL",
    "mpl-1.1": "MPL-1.1", "mpl-2.0": "MPL-2.0", "gfdl-1.3+": "GFDL-1.3-or-later",
    "psf-2": "PSF-2.0", "curl": "curl", "ssleay": "SSLeay-standalone", "x11": "X11",
    "unicode-dfs-2016": "Unicode-DFS-2016",
}


def document_name(spec: Spec) -> str:
    return f"{spec.pname}_{spec.version}.spdx.json"


def licences(copyright_text: bytes) -> list[str]:
    """SPDX identifiers (or LicenseRef-*) of the DEP-5 ``License:`` fields, sorted, once each."""
    found: set[str] = set()
    for m in re.finditer(rb"(?m)^License:[ \t]*(\S[^\n]*)$", copyright_text):
        expr = m.group(1).decode("utf-8", "replace").strip()
        for word in re.split(r"\s+(?:or|and)\s+|\s*[|,]\s*", expr, flags=re.IGNORECASE):
            word = word.strip("() ")
            if not word or word.lower().startswith("with"):
                continue
            found.add(spdx_licence(word))
    return sorted(found)


def spdx_licence(word: str) -> str:
    """The SPDX identifier of a Debian licence name; a name not on the SPDX licence list the
    library validates against (spdx-tools') becomes a ``LicenseRef-``."""
    from spdx_tools.common.spdx_licensing import spdx_licensing

    known = DEBIAN_TO_SPDX.get(word.lower(), word)
    if known in spdx_licensing.known_symbols:
        return known
    return "LicenseRef-" + (re.sub(r"[^A-Za-z0-9.-]+", "-", word).strip("-") or "unknown")


def _spdx_id(kind: str, name: str) -> str:
    return f"SPDXRef-{kind}-" + re.sub(r"[^A-Za-z0-9.-]+", "-", name)


def _host_owners() -> tuple[dict[str, str], dict[str, tuple[str, str, str]]]:
    """The host's dpkg: path -> package, and package -> (version, source, homepage)."""
    from portable_service.builder.closure.deb import ADMIN_DIR, Database

    owners: dict[str, str] = {}
    info = ADMIN_DIR / "info"
    try:
        names = sorted(os.listdir(info))
    except OSError:
        return {}, {}
    for name in names:
        if not name.endswith(".list"):
            continue
        pkg = name[:-5].split(":", 1)[0]
        try:
            lines = (info / name).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        except OSError:
            continue
        for line in lines:
            owners.setdefault(line, pkg)
    try:
        db = Database.load()
    except Exception:
        return owners, {}
    meta = {name: (pkgs[0].version, pkgs[0].source_name, "") for name, pkgs in db.by_name.items()}
    return owners, meta


def build_document(tree: ImageTree, spec: Spec, closure: Closure | None, pinned: Pinned | None,
                   mtime: int) -> bytes:
    from spdx_tools.common.spdx_licensing import spdx_licensing
    from spdx_tools.spdx.jsonschema.document_converter import DocumentConverter
    from spdx_tools.spdx.model.actor import Actor, ActorType
    from spdx_tools.spdx.model.document import CreationInfo, Document
    from spdx_tools.spdx.model.extracted_licensing_info import ExtractedLicensingInfo
    from spdx_tools.spdx.model.package import Package, PackageVerificationCode
    from spdx_tools.spdx.model.relationship import Relationship, RelationshipType
    from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    # -- which package each image file came from
    package_of: dict[PurePosixPath, str] = {}
    meta: dict[str, tuple[str, str, str]] = {}  # package -> version, source, homepage
    locations: dict[str, str] = {}
    copyright: dict[str, bytes] = {}
    if pinned is not None:
        root = os.path.realpath(pinned.root)
        for entry in tree:
            if entry.kind is Kind.FILE and entry.source is not None:
                # /lib/x is /usr/lib/x in the merged-/usr root: ask by the real path
                real = os.path.realpath(entry.source)
                if real.startswith(root + "/"):
                    owner = pinned.owners.get(real[len(root):])
                    if owner is not None:
                        package_of[entry.path] = owner
        # the lock's mirror, not this build's: the document (and the image) must not depend
        # on where this machine happened to download from
        mirror = pinned.lock.repository.mirror.rstrip("/")
        for p in pinned.lock.packages:
            meta[p.name] = (p.version, f"{p.source} {p.source_version}", p.homepage)
            locations[p.name] = f"{(p.archive or mirror).rstrip('/')}/{p.filename}"
        copyright = pinned.copyright
    else:
        owners, meta = _host_owners()
        nodes = closure.nodes if closure is not None else {}
        real_folders: dict[str, str] = {}
        for entry in tree:
            if entry.kind is not Kind.FILE or entry.source is None:
                continue
            node = nodes.get(entry.path)
            owner = node.package if node is not None and node.package in meta else None
            if owner is None:
                src = str(entry.source)
                owner = owners.get(src)
                if owner is None:  # a file: only its folders can be links, resolved once each
                    folder, _, name = src.rpartition("/")
                    if folder not in real_folders:
                        real_folders[folder] = os.path.realpath(folder or "/")
                    owner = owners.get(posixpath.join(real_folders[folder], name))
                if owner is None and src.startswith("/usr/"):
                    owner = owners.get(src[4:])  # dpkg lists /lib/x for merged-/usr /usr/lib/x
            if owner is not None:
                package_of[entry.path] = owner
        for name in sorted(set(package_of.values())):
            path = Path(f"/usr/share/doc/{name}/copyright")
            with contextlib.suppress(OSError):
                copyright[name] = path.read_bytes()
    used = sorted(set(package_of.values()))

    # -- the document
    created = datetime.fromtimestamp(mtime, UTC).replace(tzinfo=None)
    files: list[tuple[str, str, str, str | None, str]] = []  # name, SHA-1, SHA-256, comment, container
    image_id = _spdx_id("Package", f"image-{spec.pname}")
    digest = hashlib.sha256()
    sha1s: dict[str, list[str]] = {}  # package id -> its files' SHA-1s (verification code)
    ids: dict[str, str] = {}  # package -> its SPDX id
    for entry in tree:  # the image's order
        if entry.kind is not Kind.FILE or entry.path == IMAGE_SBOM:
            continue
        h1, h256 = hashlib.sha1(), hashlib.sha256()  # SPDX requires SHA-1; SHA-256 is what counts
        for chunk in entry.chunks():
            h1.update(chunk)
            h256.update(chunk)
        digest.update(os.fsencode(str(entry.path)) + b"\0" + h256.digest())
        owner = package_of.get(entry.path)
        comment = None if owner else (MADE_FILE if entry.source is None else HOST_FILE)
        container = image_id
        if owner:
            if owner not in ids:
                ids[owner] = _spdx_id("Package", f"deb-{owner}")
            container = ids[owner]
        files.append(("." + str(entry.path), h1.hexdigest(), h256.hexdigest(), comment, container))
        sha1s.setdefault(container, []).append(files[-1][1])
    info = CreationInfo(
        spdx_version="SPDX-2.3", spdx_id="SPDXRef-DOCUMENT", name=f"{spec.pname}_{spec.version}",
        document_namespace=f"{NAMESPACE}/{spec.pname}-{spec.version}-{digest.hexdigest()[:32]}",
        creators=[Actor(ActorType.TOOL, "portable-service")], created=created)

    def code(pid: str) -> PackageVerificationCode:
        # SPDX 2.3 section 7.9: SHA-1 of the sorted SHA-1s of the package's files
        joined = "".join(sorted(sha1s.get(pid, []))).encode()
        return PackageVerificationCode(hashlib.sha1(joined).hexdigest())

    packages = [Package(image_id, spec.pname, SpdxNoAssertion(), version=spec.version,
                        verification_code=code(image_id), homepage=spec.homepage or None,
                        comment="the portable service image")]
    extracted: dict[str, ExtractedLicensingInfo] = {}
    package_links = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, image_id)]
    for name in used:
        version, source, homepage = meta.get(name, ("", "", ""))
        found = licences(copyright.get(name, b""))
        exprs = []
        for lic in found:
            if lic.startswith("LicenseRef-") and lic not in extracted:
                extracted[lic] = ExtractedLicensingInfo(
                    license_id=lic, extracted_text=f"see /usr/share/doc/PACKAGE/copyright ({lic[11:]})",
                    license_name=lic[11:])
            exprs.append(spdx_licensing.parse(lic))
        pid = _spdx_id("Package", f"deb-{name}")
        packages.append(Package(
            pid, name, locations.get(name, SpdxNoAssertion()), version=version or None,
            verification_code=code(pid), source_info=f"built from Debian source package {source}".strip()
            if source else None, homepage=homepage if homepage and is_url(homepage) else None,
            license_info_from_files=exprs or [SpdxNoAssertion()],
            license_declared=SpdxNoAssertion(), license_concluded=SpdxNoAssertion(),
            copyright_text=SpdxNoAssertion(), supplier=Actor(ActorType.ORGANIZATION, "Debian")))
        package_links.append(Relationship(image_id, RelationshipType.CONTAINS, pid))
    # Everything that comes from outside (names, versions, URLs, licences, the package ids
    # made of them) is in the library's objects and checked by its validation. The files are
    # tens of thousands of records of one shape, valid by construction (an SPDXRef-File-N
    # id, a "./" name, a SHA-1 and a SHA-256 hex digest, a known container), which the
    # library's objects, validation and converter would take over 100 us each to say: they
    # are written as its converter writes them (file_record, contains_record; the tests
    # hold them to the library's converter and validate whole documents with the library).
    doc = Document(info, packages=packages, relationships=package_links,
                   extracted_licensing_info=[extracted[k] for k in sorted(extracted)])
    problems = list(dict.fromkeys(m.validation_message for m in validate_full_spdx_document(doc)))
    if problems:  # a field this build filled in wrongly
        raise ToolError(f"the SBOM does not validate as SPDX 2.3: {'; '.join(problems)[:300]}",
                        "report it; the image was not written")
    converted = DocumentConverter().convert(doc)
    if files:  # made as they are encoded, one at a time: a list of them took 1.7 KB a file
        converted["files"] = (file_record(n, *f[:4]) for n, f in enumerate(files))
        converted["relationships"] = itertools.chain(
            converted["relationships"],
            (contains_record(f[4], f"SPDXRef-File-{n}") for n, f in enumerate(files)))
    # the library's JSON writer validates, drops duplicates (a deep copy of the whole
    # document) and encodes: validated above, with no duplicates to drop (one link per
    # package and per file), so only its converter is used, and the encoding is ours
    return encode(converted)


def encode(document: dict[str, object]) -> bytes:
    """The document's JSON, sorted keys, each element of a list at its top on a line of its
    own: two SBOMs diff file by file and package by package, and every line is encoded by
    the json module's C encoder (an indented document is encoded in Python, 2.5x slower).
    A list may be given as an iterator (not empty), read once."""
    one = json.JSONEncoder(sort_keys=True, separators=(", ", ": ")).encode
    lines = []
    for key, value in sorted(document.items()):
        if isinstance(value, Iterator) or (isinstance(value, list) and value):
            lines.append(f" {one(key)}: [\n" + ",\n".join("  " + one(v) for v in value) + "\n ]")
        else:
            lines.append(f" {one(key)}: {one(value)}")
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def file_record(n: int, name: str, sha1: str, sha256: str, comment: str | None) -> dict[str, object]:
    """The SPDX JSON of image file number ``n``, as spdx-tools' FileConverter writes it."""
    record: dict[str, object] = {
        "SPDXID": f"SPDXRef-File-{n}", "fileName": name,
        "checksums": [{"algorithm": "SHA1", "checksumValue": sha1},
                      {"algorithm": "SHA256", "checksumValue": sha256}]}
    if comment is not None:
        record["comment"] = comment
    return record


def contains_record(container: str, element: str) -> dict[str, str]:
    """A CONTAINS relationship as spdx-tools' RelationshipConverter writes it."""
    return {"spdxElementId": container, "relationshipType": "CONTAINS",
            "relatedSpdxElement": element}


def add_to_tree(tree: ImageTree, spec: Spec, closure: Closure | None, pinned: Pinned | None,
                mtime: int) -> bytes:
    """Build the document and place it in the image; returns its bytes."""
    document = build_document(tree, spec, closure, pinned, mtime)
    from portable_service.builder.layout import mirror_host_parents

    tree.add_file(mirror_host_parents(tree, IMAGE_SBOM, "generated"), data=document,
                  origin=f"generated {IMAGE_SBOM}")
    return document


def image_sbom(fs: ImageFS, name: str) -> str:
    """The SBOM an image carries (``inspect --sbom``)."""
    from portable_service.errors import ImageError
    from portable_service.fs.views import read_text

    text = read_text(fs, str(IMAGE_SBOM), 256 << 20)  # bounded: the image is untrusted input
    if text is None:
        raise ImageError(f"{name} carries no SBOM ({IMAGE_SBOM})",
                         "it was built by another tool or an older portable-service; rebuild it")
    return text
