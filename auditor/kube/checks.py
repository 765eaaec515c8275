"""Validation helpers shared by the NetworkPolicy and Cilium policy compilers.

Stage: offline tooling (compiling policy manifests for ``flow-auditor policies diff``).

Error policy: every problem raises :class:`PolicyError` naming the object (``Kind namespace/name``) and the
field. Unknown fields are errors under ``strict``; otherwise they are ignored with a warning naming the
object and field (never silently: a misspelt key could widen or narrow what the policy allows).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, Final, TypeVar

from auditor.kube.model import Network, Notes, label_key_problem, label_value_problem

OPERATORS: Final = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})
"""The operators of a Kubernetes label selector's ``matchExpressions``."""

K = TypeVar("K")


class PolicyError(ValueError):
    """A policy that cannot be evaluated: ``<object>: <field>: <problem>``."""

    def __init__(self, policy: str, key: str, problem: str) -> None:
        self.policy, self.key, self.problem = policy, key, problem
        super().__init__(f"{policy}: {key}: {problem}" if key else f"{policy}: {problem}")


class Checker:
    """Typed access to one object's fields; every error names the object and the field."""

    def __init__(self, ref: str, *, strict: bool = False, notes: Notes | None = None) -> None:
        self.ref = ref
        self.strict = strict
        self.notes = notes if notes is not None else Notes()

    def err(self, key: str, problem: str) -> PolicyError:
        return PolicyError(self.ref, key, problem)

    def warn(self, key: str, problem: str) -> None:
        self.notes.add(f"{self.ref}: {key}: {problem}" if key else f"{self.ref}: {problem}")

    def mapping(self, value: Any, key: str, allowed: frozenset[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.err(key, "expected a mapping")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            problem = f"unknown field {unknown[0]!r} (expected one of: {', '.join(sorted(allowed))})"
            if self.strict:
                raise self.err(key, problem)
            self.warn(key, problem + "; ignored (use --strict to reject)")
            return {k: v for k, v in value.items() if k in allowed}
        return value

    def sequence(self, value: Any, key: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.err(key, "expected a list")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.err(key, "expected a string")
        return value

    def network(self, value: Any, key: str) -> Network:
        try:
            return ipaddress.ip_network(str(value), strict=False)
        except ValueError as e:
            raise self.err(key, f"invalid CIDR {value!r}: {e}") from None

    def cidr_with_excepts(
        self, cidr_value: Any, excepts_value: Any, key: str
    ) -> tuple[Network, tuple[Network, ...]]:
        cidr = self.network(cidr_value, f"{key}.cidr")
        excepts: list[Network] = []
        for i, text in enumerate(self.sequence(excepts_value, f"{key}.except")):
            ex = self.network(text, f"{key}.except[{i}]")
            if ex.version != cidr.version or not ex.subnet_of(cidr):  # type: ignore[arg-type]
                raise self.err(f"{key}.except[{i}]", f"{ex} is not inside {cidr}")
            excepts.append(ex)
        return cidr, tuple(excepts)

    def label_key(self, key_text: Any, key: str) -> str:
        text = self.string(key_text, key)
        problem = label_key_problem(text)
        if problem:
            raise self.err(key, problem)
        return text

    def label_value(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.err(key, "label values must be strings")
        problem = label_value_problem(value)
        if problem:
            raise self.err(key, problem)
        return value

    def label_selector(
        self, value: Any, key: str, label_key: Callable[[Any, str], K]
    ) -> list[tuple[K, str, frozenset[str]]]:
        """A label selector (``matchLabels``, then ``matchExpressions``) as (key, operator, values), in the
        order written; ``label_key(text, field)`` checks a key and gives it the caller's form."""
        s = self.mapping(value, key, frozenset({"matchLabels", "matchExpressions"}))
        reqs: list[tuple[K, str, frozenset[str]]] = []
        labels = s.get("matchLabels") or {}
        if not isinstance(labels, dict):
            raise self.err(f"{key}.matchLabels", "expected a mapping of strings")
        for k, v in labels.items():
            label = label_key(k, f"{key}.matchLabels")
            reqs.append((label, "In", frozenset({self.label_value(v, f"{key}.matchLabels.{k}")})))
        for i, e in enumerate(self.sequence(s.get("matchExpressions"), f"{key}.matchExpressions")):
            reqs.append(self.label_expression(e, f"{key}.matchExpressions[{i}]", label_key))
        return reqs

    def label_expression(
        self, value: Any, key: str, label_key: Callable[[Any, str], K]
    ) -> tuple[K, str, frozenset[str]]:
        e = self.mapping(value, key, frozenset({"key", "operator", "values"}))
        if "key" not in e or "operator" not in e:
            raise self.err(key, "key and operator are required")
        op = e["operator"]
        if op not in OPERATORS:
            raise self.err(f"{key}.operator", f"unknown operator {op!r}")
        values = self.sequence(e.get("values"), f"{key}.values")
        if op in ("In", "NotIn") and not values:
            raise self.err(f"{key}.values", f"operator {op} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            raise self.err(f"{key}.values", f"operator {op} takes no values")
        label = label_key(e["key"], f"{key}.key")
        return label, op, frozenset(self.label_value(v, f"{key}.values[{i}]") for i, v in enumerate(values))


CLUSTERWIDE_KINDS = frozenset({"CiliumClusterwideNetworkPolicy"})


def object_ref(obj: dict[str, Any] | Any, default_namespace: str = "default") -> str:
    """How errors and reports name an object: ``Kind namespace/name`` (``Kind name`` when clusterwide)."""
    kind = str(obj.get("kind") or "<no kind>")
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = str(meta.get("name") or "<unnamed>")
    if kind in CLUSTERWIDE_KINDS:
        return f"{kind} {name}"
    return f"{kind} {meta.get('namespace') or default_namespace}/{name}"


def note_default_namespace(obj: Any, notes: Notes, default_namespace: str = "default") -> None:
    """A namespaced policy without ``metadata.namespace`` lands where it is applied: say which one is
    assumed (a GitOps tree often leaves the namespace to kustomize or the deploying tool)."""
    meta = obj.get("metadata")
    if not (isinstance(meta, dict) and meta.get("namespace")):
        notes.add(
            f"{object_ref(obj, default_namespace)}: no metadata.namespace: evaluated in namespace "
            f"{default_namespace!r} (render the manifests with their namespace to check them where they go)"
        )
