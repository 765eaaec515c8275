"""The dashboard's first row, "Violations": how many connections the matrix allows were dropped (enforced
and in audit mode) and how many it does not allow got through, over time, and which edges.

Stage: panel builders of the generated dashboard, pure; the row :mod:`monitoring.dashboard` lays out first.
Error policy: none; promql-parser checks every query in the tests, the end-to-end test runs them.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from auditor.classify import EXPECTED_DROPPED, UNEXPECTED_ALLOWED
from monitoring.panels_common import (
    connections_of,
    instant_target,
    organize,
    range_target,
    sel,
    stat_panel,
    thresholds,
    value_map,
)
from monitoring.rules import recent_increase


def _violation_stat(title: str, description: str, matchers: tuple[str, ...], color: str) -> stat.Panel:
    expr = f"sum(\n{recent_increase(connections_of(*matchers), '$__range')}\n) or vector(0)"
    return (
        stat_panel(title, description, expr)
        .unit("none")
        .decimals(0)
        .thresholds(thresholds((None, "green"), (1, color)))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .height(4)
        .span(6)
    )


def overview_panels() -> list[Any]:
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
        stat_panel(
            "Hubble stream",
            "Whether every selected auditor is connected to Hubble (minimum of flow_auditor_hubble_up).",
            f"min({sel('flow_auditor_hubble_up')})",
        )
        .mappings([value_map({"0": ("DOWN", "red"), "1": ("UP", "green")})])
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .height(4)
        .span(6),
    ]


def violations_over_time() -> timeseries.Panel:
    def rate(*matchers: str) -> str:
        return f"sum(rate({connections_of(*matchers)}[$__rate_interval]))"

    return (
        timeseries.Panel()
        .title("Violations over time by class")
        .description(
            "Judged connections per second in the two violation classes; expected_dropped is split into "
            "enforced drops (DROPPED, ERROR) and policy audit mode (AUDIT: would be dropped)."
        )
        .with_target(
            range_target(
                rate(f'class="{EXPECTED_DROPPED}"', 'verdict!="AUDIT"'), "expected_dropped (dropped)", "A"
            )
        )
        .with_target(
            range_target(
                rate(f'class="{EXPECTED_DROPPED}"', 'verdict="AUDIT"'), "expected_dropped (AUDIT)", "B"
            )
        )
        .with_target(range_target(rate(f'class="{UNEXPECTED_ALLOWED}"'), "unexpected_allowed", "C"))
        .unit("cps")
        .min(0)
        .fill_opacity(20)
        .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE).calcs(["max", "lastNotNull"]))
        .height(8)
        .span(24)
    )


def violation_edges() -> table.Panel:
    violations = f'class=~"{EXPECTED_DROPPED}|{UNEXPECTED_ALLOWED}"'
    edge = "source, destination, port, protocol, class"
    connections = (
        f"sum by ({edge}, verdict) (\n{recent_increase(connections_of(violations), '$__range')}\n) > 0"
    )
    reasons = (
        f"sum by ({edge}, reason) (\n"
        f"{recent_increase(sel('flow_auditor_dropped_connections_total', violations), '$__range')}\n) > 0"
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
        .with_target(instant_target(connections, "A"))
        .with_target(instant_target(reasons, "B"))
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            organize(
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
                        value_map(
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


def panels() -> list[Any]:
    """The row's panels, in layout order."""
    return [*overview_panels(), violations_over_time(), violation_edges()]
