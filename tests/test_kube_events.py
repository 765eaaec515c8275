"""Kubernetes Events for violations: the ``--kube-events`` sink against a real local HTTP server.

The server speaks the slice of the core/v1 Events API the sink uses (create, strategic-merge patch, read)
on 127.0.0.1 with an ephemeral port and records every request; the official client talks to it over HTTP.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import structlog
from daemon_helpers import wait_for
from events_api import EventsServer
from factory import DEBUG, POSTGRES, REDIS, WORLD, flow, pod
from kubernetes.client import ApiClient, Configuration

from auditor.classify import EXPECTED_DROPPED, UNEXPECTED_ALLOWED, Auditor, Edge, Judgement
from auditor.matrix import load_matrix
from auditor.model import Endpoint, EventType, Verdict
from auditor.sinks.kube_events import (
    MAX_MESSAGE,
    MAX_NAME,
    KubeConfigError,
    KubeEventsSink,
    api_client_from_environment,
    event_name,
)

MATRIX = load_matrix(Path(__file__).parent.parent / "examples" / "airflow" / "matrix.yaml")
PROMETHEUS = pod("monitoring", "prometheus-0", 3001, "app.kubernetes.io/name=prometheus")
T0 = 1_800_000_000.0  # factory flow time
INSTANCE = "kind-worker"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@pytest.fixture
def server() -> Iterator[EventsServer]:
    srv = EventsServer()
    srv.start()
    yield srv
    srv.stop()


def api_client(url: str) -> ApiClient:
    return ApiClient(Configuration(host=url))


class Clock:
    """A monotonic clock the test moves by hand; ``reads`` counts the times the sink looked at it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def make_sink(url: str, clock: Clock | None = None, **kwargs: Any) -> KubeEventsSink:
    kwargs.setdefault("scope", MATRIX.scope_namespaces)
    return KubeEventsSink(
        api_client(url), reporting_instance=INSTANCE, clock=clock or Clock(), request_timeout=5, **kwargs
    )


def judgements(*flows: dict[str, Any]) -> list[Judgement]:
    """Judge flows with the real auditor (dedup included): one per flow, in order."""
    auditor = Auditor(MATRIX)
    result = []
    for overrides in flows:
        j = auditor.process(flow(**overrides))
        assert isinstance(j, Judgement), j
        result.append(j)
    return result


DROP = {"verdict": Verdict.DROPPED, "event_type": EventType.DROP, "drop_reason": "POLICY_DENIED"}
PROMETHEUS_SCRAPE_DROPPED = {
    **DROP,
    "source": PROMETHEUS,
    "source_ip": "10.244.3.30",
    "destination_port": 9187,
}
DEBUG_TO_REDIS = {"source": DEBUG, "source_ip": "10.244.9.9", "destination": REDIS, "destination_port": 6379}


# -- what is posted -------------------------------------------------------------------------------------
def test_expected_dropped_posts_a_legitimate_traffic_dropped_warning_on_the_destination_pod(
    server: EventsServer,
) -> None:
    (j,) = judgements(PROMETHEUS_SCRAPE_DROPPED)
    assert j.cls == EXPECTED_DROPPED
    sink = make_sink(server.url)
    sink.on_judgement(j)
    assert sink.close(5)

    name = event_name("airflow-postgresql-0", j.edge, INSTANCE)
    assert server.calls() == [("POST", "/api/v1/namespaces/airflow/events")]
    assert server.requests[0].body == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": "airflow"},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "airflow-postgresql-0",
            "namespace": "airflow",
        },
        "reason": "LegitimateTrafficDropped",
        "type": "Warning",
        "message": "monitoring/prometheus-0 → airflow/airflow-postgresql-0 9187/TCP dropped (POLICY_DENIED); "
        "allowed by matrix rule 12 (prometheus → postgresql)",
        "count": 1,
        "firstTimestamp": "2027-01-15T08:00:00+00:00",
        "lastTimestamp": "2027-01-15T08:00:00+00:00",
        "source": {"component": "flow-auditor", "host": INSTANCE},
        "reportingComponent": "flow-auditor",
        "reportingInstance": INSTANCE,
    }
    kubernetes_validate.validate(server.requests[0].body, kubernetes_validate.latest_version(), strict=True)
    assert DNS_SUBDOMAIN.match(name)
    assert (sink.posted, sink.patched, sink.errors, sink.dropped) == (1, 0, 0, 0)


def test_unexpected_allowed_posts_a_network_policy_violation_warning(server: EventsServer) -> None:
    (j,) = judgements(DEBUG_TO_REDIS)
    assert j.cls == UNEXPECTED_ALLOWED
    sink = make_sink(server.url)
    sink.on_judgement(j)
    assert sink.close(5)
    (event,) = server.events.values()
    assert event["reason"] == "NetworkPolicyViolation"
    assert event["type"] == "Warning"
    assert event["involvedObject"]["name"] == "airflow-redis-0"
    assert event["message"] == (
        "default/debug-shell → airflow/airflow-redis-0 6379/TCP forwarded; "
        "not allowed by the matrix (ns:default → redis)"
    )


def test_audit_verdict_says_it_would_be_dropped_under_enforcement(server: EventsServer) -> None:
    (j,) = judgements(
        {
            "source": PROMETHEUS,
            "destination_port": 9187,
            "verdict": Verdict.AUDIT,
            "event_type": EventType.POLICY_VERDICT,
        }
    )
    sink = make_sink(server.url)
    sink.on_judgement(j)
    assert sink.close(5)
    (event,) = server.events.values()
    assert event["reason"] == "LegitimateTrafficDropped"
    assert event["message"] == (
        "monitoring/prometheus-0 → airflow/airflow-postgresql-0 9187/TCP would be dropped under policy "
        "enforcement (verdict AUDIT); allowed by matrix rule 12 (prometheus → postgresql)"
    )


def test_in_scope_source_pod_is_involved_when_the_destination_pod_is_out_of_scope(
    server: EventsServer,
) -> None:
    # A worker's DNS query dropped by the airflow namespace's egress policy: the Event belongs in airflow.
    coredns = pod("kube-system", "coredns-5d78c9869d-abcde", 77, "k8s-app=kube-dns")
    (j,) = judgements({**DROP, "destination": coredns, "destination_port": 53, "protocol": "UDP"})
    sink = make_sink(server.url)
    sink.on_judgement(j)
    assert sink.close(5)
    (event,) = server.events.values()
    assert event["metadata"]["namespace"] == "airflow"
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "airflow-worker-0",
        "namespace": "airflow",
    }


def test_matrix_reload_replaces_the_scope_that_picks_the_involved_pod(server: EventsServer) -> None:
    coredns = pod("kube-system", "coredns-5d78c9869d-abcde", 77, "k8s-app=kube-dns")
    (j,) = judgements({**DROP, "destination": coredns, "destination_port": 53, "protocol": "UDP"})
    sink = make_sink(server.url, scope=None)
    sink.set_matrix(MATRIX)  # as Pipeline.set_matrix does on hot reload
    sink.on_judgement(j)
    assert sink.close(5)
    (event,) = server.events.values()
    assert event["involvedObject"]["name"] == "airflow-worker-0"


def test_source_pod_is_involved_when_the_destination_is_not_a_pod(server: EventsServer) -> None:
    (j,) = judgements({"destination": WORLD, "destination_ip": "203.0.113.7", "destination_port": 80})
    sink = make_sink(server.url, scope=None)
    sink.on_judgement(j)
    assert sink.close(5)
    (event,) = server.events.values()
    assert event["involvedObject"]["name"] == "airflow-worker-0"
    assert event["message"].startswith("airflow/airflow-worker-0 → 203.0.113.7 (internet) 80/TCP")


def test_judgement_without_a_pod_at_either_end_is_skipped_and_counted(server: EventsServer) -> None:
    # Hubble knows some remote endpoints only by identity, labels and namespace, without a pod name.
    redis_by_identity = Endpoint(identity=REDIS.identity, labels=REDIS.labels, namespace="airflow")
    (j,) = judgements(
        {
            "source": WORLD,
            "source_ip": "198.51.100.1",
            "destination": redis_by_identity,
            "destination_port": 6379,
        }
    )
    assert j.cls == UNEXPECTED_ALLOWED
    sink = make_sink(server.url)
    sink.on_judgement(j)
    assert sink.close(5)
    assert server.requests == []
    assert sink.skipped == 1


def test_non_violation_classes_and_repeated_connections_post_nothing(server: EventsServer) -> None:
    allowed, unexpected_dropped, first, retransmit = judgements(
        {},  # worker → postgresql, expected_allowed
        {**DROP, "source": DEBUG, "source_ip": "10.244.9.9"},  # unexpected_dropped
        {**DROP, "source_port": 41000},
        {**DROP, "source_port": 41000, "time": T0 + 1},  # same 5-tuple within the dedup window
    )
    assert not retransmit.new_connection and retransmit.cls == EXPECTED_DROPPED
    clock = Clock()
    sink = make_sink(server.url, clock)
    sink.on_judgement(allowed)
    sink.on_judgement(unexpected_dropped)
    sink.on_judgement(first)
    clock.now += 301
    sink.on_judgement(retransmit)  # not a new connection: neither counted nor a reason to update
    assert sink.close(5)
    assert server.calls() == [("POST", "/api/v1/namespaces/airflow/events")]


def test_event_names_are_deterministic_dns_subdomains() -> None:
    edge = Edge("prometheus", "postgresql", 9187, "TCP", EXPECTED_DROPPED)
    name = event_name("airflow-postgresql-0", edge, INSTANCE)
    assert name == event_name("airflow-postgresql-0", edge, INSTANCE)
    assert re.fullmatch(r"airflow-postgresql-0\.[0-9a-f]{16}", name)
    assert name != event_name("airflow-postgresql-0", edge._replace(port=5432), INSTANCE)
    assert name != event_name("airflow-postgresql-0", edge, "other-node")
    long = event_name("a" * 250, edge, INSTANCE)
    assert len(long) <= 253 and DNS_SUBDOMAIN.match(long)


# -- counted aggregation --------------------------------------------------------------------------------
def test_connections_within_the_interval_are_counted_into_one_patch_after_it(server: EventsServer) -> None:
    flows = [{**PROMETHEUS_SCRAPE_DROPPED, "source_port": 50000 + i, "time": T0 + i} for i in range(5)]
    first, *within, after = judgements(*flows)
    clock = Clock()
    sink = make_sink(server.url, clock)
    sink.on_judgement(first)
    for j in within:
        clock.now += 10
        sink.on_judgement(j)
    clock.now = 1000.0 + 300
    sink.on_judgement(after)
    assert sink.close(5)

    name = event_name("airflow-postgresql-0", first.edge, INSTANCE)
    assert server.calls() == [
        ("POST", "/api/v1/namespaces/airflow/events"),
        ("PATCH", f"/api/v1/namespaces/airflow/events/{name}"),
    ]
    patch = server.requests[1]
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.body == {"count": 5, "lastTimestamp": "2027-01-15T08:00:04+00:00"}
    assert server.events[("airflow", name)]["count"] == 5
    assert (sink.posted, sink.patched) == (1, 1)


def test_quiet_edge_gets_its_pending_count_after_the_interval_without_another_connection(
    server: EventsServer,
) -> None:
    first, second = judgements(PROMETHEUS_SCRAPE_DROPPED, {**PROMETHEUS_SCRAPE_DROPPED, "source_port": 50001})
    clock = Clock()
    sink = make_sink(server.url, clock, sweep_every=0.02)
    sink.on_judgement(first)
    sink.on_judgement(second)
    wait_for(lambda: sink.posted == 1)
    seen = clock.reads  # from now on only a sweep reads the clock (a count is pending)
    # Three sweeps inside the interval (or a premature update, shown below): nothing to send yet.
    wait_for(lambda: clock.reads >= seen + 3 or sink.patched > 0, what="three sweeps")
    assert [m for m, _ in server.calls()] == ["POST"]
    clock.now += 300
    wait_for(lambda: sink.patched == 1)
    assert server.requests[-1].body["count"] == 2
    assert sink.close(5)
    assert len(server.requests) == 2


def test_close_flushes_counts_still_inside_the_interval(server: EventsServer) -> None:
    first, second = judgements(PROMETHEUS_SCRAPE_DROPPED, {**PROMETHEUS_SCRAPE_DROPPED, "source_port": 50001})
    sink = make_sink(server.url)
    sink.on_judgement(first)
    sink.on_judgement(second)
    assert sink.close(5)
    assert [m for m, _ in server.calls()] == ["POST", "PATCH"]
    assert server.requests[1].body["count"] == 2


def test_one_event_per_involved_pod_and_edge(server: EventsServer) -> None:
    other_pg = pod("airflow", "airflow-postgresql-1", 1003, "app.kubernetes.io/name=postgresql")
    js = judgements(
        PROMETHEUS_SCRAPE_DROPPED,
        {**PROMETHEUS_SCRAPE_DROPPED, "destination": other_pg, "destination_ip": "10.244.2.21"},
        DEBUG_TO_REDIS,
    )
    sink = make_sink(server.url)
    for j in js:
        sink.on_judgement(j)
    assert sink.close(5)
    assert sorted(name.split(".")[0] for _, name in server.events) == [
        "airflow-postgresql-0",
        "airflow-postgresql-1",
        "airflow-redis-0",
    ]
    assert sink.posted == 3


def test_patch_of_an_expired_event_creates_it_again(server: EventsServer) -> None:
    first, later = judgements(PROMETHEUS_SCRAPE_DROPPED, {**PROMETHEUS_SCRAPE_DROPPED, "source_port": 50001})
    clock = Clock()
    sink = make_sink(server.url, clock)
    sink.on_judgement(first)
    wait_for(lambda: sink.posted == 1)
    server.events.clear()  # the API server's event TTL ran out
    clock.now += 300
    sink.on_judgement(later)
    assert sink.close(5)
    assert [m for m, _ in server.calls()] == ["POST", "PATCH", "POST"]
    (event,) = server.events.values()
    assert event["count"] == 2
    assert (sink.posted, sink.patched, sink.errors) == (2, 0, 0)


def test_existing_event_of_a_previous_run_is_adopted_and_its_count_continued(server: EventsServer) -> None:
    (j,) = judgements(PROMETHEUS_SCRAPE_DROPPED)
    name = event_name("airflow-postgresql-0", j.edge, INSTANCE)
    sink = make_sink(server.url)
    sink.on_judgement(j)
    assert sink.close(5)
    restarted = make_sink(server.url)
    restarted.on_judgement(j)
    assert restarted.close(5)
    path = f"/api/v1/namespaces/airflow/events/{name}"
    assert server.calls()[1:] == [
        ("POST", "/api/v1/namespaces/airflow/events"),
        ("GET", path),
        ("PATCH", path),
    ]
    assert server.events[("airflow", name)]["count"] == 2
    assert (restarted.posted, restarted.patched, restarted.errors) == (0, 1, 0)


# -- never block or crash the pipeline ------------------------------------------------------------------
@pytest.mark.parametrize("status", [403, 500, 503])
def test_api_error_is_logged_once_and_counted_not_raised(server: EventsServer, status: int) -> None:
    server.fail_status = status
    (j,) = judgements(PROMETHEUS_SCRAPE_DROPPED)
    with structlog.testing.capture_logs() as logs:
        sink = make_sink(server.url)
        sink.on_judgement(j)
        assert sink.close(5)
    assert (sink.posted, sink.errors) == (0, 1)
    (entry,) = logs
    assert entry["log_level"] == "warning"
    assert entry["status"] == status
    assert entry["error"] == "injected failure"
    assert entry["action"] == "create" and entry["namespace"] == "airflow"
    assert "exc_info" not in entry


def test_unreachable_api_server_is_counted_not_raised() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connection refused
    (j,) = judgements(PROMETHEUS_SCRAPE_DROPPED)
    with structlog.testing.capture_logs() as logs:
        sink = make_sink(f"http://127.0.0.1:{port}")
        sink.on_judgement(j)
        assert sink.close(10)
    assert (sink.posted, sink.errors) == (0, 1)
    (entry,) = logs
    assert entry["status"] is None and "refused" in entry["error"].lower()


def test_worker_keeps_going_after_an_error(server: EventsServer) -> None:
    first, other = judgements(PROMETHEUS_SCRAPE_DROPPED, DEBUG_TO_REDIS)
    sink = make_sink(server.url)
    server.fail_status = 500
    sink.on_judgement(first)
    wait_for(lambda: sink.errors == 1)
    server.fail_status = None
    sink.on_judgement(other)
    assert sink.close(5)
    assert (sink.posted, sink.errors) == (1, 1)


def test_full_queue_drops_and_counts_without_blocking(server: EventsServer) -> None:
    a, b, c = judgements(
        PROMETHEUS_SCRAPE_DROPPED,
        DEBUG_TO_REDIS,
        {**DEBUG_TO_REDIS, "destination": POSTGRES, "destination_port": 5432},
    )
    server.gate.clear()  # the API server hangs: the worker is stuck in its first request
    server.arrived.clear()
    sink = make_sink(server.url, queue_size=1)
    sink.on_judgement(a)
    assert server.arrived.wait(5)
    sink.on_judgement(b)  # waits in the queue
    sink.on_judgement(c)  # queue full
    assert sink.dropped == 1
    server.gate.set()
    assert sink.close(5)
    assert (sink.posted, sink.dropped, sink.errors) == (2, 1, 0)


def test_judgements_after_close_are_dropped_and_close_is_idempotent(server: EventsServer) -> None:
    (j,) = judgements(PROMETHEUS_SCRAPE_DROPPED)
    sink = make_sink(server.url)
    assert sink.close(5)
    sink.on_judgement(j)
    assert sink.dropped == 1 and server.requests == []
    assert sink.close(0)  # idempotent


# -- configuration --------------------------------------------------------------------------------------
def test_from_environment_uses_the_kubeconfig_and_its_token(
    server: EventsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": {"server": server.url}}],
                "users": [{"name": "auditor", "user": {"token": "s3cret"}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "auditor"}}],
                "current-context": "local",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    sink = KubeEventsSink.from_environment(interval=60, scope={"airflow"})
    (j,) = judgements(PROMETHEUS_SCRAPE_DROPPED)
    sink.on_judgement(j)
    assert sink.close(5)
    assert sink.posted == 1
    assert sink.api.api_client.configuration.api_key["BearerToken"] == "Bearer s3cret"


def test_missing_kubeconfig_outside_a_cluster_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeConfigError, match=r"kubeconfig .*nope"):
        api_client_from_environment(str(tmp_path / "nope"))


def test_aggregation_state_is_bounded_in_bytes_with_huge_pod_names(server: EventsServer) -> None:
    """Pod names come from cluster data: a 10 KB name must not make a 10 KB key (entries x bytes bound)."""
    huge = [
        {
            **DEBUG_TO_REDIS,
            "source_port": 40000 + i,
            "destination": pod("airflow", f"{'r' * 10_000}-{i}", 4000 + i),
        }
        for i in range(50)
    ]
    sink = make_sink(server.url, max_events=20)
    for j in judgements(*huge):
        sink.on_judgement(j)
    assert sink.close(10)
    assert len(sink._events) <= 20
    for (namespace, pod_name, _edge), agg in sink._events.items():
        assert len(namespace) <= MAX_NAME and len(pod_name) <= MAX_NAME
        assert len(agg.spec.pod) <= MAX_NAME and len(agg.spec.name) <= MAX_NAME
        assert len(agg.spec.message) <= MAX_MESSAGE
