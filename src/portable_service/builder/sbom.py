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
import json
import os
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from portable_service.builder.spec import Spec
from portable_service.errors import ToolError
from portable_service.fs.tree import ImageTree, Kind
from portable_service.fs.views import ImageFS

if TYPE_CHECKING:
    from spdx_tools.spdx.model.document import Document
    from spdx_tools.spdx.model.relationship import Relationship

    from portable_service.builder.closure import Closure
    from portable_service.builder.repo import Pinned

IMAGE_SBOM = PurePosixPath("/usr/lib/portable-service/sbom.spdx.json")
NAMESPACE = "https://portable-service.invalid/spdx"
HOST_FILE = "a file of the build host that no Debian package ships"
MADE_FILE = "made by the build"
SBOM_VALIDATION_SLICE = 32  # files validated together (see build_document)

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
    from spdx_tools.spdx.model.checksum import Checksum, ChecksumAlgorithm
    from spdx_tools.spdx.model.document import CreationInfo, Document
    from spdx_tools.spdx.model.extracted_licensing_info import ExtractedLicensingInfo
    from spdx_tools.spdx.model.file import File
    from spdx_tools.spdx.model.package import Package, PackageVerificationCode
    from spdx_tools.spdx.model.relationship import Relationship, RelationshipType
    from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion

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
        for entry in tree:
            if entry.kind is not Kind.FILE or entry.source is None:
                continue
            node = nodes.get(entry.path)
            owner = node.package if node is not None and node.package in meta else None
            if owner is None:
                src = str(entry.source)
                owner = owners.get(src) or owners.get(os.path.realpath(src))
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
    files: list[tuple[PurePosixPath, bytes, bytes]] = []
    for entry in sorted(tree, key=lambda e: str(e.path)):
        if entry.kind is not Kind.FILE or entry.path == IMAGE_SBOM:
            continue
        h1, h256 = hashlib.sha1(), hashlib.sha256()  # SPDX requires SHA-1; SHA-256 is what counts
        with entry.open() as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h1.update(chunk)
                h256.update(chunk)
        files.append((entry.path, h1.digest(), h256.digest()))
    digest = hashlib.sha256(b"".join(os.fsencode(str(p)) + b"\0" + s for p, _, s in files)).hexdigest()
    image_id = _spdx_id("Package", f"image-{spec.pname}")
    info = CreationInfo(
        spdx_version="SPDX-2.3", spdx_id="SPDXRef-DOCUMENT", name=f"{spec.pname}_{spec.version}",
        document_namespace=f"{NAMESPACE}/{spec.pname}-{spec.version}-{digest[:32]}",
        creators=[Actor(ActorType.TOOL, "portable-service")], created=created)
    sha1s: dict[str, list[str]] = {}  # package id -> its files' SHA-1s (verification code)
    for fpath, fsha1, _ in files:
        fowner = package_of.get(fpath)
        sha1s.setdefault(_spdx_id("Package", f"deb-{fowner}") if fowner else image_id,
                         []).append(fsha1.hex())

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
            if source else None, homepage=homepage or None,
            license_info_from_files=exprs or [SpdxNoAssertion()],
            license_declared=SpdxNoAssertion(), license_concluded=SpdxNoAssertion(),
            copyright_text=SpdxNoAssertion(), supplier=Actor(ActorType.ORGANIZATION, "Debian")))
        package_links.append(Relationship(image_id, RelationshipType.CONTAINS, pid))
    spdx_files = []
    file_links = []
    for n, (fpath, fsha1, fsha256) in enumerate(files):
        fid = f"SPDXRef-File-{n}"
        owner = package_of.get(fpath)
        placed = tree.get(fpath)
        made = placed is not None and placed.source is None
        comment = None if owner else (MADE_FILE if made else HOST_FILE)
        spdx_files.append(File("." + str(fpath), fid,
                               [Checksum(ChecksumAlgorithm.SHA1, fsha1.hex()),
                                Checksum(ChecksumAlgorithm.SHA256, fsha256.hex())],
                               comment=comment))
        container = _spdx_id("Package", f"deb-{owner}") if owner else image_id
        file_links.append(Relationship(container, RelationshipType.CONTAINS, fid))
    doc = Document(info, packages=packages, files=spdx_files,
                   relationships=package_links + file_links,
                   extracted_licensing_info=[extracted[k] for k in sorted(extracted)])
    problems = validation_problems(doc)
    if problems:  # a field this build filled in wrongly
        raise ToolError(f"the SBOM does not validate as SPDX 2.3: {'; '.join(problems)[:300]}",
                        "report it; the image was not written")
    # the library's JSON writer validates, drops duplicates (a deep copy of the whole
    # document) and encodes: validated above, with no duplicates to drop (one link per
    # package and per file), so only its converter is used, and the encoding is ours:
    # sorted keys, one-space indent, the same bytes for the same image
    return (json.dumps(DocumentConverter().convert(doc), indent=1, sort_keys=True)
            + "\n").encode()


def validation_problems(doc: Document, step: int = SBOM_VALIDATION_SLICE) -> list[str]:
    """spdx-tools' validation of ``doc``, made linear: its messages, none when it is valid.

    The library looks each relationship's ends up in a list of all the document's ids,
    made anew for each one (spdx/tools-python#818): 5,000 files cost 7 s, 80,000 half an
    hour. So it runs on parts. The first has the creation info, the packages and the
    relationships that name no file; each other part a slice of ``step`` files with the
    relationships naming them (one naming files of two slices goes to a part of its own
    with those files), the document's own DESCRIBES relationships, and in place of the
    packages their ids (a package with nothing but its id and name): every element is
    checked once against everything it refers to, and a package's licences are parsed
    once, not once per slice. Ids unique across the parts are checked on the whole list of
    ids, once.
    """
    from spdx_tools.spdx.model.document import Document
    from spdx_tools.spdx.model.file import File
    from spdx_tools.spdx.model.package import Package
    from spdx_tools.spdx.model.relationship import RelationshipType
    from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    from spdx_tools.spdx.validation.spdx_id_validators import get_list_of_all_spdx_ids

    slice_of = {f.spdx_id: n // step for n, f in enumerate(doc.files)}
    files = {f.spdx_id: f for f in doc.files}
    shared: list[Relationship] = []
    by_slice: dict[int, list[Relationship]] = {}
    across: list[Relationship] = []
    for r in doc.relationships:
        ends = {slice_of[e] for e in (r.spdx_element_id, r.related_spdx_element_id)
                if isinstance(e, str) and e in slice_of}
        if not ends:
            shared.append(r)
        elif len(ends) == 1:
            by_slice.setdefault(ends.pop(), []).append(r)
        else:
            across.append(r)
    describes = [r for r in shared if r.relationship_type is RelationshipType.DESCRIBES
                 and r.spdx_element_id == doc.creation_info.spdx_id]
    stubs = [Package(p.spdx_id, p.name, SpdxNoAssertion()) for p in doc.packages]
    parts: list[tuple[list[Package], list[File], list[Relationship]]] = [
        (doc.packages, [], shared)]
    parts += [(stubs, doc.files[k:k + step], describes + by_slice.get(k // step, []))
              for k in range(0, len(doc.files), step)]
    for r in across:
        named = [files[e] for e in (r.spdx_element_id, r.related_spdx_element_id)
                 if isinstance(e, str) and e in files]
        parts.append((stubs, named, [*describes, r]))
    version = doc.creation_info.spdx_version
    problems: list[str] = []
    for part_packages, part_files, links in parts:
        part = Document(doc.creation_info, packages=part_packages, files=part_files,
                        relationships=links,
                        extracted_licensing_info=doc.extracted_licensing_info)
        problems += [m.validation_message for m in validate_full_spdx_document(part, version)
                     if m.validation_message not in problems]
    twice = sorted(i for i, n in Counter(get_list_of_all_spdx_ids(doc)).items() if n > 1)
    if twice:
        problems.append(f"every spdx_id must be unique within the document, but found the "
                        f"following duplicates: {twice}")
    return problems


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
