"""The SBOM every build writes (builder/sbom.py): SPDX 2.3, read back with spdx-tools' own
parser and validator; packages with versions and licences; each file with its hashes and
the package it came from; byte-identical for identical builds; ``inspect --sbom``."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from portable_service.builder.sbom import (
    HOST_FILE,
    MADE_FILE,
    contains_record,
    encode,
    file_record,
    licences,
)
from tests.conftest import require


def test_debian_licence_names_map_to_spdx():
    text = (b"Files: *\nLicense: GPL-2+\n\nFiles: lib/*\nLicense: LGPL-2.1+ or BSD-3-clause\n\n"
            b"License: Expat\n Permission is hereby granted...\n\nLicense: Custom_Thing\n")
    assert licences(text) == ["BSD-3-Clause", "GPL-2.0-or-later", "LGPL-2.1-or-later",
                              "LicenseRef-Custom-Thing", "MIT"]
    assert licences(b"no fields here") == []


def test_every_mapped_licence_is_on_the_list_the_sbom_is_validated_against():
    """A name the SPDX list lacks (postgresql's "SSLeay") fails validation and the build:
    what is not on the list becomes a LicenseRef; an SPDX id written as such is kept."""
    from spdx_tools.common.spdx_licensing import spdx_licensing

    from portable_service.builder.sbom import DEBIAN_TO_SPDX, spdx_licence

    for name in DEBIAN_TO_SPDX:
        assert spdx_licence(name) in spdx_licensing.known_symbols, name
    assert licences(b"License: SSLeay\n\nLicense: Not-A-Licence\n\nLicense: 0BSD\n") == [
        "0BSD", "LicenseRef-Not-A-Licence", "SSLeay-standalone"]


def host_owner(path: str) -> str:
    for spelling in (path, path.removeprefix("/usr")):  # dpkg says /bin/cat on merged-/usr hosts
        proc = subprocess.run(["dpkg", "-S", spelling], capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return proc.stdout.split(":", 1)[0]
    require(False, f"{path} is not from a package on this host")
    return ""


def test_host_build_sbom_names_packages_and_host_files(tmp_path, cli):
    own = tmp_path / "hello.txt"
    own.write_text("hello\n")
    args = ["build", "--pname", "demo", "--version", "1", "--squash-compression", "gzip", "-q",
            "--unit", "demo.service", "--content", "/usr/bin/cat",
            "--content", f"{own}=/srv/hello.txt", "-o", str(tmp_path / "out")]
    (tmp_path / "demo.service").write_text("[Service]\nExecStart=/usr/bin/cat /srv/hello.txt\n")
    assert cli(*args).returncode == 0
    sbom = tmp_path / "out/demo_1.spdx.json"
    first = sbom.read_bytes()

    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    document = parse_file(str(sbom))
    assert validate_full_spdx_document(document) == []
    assert document.creation_info.spdx_version == "SPDX-2.3"
    data = json.loads(first)
    files = {f["fileName"]: f for f in data["files"]}
    sha = {c["algorithm"]: c["checksumValue"] for c in files["./usr/bin/cat"]["checksums"]}
    assert sha["SHA256"] == hashlib.sha256(Path("/usr/bin/cat").read_bytes()).hexdigest()
    owner = host_owner("/usr/bin/cat")
    by_id = {p["SPDXID"]: p for p in data["packages"]}
    contains = {r["relatedSpdxElement"]: r["spdxElementId"] for r in data["relationships"]
                if r["relationshipType"] == "CONTAINS"}
    package = by_id[contains[files["./usr/bin/cat"]["SPDXID"]]]
    assert package["name"] == owner and package["versionInfo"]
    assert package["licenseInfoFromFiles"] != ["NOASSERTION"]  # coreutils: GPL-3.0-or-later
    assert files["./srv/hello.txt"]["comment"] == HOST_FILE
    assert files["./etc/os-release"]["comment"] == MADE_FILE
    # the same build gives the same document, and the image carries it
    assert cli(*args).returncode == 0
    assert sbom.read_bytes() == first
    from portable_service.harness.trial import default_releases

    assert default_releases(tmp_path / "out/demo_1.raw") == ()  # a host image: try's default
    shown = cli("inspect", "--sbom", str(tmp_path / "out/demo_1.raw"))
    assert shown.returncode == 0 and shown.stdout.encode() == first


def test_inspect_sbom_of_an_image_without_one_is_one_line(tmp_path, cli):
    require(subprocess.run(["which", "mksquashfs"], capture_output=True).returncode == 0,
            "mksquashfs is not installed")
    (tmp_path / "root/etc").mkdir(parents=True)
    (tmp_path / "root/etc/os-release").write_text("ID=debian\n")
    image = tmp_path / "other_1.raw"
    subprocess.run(["mksquashfs", str(tmp_path / "root"), str(image), "-quiet", "-noappend"],
                   check=True, capture_output=True)
    proc = cli("inspect", "--sbom", str(image))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "carries no SBOM" in proc.stderr


def test_file_and_link_records_are_the_librarys_own():
    """The files and their CONTAINS links are written without the library's objects (over
    100 us each): what is written is what its converters write of the same objects, and a
    document of them is valid by its validator."""
    from datetime import datetime

    from spdx_tools.spdx.jsonschema.file_converter import FileConverter
    from spdx_tools.spdx.jsonschema.relationship_converter import RelationshipConverter
    from spdx_tools.spdx.model.actor import Actor, ActorType
    from spdx_tools.spdx.model.checksum import Checksum, ChecksumAlgorithm
    from spdx_tools.spdx.model.document import CreationInfo, Document
    from spdx_tools.spdx.model.file import File
    from spdx_tools.spdx.model.package import Package
    from spdx_tools.spdx.model.relationship import Relationship, RelationshipType
    from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    names = ["./usr/bin/cat", "./srv/a file with spaces", "./srv/caf\u00e9",
             "./srv/\"quoted\"\\", "./srv/bad-\udcff-utf8"]
    records, files, links = [], [], []
    for n, name in enumerate(names):
        sha1, sha256 = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest(), \
            hashlib.sha256(b"%d" % n).hexdigest()
        comment = [None, MADE_FILE, HOST_FILE][n % 3]
        owner = "SPDXRef-Package-deb-coreutils" if comment is None else "SPDXRef-Package-image-t"
        records.append((file_record(n, name, sha1, sha256, comment),
                        contains_record(owner, f"SPDXRef-File-{n}")))
        files.append(File(name, f"SPDXRef-File-{n}", [Checksum(ChecksumAlgorithm.SHA1, sha1),
                                                      Checksum(ChecksumAlgorithm.SHA256, sha256)],
                          comment=comment))
        links.append(Relationship(owner, RelationshipType.CONTAINS, f"SPDXRef-File-{n}"))
    info = CreationInfo(spdx_version="SPDX-2.3", spdx_id="SPDXRef-DOCUMENT", name="t_1",
                        document_namespace="https://portable-service.invalid/spdx/t",
                        creators=[Actor(ActorType.TOOL, "portable-service")],
                        created=datetime(2026, 1, 1))
    packages = [Package(i, i[16:], SpdxNoAssertion())
                for i in ("SPDXRef-Package-image-t", "SPDXRef-Package-deb-coreutils")]
    doc = Document(info, packages=packages, files=files, relationships=[
        Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, packages[0].spdx_id),
        *links])
    assert validate_full_spdx_document(doc) == []
    for (record, link), file, relationship in zip(records, files, links, strict=True):
        assert record == FileConverter().convert(file, doc)
        assert link == RelationshipConverter().convert(relationship)


def test_the_encoding_is_json_with_a_line_per_element():
    document = {"b": [{"y": 1, "x": "\u00e9"}, {"z": None}], "a": {"k": [1, 2]}, "c": [], "d": "s"}
    text = encode(document)
    assert json.loads(text) == document
    assert text.decode("ascii").splitlines() == [
        "{", ' "a": {"k": [1, 2]},', ' "b": [', '  {"x": "\\u00e9", "y": 1},', '  {"z": null}',
        " ],", ' "c": [],', ' "d": "s"', "}"]
