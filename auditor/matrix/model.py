"""The compiled communication matrix: components, allow rules and endpoint resolution (DESIGN §4.3, §4.4).

Stage: per flow, on an immutable object built once per load by :mod:`auditor.matrix.load` (a reload builds a
new one). :meth:`Matrix.candidates` is the identity-dependent part of naming an endpoint (``auditor.classify``
caches it per identity), :func:`pick` the address-dependent part (first match wins), :meth:`Matrix.rule_for`
the first allow rule, in file order, that covers a connection.

Error policy: never raises on flow data. An endpoint that matches no component is named by what it is (the
most specific entity, ``ns:<namespace>``, or ``unknown``); a connection that no rule allows gets ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from auditor.matrix.ports import PortRange
from auditor.matrix.selectors import Selector, endpoint_labels, most_specific_entity
from auditor.model import Endpoint


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    selector: Selector
    line: int


@dataclass(frozen=True, slots=True)
class Rule:
    """An allow rule; ``index`` is its 1-based position in the file (the ``rule`` of reports)."""

    index: int
    sources: tuple[str, ...]
    destinations: tuple[str, ...]
    ports: tuple[PortRange, ...]
    description: str
    line: int

    def port_strings(self) -> list[str]:
        return [str(p) for p in self.ports]

    def allows_port(self, protocol: str, port: int) -> bool:
        return any(p.matches(protocol, port) for p in self.ports)


@dataclass(frozen=True)
class Matrix:
    """The compiled communication matrix. Immutable; build a new one to reload."""

    name: str
    file: str
    components: tuple[Component, ...]
    rules: tuple[Rule, ...]
    scope_namespaces: frozenset[str] | None
    _by_pair: dict[tuple[str, str], tuple[Rule, ...]] = field(repr=False, compare=False)

    @property
    def uses_workloads(self) -> bool:
        return any(c.selector.workload is not None for c in self.components)

    def in_scope(self, namespace: str) -> bool:
        return self.scope_namespaces is None or namespace in self.scope_namespaces

    def candidates(self, ep: Endpoint) -> tuple[tuple[Component, ...], str]:
        """Label-part resolution of an endpoint (cacheable per identity).

        Returns the components whose label part matches, in matrix order, stopping at the first one that
        needs no address check, and the name the endpoint gets when none matches in full.
        """
        k8s, entities = endpoint_labels(ep)
        entity = most_specific_entity(entities)
        found: list[Component] = []
        for comp in self.components:
            if comp.selector.matches_labels(ep, k8s, entities):
                found.append(comp)
                if not comp.selector.has_address_part:
                    break
        if entity is not None:
            fallback = entity
        elif ep.namespace:
            fallback = f"ns:{ep.namespace}"
        else:
            fallback = "unknown"
        return tuple(found), fallback

    def resolve(self, ep: Endpoint, ip: str = "", names: Sequence[str] = ()) -> str:
        """The component name of an endpoint (uncached; the classifier caches the label part)."""
        comps, fallback = self.candidates(ep)
        return pick(comps, fallback, ip, names)

    def rule_for(self, source: str, destination: str, protocol: str, port: int) -> Rule | None:
        """The first allow rule matching the connection, or ``None`` (the connection is unexpected)."""
        for rule in self._by_pair.get((source, destination), ()):
            if rule.allows_port(protocol, port):
                return rule
        return None


def pick(comps: tuple[Component, ...], fallback: str, ip: str, names: Sequence[str]) -> str:
    """First candidate whose address part matches (candidates come from :meth:`Matrix.candidates`)."""
    for comp in comps:
        sel = comp.selector
        if not sel.has_address_part or sel.matches_address(ip, names):
            return comp.name
    return fallback
