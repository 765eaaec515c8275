"""Builders for test flows: a realistic default (Airflow worker → PostgreSQL, delivered at the
destination), overridden field by field."""

from __future__ import annotations

from typing import Any

from auditor.classify import Auditor, Judgement
from auditor.model import Direction, Endpoint, EventType, Flow, FlowType, ObservationPoint, Verdict

NS_LABEL = "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name="


def pod(namespace: str, name: str, identity: int, *labels: str, **extra: Any) -> Endpoint:
    all_labels = (
        *(f"k8s:{label}" for label in labels),
        f"{NS_LABEL}{namespace}",
        f"k8s:io.kubernetes.pod.namespace={namespace}",
    )
    return Endpoint(
        identity=identity, namespace=namespace, labels=tuple(sorted(all_labels)), pod_name=name, **extra
    )


WORKER = pod("airflow", "airflow-worker-0", 1001, "tier=airflow", "component=worker")
SCHEDULER = pod("airflow", "airflow-scheduler-6f7c9-abcde", 1002, "tier=airflow", "component=scheduler")
POSTGRES = pod("airflow", "airflow-postgresql-0", 1003, "app.kubernetes.io/name=postgresql")
REDIS = pod("airflow", "airflow-redis-0", 1004, "tier=airflow", "component=redis")
DEBUG = pod("default", "debug-shell", 2001, "run=debug-shell")
WORLD = Endpoint(identity=2, labels=("reserved:world",))
HOST = Endpoint(identity=1, labels=("reserved:host",))


def flow(**overrides: Any) -> Flow:
    fields: dict[str, Any] = {
        "time": 1_800_000_000.0,
        "verdict": Verdict.FORWARDED,
        "drop_reason": "",
        "source": WORKER,
        "destination": POSTGRES,
        "source_ip": "10.244.1.10",
        "destination_ip": "10.244.2.20",
        "protocol": "TCP",
        "source_port": 40000,
        "destination_port": 5432,
        "icmp_type": 0,
        "tcp_flags": 2,
        "is_reply": False,
        "flow_type": FlowType.L3_L4,
        "event_type": EventType.TRACE,
        "traffic_direction": Direction.INGRESS,
        "observation_point": ObservationPoint.TO_ENDPOINT,
        "node_name": "kind-worker2",
    }
    fields.update(overrides)
    return Flow(**fields)


def denied_scrape(source: Endpoint, port: int) -> Flow:
    """``source`` scraping PostgreSQL's metrics exporter (9187/TCP) from its ``port``, dropped at the
    destination by a policy."""
    return flow(
        source=source,
        destination=POSTGRES,
        destination_port=9187,
        source_port=port,
        verdict=Verdict.DROPPED,
        event_type=EventType.DROP,
        drop_reason="POLICY_DENIED",
    )


def judged(auditor: Auditor, **overrides: Any) -> Judgement:
    """What ``auditor`` makes of ``flow(**overrides)``, which must be a judgement."""
    result = auditor.process(flow(**overrides))
    assert isinstance(result, Judgement), result
    return result
