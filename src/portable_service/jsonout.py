"""``--json`` for every verb that prints facts: one flag spelling, one versioned envelope.

Every document is an object whose ``"format"`` is ``portable-service/<verb>/<version>``
(docs/json.md describes each). A consumer checks it before reading anything else; the
version goes up only when a key changes meaning or goes away (new keys may appear).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

SCHEMA_VERSION = 1
STYLES = ("pretty", "short", "off")
JSON_HELP = "print JSON (docs/json.md); --json=short prints it on one line, --json=off not at all"


def format_id(verb: str) -> str:
    return f"portable-service/{verb}/{SCHEMA_VERSION}"


def add_json_flag(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--json``, ``--json=pretty``, ``--json=short``, ``--json=off``.

    Each spelling is an option of its own that takes no value, so a bare ``--json``
    never swallows the argument after it (``--json IMAGE``). The verbs' options default
    to SUPPRESS: a ``--json`` given before the verb stays when the verb has none of its own.
    """
    keep = argparse.SUPPRESS if default is None else default
    p.add_argument("--json", dest="json", action="store_const", const="pretty", default=keep,
                   help=JSON_HELP)
    for style in STYLES:
        p.add_argument(f"--json={style}", dest="json", action="store_const", const=style,
                       default=keep, help=argparse.SUPPRESS)
    if default is None:
        p.set_defaults(json_verb=True)


def wanted(args: argparse.Namespace) -> str | None:
    """The JSON style asked for, or None for text."""
    style = getattr(args, "json", "off")
    return None if style == "off" else str(style)


def document(verb: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"format": format_id(verb), **data}


def emit(verb: str, data: dict[str, Any], style: str, out: TextIO | None = None) -> None:
    """Print ``data`` as the verb's document: keys sorted, so output is byte-reproducible."""
    doc = document(verb, data)
    text = (json.dumps(doc, sort_keys=True, separators=(",", ":")) if style == "short"
            else json.dumps(doc, sort_keys=True, indent=2))
    print(text, file=out or sys.stdout)
