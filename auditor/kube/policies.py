"""NetworkPolicies and CiliumNetworkPolicies that enforce a communication matrix (``flow-auditor policies
generate``).

Stage: offline tooling; reads a compiled :class:`~auditor.matrix.Matrix`, never a flow.

Input/output:

- :func:`generate` (and :func:`build`, which also returns the notes) turns a matrix into Kubernetes
  ``networking.k8s.io/v1`` ``NetworkPolicy`` objects (flavor ``kubernetes``) or ``cilium.io/v2``
  ``CiliumNetworkPolicy`` objects (flavor ``cilium``): plain dicts, in a deterministic order (default-deny
  per scoped namespace, then components in matrix order), with deterministic names.
  :func:`to_yaml` renders them as one multi-document YAML stream.

The two renderers live in :mod:`auditor.kube.flavors`. The comparison of deployed policies with the
matrix (``policies diff``) lives in :mod:`auditor.kube.diff`;
the synthetic endpoints both use in :mod:`auditor.kube.probes`.

What is generated:

- ``<matrix>-default-deny`` in every scoped namespace (``matrix.scope_namespaces``): selects every pod,
  isolates ingress and egress, allows nothing (cilium: ``ingress: [{}]``, ``egress: [{}]`` plus
  ``enableDefaultDeny``).
- ``<matrix>-<component>`` for every in-scope component (pinned by ``namespace``/``namespaces`` to scoped
  namespaces; one object per such namespace): selects the component's pods, with one ingress rule per allow
  rule whose destination is the component (peers: the rule's sources) and one egress rule per allow rule
  whose source is the component (peers: the rule's destinations), on the rule's ports. Rules stay in matrix
  order, one (or, in the cilium flavor, one per peer kind) per allow rule, so each can be traced back.
- Every object has the label ``app.kubernetes.io/managed-by: flow-auditor`` and the annotations
  ``flow-auditor.io/matrix`` (matrix name), ``flow-auditor.io/rules`` (the allow rules it implements,
  ``none`` for default-deny), ``flow-auditor.io/component`` and, when something could not be expressed
  exactly, ``flow-auditor.io/notes``.

How selectors and ports map (k8s = kubernetes flavor; "wider" = the policies allow more than the matrix,
"narrower" = less; every inexact case is recorded as a note on the object and in :attr:`Generation.notes`):

- ``namespace(s)``: k8s namespaceSelector ``kubernetes.io/metadata.name``; cilium
  ``k8s:io.kubernetes.pod.namespace`` (a peer without namespace gets ``Exists``, i.e. any namespace).
- ``namespaceLabels``: k8s namespaceSelector; cilium ``k8s:io.cilium.k8s.namespace.labels.<key>``. On the
  selected component itself k8s cannot express it (the namespace is fixed): dropped, wider.
- ``labels``/``matchExpressions``: podSelector (k8s) or endpoint selector ``k8s:<key>`` (cilium).
- ``serviceAccount``: k8s cannot select it: dropped, the pods are selected by namespace and labels only
  (wider; "the label the user gave" is what remains); cilium ``k8s:io.cilium.k8s.policy.serviceaccount``.
- ``workload``: neither flavor can select a controller: dropped (wider); give the pods a label instead.
- entity ``world``: k8s ipBlocks ``0.0.0.0/0`` and ``::/0`` (minus ``cluster_cidrs``: whether an ipBlock
  also matches pod addresses is up to the network plugin); cilium ``fromEntities``/``toEntities``.
- entity ``host`` (kubelet probes): k8s cannot select nodes; nothing is emitted, and Kubernetes always allows
  traffic between a pod and its own node (other nodes stay denied); cilium ``host`` entity.
- other entities (``remote-node``, ``kube-apiserver``, …): k8s dropped (narrower: that traffic stays
  denied); cilium entities.
- ``cidrs`` with ``except``: k8s ipBlock; cilium ``fromCIDRSet``/``toCIDRSet``.
- ``fqdns``: k8s has no equivalent: ipBlocks ``0.0.0.0/0`` and ``::/0`` on the rule's ports (wider). cilium
  egress ``toFQDNs`` (``matchName``; a ``*.`` wildcard, which matches any depth in the matrix, becomes
  ``matchPattern: "**.<domain>"``) plus the DNS proxy rule that toFQDNs needs: port 53 UDP and TCP with
  ``rules: {dns: [{matchPattern: "*"}]}`` towards the matrix's DNS server (the first pod component that
  an allow rule reaches on 53/UDP, else ``kube-system``/``k8s-app: kube-dns``); as a *source* an FQDN
  cannot be selected: ``world`` entity (wider).
- ports: ``port`` (+ ``endPort`` for ranges) and ``protocol`` TCP/UDP/SCTP; ``any`` = no ports (every
  protocol). ICMP: k8s cannot express it (dropped, narrower; a rule with only ICMP is left out rather than
  emitted without ports); cilium ``icmps`` with the echo request types (8, IPv6 128) only, because Cilium
  matches ICMP by type and has no "any type" (narrower for the other types).
- first match wins: policies add up, so a pod matched by the selectors of two components gets both
  components' allowances (wider). Pod components whose selectors certainly overlap (the minimal pod of one
  matches the other's selector) are reported as notes. Likewise the ``world`` ipBlocks (and Cilium's
  ``world`` entity) also cover the addresses of CIDR components declared before the world component.
- a pod component that is not pinned to a namespace (only ``namespaceLabels``, or nothing) gets no policy of
  its own (the default-deny of the scoped namespaces still applies to its pods there): noted.

Cilium flavor and namespace labels: a peer selector always carries ``k8s:io.kubernetes.pod.namespace``
(``In`` or ``Exists``), so its namespace-label requirements mean the same whether Cilium restricts
namespace-label selectors to the policy's namespace (its documentation) or not (its code).

Error policy: generation does not fail for a matrix that loaded; an unknown flavor or an invalid cluster
CIDR raises :class:`ValueError`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import yaml

from auditor.kube.flavors import (
    CiliumRenderer,
    KubernetesRenderer,
    Renderer,
    add_note,
)
from auditor.kube.probes import address_kind, synthetic_pods
from auditor.matrix import (
    Component,
    Matrix,
    Network,
    Selector,
    endpoint_labels,
)
from auditor.model import Endpoint

Flavor = Literal["kubernetes", "cilium"]
FLAVORS: Final[tuple[Flavor, ...]] = ("kubernetes", "cilium")


# --------------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class Generation:
    """Generated objects and every distinct note (what could not be expressed exactly), in order."""

    objects: list[dict[str, Any]]
    notes: list[str]


def generate(
    matrix: Matrix, flavor: Flavor = "kubernetes", *, cluster_cidrs: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The policies enforcing ``matrix``; see :func:`build`."""
    return build(matrix, flavor, cluster_cidrs=cluster_cidrs).objects


def build(matrix: Matrix, flavor: Flavor = "kubernetes", *, cluster_cidrs: Sequence[str] = ()) -> Generation:
    """The policies enforcing ``matrix`` and the notes on what they cannot express exactly.

    ``cluster_cidrs`` (pod and service CIDRs) are excepted from the ``world`` ipBlocks of the kubernetes
    flavor, for network plugins whose ipBlocks also match pod addresses. Raises :class:`ValueError` for
    an unknown flavor or an invalid CIDR.
    """
    renderer: Renderer
    if flavor == "kubernetes":
        renderer = KubernetesRenderer(matrix, _parse_cidrs(cluster_cidrs))
    elif flavor == "cilium":
        renderer = CiliumRenderer(matrix)
    else:
        raise ValueError(f"unknown flavor {flavor!r} (expected one of: {', '.join(FLAVORS)})")
    names = ObjectNames()
    objects: list[dict[str, Any]] = []
    notes: list[str] = []
    scope = frozenset(matrix.scope_namespaces or ())
    if not scope:
        add_note(notes, "the matrix has no scope namespaces: there is nothing to enforce")
    for ns in sorted(scope):
        objects.append(renderer.default_deny(names.take(ns, f"{matrix.name}-default-deny"), ns))
    for comp in matrix.components:
        for text in _selector_notes(comp):
            add_note(notes, text)
        for ns in placement(comp, scope):
            obj, obj_notes = renderer.component(comp, names.take(ns, f"{matrix.name}-{comp.name}"), ns)
            objects.append(obj)
            for text in obj_notes:
                add_note(notes, text)
    for text in _overlap_notes(matrix):
        add_note(notes, text)
    return Generation(objects, notes)


def to_yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    """A multi-document YAML stream (``---`` before every object), keys in generation order."""
    return "".join(
        "---\n" + yaml.dump(dict(obj), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)
        for obj in objects
    )


class _Dumper(yaml.SafeDumper):
    """Safe dumper that writes shared sub-objects out in full instead of as anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _parse_cidrs(texts: Sequence[str]) -> tuple[Network, ...]:
    out: list[Network] = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text, strict=True))
        except ValueError as e:
            raise ValueError(f"invalid cluster CIDR {text!r}: {e}") from None
    return tuple(out)


class ObjectNames:
    """Valid, unique (per namespace) object names."""

    def __init__(self) -> None:
        self.used: set[tuple[str, str]] = set()

    def take(self, namespace: str, base: str) -> str:
        name = re.sub(r"[^a-z0-9.-]+", "-", base.lower()).strip("-.")[:253].rstrip("-.") or "flow-auditor"
        candidate, n = name, 2
        while (namespace, candidate) in self.used:
            candidate, n = f"{name[:245]}-{n}", n + 1
        self.used.add((namespace, candidate))
        return candidate


def placement(comp: Component, scope: frozenset[str]) -> list[str]:
    """The scoped namespaces in which the component gets a policy of its own."""
    sel = comp.selector
    if address_kind(sel) is not None or sel.namespaces is None:
        return []
    return sorted(sel.namespaces & scope)


def _selector_notes(comp: Component) -> list[str]:
    sel = comp.selector
    parts = [
        name
        for name, present in (
            ("cidrs", bool(sel.cidrs)),
            ("fqdns", bool(sel.fqdns)),
            ("entities", sel.entities is not None),
            (
                "pod fields",
                sel.namespaces is not None
                or bool(sel.pod_labels or sel.namespace_labels or sel.service_account or sel.workload),
            ),
        )
        if present
    ]
    notes = []
    if len(parts) > 1:
        notes.append(
            f"component {comp.name} combines {', '.join(parts)}: "
            f"only its {parts[0]} are used in policies (wider)"
        )
    if address_kind(sel) is None and sel.namespaces is None:
        notes.append(
            f"component {comp.name} is not pinned to a namespace: no policy of its own selects its pods "
            "(the default-deny applies to them in scoped namespaces)"
        )
    return notes


def _overlap_notes(matrix: Matrix) -> list[str]:
    """Pairs of pod components whose selectors certainly overlap (one's minimal pod matches the other)."""
    pods = [
        (c, [ep for _, ep in synthetic_pods(c)])
        for c in matrix.components
        if address_kind(c.selector) is None
    ]
    notes = []
    for i, (a, a_eps) in enumerate(pods):
        for b, b_eps in pods[i + 1 :]:
            if _matches_any(b.selector, a_eps) or _matches_any(a.selector, b_eps):
                notes.append(
                    f"components {a.name} and {b.name} can select the same pods: policies add up, so "
                    f"such pods get the allowances of both, while the matrix names them {a.name} "
                    "(first match wins)"
                )
    return notes


def _matches_any(sel: Selector, endpoints: Sequence[Endpoint]) -> bool:
    for ep in endpoints:
        k8s, entities = endpoint_labels(ep)
        if sel.matches_labels(ep, k8s, entities):
            return True
    return False
