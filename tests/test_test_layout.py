"""The tests mirror src/ and import their helpers one way: ``from tests.<folder>.<module>``.

tests/ and every folder in it are packages, so two test files may share a name in
different folders and a helper has one module name wherever it is imported from.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src" / "portable_service"


def _code() -> list[Path]:
    """The test code: not the programs inside corpus cases (they go into images)."""
    return [p for p in sorted(TESTS.rglob("*.py")) if "__pycache__" not in p.parts
            and not any((d / "case.toml").exists() for d in p.parents)]


def _local_names() -> set[str]:
    """What a bare import of a test module or folder would start with."""
    names = {p.stem for p in _code()} | {p.parent.name for p in _code()}
    return names - {"__init__", "__pycache__", "tests"}


def test_every_test_folder_is_a_package() -> None:
    folders = {p.parent for p in _code()}
    missing = sorted(str(f.relative_to(TESTS.parent)) for f in folders
                     if not (f / "__init__.py").exists())
    assert missing == [], f"add an __init__.py to {missing}"


def test_helpers_are_imported_from_tests_only() -> None:
    local = _local_names()
    bad = []
    for path in _code():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else ["." * node.level]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith(".") or name.split(".")[0] in local:
                    bad.append(f"{path.relative_to(TESTS.parent)}:{node.lineno}: {name}")
    assert bad == [], f"import test helpers as tests.FOLDER.MODULE: {bad}"


def test_test_folders_mirror_src() -> None:
    """A folder of tests for a package of src/ bears its name (hostile/, corpus/ and e2e/
    cut across packages)."""
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    folders = {p.name for p in TESTS.iterdir() if (p / "__init__.py").exists()}
    assert folders - packages <= {"e2e", "hostile", "corpus", "cli", "__pycache__"}
