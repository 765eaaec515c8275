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

Error policy: pure functions over constants; errors in the queries are caught by the tests (promql-parser on
every target, and later the end-to-end test).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from auditor.classify import EXPECTED_ALLOWED, EXPECTED_DROPPED, UNEXPECTED_ALLOWED, UNEXPECTED_DROPPED
from monitoring.rules import recent_increase

UID: Final = "flow-auditor"
TITLE: Final = "flow-auditor: network flows vs. communication matrix"
TAGS: Final = ["flow-auditor", "cilium", "hubble", "network-policy"]
DATASOURCE: Final = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL: Final = 'job=~"$job", cluster=~"$cluster"'

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

# Observed (source, destination) pairs in the matrix panel: the worst class seen in the time range.
# Higher rank wins (the `or` chain keeps the left-hand side for the same pair).
MATRIX_RANKS: Final = (
    (UNEXPECTED_ALLOWED, 4, "unexpected allowed", "red"),
    (EXPECTED_DROPPED, 3, "expected dropped", "orange"),
    (UNEXPECTED_DROPPED, 2, "blocked", "blue"),
    (EXPECTED_ALLOWED, 1, "allowed", "green"),
)
MATRIX_UNUSED: Final = (0, "expected, not seen", "transparent")


def _sel(metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join((SEL, *matchers))}}}"


def _increase_by(label: str, metric: str) -> str:
    return f"sum by ({label}) (increase({_sel(metric)}[$__rate_interval]))"


def _connections(*matchers: str) -> str:
    return _sel("flow_auditor_connections_total", *matchers)


def _range_target(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).range().ref_id(ref).datasource(DATASOURCE)


def _instant_target(
    expr: str, ref: str = "A", fmt: PromQueryFormat = PromQueryFormat.TABLE
) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).instant().format(fmt).ref_id(ref).datasource(DATASOURCE)


def _mapping(options: Mapping[str, tuple[str, str]]) -> dm.ValueMap:
    return dm.ValueMap(
        options={
            value: dm.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(options.items())
        }
    )


def _thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def _organize(
    exclude: tuple[str, ...] = ("Time",), rename: Mapping[str, str] | None = None, order: tuple[str, ...] = ()
) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(exclude, True),
            "renameByName": dict(rename or {}),
            "indexByName": {name: i for i, name in enumerate(order)},
        },
    )


# -- panels -------------------------------------------------------------------------------------------


def _violation_stat(title: str, description: str, matchers: tuple[str, ...], color: str) -> stat.Panel:
    expr = f"sum(\n{recent_increase(_connections(*matchers), '$__range')}\n) or vector(0)"
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .with_target(_instant_target(expr, fmt=PromQueryFormat.TIME_SERIES))
        .unit("none")
        .decimals(0)
        .thresholds(_thresholds((None, "green"), (1, color)))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(4)
        .span(6)
    )


def _overview_panels() -> list[Any]:
    enforced = (f'class="{EXPECTED_DROPPED}"', 'verdict!="AUDIT"')
    return [
        _violation_stat(
            "Legitimate traffic dropped",
            "Connections the matrix allows that the network dropped (expected_dropped, enforced), "
            "time range.",
            enforced,
            "red",
        ),
        _violation_stat(
            "Would be dropped (audit mode)",
            "Connections the matrix allows that a policy in audit mode would drop (expected_dropped, "
            "verdict AUDIT), time range.",
            (f'class="{EXPECTED_DROPPED}"', 'verdict="AUDIT"'),
            "orange",
        ),
        _violation_stat(
            "Unexpected traffic allowed",
            "Connections the matrix does not allow that reached their destination (unexpected_allowed), "
            "time range.",
            (f'class="{UNEXPECTED_ALLOWED}"',),
            "red",
        ),
        stat.Panel()
        .title("Hubble stream")
        .description(
            "Whether every selected auditor is connected to Hubble (minimum of flow_auditor_hubble_up)."
        )
        .with_target(
            _instant_target(f"min({_sel('flow_auditor_hubble_up')})", fmt=PromQueryFormat.TIME_SERIES)
        )
        .mappings([_mapping({"0": ("DOWN", "red"), "1": ("UP", "green")})])
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(4)
        .span(6),
    ]


def _violations_over_time() -> timeseries.Panel:
    def rate(*matchers: str) -> str:
        return f"sum(rate({_connections(*matchers)}[$__rate_interval]))"

    return (
        timeseries.Panel()
        .title("Violations over time by class")
        .description(
            "Judged connections per second in the two violation classes; expected_dropped is split into "
            "enforced drops (DROPPED, ERROR) and policy audit mode (AUDIT: would be dropped)."
        )
        .with_target(
            _range_target(
                rate(f'class="{EXPECTED_DROPPED}"', 'verdict!="AUDIT"'), "expected_dropped (dropped)", "A"
            )
        )
        .with_target(
            _range_target(
                rate(f'class="{EXPECTED_DROPPED}"', 'verdict="AUDIT"'), "expected_dropped (AUDIT)", "B"
            )
        )
        .with_target(_range_target(rate(f'class="{UNEXPECTED_ALLOWED}"'), "unexpected_allowed", "C"))
        .unit("cps")
        .min(0)
        .fill_opacity(20)
        .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE).calcs(["max", "lastNotNull"]))
        .height(8)
        .span(24)
    )


def _violation_edges() -> table.Panel:
    violations = f'class=~"{EXPECTED_DROPPED}|{UNEXPECTED_ALLOWED}"'
    edge = "source, destination, port, protocol, class"
    connections = (
        f"sum by ({edge}, verdict) (\n{recent_increase(_connections(violations), '$__range')}\n) > 0"
    )
    reasons = (
        f"sum by ({edge}, reason) (\n"
        f"{recent_increase(_sel('flow_auditor_dropped_connections_total', violations), '$__range')}\n) > 0"
    )
    columns = (
        "source",
        "destination",
        "port",
        "protocol",
        "class",
        "verdict",
        "reason",
        "Value #A",
        "Value #B",
    )
    return (
        table.Panel()
        .title("Violation edges (time range)")
        .description(
            "Edges in the classes expected_dropped and unexpected_allowed with connections in the time "
            "range, by verdict, joined (Grafana merge on source, destination, port, protocol, class) with "
            "the Hubble drop reasons of flow_auditor_dropped_connections_total. An edge with several "
            "verdicts and several drop reasons shows one row per combination Grafana can pair."
        )
        .with_target(_instant_target(connections, "A"))
        .with_target(_instant_target(reasons, "B"))
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            _organize(
                rename={
                    "Value #A": "connections",
                    "Value #B": "dropped (by reason)",
                    "reason": "drop reason",
                },
                order=columns,
            )
        )
        .sort_by([cb.TableSortByFieldState().display_name("connections").desc(True)])
        .override_by_name(
            "class",
            [
                dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
                dm.DynamicConfigValue(
                    id_val="mappings",
                    value=[
                        _mapping(
                            {
                                EXPECTED_DROPPED: (EXPECTED_DROPPED, "orange"),
                                UNEXPECTED_ALLOWED: (UNEXPECTED_ALLOWED, "red"),
                            }
                        )
                    ],
                ),
            ],
        )
        .decimals(0)
        .filterable(True)
        .height(10)
        .span(24)
    )


def _matrix_expr() -> str:
    terms = []
    for cls, rank, _, _ in MATRIX_RANKS:
        observed = _indent(recent_increase(_connections(f'class="{cls}"'), "$__range"), 4)
        terms.append(f"(\n  sum by (source, destination) (\n{observed}\n  ) > 0\n) * 0 + {rank}")
    rule = _sel("flow_auditor_rule_last_seen_timestamp_seconds")
    relabelled = (
        f'label_replace(label_replace({rule}, "source", "$1", "from", "(.*)"), '
        f'"destination", "$1", "to", "(.*)")'
    )
    terms.append(f"{MATRIX_UNUSED[0]} * max by (source, destination) ({relabelled})")
    return "\nor\n".join(terms)


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def _matrix() -> table.Panel:
    legend = {str(rank): (text, color) for _, rank, text, color in MATRIX_RANKS}
    legend[str(MATRIX_UNUSED[0])] = (MATRIX_UNUSED[1], MATRIX_UNUSED[2])
    return (
        table.Panel()
        .title("Communication matrix: expected vs. observed (time range)")
        .description(
            "Rows: source, columns: destination (components, entities or ns:<namespace>). Each cell shows "
            "the worst class of the connections observed in the time range (unexpected allowed > expected "
            "dropped > blocked > allowed); pairs with an allow rule but no connection show 'expected, not "
            "seen'."
        )
        .with_target(_instant_target(_matrix_expr()))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="groupingToMatrix",
                options={
                    "rowField": "source",
                    "columnField": "destination",
                    "valueField": "Value",
                    "emptyValue": "empty",
                },
            )
        )
        .mappings([_mapping(legend)])
        .cell_options(cm.TableColoredBackgroundCellOptions())
        .align(cm.FieldTextAlignment.CENTER)
        .override_by_name(
            "source\\destination",
            [dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "auto"})],
        )
        .height(12)
        .span(24)
    )


def _unused_rules() -> table.Panel:
    rule = _sel("flow_auditor_rule_last_seen_timestamp_seconds")
    expr = f"1000 * (max by (rule, from, to) ({rule}) < time() - $__range_s)"
    return (
        table.Panel()
        .title("Allow rules without traffic (time range)")
        .description(
            "Allow rules of the matrix (index, from, to) that matched no connection in the time range: dead "
            "rules, or legitimate traffic that never arrives (FlowAuditorExpectedEdgeSilent)."
        )
        .with_target(_instant_target(expr))
        .with_transformation(
            _organize(rename={"Value": "last match", "rule": "rule #"}, order=("rule", "from", "to", "Value"))
        )
        .override_by_name(
            "last match",
            [
                dm.DynamicConfigValue(id_val="unit", value="dateTimeFromNow"),
                dm.DynamicConfigValue(id_val="mappings", value=[_mapping({"0": ("never", "text")})]),
            ],
        )
        .sort_by([cb.TableSortByFieldState().display_name("rule #")])
        .height(9)
        .span(12)
    )


def _matrix_reloads() -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title("Matrix reloads and label overflow")
        .description(
            "Matrix reload attempts by result (an error keeps the previous matrix), label values folded "
            "into 'other' because a cardinality cap was reached, and events aggregated into the 'other' "
            "edge because a metric family reached its series cap."
        )
        .with_target(
            _range_target(
                _increase_by("result", "flow_auditor_matrix_reloads_total"),
                "reload {{result}}",
                "A",
            )
        )
        .with_target(
            _range_target(
                _increase_by("label", "flow_auditor_label_overflow_total"),
                "overflow {{label}}",
                "B",
            )
        )
        .with_target(
            _range_target(
                _increase_by("metric", "flow_auditor_series_overflow_total"),
                "series cap {{metric}}",
                "C",
            )
        )
        .draw_style(cm.GraphDrawStyle.BARS)
        .fill_opacity(60)
        .unit("none")
        .decimals(0)
        .min(0)
        .height(9)
        .span(12)
    )


def _stream_health() -> list[Any]:
    last_flow = _sel("flow_auditor_last_flow_timestamp_seconds")
    return [
        stat.Panel()
        .title("Last flow age")
        .description("Time since the newest flow any selected auditor received (flow time, Hubble's clock).")
        .with_target(_instant_target(f"time() - max({last_flow})", fmt=PromQueryFormat.TIME_SERIES))
        .unit("s")
        .thresholds(_thresholds((None, "green"), (60, "orange"), (600, "red")))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(8)
        .span(4),
        stat.Panel()
        .title("Hubble nodes")
        .description("Nodes by state, as reported by Hubble Relay (empty with a node-local Hubble server).")
        .with_target(
            _instant_target(
                f"sum by (state) ({_sel('flow_auditor_hubble_nodes')})", fmt=PromQueryFormat.TIME_SERIES
            ).legend_format("{{state}}")
        )
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(8)
        .span(4),
        timeseries.Panel()
        .title("Stream: up, last flow age by auditor")
        .description("Per auditor: Hubble stream connected (right axis, 0/1) and age of its newest flow.")
        .with_target(_range_target(f"time() - {last_flow}", "last flow age {{instance}}", "A"))
        .with_target(_range_target(_sel("flow_auditor_hubble_up"), "up {{instance}}", "B"))
        .unit("s")
        .min(0)
        .override_by_query(
            "B",
            [
                dm.DynamicConfigValue(id_val="unit", value="none"),
                dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                dm.DynamicConfigValue(id_val="max", value=1),
            ],
        )
        .height(8)
        .span(8),
        timeseries.Panel()
        .title("Reconnects and lost events")
        .description("Reconnections of the Hubble stream per auditor, and events Hubble lost, by where.")
        .with_target(
            _range_target(
                _increase_by("instance", "flow_auditor_hubble_reconnects_total"),
                "reconnects {{instance}}",
                "A",
            )
        )
        .with_target(
            _range_target(
                _increase_by("source", "flow_auditor_hubble_lost_events_total"),
                "lost at {{source}}",
                "B",
            )
        )
        .unit("none")
        .min(0)
        .height(8)
        .span(8),
    ]


def _throughput() -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title("Classification throughput by outcome")
        .description(
            "Received flow events per second by outcome (DESIGN §5): judged, reply, provisional, ignored, "
            "out_of_scope, invalid."
        )
        .with_target(
            _range_target(
                f"sum by (outcome) (rate({_sel('flow_auditor_flows_total')}[$__rate_interval]))",
                "{{outcome}}",
            )
        )
        .unit("cps")
        .min(0)
        .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
        .fill_opacity(30)
        .height(9)
        .span(12)
    )


def _configuration() -> list[Any]:
    return [
        stat.Panel()
        .title("Matrix rules")
        .description("Allow rules in the loaded communication matrix, per auditor.")
        .with_target(
            _instant_target(
                f"max by (instance) ({_sel('flow_auditor_matrix_rules')})", fmt=PromQueryFormat.TIME_SERIES
            ).legend_format("{{instance}}")
        )
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(9)
        .span(6),
        table.Panel()
        .title("Versions")
        .description("Running flow-auditor versions and how many auditors run each.")
        .with_target(_instant_target(f"count by (version) ({_sel('flow_auditor_build_info')})"))
        .with_transformation(_organize(rename={"Value": "auditors"}, order=("version", "Value")))
        .height(9)
        .span(6),
    ]


# -- dashboard ----------------------------------------------------------------------------------------


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
        ("Violations", [*_overview_panels(), _violations_over_time(), _violation_edges()]),
        ("Communication matrix", [_matrix(), _unused_rules(), _matrix_reloads()]),
        ("Hubble stream health", _stream_health()),
        ("Classification and configuration", [_throughput(), *_configuration()]),
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
