"""The scenario generator: deterministic, Hubble-shaped, and its ground truth tells the intended story."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from auditor import scenario
from auditor._proto.observer import observer_pb2
from auditor.classify import Edge
from auditor.scenario import DEFAULT_START, ExpectedEdge, Scenario, airflow_scenario, synthetic_events

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "airflow" / "flows.jsonl"
MATRIX = ROOT / "examples" / "airflow" / "matrix.yaml"


@pytest.fixture(scope="module")
def example() -> Scenario:
    return airflow_scenario(DEFAULT_START)


def _edges(sc: Scenario) -> dict[Edge, ExpectedEdge]:
    return {Edge(e.source, e.destination, e.port, e.protocol, e.cls): e for e in sc.expected_edges}


# -- determinism and the committed example ---------------------------------------------------------


def test_same_seed_gives_identical_events_and_truth(example: Scenario) -> None:
    again = airflow_scenario(DEFAULT_START, seed=7)
    assert again.events == example.events
    assert again.outcomes == example.outcomes
    assert again.expected_edges == example.expected_edges


def test_another_seed_changes_details_but_not_the_story(example: Scenario) -> None:
    other = airflow_scenario(DEFAULT_START, seed=8)
    assert other.events != example.events
    assert {k: e.connections for k, e in _edges(other).items()} == {
        k: e.connections for k, e in _edges(example).items()
    }


def test_start_time_shifts_the_whole_example() -> None:
    later = airflow_scenario(datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert later.events[0]["time"].startswith("2027-01-02T03:")


def test_committed_example_is_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "flows.jsonl"
    assert scenario.main(["--out", str(out)]) == 0
    regenerate = "python -m auditor.scenario --out examples/airflow/flows.jsonl"
    assert EXAMPLE.read_bytes() == out.read_bytes(), (
        f"examples/airflow/flows.jsonl is stale: run `{regenerate}`"
    )


# -- Hubble's shape --------------------------------------------------------------------------------


def test_one_outcome_per_event(example: Scenario) -> None:
    assert len(example.outcomes) == len(example.events)
    assert set(example.outcomes) <= set(scenario.OUTCOMES)
    counts = example.outcome_counts()
    assert all(counts[o] > 0 for o in ("judged", "reply", "provisional", "ignored", "out_of_scope"))
    assert counts["lost"] == 1


def test_events_are_sorted_by_time_and_envelope_matches_flow(example: Scenario) -> None:
    times = [e["time"] for e in example.events]
    assert times == sorted(times)
    for event in example.events:
        if "flow" in event:
            assert event["flow"]["time"] == event["time"]
            assert event["flow"]["node_name"] == event["node_name"]
            assert list(event) == ["flow", "node_name", "time"]


def test_timestamps_are_rfc3339_with_nanoseconds(example: Scenario) -> None:
    for event in example.events:
        stamp = event["time"]
        assert stamp.endswith("Z")
        assert datetime.fromisoformat(stamp[:26] + "+00:00") >= DEFAULT_START
    assert sum(len(e["time"]) == len("2026-11-23T09:00:00.123456789Z") for e in example.events) > 0.99 * len(
        example.events
    )


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (1_795_424_400_000_000_000, "2026-11-23T09:00:00Z"),
        (1_795_424_400_120_000_000, "2026-11-23T09:00:00.120Z"),
        (1_795_424_400_000_123_000, "2026-11-23T09:00:00.000123Z"),
        (1_795_424_400_000_000_007, "2026-11-23T09:00:00.000000007Z"),
    ],
)
def test_format_time_follows_go_protojson(ns: int, text: str) -> None:
    assert scenario.format_time(ns) == text


def test_retime_replaces_both_stamps_without_touching_the_original(example: Scenario) -> None:
    event = example.events[0]
    fresh = scenario.retime(event, 1_800_000_000_123_456_789)
    assert fresh["time"] == fresh["flow"]["time"] == "2027-01-15T08:00:00.123456789Z"
    assert event["time"] != fresh["time"]
    assert event["flow"]["time"] == event["time"]


def test_lost_events_record_uses_upstream_field_names(example: Scenario) -> None:
    (lost,) = [e for e, o in zip(example.events, example.outcomes, strict=True) if o == "lost"]
    assert lost["lost_events"] == {"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": "3", "cpu": 1}
    assert list(lost) == ["lost_events", "node_name", "time"]


def test_drops_carry_reason_and_no_reply_flag(example: Scenario) -> None:
    drops = [e["flow"] for e in example.events if e.get("flow", {}).get("verdict") == "DROPPED"]
    assert drops
    for f in drops:
        assert f["drop_reason"] == 133 and f["drop_reason_desc"] == "POLICY_DENIED"
        assert f["traffic_direction"] == "INGRESS"
        assert "is_reply" not in f
        assert f["event_type"] in ({"type": 1, "sub_type": 133}, {"type": 5})


def test_overlay_hops_have_no_direction_and_are_ignored(example: Scenario) -> None:
    for event, outcome in zip(example.events, example.outcomes, strict=True):
        f = event.get("flow", {})
        if f.get("trace_observation_point") == "FROM_OVERLAY":
            assert "traffic_direction" not in f and "is_reply" not in f
            assert outcome in ("ignored", "out_of_scope")


def _flows(sc: Scenario) -> list[tuple[dict[str, Any], str]]:
    return [(e["flow"], o) for e, o in zip(sc.events, sc.outcomes, strict=True) if "flow" in e]


def test_replies_are_marked_both_ways(example: Scenario) -> None:
    for f, outcome in _flows(example):
        if f.get("is_reply") is True:
            assert f["reply"] is True
            assert outcome in ("reply", "out_of_scope")
        else:
            assert "reply" not in f


def test_every_line_round_trips_through_the_protos(example: Scenario) -> None:
    from google.protobuf import json_format

    lines = EXAMPLE.read_text().splitlines()
    assert len(lines) == len(example.events)
    for line in lines:
        message = json_format.Parse(line, observer_pb2.GetFlowsResponse())
        assert json_format.MessageToDict(message, preserving_proto_field_name=True) == json.loads(line)


# -- the story: episodes in the ground truth -------------------------------------------------------


def test_episode_2_prometheus_scrapes_dropped_after_namespace_label_loss(example: Scenario) -> None:
    edges = _edges(example)
    for dest, port in (("postgresql", 9187), ("redis", 9121)):
        dropped = edges[("prometheus", dest, port, "TCP", "expected_dropped")]
        assert dropped.connections >= 5
        assert dict(dropped.verdicts) == {"DROPPED": dropped.connections}
        assert dict(dropped.drop_reasons) == {"POLICY_DENIED": dropped.connections}
        assert edges[("prometheus", dest, port, "TCP", "expected_allowed")].connections >= 1
    labelled = "k8s:io.cilium.k8s.namespace.labels.name=monitoring"
    for f, _ in _flows(example):
        if f["verdict"] == "DROPPED" and f["source"].get("namespace") == "monitoring":
            assert labelled not in f["source"]["labels"]


def test_episode_3_debug_pod_reaching_redis_is_unexpected_allowed(example: Scenario) -> None:
    edge = _edges(example)[("ns:default", "redis", 6379, "TCP", "unexpected_allowed")]
    assert edge.connections == 3 and edge.rule is None
    redis = [k.cls for k in _edges(example) if (k.source, k.destination) == ("ns:default", "redis")]
    assert set(redis) == {"unexpected_allowed"}


def test_episode_4_attacker_is_unexpected_dropped_never_allowed(example: Scenario) -> None:
    edges = _edges(example)
    assert edges[("ns:default", "postgresql", 5432, "TCP", "unexpected_dropped")].connections == 4
    assert ("ns:default", "postgresql", 5432, "TCP", "unexpected_allowed") not in edges
    attacker = [(f, o) for f, o in _flows(example) if f["source"].get("pod_name", "").startswith("attacker-")]
    provisional = [f for f, o in attacker if o == "provisional"]
    assert provisional and all(
        f["verdict"] == "FORWARDED" and f["traffic_direction"] == "EGRESS" for f in provisional
    )
    assert {f["verdict"] for f, o in attacker if o == "judged"} == {"DROPPED"}


def test_episode_5_audit_mode_counts_once_per_class(example: Scenario) -> None:
    edges = _edges(example)
    audited = edges[("triggerer", "postgresql", 5432, "TCP", "expected_dropped")]
    delivered = edges[("triggerer", "postgresql", 5432, "TCP", "expected_allowed")]
    assert dict(audited.verdicts) == {"AUDIT": audited.connections}
    assert delivered.connections == audited.connections


def test_episode_6_traefik_dropped_for_a_while(example: Scenario) -> None:
    edges = _edges(example)
    assert edges[("traefik", "webserver", 8080, "TCP", "expected_dropped")].connections >= 1
    assert edges[("traefik", "webserver", 8080, "TCP", "expected_allowed")].connections >= 1


def test_normal_traffic_covers_the_matrix_except_unused_rules(example: Scenario) -> None:
    allowed = {
        (e.source, e.destination, e.port, e.protocol)
        for e in example.expected_edges
        if e.cls == "expected_allowed"
    }
    for edge in [
        ("traefik", "webserver", 8080, "TCP"),
        ("kubelet", "webserver", 8080, "TCP"),
        ("webserver", "postgresql", 5432, "TCP"),
        ("scheduler", "postgresql", 5432, "TCP"),
        ("worker", "postgresql", 5432, "TCP"),
        ("scheduler", "redis", 6379, "TCP"),
        ("worker", "redis", 6379, "TCP"),
        ("scheduler", "worker", 8793, "TCP"),
        ("worker", "kube-dns", 53, "UDP"),
        ("worker", "internet", 443, "TCP"),
        ("worker", "statsd", 9125, "UDP"),
        ("prometheus", "webserver", 8080, "TCP"),
        ("prometheus", "statsd", 9102, "TCP"),
    ]:
        assert edge in allowed, edge
    assert example.unused_rules == [10]


def _yaml_rules() -> list[tuple[int, set[str], str, set[tuple[int, str]]]]:
    doc = yaml.safe_load(MATRIX.read_text())
    rules = []
    for number, rule in enumerate(doc["allow"], start=1):
        sources = rule["from"] if isinstance(rule["from"], list) else [rule["from"]]
        ports = set()
        for port in rule["ports"]:
            text = str(port)
            number_part, _, proto = text.partition("/")
            ports.add((int(number_part), proto or "TCP"))
        rules.append((number, set(sources), rule["to"], ports))
    return rules


def test_ground_truth_agrees_with_matrix_yaml(example: Scenario) -> None:
    rules = _yaml_rules()
    assert [(n, tuple(sorted(s)), d, tuple(sorted(p))) for n, s, d, p in rules] == [
        (n, tuple(sorted(s)), d, tuple(sorted(p))) for n, s, d, p in scenario.model.RULES
    ]
    for edge in example.expected_edges:
        matching = [
            n
            for n, s, d, p in rules
            if edge.source in s and edge.destination == d and (edge.port, edge.protocol) in p
        ]
        assert edge.rule == (matching[0] if matching else None), edge
        assert edge.cls.startswith("expected_") == bool(matching), edge


def test_every_judged_connection_has_final_evidence(example: Scenario) -> None:
    judged = Counter(o for o in example.outcomes)["judged"]
    connections = sum(example.class_counts().values())
    assert judged >= connections > 0


# -- synthetic stream --------------------------------------------------------------------------------


def test_synthetic_events_count_and_distinct_pods() -> None:
    events = list(synthetic_events(5000, distinct_pods=400, seed=3))
    assert len(events) == 5000
    pods = {f["flow"][side].get("pod_name") for f in events for side in ("source", "destination")}
    pods.discard(None)
    assert len(pods) > 400 / 2
    originals = [e["flow"] for e in events if not e["flow"].get("is_reply")]
    ports = {(f["IP"]["source"], next(iter(f["l4"].values()))["source_port"]) for f in originals}
    assert len(ports) > 500


def test_synthetic_events_are_deterministic_and_realistic() -> None:
    first = list(synthetic_events(2000, distinct_pods=100, seed=5))
    assert first == list(synthetic_events(2000, distinct_pods=100, seed=5))
    kinds = Counter((e["flow"]["event_type"]["type"], e["flow"]["verdict"]) for e in first)
    for kind in [(4, "FORWARDED"), (5, "FORWARDED"), (1, "DROPPED"), (129, "FORWARDED"), (5, "AUDIT")]:
        assert kinds[kind] > 0, kind
    assert any(e["flow"].get("is_reply") is True for e in first)
    size = sum(len(json.dumps(e, separators=(",", ":"))) for e in first) / len(first)
    assert 1500 < size < 2600


def test_synthetic_events_round_trip_through_the_protos() -> None:
    from google.protobuf import json_format

    for event in synthetic_events(300, distinct_pods=50):
        line = json.dumps(event)
        message = json_format.Parse(line, observer_pb2.GetFlowsResponse())
        assert json_format.MessageToDict(message, preserving_proto_field_name=True) == event


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 1, "distinct_pods": 0}])
def test_synthetic_events_reject_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        list(synthetic_events(**kwargs))


def test_write_jsonl_is_compact_and_ordered(tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    events = list(synthetic_events(10, distinct_pods=10))
    scenario.write_jsonl(events, out)
    lines = out.read_text().splitlines()
    assert lines == [json.dumps(e, separators=(",", ":")) for e in events]


def test_main_reports_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert scenario.main(["--out", str(tmp_path / "missing" / "x.jsonl")]) == 2
    assert "error:" in capsys.readouterr().err
