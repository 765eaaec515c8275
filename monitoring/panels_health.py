"""The dashboard's last two rows: "Hubble stream health" (last flow age, Hubble nodes, stream up,
reconnects and lost events) and "Classification and configuration" (throughput by outcome, matrix rules,
running versions).

Stage: panel builders of the generated dashboard, pure; :mod:`monitoring.dashboard` lays these rows out
last. Error policy: none of their own; every query is parsed by the tests and run by the end-to-end test.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from monitoring.panels_common import (
    increase_by,
    instant_target,
    organize,
    range_target,
    sel,
    stat_panel,
    thresholds,
)


def stream_health_panels() -> list[Any]:
    last_flow = sel("flow_auditor_last_flow_timestamp_seconds")
    return [
        stat_panel(
            "Last flow age",
            "Time since the newest flow any selected auditor received (flow time, Hubble's clock).",
            f"time() - max({last_flow})",
        )
        .unit("s")
        .thresholds(thresholds((None, "green"), (60, "orange"), (600, "red")))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .height(8)
        .span(4),
        stat_panel(
            "Hubble nodes",
            "Nodes by state, as reported by Hubble Relay (empty with a node-local Hubble server).",
            f"sum by (state) ({sel('flow_auditor_hubble_nodes')})",
            "{{state}}",
        )
        .height(8)
        .span(4),
        timeseries.Panel()
        .title("Stream: up, last flow age by auditor")
        .description("Per auditor: Hubble stream connected (right axis, 0/1) and age of its newest flow.")
        .with_target(range_target(f"time() - {last_flow}", "last flow age {{instance}}", "A"))
        .with_target(range_target(sel("flow_auditor_hubble_up"), "up {{instance}}", "B"))
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
            range_target(
                increase_by("instance", "flow_auditor_hubble_reconnects_total"),
                "reconnects {{instance}}",
                "A",
            )
        )
        .with_target(
            range_target(
                increase_by("source", "flow_auditor_hubble_lost_events_total"),
                "lost at {{source}}",
                "B",
            )
        )
        .unit("none")
        .min(0)
        .height(8)
        .span(8),
    ]


def throughput() -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title("Classification throughput by outcome")
        .description(
            "Received flow events per second by outcome (DESIGN §5): judged, reply, provisional, ignored, "
            "out_of_scope, invalid."
        )
        .with_target(
            range_target(
                f"sum by (outcome) (rate({sel('flow_auditor_flows_total')}[$__rate_interval]))",
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


def configuration() -> list[Any]:
    return [
        stat_panel(
            "Matrix rules",
            "Allow rules in the loaded communication matrix, per auditor.",
            f"max by (instance) ({sel('flow_auditor_matrix_rules')})",
            "{{instance}}",
        )
        .height(9)
        .span(6),
        table.Panel()
        .title("Versions")
        .description("Running flow-auditor versions and how many auditors run each.")
        .with_target(instant_target(f"count by (version) ({sel('flow_auditor_build_info')})"))
        .with_transformation(organize(rename={"Value": "auditors"}, order=("version", "Value")))
        .height(9)
        .span(6),
    ]


def classification_panels() -> list[Any]:
    """The "Classification and configuration" row's panels, in layout order."""
    return [throughput(), *configuration()]
