"""Building blocks of the dashboard's panels (:mod:`monitoring.dashboard`): the ``$job``/``$cluster``
selector, PromQL fragments, Prometheus query targets, value maps, thresholds and table transformations.

Stage: generation of monitoring files (pure functions over constants). Error policy: none of its own;
queries are checked by the tests (promql-parser on every target, and the end-to-end test).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE: Final = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL: Final = 'job=~"$job", cluster=~"$cluster"'


def sel(metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join((SEL, *matchers))}}}"


def increase_by(label: str, metric: str) -> str:
    return f"sum by ({label}) (increase({sel(metric)}[$__rate_interval]))"


def connections_of(*matchers: str) -> str:
    return sel("flow_auditor_connections_total", *matchers)


def range_target(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).range().ref_id(ref).datasource(DATASOURCE)


def instant_target(
    expr: str, ref: str = "A", fmt: PromQueryFormat = PromQueryFormat.TABLE
) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).instant().format(fmt).ref_id(ref).datasource(DATASOURCE)


def stat_panel(title: str, description: str, expr: str, legend: str | None = None) -> stat.Panel:
    """A single-value panel over one instant query (a value per series): the last value, no graph."""
    target = instant_target(expr, fmt=PromQueryFormat.TIME_SERIES)
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .with_target(target if legend is None else target.legend_format(legend))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def value_map(options: Mapping[str, tuple[str, str]]) -> dm.ValueMap:
    return dm.ValueMap(
        options={
            value: dm.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(options.items())
        }
    )


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def organize(
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


def indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())
