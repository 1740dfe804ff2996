"""Nix store paths: the image carries exactly the requisites Nix records, each path whole.

Two tiny derivations are built offline with Debian's nix-bin (no sandbox, no
build users, no substituters): ``ps-test-app`` refers to ``ps-test-lib``; a
third, ``ps-test-other``, is in the store but referenced by nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.closure import nix
from tests.builder.closure.closure_helpers import build_and_unpack, closure_of, unit
from tests.conftest import require_root, require_tool

pytestmark = pytest.mark.root

NIX_EXPR = """
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
    PATH = "/usr/bin:/bin";  # the host's tools: no sandbox, nothing from nixpkgs
  };
in rec {
  lib = mk "ps-test-lib" "mkdir -p $out/share; echo 'hello from the lib' > $out/share/greeting";
  app = mk "ps-test-app" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\\ncat ${lib}/share/greeting\\n' > $out/bin/hello
    chmod +x $out/bin/hello
  '';
  other = mk "ps-test-other" "echo unrelated > $out";
}
"""


def nix_build(tmp_path: Path, attr: str) -> str:
    nix_build = require_tool("nix-build")
    expr = tmp_path / "default.nix"
    expr.write_text(NIX_EXPR)
    proc = subprocess.run(
        [nix_build, "--no-out-link", "--option", "sandbox", "false", "--option", "build-users-group", "",
         "--option", "substituters", "", str(expr), "-A", attr],
        capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_image_carries_exactly_the_nix_requisites(tmp_path: Path) -> None:
    require_root()  # the Nix store of a single-user install belongs to root
    app = nix_build(tmp_path, "app")
    lib = nix_build(tmp_path, "lib")
    other = nix_build(tmp_path, "other")
    requisites = subprocess.run([require_tool("nix-store"), "--query", "--requisites", app],
                                capture_output=True, text=True, check=True).stdout.split()
    assert sorted(requisites) == sorted([app, lib])

    c = closure_of(tmp_path, units=[unit(f"{app}/bin/hello")])
    store_paths = {str(nix.store_path(p)) for p in c.nodes if nix.store_path(p)}
    assert store_paths == {app, lib}
    assert c.nodes[PurePosixPath(lib)].reason == f"Nix requisite of {app}"
    # store files are Nix's business: the script's /bin/sh is not added by the script resolver
    assert not any(str(p) in ("/bin/sh", "/usr/bin/dash") for p in c.nodes)

    # as with Nix itself, the impure /bin/sh is the user's to provide (verify insists on it)
    _, root = build_and_unpack(tmp_path, units=[unit(f"{app}/bin/hello")],
                               symlinks=[{"object": "/usr/bin/dash", "symlink": "/bin/sh"}])
    assert sorted(p.name for p in (root / "nix/store").iterdir()) == sorted(
        Path(p).name for p in (app, lib))
    assert Path(other).name not in {p.name for p in (root / "nix/store").iterdir()}
    assert (root / lib.lstrip("/") / "share/greeting").read_text() == "hello from the lib\n"
    assert (root / app.lstrip("/") / "bin/hello").stat().st_mode & 0o111


def test_unknown_store_path_is_one_error(tmp_path: Path) -> None:
    require_tool("nix-store")
    require_root()
    fake = Path("/nix/store/00000000000000000000000000000000-ps-test-not-valid")
    fake.mkdir(parents=True, exist_ok=True)
    try:
        from portable_service.errors import ClosureError

        with pytest.raises(ClosureError, match="nix-store cannot give the closure"):
            closure_of(tmp_path, contents=[str(fake)])
    finally:
        fake.rmdir()


def test_store_path_of() -> None:
    P = PurePosixPath
    assert nix.store_path(P("/nix/store/abc-x/bin/y")) == P("/nix/store/abc-x")
    assert nix.store_path(P("/nix/store")) is None
    assert nix.store_path(P("/usr/bin/x")) is None
