"""Alerting rules of flow-auditor (DESIGN §6), defined once and rendered in every form that is shipped.

Inputs: the metric names and labels of the daemon (DESIGN §6), the class names of :mod:`auditor.classify`.
Outputs (strings, written by :mod:`monitoring.build`):

- :func:`render_rules` — a plain Prometheus rule file (``deploy/prometheus/flow-auditor.rules.yaml``);
  ``render_rules(fast=True)`` derives the variant for end-to-end tests with a 1 s scrape interval: every
  ``for`` is ``0s``, every range and age threshold is :data:`FAST_WINDOW`, groups are evaluated every second.
- :func:`render_prometheus_rule` — the same groups as a ``monitoring.coreos.com/v1`` ``PrometheusRule``
  (``deploy/base/prometheusrule.yaml``).

Conventions (those of the Prometheus monitoring mixins): a ``severity`` label (``critical``: someone must act
now; ``warning``: act within working hours; ``info``: worth a look, never paged), annotations ``summary``
(one line, no template), ``description`` (templated, names the edge: source, destination, port, protocol and
verdict) and ``runbook_url`` (a section of ``docs/runbook.md`` whose anchor is the lowercase alert name).
Every selector carries :data:`JOB_SELECTOR`; aggregations keep ``cluster``/``namespace``/``job`` so that
multi-cluster setups route alerts per cluster, and drop ``instance`` for traffic alerts so that node-local
auditors (one per node) add up to one alert per edge.

Choices worth knowing:

- A new edge appears as a counter that starts at its first connection (value 1, not 0), and ``increase()``
  cannot see an increase from a series' first sample: a single lateral-movement connection would never
  alert. :func:`recent_increase` therefore also counts series that did not exist one window ago (a
  range selector, so one failed scrape, whose stale marker makes an instant ``offset`` lookup empty, does not
  make a long-running counter look new). Price: a Prometheus server started from scratch sees every existing
  edge as new and reports violations counted earlier once.
- ``FlowAuditorExpectedEdgeSilent`` needs no auditor uptime metric: a rule not matched within the window
  (``rule_last_seen`` older than it, or still 0) must stay so for ``for: 1h``, which is also the grace
  period of a freshly started auditor whose rules are all 0.
- ``FlowAuditorUnexpectedTrafficAllowed`` is ``critical``: traffic the matrix forbids reached its destination
  (default-deny missing, policy too broad, CNI not enforcing, lateral movement), nothing else reports it,
  and the auditor only counts delivery that is proven (DESIGN §5.3: a provisional egress ``FORWARDED``
  towards a pod is not counted), so Hubble noise does not page anyone. What remains are incomplete matrices,
  which are fixed once in the matrix, not silenced.

Error policy: pure functions over constants; nothing to fail at run time. Mistakes in the expressions are
caught by the tests (``promtool check rules``, ``promtool test rules`` in ``tests/monitoring/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import yaml

from auditor.classify import EXPECTED_DROPPED, UNEXPECTED_ALLOWED

RUNBOOK_BASE: Final = "https://github.com/flow-auditor/flow-auditor/blob/main/docs/runbook.md"
JOB_SELECTOR: Final = 'job=~".*flow-auditor.*"'
"""Selects the scrape job: ``flow-auditor`` (plain config) or a ServiceMonitor's, e.g. ``x-flow-auditor``."""
SCOPE_LABELS: Final = "cluster, namespace, job"
EDGE_LABELS: Final = "source, destination, port, protocol"

WINDOW: Final = "10m"
SILENT_AFTER: Final = "1h"
FAST_WINDOW: Final = "30s"
FAST_INTERVAL: Final = "1s"

TRAFFIC_GROUP: Final = "flow-auditor.traffic"
HEALTH_GROUP: Final = "flow-auditor.health"
GROUPS: Final = (TRAFFIC_GROUP, HEALTH_GROUP)

PROMETHEUS_RULE_LABELS: Final = {
    "app.kubernetes.io/name": "flow-auditor",
    # kube-prometheus-stack's Prometheus loads only PrometheusRules labelled with its Helm release name
    # (prometheus.prometheusSpec.ruleSelector, default matchLabels release=<release name>).
    "release": "kube-prometheus-stack",
}

_DURATION_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# An edge in a description: "5432/TCP", or "ICMPv4" (the port label is empty for ICMP).
_EDGE_TEXT: Final = (
    "{{ $labels.source }} to {{ $labels.destination }} on "
    "{{ if $labels.port }}{{ $labels.port }}/{{ end }}{{ $labels.protocol }}"
)
_COUNT_TEXT: Final = '{{ printf "%.0f" $value }}'
# The auditor an alert is about, in a description.
_TARGET: Final = "{{ $labels.instance }} (job {{ $labels.job }})"


@dataclass(frozen=True)
class Timing:
    """The time parameters of the rules: production values, or short ones for end-to-end tests."""

    window: str = WINDOW
    silent_after: str = SILENT_AFTER
    force_for: str | None = None  # replaces every rule's ``for`` when set
    interval: str | None = None  # rule group evaluation interval (default: Prometheus' global one)

    def hold(self, duration: str) -> str:
        """The ``for`` of a rule whose production value is ``duration``."""
        return duration if self.force_for is None else self.force_for


PRODUCTION: Final = Timing()
FAST: Final = Timing(window=FAST_WINDOW, silent_after=FAST_WINDOW, force_for="0s", interval=FAST_INTERVAL)


@dataclass(frozen=True)
class Alert:
    """One alerting rule (one rule per alert name: promtool rejects duplicates with the same labels)."""

    name: str
    group: str
    severity: str
    for_: str
    expr: str
    summary: str
    description: str

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK_BASE}#{self.name.lower()}"

    def to_rule(self) -> dict[str, Any]:
        """The rule as it appears in a rule file (keys in the customary order)."""
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": self.runbook_url,
            },
        }


def seconds(duration: str) -> int:
    """Seconds of a simple Prometheus duration such as ``30s``, ``10m`` or ``1h``."""
    return int(duration[:-1]) * _DURATION_SECONDS[duration[-1]]


def _sel(metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join((JOB_SELECTOR, *matchers))}}}"


def _indent(text: str, spaces: int = 2) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def recent_increase(selector: str, window: str) -> str:
    """Increase of a counter over ``window``, counting a series born within the window from zero.

    Series without a sample between two windows ago and one window ago are new: their value is what they
    counted since they appeared. The others contribute their ``increase()``. ``or`` keeps the left-hand side
    where both sides have the series. Wrap the result in parentheses before comparing it (``>`` binds more
    tightly than ``or``).
    """
    return (
        f"(\n  {selector}\n  unless present_over_time({selector}[{window}] offset {window})\n)\n"
        f"or increase({selector}[{window}])"
    )


def _edge_alert(
    name: str, severity: str, timing: Timing, matchers: tuple[str, ...], summary: str, what: str
) -> Alert:
    selector = _sel("flow_auditor_connections_total", *matchers)
    expr = (
        f"sum by ({SCOPE_LABELS}, {EDGE_LABELS}, verdict) (\n"
        f"{_indent(recent_increase(selector, timing.window))}\n) > 0"
    )
    description = (
        f"{_COUNT_TEXT} connection(s) from {_EDGE_TEXT} {what} "
        f"(verdict {{{{ $labels.verdict }}}}, last {timing.window})."
    )
    return Alert(name, TRAFFIC_GROUP, severity, timing.hold("0m"), expr, summary, description)


def _traffic_alerts(timing: Timing) -> list[Alert]:
    expected_dropped = f'class="{EXPECTED_DROPPED}"'
    rule_last_seen = (
        f"max by ({SCOPE_LABELS}, rule, from, to) ({_sel('flow_auditor_rule_last_seen_timestamp_seconds')})"
    )
    return [
        _edge_alert(
            "FlowAuditorLegitimateTrafficDropped",
            "critical",
            timing,
            (expected_dropped, 'verdict=~"DROPPED|ERROR"'),
            "Traffic that the communication matrix allows is being dropped.",
            "were dropped although the communication matrix allows them",
        ),
        _edge_alert(
            "FlowAuditorUnexpectedTrafficAllowed",
            "critical",
            timing,
            (f'class="{UNEXPECTED_ALLOWED}"',),
            "Traffic that the communication matrix does not allow reached its destination.",
            "reached their destination although the communication matrix does not allow them",
        ),
        _edge_alert(
            "FlowAuditorPolicyWouldDropLegitimateTraffic",
            "warning",
            timing,
            (expected_dropped, 'verdict="AUDIT"'),
            "A network policy in audit mode would drop traffic that the communication matrix allows.",
            "would be dropped once policies are enforced (policy audit mode) although the communication "
            "matrix allows them",
        ),
        Alert(
            "FlowAuditorExpectedEdgeSilent",
            TRAFFIC_GROUP,
            "info",
            # A freshly started auditor (every rule still 0) gets the same grace as a rule that went silent.
            timing.hold(timing.silent_after),
            f"{rule_last_seen} < time() - {seconds(timing.window)}",
            "An allow rule of the communication matrix has not matched any traffic for a while.",
            f"Allow rule {{{{ $labels.rule }}}} of the communication matrix ({{{{ $labels.from }}}} to "
            f"{{{{ $labels.to }}}}) has matched no connection for more than {timing.silent_after}: "
            "{{ if eq $value 0.0 }}never since the auditor started"
            "{{ else }}last match {{ $value | humanizeTimestamp }}{{ end }}.",
        ),
    ]


def _health_alerts(timing: Timing) -> list[Alert]:
    return _stream_alerts(timing) + _auditor_alerts(timing)


def _stream_alerts(timing: Timing) -> list[Alert]:
    """The Hubble flow stream: down, connected but silent, losing events, skipping past a gap."""
    hubble_up = _sel("flow_auditor_hubble_up")
    flows = _sel("flow_auditor_flows_total")
    lost = _sel("flow_auditor_hubble_lost_events_total")
    gaps = _sel("flow_auditor_hubble_stream_gaps_total")
    stream_down, no_flows, losing = timing.hold("5m"), timing.hold("15m"), timing.hold("15m")
    return [
        Alert(
            "FlowAuditorHubbleStreamDown",
            HEALTH_GROUP,
            "warning",
            stream_down,
            f"{hubble_up} == 0",
            "flow-auditor is not receiving the Hubble flow stream.",
            f"flow-auditor {_TARGET} has not been connected to Hubble for {stream_down}: "
            "no connection is judged and no violation is reported.",
        ),
        Alert(
            "FlowAuditorNoFlows",
            HEALTH_GROUP,
            "warning",
            no_flows,
            # Without flows_total series at all (nothing counted yet), the rate is taken as zero.
            f"(\n  sum without (outcome) (rate({flows}[{timing.window}]))\n  or 0 * {hubble_up}\n) == 0\n"
            f"and {hubble_up} == 1",
            "flow-auditor is connected to Hubble but receives no flows.",
            f"flow-auditor {_TARGET} is connected to Hubble but has received no flow event for "
            f"{timing.window} (condition true for {no_flows}): it is blind, violations go unreported.",
        ),
        Alert(
            "FlowAuditorLostEvents",
            HEALTH_GROUP,
            "warning",
            losing,
            f"increase({lost}[{timing.window}]) > 0",
            "Hubble keeps losing flow events: the audit is incomplete.",
            f"Hubble reported {_COUNT_TEXT} lost event(s) at {{{{ $labels.source }}}} to flow-auditor "
            f"{_TARGET} in the last {timing.window}, and has kept losing events for {losing}: "
            "connections are missing from the audit.",
        ),
        Alert(
            "FlowAuditorHubbleStreamGap",
            HEALTH_GROUP,
            "warning",
            timing.hold("0m"),
            f"increase({gaps}[{timing.window}]) > 0",
            "flow-auditor skipped Hubble events it could not receive.",
            f"flow-auditor {_TARGET} skipped past {_COUNT_TEXT} message(s) larger than its receive limit in "
            f"the last {timing.window}; the events Hubble held after each were not judged (see its log: "
            "hubble stream gap).",
        ),
    ]


def _auditor_alerts(timing: Timing) -> list[Alert]:
    """The auditor itself: a matrix it refused, a series cap it hit, a target Prometheus cannot scrape."""
    reload_errors = _sel("flow_auditor_matrix_reloads_total", 'result="error"')
    series_overflow = _sel("flow_auditor_series_overflow_total")
    up = f"up{{{JOB_SELECTOR}}}"
    scrape_down = timing.hold("5m")
    return [
        Alert(
            "FlowAuditorMatrixReloadFailed",
            HEALTH_GROUP,
            "warning",
            timing.hold("0m"),
            f"(\n{_indent(recent_increase(reload_errors, timing.window))}\n) > 0",
            "flow-auditor rejected a new communication matrix and keeps using the previous one.",
            f"flow-auditor {_TARGET} failed to reload the communication matrix {_COUNT_TEXT} time(s) in the "
            f"last {timing.window}; it keeps judging with the previous matrix (its log names the file, "
            "line and key).",
        ),
        Alert(
            "FlowAuditorSeriesOverflow",
            HEALTH_GROUP,
            "warning",
            timing.hold("0m"),
            f"sum by ({SCOPE_LABELS}, instance, metric) (increase({series_overflow}[{timing.window}])) > 0",
            "flow-auditor hit its series cap: some edges are only counted in an aggregated 'other' series.",
            f"flow-auditor {_TARGET} aggregated {_COUNT_TEXT} event(s) of {{{{ $labels.metric }}}} into the "
            f"'other' series of their class in the last {timing.window}: the metric family reached its "
            "series cap, so the edges beyond it cannot be told apart (the violation alerts still fire, on "
            "the 'other' edge).",
        ),
        Alert(
            "FlowAuditorDown",
            HEALTH_GROUP,
            "warning",
            scrape_down,
            # absent(): no target at all (not deployed, ServiceMonitor or scrape config not selecting it).
            f"{up} == 0 or absent({up})",
            "Prometheus cannot scrape flow-auditor.",
            "{{ if $labels.instance }}Prometheus has failed to scrape flow-auditor "
            f'{_TARGET}{{{{ else }}}}Prometheus has no flow-auditor target (job=~".*flow-auditor.*")'
            f"{{{{ end }}}} for {scrape_down}: violations are not reported.",
        ),
    ]


def alerts(timing: Timing = PRODUCTION) -> list[Alert]:
    """Every alerting rule, in file order, with ``timing`` applied."""
    return _traffic_alerts(timing) + _health_alerts(timing)


def alert_names() -> list[str]:
    """Distinct alert names, in file order."""
    return list(dict.fromkeys(a.name for a in alerts()))


def rule_groups(timing: Timing = PRODUCTION) -> list[dict[str, Any]]:
    """The rule groups (the ``groups`` list of a rule file, the ``spec.groups`` of a PrometheusRule)."""
    rules = alerts(timing)
    groups: list[dict[str, Any]] = []
    for name in GROUPS:
        group: dict[str, Any] = {"name": name}
        if timing.interval is not None:
            group["interval"] = timing.interval
        group["rules"] = [a.to_rule() for a in rules if a.group == name]
        groups.append(group)
    return groups


# -- rendering ------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings (PromQL) as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)

_GENERATED: Final = "# Generated by `python -m monitoring.build` from monitoring/rules.py. Do not edit.\n"


def _dump(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def render_rules(fast: bool = False) -> str:
    """The plain Prometheus rule file (``fast``: the end-to-end test variant, see the module docstring)."""
    header = _GENERATED
    if fast:
        header += "# FAST VARIANT for end-to-end tests (1 s scrape interval): never deploy it.\n"
    return header + _dump({"groups": rule_groups(FAST if fast else PRODUCTION)})


def prometheus_rule() -> dict[str, Any]:
    """The ``PrometheusRule`` custom resource (no namespace: kustomize sets it)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "flow-auditor", "labels": dict(PROMETHEUS_RULE_LABELS)},
        "spec": {"groups": rule_groups(PRODUCTION)},
    }


def render_prometheus_rule() -> str:
    """``deploy/base/prometheusrule.yaml``."""
    header = (
        _GENERATED
        + "# Label release: kube-prometheus-stack is the default rule selector of kube-prometheus-stack's\n"
        "# Prometheus (ruleSelector: matchLabels release=<Helm release name>);\n"
        "# deploy/base/kustomization.yaml sets it too: change it there if your release has another name.\n"
    )
    return header + _dump(prometheus_rule())
