"""The flow-auditor Grafana dashboard, built with grafana-foundation-sdk (pinned, see /work/shared/TOOLS.md).

Inputs: the metric names and labels of the daemon (DESIGN §6), the class names of :mod:`auditor.classify`.
Outputs: :func:`render` — the dashboard JSON (``dashboards/flow-auditor.json`` and its copy for the kustomize
ConfigMap, ``deploy/base/dashboards/flow-auditor.json``, written by :mod:`monitoring.build`);
:func:`panel_queries` — every (panel title, PromQL) pair of that JSON, and :func:`substitute_variables` to
turn one into a query that plain Prometheus accepts (tests, and the end-to-end test against a real
Prometheus).

Provisioning-ready: stable ``uid`` :data:`UID`, a ``$datasource`` variable (any Prometheus data source) used
by every panel and variable, ``$cluster`` and ``$job`` variables from ``label_values(flow_auditor_build_info,
...)`` whose "All" value ``.*`` also matches series without a ``cluster`` label (single-cluster setups). Rates
use ``$__rate_interval``; "current" tables count over the dashboard's time range (``$__range``), with
:func:`monitoring.rules.recent_increase` so that an edge whose counter appeared within the range (one
connection) is shown too.

Layout: this module (the dashboard, its variables, rows and panel ids, and reading the JSON back); the
rows' panels in :mod:`monitoring.panels_violations`, :mod:`monitoring.panels_matrix` and
:mod:`monitoring.panels_health`, built from the parts in :mod:`monitoring.panels_common`.

Error policy: pure functions over constants; errors in the queries are caught by the tests (promql-parser on
every target, and later the end-to-end test).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from monitoring import panels_health, panels_matrix, panels_violations
from monitoring.panels_common import DATASOURCE

UID: Final = "flow-auditor"
TITLE: Final = "flow-auditor: network flows vs. communication matrix"
TAGS: Final = ["flow-auditor", "cilium", "hubble", "network-policy"]

VARIABLE_DEFAULTS: Final[Mapping[str, str]] = {
    "datasource": "prometheus",
    "cluster": ".*",
    "job": ".*",
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
"""Values of the Grafana variables the queries use, for running them outside Grafana."""

_VARIABLE: Final = re.compile(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)")


def _variables() -> list[Any]:
    def query(name: str, label: str, promql: str, multi: bool) -> db.QueryVariable:
        return (
            db.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(promql)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .include_all(True)
            .all_value(".*")
            .multi(multi)
            .current(dm.VariableOption(selected=True, text="All", value="$__all"))
        )

    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        query("cluster", "Cluster", "label_values(flow_auditor_build_info, cluster)", False),
        query("job", "Job", 'label_values(flow_auditor_build_info{cluster=~"$cluster"}, job)', True),
    ]


def build() -> db.Dashboard:
    """The dashboard builder (panel ids in layout order)."""
    rows: list[tuple[str, list[Any]]] = [
        ("Violations", panels_violations.panels()),
        ("Communication matrix", panels_matrix.panels()),
        ("Hubble stream health", panels_health.stream_health_panels()),
        ("Classification and configuration", panels_health.classification_panels()),
    ]
    dashboard = (
        db.Dashboard(TITLE)
        .uid(UID)
        .description(
            "Connections judged by flow-auditor against the declared communication matrix: legitimate "
            "traffic dropped, unexpected traffic allowed, unused allow rules, and the health of the Hubble "
            "stream."
        )
        .tags(TAGS)
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("browser")
        .variables(_variables())
        .annotation(
            db.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .link(
            db.DashboardLink("Runbook")
            .type(dm.DashboardLinkType.LINK)
            .url("https://github.com/flow-auditor/flow-auditor/blob/main/docs/runbook.md")
            .icon("doc")
            .target_blank(True)
        )
    )
    panel_id = 0
    for title, panels in rows:
        panel_id += 1
        dashboard = dashboard.with_row(db.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            dashboard = dashboard.with_panel(panel.id(panel_id).datasource(DATASOURCE))
    return dashboard


def to_dict() -> dict[str, Any]:
    """The dashboard as plain JSON data."""
    data: dict[str, Any] = json.loads(render())
    return data


def render() -> str:
    """The dashboard JSON, as committed (2-space indent, trailing newline)."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def _panels(data: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in data.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def panel_queries(data: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """Every (panel title, PromQL expression) of the dashboard in panel order, Grafana variables as is."""
    return [
        (panel.get("title", ""), target["expr"])
        for panel in _panels(to_dict() if data is None else data)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def substitute_variables(expr: str, values: Mapping[str, str] | None = None) -> str:
    """``expr`` with Grafana variables (``$name``, ``${name}``, ``${name:format}``) replaced.

    ``values`` overrides :data:`VARIABLE_DEFAULTS`; an unknown variable raises :class:`KeyError`.
    """
    table_ = {**VARIABLE_DEFAULTS, **(values or {})}

    def replace(match: re.Match[str]) -> str:
        return table_[match.group(1) or match.group(2)]

    return _VARIABLE.sub(replace, expr)
