"""Ground truth types, Hubble's time format and the small helpers every part shares.

Part of :mod:`auditor.scenario`; its docstring gives the stage, the modelling choices and the error
policy.
"""

from __future__ import annotations

import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

DEFAULT_START: Final = datetime(2026, 11, 23, 9, 0, 0, tzinfo=UTC)
OUTCOMES: Final = ("judged", "reply", "provisional", "ignored", "out_of_scope", "lost")

NS: Final = 1_000_000_000
MS: Final = 1_000_000
US: Final = 1_000
CLUSTER: Final = "default"

Event = dict[str, Any]


# ------------------------------------------------------------------------------------------------
# Ground truth types
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedEdge:
    """One edge of the example as the auditor should report it (DESIGN §6 replay report ``edges``).

    ``verdicts`` and ``drop_reasons`` count connections (not events) by verdict / drop reason; they are
    plain dicts (read-only by convention) and left out of the hash. ``rule`` is the 1-based index of the
    matching allow rule of ``examples/airflow/matrix.yaml``, ``None`` for unexpected classes.
    """

    source: str
    destination: str
    port: int | None
    protocol: str
    cls: str
    connections: int
    verdicts: Mapping[str, int] = field(hash=False)
    drop_reasons: Mapping[str, int] = field(hash=False)
    rule: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The edge in the spelling of the JSON replay report (``class`` instead of ``cls``)."""
        return {
            "source": self.source,
            "destination": self.destination,
            "port": self.port,
            "protocol": self.protocol,
            "class": self.cls,
            "connections": self.connections,
            "verdicts": dict(self.verdicts),
            "drop_reasons": dict(self.drop_reasons),
            "rule": self.rule,
        }


@dataclass(frozen=True)
class Scenario:
    """Events in stream order and their ground truth.

    ``outcomes[i]`` is the outcome DESIGN §5 intends for ``events[i]`` (``judged``, ``reply``,
    ``provisional``, ``ignored``, ``out_of_scope``; ``lost`` for lost-event records, which are not flows).
    """

    events: list[Event]
    outcomes: list[str]
    expected_edges: list[ExpectedEdge]
    unused_rules: list[int] = field(default_factory=list)

    def outcome_counts(self) -> dict[str, int]:
        """Events per outcome (every outcome present, zeros included)."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for outcome in self.outcomes:
            counts[outcome] += 1
        return counts

    def class_counts(self) -> dict[str, int]:
        """Connections per class over all expected edges."""
        counts = dict.fromkeys(_CLASSES, 0)
        for edge in self.expected_edges:
            counts[edge.cls] += edge.connections
        return counts


_CLASSES: Final = ("expected_allowed", "expected_dropped", "unexpected_allowed", "unexpected_dropped")

# A hand-written mirror of examples/airflow/matrix.yaml's allow list: (rule, from, to, ports).
# tests/test_scenario.py checks it against the YAML file.
RULES: Final[tuple[tuple[int, tuple[str, ...], str, tuple[tuple[int, str], ...]], ...]] = (
    (1, ("traefik",), "webserver", ((8080, "TCP"),)),
    (2, ("kubelet",), "webserver", ((8080, "TCP"),)),
    (3, ("webserver", "scheduler", "worker", "triggerer"), "postgresql", ((5432, "TCP"),)),
    (4, ("webserver", "scheduler", "worker"), "redis", ((6379, "TCP"), (26379, "TCP"))),
    (5, ("webserver", "scheduler"), "worker", ((8793, "TCP"),)),
    (6, ("webserver", "scheduler", "worker", "triggerer"), "kube-dns", ((53, "UDP"), (53, "TCP"))),
    (7, ("webserver", "scheduler", "worker", "triggerer"), "internet", ((443, "TCP"),)),
    (8, ("scheduler", "worker", "triggerer", "webserver"), "statsd", ((9125, "UDP"),)),
    (9, ("prometheus",), "webserver", ((8080, "TCP"),)),
    (10, ("prometheus",), "worker", ((8793, "TCP"),)),
    (11, ("prometheus",), "statsd", ((9102, "TCP"),)),
    (12, ("prometheus",), "postgresql", ((9187, "TCP"),)),
    (13, ("prometheus",), "redis", ((9121, "TCP"),)),
)


def rule_for(source: str, destination: str, port: int, protocol: str) -> int | None:
    for number, sources, dest, ports in RULES:
        if source in sources and destination == dest and (port, protocol) in ports:
            return number
    return None


def class_of(allowed: bool, delivered: bool) -> str:
    return ("expected_" if allowed else "unexpected_") + ("allowed" if delivered else "dropped")


# ------------------------------------------------------------------------------------------------
# Time
# ------------------------------------------------------------------------------------------------


def to_ns(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * US


class TimeFormatter:
    """RFC 3339 in Go protojson's spelling; caches the date/time prefix of the current second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ns: int) -> str:
        second, nanos = divmod(ns, NS)
        if second != self._second:
            self._second = second
            self._prefix = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(second))
        if nanos == 0:
            return self._prefix + "Z"
        if nanos % MS == 0:
            return f"{self._prefix}.{nanos // MS:03d}Z"
        if nanos % US == 0:
            return f"{self._prefix}.{nanos // US:06d}Z"
        return f"{self._prefix}.{nanos:09d}Z"


def format_time(ns: int) -> str:
    """Nanoseconds since the epoch as Hubble's jsonpb writes them (``2026-11-23T09:00:00.123456789Z``)."""
    return TimeFormatter()(ns)


def retime(event: Event, ns: int) -> Event:
    """A copy of ``event`` stamped with time ``ns`` (envelope and flow), for replaying in a loop.

    Only the envelope and the flow dict are copied; nested objects are shared with ``event``.
    """
    stamp = format_time(ns)
    out = dict(event)
    out["time"] = stamp
    flow = event.get("flow")
    if isinstance(flow, dict):
        new_flow = dict(flow)
        new_flow["time"] = stamp
        out["flow"] = new_flow
    return out
