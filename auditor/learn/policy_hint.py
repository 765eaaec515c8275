"""The policy change that would let an ``expected_dropped`` connection through, from ``policies generate``.

Stage: suggestion, pure (no I/O); called by the replay report at its end and by the daemon's log when it
writes a violation line. Input: the matrix, one judgement of an ``expected_dropped`` edge (the matrix
allows it; the network dropped it, or would under enforcement: ``AUDIT``) and the label changes of its
ends (:meth:`auditor.sinks.label_history.LabelHistory.changes_of`: against the labels each component's
pods carried on delivered connections). Output (:meth:`PolicyAdvisor.advise`):

- ``rule``: the matrix rule that allows the edge;
- ``flavors``: per flavor (``kubernetes``, ``cilium``) the generated objects that implement that rule for
  these two ends — ``kind``, ``namespace``, ``name``, ``direction`` (``egress`` on the source's policy,
  ``ingress`` on the destination's), the rule's ``peers`` and ``ports`` as the matrix names them, and the
  rule ``entries`` exactly as ``policies generate`` writes them
  — whether the generated policies, evaluated statically (:mod:`auditor.kube.cluster`) for *the observed
  endpoints* (their pod and namespace labels as Hubble reported them), ``admit`` the connection, and the
  generation notes of that rule (what the flavor cannot express);
- ``label_changes``: labels the ends' pods or namespaces carried on earlier delivered connections of the
  same component and namespace and lack (or carry with another value) now;
- ``cause``: the likely cause in one sentence: changed labels (a policy in force that selects by the old
  ones no longer matches), policies in force that differ from the generated ones, or what the generated
  policies cannot express.

Cost: only the objects of the two ends' namespaces are rendered (once per namespace and matrix) and
compiled (once per pair of namespaces); one advice is two static evaluations. Error policy: none raised
for a valid matrix and judgement; callers on the daemon's pipeline thread guard the call anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from auditor.classify import Judgement
from auditor.kube.cluster import Cluster, compile_cluster
from auditor.kube.flavors import CiliumRenderer, KubernetesRenderer, Renderer
from auditor.kube.model import External, Node, Pod, Reserved, Subject
from auditor.kube.policies import FLAVORS, Flavor, ObjectNames, placement
from auditor.matrix import Matrix, Rule, endpoint_labels
from auditor.model import Endpoint
from auditor.sinks.label_history import NS_LABEL_PREFIX

SERVICE_ACCOUNT_KEY: Final = "io.cilium.k8s.policy.serviceaccount"
MAX_TEXT: Final = 120  # characters of a cluster-supplied value in a cause sentence
MAX_CLUSTERS: Final = 256  # compiled pairs of namespaces per flavor


# --------------------------------------------------------------------------------------------------
# Observed endpoints as policy subjects


def subject(ep: Endpoint, ip: str, names: tuple[str, ...]) -> Subject:
    """What the policy evaluators see of an observed endpoint: a pod with its labels and its namespace's
    labels, the node, another reserved identity, or an address (and DNS names) outside the cluster."""
    k8s, reserved = endpoint_labels(ep)
    if "host" in reserved:
        return Node()
    namespace = ep.namespace
    if namespace and not reserved:
        labels: dict[str, str] = {}
        ns_labels: dict[str, str] = {}
        for key, value in k8s.items():
            if key.startswith(NS_LABEL_PREFIX):
                ns_labels[key[len(NS_LABEL_PREFIX) :]] = value
            elif not key.startswith(("io.cilium.k8s.", "io.kubernetes.pod.namespace")):
                labels[key] = value
        return Pod(namespace, labels, ns_labels, service_account=k8s.get(SERVICE_ACCOUNT_KEY))
    for entity in sorted(reserved - {"world", "world-ipv4", "world-ipv6"}):
        return Reserved(entity)
    return External(ip, names)


# --------------------------------------------------------------------------------------------------
# Advice


class _Flavor:
    """One flavor's generated policies for a matrix, rendered per namespace on demand: exactly the objects
    (names included) that ``policies generate`` writes in that namespace, since both come from the same
    renderer and per-namespace naming; compiled per pair of namespaces (policies are namespaced, so those of
    the two ends' namespaces decide a connection). Caches are bounded by the scope's namespaces and
    ``MAX_CLUSTERS``."""

    def __init__(self, matrix: Matrix, flavor: Flavor) -> None:
        self.matrix = matrix
        self.scope = frozenset(matrix.scope_namespaces or ())
        self.renderer: Renderer = (
            KubernetesRenderer(matrix, ()) if flavor == "kubernetes" else CiliumRenderer(matrix)
        )
        self._namespaces: dict[str, _Namespace] = {}
        self._clusters: dict[tuple[str, str], Cluster] = {}

    def namespace(self, ns: str) -> _Namespace:
        if ns not in self.scope:
            return _EMPTY
        cached = self._namespaces.get(ns)
        if cached is None:
            names = ObjectNames()
            matrix, renderer = self.matrix, self.renderer
            out = _Namespace(
                [renderer.default_deny(names.take(ns, f"{matrix.name}-default-deny"), ns)], {}, []
            )
            for comp in matrix.components:
                if ns in placement(comp, self.scope):
                    obj, notes = renderer.component(comp, names.take(ns, f"{matrix.name}-{comp.name}"), ns)
                    out.objects.append(obj)
                    out.by_component[comp.name] = obj
                    out.notes.extend(n for n in notes if n not in out.notes)
            cached = self._namespaces[ns] = out
        return cached

    def cluster(self, a: str, b: str) -> Cluster:
        key = (a, b) if a <= b else (b, a)
        cluster = self._clusters.get(key)
        if cluster is None:
            objects = self.namespace(key[0]).objects + (self.namespace(key[1]).objects if b != a else [])
            if len(self._clusters) >= MAX_CLUSTERS:
                self._clusters.clear()
            cluster = self._clusters[key] = compile_cluster(objects)
        return cluster


@dataclass
class _Namespace:
    objects: list[dict[str, Any]]
    by_component: dict[str, dict[str, Any]]
    notes: list[str]


_EMPTY: Final = _Namespace([], {}, [])


class PolicyAdvisor:
    """Advice for ``expected_dropped`` judgements against one matrix (see the module docstring)."""

    def __init__(self, matrix: Matrix) -> None:
        self.matrix = matrix
        self._flavors: dict[str, _Flavor] = {}
        self._rules = {r.index: r for r in matrix.rules}
        self._by_name = {c.name: c for c in matrix.components}

    def flavor(self, flavor: Flavor) -> _Flavor:
        if flavor not in self._flavors:
            self._flavors[flavor] = _Flavor(self.matrix, flavor)
        return self._flavors[flavor]

    def advise(self, j: Judgement, changes: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
        """The policy change for one ``expected_dropped`` judgement, given the label changes of its ends
        (:meth:`~auditor.sinks.label_history.LabelHistory.changes_of`, taken when the judgement was
        seen); ``None`` without a rule."""
        rule = self._rules.get(j.rule)
        if rule is None:
            return None
        source_name, destination_name, port, protocol, _ = j.edge
        flow = j.flow
        names = flow.source_names if j.reply else flow.destination_names
        src = subject(j.source, j.source_ip, ())
        dst = subject(j.destination, j.destination_ip, names)
        flavors: dict[str, Any] = {}
        for flavor in FLAVORS:
            f = self.flavor(flavor)
            apply = [
                entry
                for entry in (
                    self._object(f, rule, source_name, j.source, egress=True),
                    self._object(f, rule, destination_name, j.destination, egress=False),
                )
                if entry is not None
            ]
            a, b = j.source.namespace, j.destination.namespace
            notes = f.namespace(a).notes + [n for n in f.namespace(b).notes if b != a]
            flavors[flavor] = {
                "admits": f.cluster(a, b).allows(src, dst, protocol, 0 if port is None else port),
                "apply": apply,
                "notes": list(dict.fromkeys(n for n in notes if n.startswith(f"rule {rule.index}:"))),
            }
        advice = {"rule": rule.index, "flavors": flavors, "label_changes": changes or []}
        advice["cause"] = _cause(advice, j.verdict)
        return advice

    def _object(
        self, f: _Flavor, rule: Rule, name: str, ep: Endpoint, *, egress: bool
    ) -> dict[str, Any] | None:
        obj = f.namespace(ep.namespace).by_component.get(name) if ep.namespace else None
        if obj is None:
            return None
        peers = [self._by_name[n] for n in (rule.destinations if egress else rule.sources)]
        entries = f.renderer.rules(rule, peers, egress=egress, notes=[])
        if not entries:
            return None  # the flavor cannot express the rule here: applying the object would not help
        meta = obj["metadata"]
        return {
            "kind": obj["kind"],
            "namespace": meta["namespace"],
            "name": meta["name"],
            "direction": "egress" if egress else "ingress",
            "peers": list(rule.destinations if egress else rule.sources),
            "ports": rule.port_strings(),
            "entries": entries,
        }


def _clip(text: str | None) -> str:
    if text is None:
        return "(absent)"
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _change_text(change: Mapping[str, Any]) -> str:
    parts = []
    for kind, what in (("namespace_labels", f"namespace {change['namespace']}"), ("labels", "pods")):
        for key, (before, now) in change.get(kind, {}).items():
            if now is None:
                parts.append(f"{what} lost label {_clip(key)}={_clip(before)}")
            elif before is None:
                parts.append(f"{what} gained label {_clip(key)}={_clip(now)}")
            else:
                parts.append(f"{what} label {_clip(key)} changed from {_clip(before)} to {_clip(now)}")
    return ", ".join(parts) + f" since earlier delivered connections of {change['component']}"


_KINDS: Final = {"kubernetes": "NetworkPolicies", "cilium": "CiliumNetworkPolicies"}


def _cause(advice: Mapping[str, Any], verdict: str) -> str:
    """The likely cause, in one sentence, from the evaluation and the label changes."""
    flavors = advice["flavors"]
    in_force = "the policy under audit" if verdict == "AUDIT" else "a policy in force"
    if advice["label_changes"]:
        changes = "; ".join(_change_text(c) for c in advice["label_changes"])
        return (
            f"{changes}: {in_force} that selects by the old labels no longer matches (restore them, or apply "
            "the generated policies)"
        )
    admitted = [k for k in FLAVORS if flavors[k]["admits"]]
    refused = [k for k in FLAVORS if k not in admitted]
    notes = "; ".join(n for k in refused for n in flavors[k]["notes"])
    if admitted and refused:
        return (
            f"{in_force} lacks this allowance while the generated {_KINDS[admitted[0]]} admit these very "
            f"pods (the generated {_KINDS[refused[0]]} do not" + (f": {notes})" if notes else ")")
        )
    if admitted:
        return (
            f"{in_force} lacks this allowance while the generated policies admit these very pods "
            "(`flow-auditor policies diff` shows what differs)"
        )
    return "the generated policies do not admit it either" + (f": {notes}" if notes else "")


def _object_text(o: Mapping[str, Any]) -> str:
    """``NetworkPolicy airflow/airflow-postgresql (ingress from prometheus on 9187/TCP)``."""
    way = "to" if o["direction"] == "egress" else "from"
    return (
        f"{o['kind']} {o['namespace']}/{o['name']} ({o['direction']} {way} {','.join(o['peers'])} "
        f"on {', '.join(o['ports'])})"
    )


def advice_text(advice: Mapping[str, Any], matrix_file: str | None = None) -> str:
    """One line: which generated objects to apply (both flavors), whether they admit the observed pods,
    and the likely cause."""
    flavors = advice["flavors"]
    objects = {
        k: ", ".join(_object_text(o) for o in flavors[k]["apply"]) or f"no {_KINDS[k]}" for k in FLAVORS
    }
    admitted = [k for k in FLAVORS if flavors[k]["admits"]]
    if len(admitted) == len(FLAVORS):
        admits = "both admit these pods"
    elif admitted:
        refused = next(k for k in FLAVORS if k not in admitted)
        admits = f"the {_KINDS[admitted[0]]} admit these pods, the {_KINDS[refused]} do not"
    else:
        admits = "neither admits these pods"
    return (
        f"matrix rule {advice['rule']}: apply {objects['kubernetes']} from "
        f"`flow-auditor policies generate --matrix {matrix_file or 'MATRIX'}`, or {objects['cilium']} with "
        f"`--flavor cilium`; {admits}; likely cause: {advice['cause']}"
    )
