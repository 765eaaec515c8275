"""The probe model shared by the policy evaluators: the ends of a connection, port sets, and decisions.

Stage: offline tooling (``flow-auditor policies diff``); pure data and arithmetic, no I/O.

- Subjects: :class:`Pod` (with its namespace's labels and, optionally, named container ports),
  :class:`External` (an address outside the cluster, or a DNS name whose address is not known statically),
  :class:`Node` (the node a pod runs on: Cilium's ``host``) and :class:`Reserved` (another Cilium reserved
  identity: ``remote-node``, ``kube-apiserver``, ``health``, ``ingress``, ``init``, ``unmanaged``).
- :class:`PortSet`: per protocol, a set of inclusive port ranges. ``TCP``, ``UDP`` and ``SCTP`` cover ports
  1-65535; ``ICMPv4``/``ICMPv6`` stand for an echo request only (port 0), which is what the comparison
  probes. Evaluators answer with port sets, so a comparison is exact over every port, not a sample.
- :class:`Grant` (one policy rule that matches a peer, on a port set), :class:`Side` (what one end's
  policies decide in one direction) and :class:`Decision` (both sides of a connection).

Error policy: none needed (values are built by the evaluators, which validate their input).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
TRANSPORT: Final = ("TCP", "UDP", "SCTP")
ICMP: Final = ("ICMPv4", "ICMPv6")
PROTOCOLS: Final = (*TRANSPORT, *ICMP)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --------------------------------------------------------------------------------------------------
# The ends of a connection


@dataclass(frozen=True, slots=True)
class Pod:
    """A pod: its namespace, labels, the labels of its namespace and (optionally) its address."""

    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ip: str | None = None
    named_ports: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (protocol, port)
    service_account: str | None = None

    def all_namespace_labels(self) -> dict[str, str]:
        """The namespace's labels, with the ``kubernetes.io/metadata.name`` label the API server sets."""
        return {**self.namespace_labels, NAMESPACE_NAME_LABEL: self.namespace}

    def __hash__(self) -> int:
        return hash((self.namespace, tuple(sorted(self.labels.items())), self.ip))


@dataclass(frozen=True, slots=True)
class External:
    """Outside the cluster: an address, or (``ip`` empty) DNS ``names`` whose address is not known."""

    ip: str = ""
    names: tuple[str, ...] = ()

    @property
    def version(self) -> int | None:
        return ipaddress.ip_address(self.ip).version if self.ip else None


@dataclass(frozen=True, slots=True)
class Node:
    """The node the other end runs on (Cilium's ``host`` entity)."""

    name: str = "node"
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Reserved:
    """Another Cilium reserved identity (``remote-node``, ``kube-apiserver``, ``health``…)."""

    entity: str


Subject = Pod | External | Node | Reserved


# --------------------------------------------------------------------------------------------------
# Port sets

Ranges = tuple[tuple[int, int], ...]
_FULL: Final[dict[str, Ranges]] = {
    **{p: ((1, 65535),) for p in TRANSPORT},
    **{p: ((0, 0),) for p in ICMP},
}


def _normalise(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _subtract(a: Ranges, b: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in a:
        cur = lo
        for blo, bhi in b:
            if bhi < cur or blo > hi:
                continue
            if blo > cur:
                out.append((cur, blo - 1))
            cur = max(cur, bhi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class PortSet:
    """Per protocol, disjoint sorted inclusive ranges. Immutable; build with the class methods."""

    ranges: tuple[tuple[str, Ranges], ...] = ()

    @classmethod
    def of(cls, mapping: Mapping[str, Iterable[tuple[int, int]]]) -> PortSet:
        items = []
        for proto in PROTOCOLS:
            if proto in mapping:
                rs = _intersect(_normalise(mapping[proto]), _FULL[proto])
                if rs:
                    items.append((proto, rs))
        return cls(tuple(items))

    @classmethod
    def all(cls) -> PortSet:
        return ALL

    @classmethod
    def single(cls, protocol: str, lo: int, hi: int | None = None) -> PortSet:
        return cls.of({protocol: [(lo, lo if hi is None else hi)]})

    def get(self, protocol: str) -> Ranges:
        for proto, rs in self.ranges:
            if proto == protocol:
                return rs
        return ()

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def contains(self, protocol: str, port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in self.get(protocol))

    def _combine(self, other: PortSet, op: str) -> PortSet:
        out: dict[str, Ranges] = {}
        for proto in PROTOCOLS:
            a, b = self.get(proto), other.get(proto)
            if op == "|":
                out[proto] = _normalise((*a, *b))
            elif op == "&":
                out[proto] = _intersect(a, b)
            else:
                out[proto] = _subtract(a, b)
        return PortSet(tuple((p, rs) for p, rs in out.items() if rs))

    def __or__(self, other: PortSet) -> PortSet:
        return self._combine(other, "|")

    def __and__(self, other: PortSet) -> PortSet:
        return self._combine(other, "&")

    def __sub__(self, other: PortSet) -> PortSet:
        return self._combine(other, "-")

    @staticmethod
    def union(sets: Iterable[PortSet]) -> PortSet:
        merged: dict[str, list[tuple[int, int]]] = {}
        for s in sets:
            for proto, rs in s.ranges:
                merged.setdefault(proto, []).extend(rs)
        return PortSet.of(merged)

    def items(self) -> list[tuple[str, int, int]]:
        """``(protocol, lo, hi)`` for every range, protocols in a fixed order."""
        return [(proto, lo, hi) for proto, rs in self.ranges for lo, hi in rs]

    def __str__(self) -> str:
        return ", ".join(format_range(p, lo, hi) for p, lo, hi in self.items()) or "nothing"


ALL: Final = PortSet.of(_FULL)
NONE: Final = PortSet()


def format_range(protocol: str, lo: int, hi: int) -> str:
    """``5432/TCP``, ``8000-8010/TCP``, ``ICMPv4``; ``any/TCP`` for the whole TCP range."""
    if protocol in ICMP:
        return protocol
    if (lo, hi) == (1, 65535):
        return f"any/{protocol}"
    return f"{lo}/{protocol}" if lo == hi else f"{lo}-{hi}/{protocol}"


# --------------------------------------------------------------------------------------------------
# Decisions


@dataclass(frozen=True, slots=True)
class Grant:
    """A policy rule matching the peer: it allows (or, in a deny list, denies) ``ports``."""

    policy: str
    ports: PortSet
    l7: bool = False  # allowed at L4, but an L7 rule (HTTP, Kafka, DNS…) filters what passes


@dataclass(frozen=True, slots=True)
class Side:
    """One end of a connection in one direction: isolated or not, and the grants that apply."""

    isolated: bool
    allows: tuple[Grant, ...] = ()
    denies: tuple[Grant, ...] = ()
    reason: str = ""

    @property
    def allowed_ports(self) -> PortSet:
        base = PortSet.union(g.ports for g in self.allows) if self.isolated else ALL
        return base - PortSet.union(g.ports for g in self.denies)

    @property
    def l7_ports(self) -> PortSet:
        """Ports allowed only through rules with L7 filtering."""
        l7 = PortSet.union(g.ports for g in self.allows if g.l7)
        return l7 - PortSet.union(g.ports for g in self.allows if not g.l7)

    def allowed_by(self, protocol: str, port: int) -> tuple[str, ...]:
        return _refs(g for g in self.allows if g.ports.contains(protocol, port))

    def denied_by(self, protocol: str, port: int) -> tuple[str, ...]:
        return _refs(g for g in self.denies if g.ports.contains(protocol, port))

    def allows_port(self, protocol: str, port: int) -> bool:
        return self.allowed_ports.contains(protocol, port)


def _refs(grants: Iterable[Grant]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(g.policy for g in grants))


@dataclass(frozen=True, slots=True)
class Decision:
    """Both sides of a connection: ``egress`` at the source, ``ingress`` at the destination."""

    egress: Side
    ingress: Side

    @property
    def allowed_ports(self) -> PortSet:
        return self.egress.allowed_ports & self.ingress.allowed_ports

    @property
    def l7_ports(self) -> PortSet:
        return self.allowed_ports & (self.egress.l7_ports | self.ingress.l7_ports)

    def allows(self, protocol: str, port: int) -> bool:
        return self.allowed_ports.contains(protocol, port)

    def allowed_by(self, protocol: str, port: int) -> tuple[str, ...]:
        return tuple(
            dict.fromkeys((*self.egress.allowed_by(protocol, port), *self.ingress.allowed_by(protocol, port)))
        )

    def denied_by(self, protocol: str, port: int) -> tuple[str, ...]:
        return tuple(
            dict.fromkeys((*self.egress.denied_by(protocol, port), *self.ingress.denied_by(protocol, port)))
        )


class Evaluator:
    """Policies that decide one side of a connection (:meth:`side`); a connection's decision is its
    egress side at the source and its ingress side at the destination."""

    def side(self, subject: Subject, peer: Subject, destination: Subject, *, egress: bool) -> Side:
        raise NotImplementedError

    def evaluate(self, source: Subject, destination: Subject) -> Decision:
        """Both sides of a connection from ``source`` to ``destination``, for every port at once."""
        return Decision(
            self.side(source, destination, destination, egress=True),
            self.side(destination, source, destination, egress=False),
        )

    def allows(self, source: Subject, destination: Subject, protocol: str, port: int) -> bool:
        """``protocol`` is TCP/UDP/SCTP, or ICMPv4/ICMPv6 (an echo request; ``port`` ignored)."""
        return self.evaluate(source, destination).allows(protocol, 0 if "ICMP" in protocol else port)


def merge_sides(sides: Iterable[Side]) -> Side:
    """Several evaluators' view of one side (NetworkPolicies and Cilium policies): isolated if any
    isolates, every grant and every deny kept (Cilium enforces both kinds together)."""
    parts = list(sides)
    return Side(
        any(s.isolated for s in parts),
        tuple(g for s in parts for g in s.allows),
        tuple(g for s in parts for g in s.denies),
        "; ".join(s.reason for s in parts if s.reason),
    )


# --------------------------------------------------------------------------------------------------
# Kubernetes label syntax (shared by both evaluators' validation)

_NAME: Final = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid Kubernetes label key (``[prefix/]name``), or ``None``."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"invalid label key {key!r}: the prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _NAME.match(name):
        return (
            f"invalid label key {key!r}: the name must be 1-63 characters, alphanumeric, '-', '_' or "
            "'.', starting and ending with an alphanumeric character"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid Kubernetes label value, or ``None``."""
    if value and (len(value) > 63 or not _NAME.match(value)):
        return (
            f"invalid label value {value!r}: at most 63 characters, alphanumeric, '-', '_' or '.', "
            "starting and ending with an alphanumeric character"
        )
    return None


class Notes:
    """Distinct warnings in first-seen order, at most ``limit`` kept (the rest counted)."""

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self._seen: dict[str, None] = {}
        self.dropped = 0

    def add(self, text: str) -> None:
        if text in self._seen:
            return
        if len(self._seen) >= self.limit:
            self.dropped += 1
            return
        self._seen[text] = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._seen)

    def __len__(self) -> int:
        return len(self._seen)

    def as_list(self) -> list[str]:
        out = list(self._seen)
        if self.dropped:
            out.append(f"… and {self.dropped} more warning(s)")
        return out
