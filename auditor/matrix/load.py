"""Loading a communication matrix: YAML file or text → validated, compiled :class:`Matrix` (DESIGN §4.5).

Stage: configuration (runs once per load or reload, never per flow). Input: a YAML file or text. Output: an
immutable :class:`~auditor.matrix.model.Matrix` whose selectors (:mod:`auditor.matrix.selectors`) and port
sets (:mod:`auditor.matrix.ports`) are compiled for the per-flow path, with its rules indexed by (source,
destination) component pair. This module reads the document: ``apiVersion``, ``kind``, ``metadata``,
``scope``, the component names and the ``allow`` rules; :mod:`auditor.matrix.limits` bounds what it may cost.

Error policy: every problem raises :class:`~auditor.matrix.nodes.MatrixError` and nothing else (a daemon's
reload relies on it), naming the file, the line and the offending key. Nothing is guessed: unknown fields,
unknown components, bad ports, duplicate names, empty selectors, component names the auditor gives to
unmatched peers (entities, ``unknown``, ``ns:<namespace>``) and YAML nested deeper than
:data:`~auditor.matrix.limits.MAX_DEPTH` are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import yaml

from auditor.matrix.limits import MAX_DEPTH, DepthLimitedLoader, TooDeep, check_expansion
from auditor.matrix.model import Component, Matrix, Rule
from auditor.matrix.nodes import MatrixError
from auditor.matrix.ports import PortRange, parse_port
from auditor.matrix.selectors import NAME_RE, RESERVED_NAMES, SelectorReader

API_VERSION: Final = "flow-auditor/v1alpha1"
KIND: Final = "CommunicationMatrix"

_TOP_KEYS: Final = {"apiVersion", "kind", "metadata", "scope", "components", "allow"}
_RULE_KEYS: Final = {"from", "to", "ports", "description"}


def load_matrix(path: str | Path) -> Matrix:
    """Read, validate and compile a matrix file. Raises :class:`MatrixError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise MatrixError(str(path), 0, "", f"cannot read file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise MatrixError(str(path), 0, "", "not UTF-8 text") from None
    return parse_matrix(text, str(path))


def parse_matrix(text: str, file: str = "<matrix>") -> Matrix:
    """Validate and compile matrix YAML text; ``file`` is used in error messages."""
    try:
        root = yaml.compose(text, Loader=DepthLimitedLoader)
    except TooDeep as e:
        raise MatrixError(file, e.line, "", f"nested deeper than {MAX_DEPTH} levels") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise MatrixError(file, line, "", f"invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise MatrixError(file, 0, "", f"invalid YAML: {e}") from None
    if root is None:
        raise MatrixError(file, 1, "", "empty file")
    return _Compiler(file).compile(root)


class _Compiler(SelectorReader):
    """Walks the YAML node tree (which keeps line numbers) and builds the compiled matrix."""

    # -- document -----------------------------------------------------------------------------------
    def compile(self, root: yaml.Node) -> Matrix:
        top = self.mapping(root, "", _TOP_KEYS)
        for required in ("apiVersion", "kind", "metadata", "components", "allow"):
            if required not in top:
                raise self.err(root, required, "required field is missing")
        if (api := self.string(top["apiVersion"], "apiVersion")) != API_VERSION:
            raise self.err(top["apiVersion"], "apiVersion", f"unsupported {api!r} (expected {API_VERSION!r})")
        if (kind := self.string(top["kind"], "kind")) != KIND:
            raise self.err(top["kind"], "kind", f"unsupported {kind!r} (expected {KIND!r})")
        meta = self.mapping(top["metadata"], "metadata", {"name", "labels", "annotations"})
        if "name" not in meta:
            raise self.err(top["metadata"], "metadata.name", "required field is missing")
        name = self.string(meta["name"], "metadata.name")
        components = self.components(top["components"])
        names = {c.name for c in components}
        rules = self.rules(top["allow"], names)
        scope = self.scope(top.get("scope"), components)
        check_expansion(self.file, rules)
        by_pair: dict[tuple[str, str], list[Rule]] = {}
        for rule in rules:
            for s in rule.sources:
                for d in rule.destinations:
                    by_pair.setdefault((s, d), []).append(rule)
        return Matrix(
            name=name,
            file=self.file,
            components=tuple(components),
            rules=tuple(rules),
            scope_namespaces=scope,
            _by_pair={k: tuple(v) for k, v in by_pair.items()},
        )

    def scope(self, node: yaml.Node | None, components: list[Component]) -> frozenset[str] | None:
        if node is None:
            named = {ns for c in components for ns in (c.selector.namespaces or ())}
            return frozenset(named) if named else None
        scope = self.mapping(node, "scope", {"namespaces"})
        if "namespaces" not in scope:
            raise self.err(node, "scope.namespaces", "required field is missing")
        return frozenset(s for s, _ in self.strings(scope["namespaces"], "scope.namespaces"))

    def components(self, node: yaml.Node) -> list[Component]:
        items = self.mapping(node, "components")
        if not items:
            raise self.err(node, "components", "must not be empty")
        out: list[Component] = []
        for comp_name, sel_node in items.items():
            key = f"components.{comp_name}"
            if not NAME_RE.match(comp_name) or comp_name.startswith("ns:"):
                raise self.err(sel_node, key, "component names must be lowercase DNS-style names")
            if comp_name in RESERVED_NAMES:
                raise self.err(
                    sel_node,
                    key,
                    f"{comp_name!r} is reserved: the auditor names peers that match no component so "
                    "(entities, 'unknown', 'ns:<namespace>'); choose another name",
                )
            out.append(Component(comp_name, self.selector(sel_node, key), sel_node.start_mark.line + 1))
        return out

    def rules(self, node: yaml.Node, components: set[str]) -> list[Rule]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.err(node, "allow", "expected a list of rules")
        out: list[Rule] = []
        for i, item in enumerate(node.value):
            key = f"allow[{i}]"
            r = self.mapping(item, key, _RULE_KEYS)
            for required in ("from", "to", "ports"):
                if required not in r:
                    raise self.err(item, f"{key}.{required}", "required field is missing")
            ends = {}
            for end in ("from", "to"):
                ends[end] = tuple(self.component_refs(r[end], f"{key}.{end}", components))
            ports = self.ports(r["ports"], f"{key}.ports")
            desc = self.string(r["description"], f"{key}.description") if "description" in r else ""
            out.append(Rule(i + 1, ends["from"], ends["to"], ports, desc, item.start_mark.line + 1))
        return out

    def component_refs(self, node: yaml.Node, key: str, components: set[str]) -> list[str]:
        names = []
        for value, item in self.strings(node, key, allow_single=True):
            if value not in components:
                raise self.err(
                    item, key, f"unknown component {value!r} (declared: {', '.join(sorted(components))})"
                )
            names.append(value)
        return names

    def ports(self, node: yaml.Node, key: str) -> tuple[PortRange, ...]:
        if isinstance(node, yaml.ScalarNode):
            node = yaml.SequenceNode("tag:yaml.org,2002:seq", [node], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.err(node, key, "expected a non-empty list of ports")
        return tuple(self.port(item, f"{key}[{i}]") for i, item in enumerate(node.value))

    def port(self, node: yaml.Node, key: str) -> PortRange:
        if not isinstance(node, yaml.ScalarNode):
            raise self.err(
                node, key, 'expected a port like 8080, "53/UDP", "30000-32767/TCP", "ICMP" or "any"'
            )
        return parse_port(str(node.value), lambda problem: self.err(node, key, problem))
