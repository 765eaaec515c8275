"""Deterministic Hubble flow scenarios for the Airflow example, with their own ground truth.

Stage: none (a test-data source that stands in for Hubble). Input: a start time and a seed. Output:
Hubble ``GetFlowsResponse`` records as Python dicts in the exact form ``hubble observe -o jsonpb`` writes
them — envelope ``{"flow": {...}, "node_name": ..., "time": ...}``, proto field names, enum names as
strings, keys in the order Go's ``protojson`` writes them (declaration order of Cilium's ``flow.proto``),
zero values omitted, timestamps in RFC 3339 with 0/3/6/9 fractional digits and ``Z`` (Go's rule; with
nanosecond jitter almost always 9 digits).

Three users:

- :func:`airflow_scenario` — the bundled example (``examples/airflow/flows.jsonl``, regenerated with
  ``python -m auditor.scenario --out examples/airflow/flows.jsonl``) and the demo server, which replays it
  in a loop with fresh timestamps (:func:`retime`). Ten minutes of flow time on a kind cluster
  (``kind-worker``, ``kind-worker2``, ``kind-control-plane``): every connection is modelled as the events
  Cilium really emits for it (policy verdicts and traces at both ends, overlay hops, replies, drops and
  SYN retransmits, DNS proxy records), all nodes merged and sorted by time. Alongside the events it returns
  the ground truth, computed from the generator's own episode definitions and a hand-written mirror of
  ``examples/airflow/matrix.yaml`` (never from the project's judging code): the outcome DESIGN §5 intends
  for every event, and the expected edges (source, destination, port, protocol, class, connections,
  verdicts, drop reasons).
- :func:`synthetic_events` — an endless-looking stream for benchmarks: many distinct pods, addresses and
  source ports, realistic event mix and size (~2 KB), built from precomputed templates.
- :func:`write_jsonl` / :func:`main` — the only I/O.

Modules: ``model`` (ground-truth types, time format, shared helpers), ``cluster`` (nodes, pods, labels,
reserved peers), ``flows`` (one flow event, and the recorder that emits whole connections and keeps the
ground truth), ``airflow`` (the example's episodes), ``synthetic`` (the benchmark stream), ``io``.

Modelling choices worth knowing when reading the example:

- Cilium's default monitor aggregation reports a TCP packet only when new flags appear in its direction,
  so connections show SYN, SYN-ACK, the first ACK and PSH, FIN — not every data packet.
- Overlay hops (``FROM_OVERLAY``) carry neither ``traffic_direction`` nor ``is_reply`` (Hubble cannot
  tell); they are emitted for the original direction only, so their outcome is always ``ignored``.
- Drops (event type 1) carry no ``is_reply`` (Hubble does not know), policy verdicts always say
  ``is_reply: false`` — both as upstream's parser does.
- Audit mode (episode 5) is enabled on the triggerer endpoint, whose new egress policy forgets
  PostgreSQL: its egress policy verdict says ``AUDIT`` and the connection is then delivered, so it counts
  once as ``expected_dropped`` (verdict AUDIT) and once as ``expected_allowed`` (verdict FORWARDED).
- Every connection has its own source port, so connection counts do not depend on the dedup window
  (SYN retransmits reuse the 5-tuple within 3 s).

Error policy: pure functions, no hidden state (``random.Random(seed)``, never the global generator or
the wall clock). Invalid arguments (``n < 0``, ``distinct_pods < 1``) raise ``ValueError``; :func:`main`
reports I/O errors on stderr and exits 2.
"""

from __future__ import annotations

from auditor.scenario.airflow import airflow_scenario
from auditor.scenario.io import main, write_jsonl
from auditor.scenario.model import DEFAULT_START, OUTCOMES, Event, ExpectedEdge, Scenario, format_time, retime
from auditor.scenario.synthetic import synthetic_events

__all__ = [
    "DEFAULT_START",
    "OUTCOMES",
    "Event",
    "ExpectedEdge",
    "Scenario",
    "airflow_scenario",
    "format_time",
    "main",
    "retime",
    "synthetic_events",
    "write_jsonl",
]
