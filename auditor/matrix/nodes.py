"""Reading the matrix's YAML node tree, with errors that name file, line and key (DESIGN §4.5).

Stage: configuration (matrix load). Input: ``yaml`` nodes composed from the matrix file, which keep their
line numbers. Output: plain values (strings, lists of strings, string maps, mappings of child nodes) for the
compilers in :mod:`auditor.matrix.load` and :mod:`auditor.matrix.selectors`.

Error policy: every problem raises :class:`MatrixError`, whose message names the file, the line and the
dotted key of the offending node (``matrix.yaml:14: components.webserver.labels: expected a mapping``).
Nothing is coerced but scalar label values, which are strings in Kubernetes (``"true"``, ``1``).
"""

from __future__ import annotations

import yaml


class MatrixError(ValueError):
    """A matrix that cannot be loaded: ``file:line: key: problem``."""

    def __init__(self, file: str, line: int, key: str, problem: str) -> None:
        self.file, self.line, self.key, self.problem = file, line, key, problem
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


class NodeReader:
    """Typed access to YAML nodes of one file; a wrong type, an empty value or an unknown key is an error."""

    def __init__(self, file: str) -> None:
        self.file = file

    def err(self, node: yaml.Node | None, key: str, problem: str) -> MatrixError:
        line = node.start_mark.line + 1 if node is not None else 0
        return MatrixError(self.file, line, key, problem)

    def mapping(self, node: yaml.Node, key: str, allowed: set[str] | None = None) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.err(node, key, "expected a mapping")
        out: dict[str, yaml.Node] = {}
        for k_node, v_node in node.value:
            if not isinstance(k_node, yaml.ScalarNode):
                raise self.err(k_node, key, "keys must be strings")
            k = str(k_node.value)
            sub = f"{key}.{k}" if key else k
            if k in out:
                raise self.err(k_node, sub, "duplicate key")
            if allowed is not None and k not in allowed:
                raise self.err(k_node, sub, f"unknown field (expected one of: {', '.join(sorted(allowed))})")
            out[k] = v_node
        return out

    def string(self, node: yaml.Node, key: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in ("tag:yaml.org,2002:str",):
            raise self.err(node, key, "expected a string")
        value = str(node.value)
        if not value:
            raise self.err(node, key, "must not be empty")
        return value

    def strings(
        self, node: yaml.Node, key: str, *, allow_single: bool = False
    ) -> list[tuple[str, yaml.Node]]:
        if allow_single and isinstance(node, yaml.ScalarNode):
            return [(self.string(node, key), node)]
        if not isinstance(node, yaml.SequenceNode):
            raise self.err(node, key, "expected a list of strings")
        if not node.value:
            raise self.err(node, key, "must not be empty")
        return [(self.string(item, f"{key}[{i}]"), item) for i, item in enumerate(node.value)]

    def string_map(self, node: yaml.Node, key: str) -> dict[str, str]:
        items = self.mapping(node, key)
        if not items:
            raise self.err(node, key, "must not be empty")
        out: dict[str, str] = {}
        for k, v in items.items():
            if not isinstance(v, yaml.ScalarNode):
                raise self.err(v, f"{key}.{k}", "expected a string value")
            out[k] = str(v.value)  # label values like "true" or 1 are strings in Kubernetes
        return out
