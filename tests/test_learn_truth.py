"""``matrix learn`` learns exactly the right rules from tricky evidence (truth written here, by hand).

The flows go through the real pipeline (:func:`auditor.learn.run.learning_pipeline`): replies seen at one
end only, SYN retransmits, a reply without ``is_reply`` (a SYN-ACK), a dropped reply, a dropped attacker
whose egress was forwarded at its own node, an ``AUDIT`` verdict alone, and an unanswered UDP request seen
only at its source.
"""

from __future__ import annotations

from typing import Any

import yaml
from factory import DEBUG, POSTGRES, REDIS, SCHEDULER, WORKER, flow, pod

from auditor.learn.build import Options, build
from auditor.learn.run import learning_pipeline, text_of
from auditor.model import TCP_ACK, TCP_SYN, Direction, EventType, ObservationPoint, Verdict

T = 1_800_000_000.0
IP = {
    "worker": "10.244.1.10",
    "scheduler": "10.244.1.11",
    "postgres": "10.244.2.20",
    "redis": "10.244.2.21",
    "debug": "10.244.1.66",
    "triggerer": "10.244.1.12",
    "dns": "10.244.0.5",
}
TRIGGERER = pod("airflow", "airflow-triggerer-0", 1005, "tier=airflow", "component=triggerer")
DNS = pod("kube-system", "coredns-7db6d8ff4d-4xk9m", 1006, "k8s-app=kube-dns")
EGRESS_VERDICT: dict[str, Any] = {
    "event_type": EventType.POLICY_VERDICT,
    "traffic_direction": Direction.EGRESS,
    "observation_point": 0,
}
# Dropped by a policy at the destination (no observation point recorded).
DENIED: dict[str, Any] = {
    "verdict": Verdict.DROPPED,
    "drop_reason": "POLICY_DENIED",
    "event_type": EventType.DROP,
    "observation_point": 0,
}


def conn(src: Any, s: str, dst: Any, d: str, sport: int, dport: int, t: float, **kw: Any) -> Any:
    return flow(
        source=src,
        destination=dst,
        source_ip=IP[s],
        destination_ip=IP[d],
        source_port=sport,
        destination_port=dport,
        time=t,
        **kw,
    )


def reply(src: Any, s: str, dst: Any, d: str, sport: int, dport: int, t: float, **kw: Any) -> Any:
    """A reply packet from ``src`` (the server) back to ``dst`` (the client)."""
    fields = {"is_reply": True, "tcp_flags": TCP_SYN | TCP_ACK, "traffic_direction": Direction.EGRESS}
    fields.update(kw)
    return conn(src, s, dst, d, sport, dport, t, **fields)


def scenario() -> list[Any]:
    flows = [
        # 1. worker -> postgres, seen only at the worker's node: egress verdict (provisional) + the reply
        conn(WORKER, "worker", POSTGRES, "postgres", 40001, 5432, T, **EGRESS_VERDICT),
        reply(POSTGRES, "postgres", WORKER, "worker", 5432, 40001, T + 0.001),
        # 2. scheduler -> redis, seen only at redis's node: delivered to the endpoint, reply leaves
        conn(SCHEDULER, "scheduler", REDIS, "redis", 40002, 6379, T + 1),
        reply(
            REDIS,
            "redis",
            SCHEDULER,
            "scheduler",
            6379,
            40002,
            T + 1.001,
            observation_point=ObservationPoint.TO_OVERLAY,
        ),
        # 3. SYN retransmits of one scheduler -> postgres connection, then delivery
        *(
            conn(SCHEDULER, "scheduler", POSTGRES, "postgres", 40003, 5432, T + 2 + k, **EGRESS_VERDICT)
            for k in range(3)
        ),
        conn(SCHEDULER, "scheduler", POSTGRES, "postgres", 40003, 5432, T + 4.1),
        # 4. a SYN-ACK without is_reply (Hubble did not know): a reply, proves worker -> redis 6379
        conn(WORKER, "worker", REDIS, "redis", 40004, 6379, T + 5, **EGRESS_VERDICT),
        reply(
            REDIS,
            "redis",
            WORKER,
            "worker",
            6379,
            40004,
            T + 5.001,
            is_reply=None,
            observation_point=ObservationPoint.TO_ENDPOINT,
        ),
        # 5. the attacker: forwarded at its own node, dropped at postgres (twice: a retransmit)
        conn(DEBUG, "debug", POSTGRES, "postgres", 50005, 5432, T + 6, **EGRESS_VERDICT),
        conn(DEBUG, "debug", POSTGRES, "postgres", 50005, 5432, T + 6.001, **DENIED),
        conn(DEBUG, "debug", POSTGRES, "postgres", 50005, 5432, T + 7, **DENIED),
        # ... and a dropped reply towards it proves nothing
        reply(POSTGRES, "postgres", DEBUG, "debug", 5432, 50006, T + 7.5, verdict=Verdict.DROPPED),
        # 6. an AUDIT verdict alone: would be dropped under enforcement, so the policy must allow it
        conn(
            TRIGGERER,
            "triggerer",
            POSTGRES,
            "postgres",
            40007,
            5432,
            T + 8,
            verdict=Verdict.AUDIT,
            **EGRESS_VERDICT,
        ),
        # 7. an unanswered DNS query seen only at the worker's node: provisional, never proven
        conn(WORKER, "worker", DNS, "dns", 40008, 53, T + 9, protocol="UDP", tcp_flags=0, **EGRESS_VERDICT),
        # 8. a forwarded reply alone (the request was before the capture): proves scheduler -> postgres
        reply(POSTGRES, "postgres", SCHEDULER, "scheduler", 5432, 40009, T + 10),
    ]
    return flows


def learn(flows: list[Any], options: Options | None = None) -> str:
    options = options or Options()
    pipeline, sink = learning_pipeline(options)
    for f in flows:
        pipeline.feed(f)
    pipeline.finish()
    return text_of(build(sink.obs, options))


def test_exactly_the_delivered_and_audited_connections_become_rules() -> None:
    text = learn(scenario())
    doc = yaml.safe_load(text)
    rules = {(r["from"], r["to"], tuple(r["ports"])) for r in doc["allow"]}
    assert rules == {
        ("worker", "postgresql", ("5432/TCP",)),
        ("scheduler", "redis", ("6379/TCP",)),
        ("scheduler", "postgresql", ("5432/TCP",)),
        ("worker", "redis", ("6379/TCP",)),
        ("triggerer", "postgresql", ("5432/TCP",)),
    }
    assert set(doc["components"]) == {"worker", "scheduler", "postgresql", "redis", "triggerer"}
    # evidence: retransmits are one connection (first seen: its first final evidence); AUDIT is said
    assert (
        "# 2 connections, 2027-01-15T08:00:04Z .. 2027-01-15T08:00:10Z, e.g. airflow/airflow-scheduler"
        in text
    )
    assert "# 1 connection (1 with an AUDIT verdict: denied once policies are enforced)" in text
    # what was not learned is listed for review
    assert "# Not learned - dropped (DROPPED/ERROR verdicts): never a rule: 1 connection" in text
    assert "#   default/{run=debug-shell} -> postgresql 5432/TCP [POLICY_DENIED: 1]: 1 connection" in text
    assert (
        "# Not learned - seen only through provisional evidence (delivery never proven): 1 connection" in text
    )
    assert "#   worker -> kube-system/{k8s-app=kube-dns} 53/UDP: 1 connection" in text


def test_node_local_view_of_one_end_without_replies_learns_nothing_it_cannot_prove() -> None:
    # only the worker's node, and its replies removed: provisional egress alone is never a rule
    flows = [f for f in scenario() if f.source is WORKER and not f.is_reply]
    doc = yaml.safe_load(learn(flows))
    assert doc["allow"] == []
