"""What a cluster's policies together allow: Kubernetes NetworkPolicies and Cilium policies, as Cilium
enforces them side by side.

Stage: offline tooling (``flow-auditor policies diff``). Input: policy objects (plain dicts) of any kind;
output: a :class:`Cluster` whose :meth:`Cluster.evaluate` gives a :class:`~auditor.kube.model.Decision`
for a (source, destination) pair, for every port at once.

Mixed semantics (Cilium's deny-policy documentation: deny rules take precedence over allow rules "whether
they are a Cilium Network Policy, a Clusterwide Cilium Network Policy or even a Kubernetes Network Policy";
an endpoint enters default deny as soon as one policy selects it): per side, the endpoint is isolated when
a policy of either kind isolates it; a connection passes that side when some rule of either kind allows
it and no deny rule denies it; it passes when both sides pass. The local node always reaches its pods
(Cilium's default); a pod's egress to the node is decided by the pod's policies like any egress (a
NetworkPolicy cannot select the node, and Cilium's ipBlocks do not match node addresses by default).

Error policy: :class:`~auditor.kube.checks.PolicyError` from the compilers; objects of other kinds are
counted by kind in :attr:`Cluster.skipped`, never evaluated; warnings (unknown fields, undecidable
constructs, unresolved named ports) collect in :attr:`Cluster.notes`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from auditor.kube import cilium, cilium_compile, netpol
from auditor.kube.model import Evaluator, Node, Notes, Pod, Side, Subject, merge_sides

POLICY_KINDS = {
    (netpol.API_VERSION, netpol.KIND),
    *((cilium.API_VERSION, k) for k in cilium.KINDS),
}


@dataclass
class Cluster(Evaluator):
    knp: netpol.PolicySet
    cnp: cilium.CiliumPolicySet
    skipped: Counter[str] = field(default_factory=Counter)
    notes: Notes = field(default_factory=Notes)

    @property
    def counts(self) -> dict[str, int]:
        """Evaluated policies by kind."""
        out: Counter[str] = Counter({netpol.KIND: len(self.knp.policies)})
        for p in self.cnp.policies:
            out[p.kind] += 1
        return {k: v for k, v in sorted(out.items()) if v}

    @property
    def has_cilium(self) -> bool:
        return bool(self.cnp.policies)

    def side(self, subject: Subject, peer: Subject, destination: Subject, *, egress: bool) -> Side:
        if isinstance(peer, Node) and not egress:
            # Cilium lets the local node reach its pods (kubelet probes) whatever the policies say.
            return Side(False, reason="traffic from the local node is always allowed")
        knp = (
            self.knp.side(subject, peer, destination, egress=egress)
            if isinstance(subject, Pod)
            else Side(False)
        )
        return merge_sides([knp, self.cnp.side(subject, peer, destination, egress=egress)])


def compile_cluster(objects: Sequence[Mapping[str, Any]], *, strict: bool = False) -> Cluster:
    """Compile every policy among ``objects``; count the other objects by kind. Raises
    :class:`~auditor.kube.checks.PolicyError`."""
    notes = Notes()
    skipped: Counter[str] = Counter()
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) not in POLICY_KINDS:
            skipped[f"{obj.get('kind') or '<no kind>'}"] += 1
    knp = netpol.compile_policies(list(objects), strict=strict, notes=notes)
    cnp = cilium_compile.compile_cilium(objects, strict=strict, notes=notes)
    return Cluster(knp, cnp, skipped, notes)
