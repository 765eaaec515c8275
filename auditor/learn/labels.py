"""Which pod labels a learned selector may use (``matrix learn``).

Stage: learning, pure. Input: Cilium label lists of the pods of one group (a workload, or pods without a
workload that share their labels). Output: the pod labels that are *stable*: Kubernetes pod labels
(``k8s:`` source) carried with the same value by every pod seen, minus the labels that controllers set
per revision or per pod (they change on every rollout or differ between replicas) and Cilium's own
bookkeeping labels (namespace, namespace labels, service account, cluster: the selector says
``namespace`` instead).

Error policy: none needed; label strings without ``=`` are labels with an empty value; a label Kubernetes
would refuse (forged in the data: Kubernetes validates the labels Cilium reads) is never selected on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from auditor.matrix.selectors import label_key_problem, label_value_problem

VOLATILE_KEYS: Final = frozenset(
    {
        "pod-template-hash",  # ReplicaSet revision of a Deployment
        "controller-revision-hash",  # StatefulSet / DaemonSet revision
        "pod-template-generation",  # DaemonSet generation
        "statefulset.kubernetes.io/pod-name",  # one value per pod
        "apps.kubernetes.io/pod-index",  # StatefulSet ordinal (Kubernetes ≥ 1.28)
        "job-name",  # one value per Job run of a CronJob
        "controller-uid",  # Job UID (before batch.kubernetes.io/ prefixes)
    }
)
VOLATILE_PREFIXES: Final = ("batch.kubernetes.io/", "io.kubernetes.", "io.cilium.")
UPGRADE_KEYS: Final = frozenset(
    {
        "app.kubernetes.io/version",
        "helm.sh/chart",
        "chart",
        "heritage",
        "version",
        "app.kubernetes.io/managed-by",
    }
)
"""Labels that are the same on every pod today but change with the next upgrade: never selected on."""
PREFERRED_KEYS: Final = (
    "app.kubernetes.io/name",
    "app",
    "k8s-app",
    "component",
    "app.kubernetes.io/component",
    "app.kubernetes.io/instance",
    "name",
    "run",
    "tier",
    "release",
)
"""Keys tried first when choosing the fewest labels that tell a group apart."""


def k8s_labels(labels: Iterable[str]) -> Iterator[tuple[str, str]]:
    """``(key, value)`` of each Cilium label from the ``k8s`` source (``k8s:key=value``), in order."""
    for label in labels:
        source, _, rest = label.partition(":")
        if source == "k8s":
            key, _, value = rest.partition("=")
            yield key, value


def pod_labels(labels: Iterable[str]) -> dict[str, str]:
    """The selectable Kubernetes pod labels of one endpoint (``k8s:key=value`` → ``{key: value}``)."""
    out: dict[str, str] = {}
    for key, value in k8s_labels(labels):
        if (
            key
            and key not in VOLATILE_KEYS
            and key not in UPGRADE_KEYS
            and not key.startswith(VOLATILE_PREFIXES)
            and not (label_key_problem(key) or label_value_problem(value))  # not set by Kubernetes
        ):
            out[key] = value
    return out


def stable(current: dict[str, str] | None, labels: Iterable[str]) -> dict[str, str]:
    """Fold one more pod's labels into the stable set ``current`` (``None`` before the first pod)."""
    mine = pod_labels(labels)
    if current is None:
        return mine
    return {k: v for k, v in current.items() if mine.get(k) == v}


def minimal(labels: dict[str, str], others: Iterable[dict[str, str]]) -> dict[str, str]:
    """The fewest of ``labels`` (preferred keys first) that no label set in ``others`` also carries; all of
    ``labels`` when even those do not tell them apart."""
    rank = {k: i for i, k in enumerate(PREFERRED_KEYS)}
    order = sorted(labels, key=lambda k: (rank.get(k, len(rank)), k))
    rivals = list(others)
    chosen: dict[str, str] = {}
    for key in order:
        chosen[key] = labels[key]
        rivals = [o for o in rivals if o.get(key) == labels[key]]
        if not rivals:
            return dict(sorted(chosen.items()))
    return dict(sorted(labels.items()))
