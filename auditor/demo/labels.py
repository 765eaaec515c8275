"""``source_label``/``destination_label`` flow filters as Hubble reads them, for the embedded demo server.

Stage: none of the pipeline's — the request filters of the demo server (:mod:`auditor.demo.filters`), which
stands in for Hubble. Input: the selector strings of a ``FlowFilter`` and an endpoint's Cilium labels
(``"source:key=value"``). Output: whether any selector selects the labels.

Hubble's behaviour (Cilium's ``filters/labels.go``): each string is a Kubernetes label selector whose keys
may carry a Cilium source prefix (``k8s:app=web``); a filter field matches when *any* of its selectors
selects the endpoint's labels. A key with a source matches only labels of that source; a key without one
(or with ``any:``) matches labels of any source.

Subset implemented: requirements joined by commas (all must hold), each ``key=value``, ``key==value``,
``key!=value``, ``key`` (exists) or ``!key`` (does not exist). Set-based requirements (``in``, ``notin``)
are refused rather than misread.

Error policy: :func:`compile_selector` raises :class:`ValueError` naming the selector (the server turns it
into ``INVALID_ARGUMENT``); matching never raises.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

ANY_SOURCE: Final = "any"
_KEY_RE: Final = re.compile(r"(?:([a-z0-9-]+):)?([A-Za-z0-9][-A-Za-z0-9_./]*)")
_VALUE_RE: Final = re.compile(r"[-A-Za-z0-9_.]*")


@dataclass(frozen=True, slots=True)
class _Requirement:
    source: str  # "any" for every source
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str

    def holds(self, labels: dict[tuple[str, str], str], keys: dict[str, list[str]]) -> bool:
        if self.source == ANY_SOURCE:
            values = keys.get(self.key, [])
        else:
            value = labels.get((self.source, self.key))
            values = [] if value is None else [value]
        if self.op == "exists":
            return bool(values)
        if self.op == "!exists":
            return not values
        if self.op == "=":
            return self.value in values
        return self.value not in values  # "!=": also true when the key is absent (as Kubernetes has it)


Selector = tuple[_Requirement, ...]


def _requirement(text: str, selector: str) -> _Requirement:
    part = text.strip()
    op, value = "exists", ""
    if part.startswith("!"):
        op, key_text = "!exists", part[1:].strip()
    elif "!=" in part:
        key_text, value = (s.strip() for s in part.split("!=", 1))
        op = "!="
    elif "=" in part:
        key_text, value = (s.strip() for s in part.replace("==", "=", 1).split("=", 1))
        op = "="
    else:
        key_text = part
    key = _KEY_RE.fullmatch(key_text)
    if key is None or not _VALUE_RE.fullmatch(value):
        raise ValueError(
            f"label selector {selector!r}: cannot read {part!r} (supported: key=value, "
            "key!=value, key, !key, joined by commas; a key may start with source:)"
        )
    return _Requirement(key.group(1) or ANY_SOURCE, key.group(2), op, value)


def compile_selector(selector: str) -> Selector:
    """One selector string. Raises ValueError naming it."""
    if " in " in selector or " notin " in selector or "(" in selector:
        raise ValueError(f"label selector {selector!r}: set-based requirements are not implemented")
    if not selector.strip():
        return ()  # selects everything, as an empty Kubernetes selector does
    return tuple(_requirement(part, selector) for part in selector.split(","))


def split_labels(labels: Sequence[str]) -> tuple[dict[tuple[str, str], str], dict[str, list[str]]]:
    """Cilium labels (``source:key=value``) by (source, key), and the values of each key over sources."""
    by_source: dict[tuple[str, str], str] = {}
    by_key: dict[str, list[str]] = {}
    for label in labels:
        head, _, value = label.partition("=")
        source, colon, key = head.partition(":")
        if not colon:
            source, key = "unspec", head
        by_source[(source, key)] = value
        by_key.setdefault(key, []).append(value)
    return by_source, by_key


def selects_any(selectors: Sequence[Selector], labels: Sequence[str]) -> bool:
    """Whether any of ``selectors`` selects ``labels``."""
    by_source, by_key = split_labels(labels)
    return any(all(r.holds(by_source, by_key) for r in s) for s in selectors)


__all__ = ["Selector", "compile_selector", "selects_any", "split_labels"]
