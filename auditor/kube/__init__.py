"""Kubernetes-facing tooling: policies from the matrix, and the static check of deployed policies.

Stage: offline tooling (``flow-auditor policies generate|diff``), never on the per-flow path; nothing here
talks to an API server. :mod:`auditor.kube.policies` turns a compiled matrix into Kubernetes
``NetworkPolicy`` or Cilium ``CiliumNetworkPolicy`` objects; :mod:`auditor.kube.diff` compares deployed
policies with the matrix, using the probe model (:mod:`auditor.kube.probes`, :mod:`auditor.kube.model`)
and the evaluators (:mod:`auditor.kube.netpol`, :mod:`auditor.kube.cilium`, :mod:`auditor.kube.cluster`).
"""
