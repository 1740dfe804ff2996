"""os-release(5): the file portabled reads an image's identity from.

The builder writes it (builder/layout.py) and the read side parses it back
(look/facts.py); the format's rules are stated here once.
"""

from __future__ import annotations


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): KEY=VALUE lines, values optionally quoted with shell escapes."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = _unescape(value)
        out[key.strip()] = value
    return out


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value) and value[i + 1] in '"\\$`':
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


def quote_os_release(value: str) -> str:
    if value and all(c.isalnum() or c in "._-" for c in value):
        return value
    escaped = "".join("\\" + c if c in '"\\$`' else c for c in value)
    return f'"{escaped}"'
