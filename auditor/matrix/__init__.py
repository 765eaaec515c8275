"""The communication matrix: loading, validating and compiling it, and resolving endpoints (DESIGN §4).

Stage: configuration (loading runs once per load or reload, never per flow). Input: a YAML file or text.
Output: an immutable :class:`Matrix` whose selectors and port sets are compiled for the per-flow path
(``auditor.classify`` resolves endpoints through it and caches the results).

This package's front: the rest of the code imports from ``auditor.matrix``. Where a change goes:

- :mod:`auditor.matrix.load`: the document (``apiVersion``, ``kind``, ``metadata``, ``scope``, component
  names, ``allow`` rules) and :func:`load_matrix` / :func:`parse_matrix`;
- :mod:`auditor.matrix.selectors`: a component's selector: its YAML, its compiled form, matching an endpoint;
- :mod:`auditor.matrix.ports`: port specs and matching a port;
- :mod:`auditor.matrix.model`: the compiled :class:`Matrix`, endpoint resolution and the rule lookup;
- :mod:`auditor.matrix.limits`: nesting depth and rule expansion;
- :mod:`auditor.matrix.nodes`: reading YAML nodes, and :class:`MatrixError`;
- :mod:`auditor.matrix.describe`: the text of ``flow-auditor matrix check``.

Error policy: every problem raises :class:`MatrixError` and nothing else (a daemon's reload relies on it),
whose message names the file, the line and the offending key (``matrix.yaml:14: components.webserver.labels:
expected a mapping of strings``). Nothing is guessed: unknown fields, unknown components, bad ports, duplicate
names, empty selectors, component names the auditor gives to unmatched peers (entities, ``unknown``,
``ns:<namespace>``) and YAML nested deeper than :data:`MAX_DEPTH` are errors.
"""

from auditor.matrix.describe import describe
from auditor.matrix.limits import MAX_DEPTH, MAX_RULE_EXPANSION, check_expansion
from auditor.matrix.load import API_VERSION, KIND, load_matrix, parse_matrix
from auditor.matrix.model import Component, Matrix, Rule, pick
from auditor.matrix.nodes import MatrixError
from auditor.matrix.ports import PortRange, parse_port
from auditor.matrix.selectors import (
    ENTITIES,
    ENTITY_PRECEDENCE,
    RESERVED_IDENTITIES,
    RESERVED_NAMES,
    LabelRequirement,
    Network,
    Selector,
    endpoint_labels,
    most_specific_entity,
)

__all__ = [
    "API_VERSION",
    "ENTITIES",
    "ENTITY_PRECEDENCE",
    "KIND",
    "MAX_DEPTH",
    "MAX_RULE_EXPANSION",
    "RESERVED_IDENTITIES",
    "RESERVED_NAMES",
    "Component",
    "LabelRequirement",
    "Matrix",
    "MatrixError",
    "Network",
    "PortRange",
    "Rule",
    "Selector",
    "check_expansion",
    "describe",
    "endpoint_labels",
    "load_matrix",
    "most_specific_entity",
    "parse_matrix",
    "parse_port",
    "pick",
]
