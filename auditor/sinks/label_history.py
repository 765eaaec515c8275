"""The label sets each component's pods carried on delivered connections (for the policy advice).

Stage: sink helper, pure (no I/O); compiled with the judging core (``make native``). The report sink and
the daemon's log sink call :meth:`LabelHistory.on_delivered` for every new delivered connection of a
detailed edge (``replay --jobs`` merges call :meth:`LabelHistory.remember` with a chunk's label sets), so
this runs per connection; :meth:`LabelHistory.changes_of` runs once per dropped edge, for
:mod:`auditor.learn.policy_hint`, whose ``label_changes`` and cause sentence it feeds.

Memory: the first :data:`DEFAULT_PER_KEY` distinct label sets per (component, namespace), for at most
``max_entries`` keys; later ones are not remembered. Error policy: none raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from auditor.classify import Judgement
from auditor.kube.model import NAMESPACE_NAME_LABEL
from auditor.learn.labels import VOLATILE_KEYS, VOLATILE_PREFIXES, k8s_labels
from auditor.model import Endpoint

NS_LABEL_PREFIX: Final = "io.cilium.k8s.namespace.labels."
MAX_LABEL_CHANGES: Final = 8  # per end and kind (pod labels, namespace labels)
DEFAULT_MAX_HISTORY: Final = 10_000
DEFAULT_PER_KEY: Final = 4


class LabelHistory:
    """The Cilium label sets the pods of each (component, namespace) carried on delivered connections:
    the first ``per_key`` distinct ones, for at most ``max_entries`` keys (later ones are not remembered)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_HISTORY, per_key: int = DEFAULT_PER_KEY) -> None:
        self.max_entries = max_entries
        self.per_key = per_key
        self.labels: dict[tuple[str, str], list[tuple[str, ...]]] = {}

    def on_delivered(self, j: Judgement) -> None:
        """Remember both ends of a delivered connection (cheap once known: a lookup and a length check)."""
        edge, flow = j.edge, j.flow
        source, destination = (flow.destination, flow.source) if j.reply else (flow.source, flow.destination)
        self.remember(edge.source, source.namespace, source.labels)
        self.remember(edge.destination, destination.namespace, destination.labels)

    def remember(self, component: str, namespace: str, labels: tuple[str, ...]) -> None:
        """Remember the labels one end of a delivered connection carried (ends outside a namespace: not)."""
        if not namespace:
            return
        key = (component, namespace)
        seen = self.labels.get(key)
        if seen is None:
            if len(self.labels) < self.max_entries:
                self.labels[key] = [labels]
        elif len(seen) < self.per_key and labels not in seen:
            seen.append(labels)

    def changes_of(self, j: Judgement) -> list[dict[str, Any]]:
        """How the labels of both ends of ``j`` differ from those remembered (see :meth:`changes`)."""
        out = []
        for end, name, ep in (
            ("source", j.edge.source, j.source),
            ("destination", j.edge.destination, j.destination),
        ):
            diff = self.changes(name, ep)
            if diff is not None:
                out.append({"end": end, "component": name, "namespace": ep.namespace, **diff})
        return out

    def changes(self, name: str, ep: Endpoint) -> dict[str, Any] | None:
        """How ``ep``'s labels differ from the first set remembered for its component and namespace;
        ``None`` when nothing is remembered or its labels were seen on a delivered connection."""
        seen = self.labels.get((name, ep.namespace)) if ep.namespace else None
        if seen is None or ep.labels in seen:
            return None
        before = seen[0]
        old_pod, old_ns = _split(before)
        new_pod, new_ns = _split(ep.labels)
        out = {
            kind: diff
            for kind, diff in (
                ("labels", _diff(old_pod, new_pod)),
                ("namespace_labels", _diff(old_ns, new_ns)),
            )
            if diff
        }
        return out or None


def _split(labels: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Cilium labels → (pod labels worth comparing, namespace labels)."""
    pod: dict[str, str] = {}
    ns: dict[str, str] = {}
    for key, value in k8s_labels(labels):
        if key.startswith(NS_LABEL_PREFIX):
            key = key[len(NS_LABEL_PREFIX) :]
            if key != NAMESPACE_NAME_LABEL:
                ns[key] = value
        elif key and key not in VOLATILE_KEYS and not key.startswith(VOLATILE_PREFIXES):
            pod[key] = value
    return pod, ns


def _diff(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, list[str | None]]:
    """Keys whose value differs: ``[before, now]`` (``None``: absent), sorted, at most a few."""
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return {k: [old.get(k), new.get(k)] for k in keys[:MAX_LABEL_CHANGES]}
