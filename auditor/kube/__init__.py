"""Kubernetes-facing tooling: NetworkPolicy generation from the matrix and a static policy evaluator.

Stage: offline tooling (``flow-auditor policies generate|diff``), never on the per-flow path.
:mod:`auditor.kube.policies` turns a compiled matrix into Kubernetes ``NetworkPolicy`` or Cilium
``CiliumNetworkPolicy`` objects; :mod:`auditor.kube.netpol` decides what a set of Kubernetes
NetworkPolicies allows. Neither talks to an API server.
"""
