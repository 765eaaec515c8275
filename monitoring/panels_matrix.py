"""The dashboard's "Communication matrix" row: expected vs. observed (source by destination), allow rules
without traffic, matrix reloads and label/series overflow.

Stage: pure panel builders for the second row of :mod:`monitoring.dashboard`. Error policy: none of their
own; the tests parse every query (promql-parser) and the end-to-end test runs it against Prometheus.
"""

from __future__ import annotations

from typing import Any, Final

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from auditor.classify import EXPECTED_ALLOWED, EXPECTED_DROPPED, UNEXPECTED_ALLOWED, UNEXPECTED_DROPPED
from monitoring.panels_common import (
    connections_of,
    increase_by,
    indent,
    instant_target,
    organize,
    range_target,
    sel,
    value_map,
)
from monitoring.rules import recent_increase

# Observed (source, destination) pairs in the matrix panel: the worst class seen in the time range.
# Higher rank wins (the `or` chain keeps the left-hand side for the same pair).
MATRIX_RANKS: Final = (
    (UNEXPECTED_ALLOWED, 4, "unexpected allowed", "red"),
    (EXPECTED_DROPPED, 3, "expected dropped", "orange"),
    (UNEXPECTED_DROPPED, 2, "blocked", "blue"),
    (EXPECTED_ALLOWED, 1, "allowed", "green"),
)
MATRIX_UNUSED: Final = (0, "expected, not seen", "transparent")


def matrix_expr() -> str:
    terms = []
    for cls, rank, _, _ in MATRIX_RANKS:
        observed = indent(recent_increase(connections_of(f'class="{cls}"'), "$__range"), 4)
        terms.append(f"(\n  sum by (source, destination) (\n{observed}\n  ) > 0\n) * 0 + {rank}")
    rule = sel("flow_auditor_rule_last_seen_timestamp_seconds")
    relabelled = (
        f'label_replace(label_replace({rule}, "source", "$1", "from", "(.*)"), '
        f'"destination", "$1", "to", "(.*)")'
    )
    terms.append(f"{MATRIX_UNUSED[0]} * max by (source, destination) ({relabelled})")
    return "\nor\n".join(terms)


def matrix() -> table.Panel:
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
        .with_target(instant_target(matrix_expr()))
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
        .mappings([value_map(legend)])
        .cell_options(cm.TableColoredBackgroundCellOptions())
        .align(cm.FieldTextAlignment.CENTER)
        .override_by_name(
            "source\\destination",
            [dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "auto"})],
        )
        .height(12)
        .span(24)
    )


def unused_rules() -> table.Panel:
    rule = sel("flow_auditor_rule_last_seen_timestamp_seconds")
    expr = f"1000 * (max by (rule, from, to) ({rule}) < time() - $__range_s)"
    return (
        table.Panel()
        .title("Allow rules without traffic (time range)")
        .description(
            "Allow rules of the matrix (index, from, to) that matched no connection in the time range: dead "
            "rules, or legitimate traffic that never arrives (FlowAuditorExpectedEdgeSilent)."
        )
        .with_target(instant_target(expr))
        .with_transformation(
            organize(rename={"Value": "last match", "rule": "rule #"}, order=("rule", "from", "to", "Value"))
        )
        .override_by_name(
            "last match",
            [
                dm.DynamicConfigValue(id_val="unit", value="dateTimeFromNow"),
                dm.DynamicConfigValue(id_val="mappings", value=[value_map({"0": ("never", "text")})]),
            ],
        )
        .sort_by([cb.TableSortByFieldState().display_name("rule #")])
        .height(9)
        .span(12)
    )


def matrix_reloads() -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title("Matrix reloads and label overflow")
        .description(
            "Matrix reload attempts by result (an error keeps the previous matrix), label values folded "
            "into 'other' because a cardinality cap was reached, and events aggregated into the 'other' "
            "edge because a metric family reached its series cap."
        )
        .with_target(
            range_target(
                increase_by("result", "flow_auditor_matrix_reloads_total"),
                "reload {{result}}",
                "A",
            )
        )
        .with_target(
            range_target(
                increase_by("label", "flow_auditor_label_overflow_total"),
                "overflow {{label}}",
                "B",
            )
        )
        .with_target(
            range_target(
                increase_by("metric", "flow_auditor_series_overflow_total"),
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


def panels() -> list[Any]:
    """The row's panels, in layout order."""
    return [matrix(), unused_rules(), matrix_reloads()]
