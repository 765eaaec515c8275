"""Monitoring artefacts of flow-auditor, generated from Python: alert rules and the Grafana dashboard.

- :mod:`monitoring.rules` — the alerting rules (DESIGN §6), rendered as a plain Prometheus rule file and as a
  ``PrometheusRule`` custom resource, plus a fast variant for end-to-end tests.
- :mod:`monitoring.dashboard` — the Grafana dashboard (grafana-foundation-sdk) and the list of its queries;
  its rows' panels in :mod:`monitoring.panels_violations`, :mod:`monitoring.panels_matrix` and
  :mod:`monitoring.panels_health`, from the building blocks in :mod:`monitoring.panels_common`.
- :mod:`monitoring.build` — ``python -m monitoring.build`` writes every generated file of the repository.

Inputs: none but the metric and label names fixed by DESIGN §6 and :mod:`auditor.classify`. Outputs: text
(YAML, JSON) returned by pure functions; only :mod:`monitoring.build` writes files.
"""
