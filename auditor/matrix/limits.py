"""What a matrix may cost: its YAML nesting depth and its rule expansion (DESIGN §4.5).

Stage: configuration (matrix load). YAML aliases let a few kilobytes expand to deep trees or to millions of
(rule, source, destination) combinations; these limits refuse such a file before it costs stack, lookup
entries or metric series.

Error policy: :func:`check_expansion` raises :class:`~auditor.matrix.nodes.MatrixError` naming the file and
the line and key of the largest rule; :class:`DepthLimitedLoader` raises :class:`TooDeep` with the line,
which :func:`auditor.matrix.load.parse_matrix` reports as a MatrixError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import yaml

from auditor.matrix.model import Rule
from auditor.matrix.nodes import MatrixError

MAX_DEPTH: Final = 32
"""Deepest YAML nesting accepted; a real matrix needs 6 (``components.x.cidrs[0].except[0]``)."""


class TooDeep(Exception):
    """YAML nested deeper than :data:`MAX_DEPTH`; ``line`` is where the level too many starts."""

    def __init__(self, line: int) -> None:
        self.line = line


class DepthLimitedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting deeper than :data:`MAX_DEPTH` (composing recurses per level)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise TooDeep(self.peek_event().start_mark.line + 1)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


MAX_RULE_EXPANSION: Final = 10_000
"""Most (rule, source, destination) combinations a matrix may expand to: each is a lookup entry and a
``flow_auditor_rule_last_seen_timestamp_seconds`` series (YAML aliases make a few KB expand to millions)."""


def check_expansion(file: str, rules: Sequence[Rule], limit: int = MAX_RULE_EXPANSION) -> None:
    """Refuse a matrix whose rules expand to more than ``limit`` combinations, naming the largest rule."""
    sizes = [len(r.sources) * len(r.destinations) for r in rules]
    total = sum(sizes)
    if total > limit:
        big = rules[max(range(len(rules)), key=sizes.__getitem__)]
        raise MatrixError(
            file,
            big.line,
            f"allow[{big.index - 1}]",
            f"the rules expand to {total:,} (rule, from, to) combinations, more than the limit of {limit:,} "
            f"(this rule alone: {len(big.sources)} x {len(big.destinations)}); each one is a metric series, "
            "so list fewer components per rule or group workloads into broader components",
        )
