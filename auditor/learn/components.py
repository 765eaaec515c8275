"""Candidate components for ``matrix learn``: one per group of peers, with a selector and a name.

Stage: learning, pure. Input: the peers at the ends of the edges that will become rules. Output:
:class:`Candidate` components in matrix order (first match wins):

1. pods — one per workload (``workloads`` kind and name), selected by namespace and the labels stable
   across its pods (:mod:`auditor.learn.labels`); pods without a workload by their stable labels. A
   component whose stable labels would also take another's pods is *pinned* (``workload:`` added) by
   :mod:`auditor.learn.build`. Within a namespace, components with more labels come first and a component
   without labels (``namespace`` only) last.
2. ``fqdns`` — world destinations with DNS names, one per name, or one ``*.domain`` per registered domain
   (public suffix list) that has at least :data:`FQDN_GROUP_MIN` names;
3. ``cidrs`` — other world destinations, one ``/32`` (``/128``) per address, or the ``/24`` (``/64``) when
   it holds at least :data:`CIDR_GROUP_MIN` of them;
4. entities — non-pod peers (``world`` for world sources, ``host``, ``remote-node``, ``kube-apiserver``…),
   most specific first, as the matrix names them.

Names come from :mod:`auditor.learn.naming`. Error policy: none needed.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

from auditor.learn import naming
from auditor.learn.labels import minimal, pod_labels
from auditor.learn.observe import CIDR, ENTITY, ENTITY_PRECEDENCE, FQDN, POD, Peer

FQDN_GROUP_MIN: Final = 4
CIDR_GROUP_MIN: Final = 4
ENTITY_NAMES: Final = {
    "world": "internet",
    "host": "node",
    "remote-node": "remote-nodes",
    "kube-apiserver": "apiserver",
    "health": "cilium-health",
    "ingress": "cilium-ingress",
    "unmanaged": "unmanaged-endpoints",
    "init": "init-endpoints",
}

Resolve = Callable[[Peer], str]


@dataclass(frozen=True)
class Candidate:
    """A learned component. ``group`` identifies what it stands for (a pod group key, ``("fqdn", name)``,
    ``("cidr", network)``, ``("entity", name)``)."""

    name: str
    kind: str
    group: tuple[str, ...]
    namespace: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    workload: tuple[str, str] | None = None
    pinned: bool = False
    entity: str = ""
    fqdns: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    evidence: str = ""
    order: tuple[Any, ...] = field(default=(), compare=False)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.namespace,) if self.kind == POD else ()

    def selector(self) -> dict[str, Any]:
        """The selector as a YAML-ready mapping (key order fixed)."""
        if self.kind == POD:
            sel: dict[str, Any] = {"namespace": self.namespace}
            if self.labels:
                sel["labels"] = dict(self.labels)
            if self.workload is not None and (self.pinned or not self.labels):
                sel["workload"] = {"kind": self.workload[0], "name": self.workload[1]}
            return sel
        if self.kind == FQDN:
            return {"fqdns": list(self.fqdns)}
        if self.kind == CIDR:
            return {"cidrs": list(self.cidrs)}
        return {"entities": [self.entity]}


@cache
def _psl() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(only_icann=True)


def registered_domain(name: str) -> str:
    """``api.github.com`` → ``github.com`` (public suffix list, ICANN section); the name itself if none."""
    return str(_psl().privatesuffix(name) or name)


def candidates(
    peers: Sequence[Peer], taken: Sequence[str] = (), seen: Sequence[Peer] = ()
) -> list[Candidate]:
    """Components for the groups of ``peers``, named and in matrix order. A pod component selects the
    fewest stable labels that no other pod group of its namespace among ``seen`` carries."""
    rivals: dict[str, list[tuple[tuple[str, ...], dict[str, str]]]] = defaultdict(list)
    for p in seen:
        if p.group.kind == POD:
            rivals[p.group.namespace].append((p.group.key, pod_labels(p.endpoint.labels)))
    drafts: list[Candidate] = []
    requests: list[naming.Request] = []
    done: set[tuple[str, ...]] = set()

    def add(c: Candidate, names: tuple[str, ...]) -> None:
        if c.group in done:
            return
        done.add(c.group)
        drafts.append(c)
        requests.append(naming.Request(c.group, names, c.namespace))

    for peer in peers:
        g = peer.group
        if g.kind == POD:
            others = (lab for key, lab in rivals[g.namespace] if key != g.key)
            labels = tuple(minimal(g.stable or {}, others).items())
            add(
                Candidate("", POD, g.key, g.namespace, labels, g.workload, evidence=_pod_evidence(peer)),
                naming.pod_candidates(g.stable or {}, g.workload, g.namespace),
            )
        elif g.kind == ENTITY:
            add(Candidate("", ENTITY, g.key, entity=g.entity), (ENTITY_NAMES.get(g.entity, g.entity),))
    for c in _fqdn_candidates(peers) + _cidr_candidates(peers):
        add(c, (c.group[1],))
    names = naming.assign(requests, taken)
    out = [_with_name(c, names[c.group]) for c in drafts]
    return sorted(out, key=lambda c: c.order)


def _with_name(c: Candidate, name: str) -> Candidate:
    if c.kind == POD:
        order: tuple[Any, ...] = (0, c.namespace, 0 if c.labels else 1, -len(c.labels), name)
    elif c.kind == FQDN:
        order = (1, name)
    elif c.kind == CIDR:
        net = ipaddress.ip_network(c.cidrs[0])
        order = (2, net.version, int(net.network_address), name)
    else:
        order = (3, ENTITY_PRECEDENCE.index(c.entity) if c.entity in ENTITY_PRECEDENCE else 99, name)
    return Candidate(
        name,
        c.kind,
        c.group,
        c.namespace,
        c.labels,
        c.workload,
        c.pinned,
        c.entity,
        c.fqdns,
        c.cidrs,
        c.evidence,
        order,
    )


def _fqdn_candidates(peers: Sequence[Peer]) -> list[Candidate]:
    names = sorted({n for p in peers if p.group.kind == FQDN for n in p.names})
    by_domain: dict[str, list[str]] = defaultdict(list)
    for n in names:
        by_domain[registered_domain(n)].append(n)
    out = []
    for domain, members in sorted(by_domain.items()):
        if len(members) >= FQDN_GROUP_MIN:
            fqdns = (f"*.{domain}", domain) if domain in members else (f"*.{domain}",)
            evidence = f"{len(members)} names under {domain}, e.g. {', '.join(members[:3])}"
            out.append(Candidate("", FQDN, ("fqdn", domain), fqdns=fqdns, evidence=evidence))
        else:
            out.extend(Candidate("", FQDN, ("fqdn", n), fqdns=(n,)) for n in members)
    return out


def _cidr_candidates(peers: Sequence[Peer]) -> list[Candidate]:
    addresses = sorted(
        {ipaddress.ip_address(p.ip) for p in peers if p.group.kind == CIDR and _is_ip(p.ip)},
        key=lambda a: (a.version, int(a)),
    )
    by_net: dict[Any, list[Any]] = defaultdict(list)
    for a in addresses:
        by_net[ipaddress.ip_network(f"{a}/{24 if a.version == 4 else 64}", strict=False)].append(a)
    out = []
    for net, members in by_net.items():
        if len(members) >= CIDR_GROUP_MIN:
            evidence = f"{len(members)} addresses, e.g. {', '.join(map(str, members[:3]))}"
            label = f"net-{net.network_address}-{net.prefixlen}".replace(".", "-").replace(":", "-")
            out.append(Candidate("", CIDR, ("cidr", label), cidrs=(str(net),), evidence=evidence))
        else:
            for a in members:
                label = f"ip-{a}".replace(".", "-").replace(":", "-")
                out.append(Candidate("", CIDR, ("cidr", label), cidrs=(f"{a}/{a.max_prefixlen}",)))
    return out


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _pod_evidence(peer: Peer) -> str:
    g = peer.group
    count = f"{len(g.pods)}{'+' if g.pods_overflow else ''} pod{'s' if len(g.pods) != 1 else ''}"
    if g.workload is not None:
        return f"{g.workload[0]} {g.namespace}/{g.workload[1]}, {count} seen"
    return f"pods without a workload in {g.namespace}, {count} seen"


def describe(peer: Peer) -> str:
    """How review notes name a peer that has no component."""
    g = peer.group
    if g.kind == POD:
        if g.workload is not None:
            return f"{g.namespace}/{g.workload[1]} ({g.workload[0]})"
        labels = ",".join(f"{k}={v}" for k, v in sorted((g.stable or {}).items()))
        return f"{g.namespace}/{{{labels}}}"
    if g.kind == ENTITY:
        return g.entity
    if g.kind == FQDN:
        return ",".join(peer.names)
    if g.kind == CIDR:
        return peer.ip
    return "unknown"
