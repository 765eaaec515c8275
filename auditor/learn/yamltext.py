"""Deterministic YAML text for learned matrices: flow-style selectors and rules, and safe comments.

Stage: learning output, pure. Input: plain mappings, lists and strings. Output: YAML fragments that
``auditor.matrix`` reads back to the same values. Scalars are written plain only when they are certainly
read back as the same string (no YAML indicator, no boolean/null/number look-alike); anything else is a
double-quoted JSON string (valid YAML). Comment text is cluster data (pod names, DNS names, labels): every
character outside printable ASCII is escaped, so nothing can end a comment line or forge YAML.

Error policy: none needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Final

_PLAIN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_SPECIAL: Final = re.compile(
    r"^(y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF|null|Null|NULL)$"
)

Value = str | int | Sequence["Value"] | Mapping[str, "Value"]


def scalar(text: str) -> str:
    """A YAML scalar that reads back as the string ``text``."""
    if _PLAIN.match(text) and not _SPECIAL.match(text):
        return text
    return json.dumps(text)


def flow(value: Value) -> str:
    """A value in YAML flow style: ``{a: b, c: [d, e]}``; mapping keys keep their order."""
    if isinstance(value, str):
        return scalar(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{scalar(k)}: {flow(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(flow(v) for v in value) + "]"


def comment_text(text: str) -> str:
    """``text`` with every character outside printable ASCII escaped (``\\n``, ``\\x1b``, ``\\u2028``)."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0x20 <= code < 0x7F and ch != "\\":
            out.append(ch)
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def comment(text: str, indent: str = "") -> str:
    """One comment line (with its newline)."""
    return f"{indent}# {comment_text(text)}\n" if text else f"{indent}#\n"
