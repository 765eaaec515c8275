"""The Airflow example: its episodes (normal traffic and each violation) and their ground truth.

Part of :mod:`auditor.scenario`; its docstring gives the stage, the modelling choices and the error
policy.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Final

from auditor.scenario.cluster import WORKER, Cluster
from auditor.scenario.flows import Conn, Policy, Recorder
from auditor.scenario.model import DEFAULT_START, Scenario, to_ns

# ------------------------------------------------------------------------------------------------
# The Airflow example
# ------------------------------------------------------------------------------------------------

_DURATION_S: Final = 600.0
_PROMETHEUS_LABEL_LOST_S: Final = 180.0
_TRAEFIK_UPGRADE_S: Final = 360.0
_TRAEFIK_POLICY_FIXED_S: Final = 480.0


def _np(component: str) -> Policy:
    """The Airflow chart's ingress NetworkPolicy of a component."""
    return Policy(f"airflow-{component}-policy", "airflow", "NetworkPolicy", 3)


def _egress(component: str) -> Policy:
    """The platform team's default-deny-plus-allow egress policy of a component."""
    return Policy(f"airflow-{component}-egress", "airflow", "CiliumNetworkPolicy", 7)


_PG_POLICY: Final = Policy("airflow-postgresql", "airflow", "NetworkPolicy", 2)


def airflow_scenario(start: datetime = DEFAULT_START, *, seed: int = 7) -> Scenario:
    """The bundled Airflow example: ten minutes of flows with violations, and its ground truth.

    Deterministic for a given ``start`` and ``seed``. Episodes:

    1. normal traffic for the matrix's allow rules (rule 10, Prometheus → worker 8793, stays unused);
    2. from 3:00 the ``monitoring`` namespace has lost its ``name: monitoring`` label: the PostgreSQL and
       Redis policies drop Prometheus's exporter scrapes (9187, 9121) → ``expected_dropped``;
    3. ``default/debug-shell`` reaches Redis 6379 (its policy is too broad) → ``unexpected_allowed``;
    4. a compromised pod ``default/attacker-…`` without egress policy tries PostgreSQL: forwarded at its
       node (provisional), dropped at PostgreSQL's ingress → ``unexpected_dropped``;
    5. the triggerer runs in audit mode and its new egress policy forgets PostgreSQL → ``AUDIT``
       (``expected_dropped``) and delivered (``expected_allowed``);
    6. from 6:00 to 8:00 the upgraded Traefik pod no longer matches the webserver's policy →
       ``expected_dropped``;
    7. replies, overlay hops, DNS proxy records, out-of-scope traffic and one lost-events record.
    """
    e = _Episodes(Recorder(to_ns(start), random.Random(seed)), Cluster())
    _normal_traffic(e)
    _normal_platform_traffic(e)
    _prometheus_loses_its_namespace_label(e)
    _debug_pod_reaches_redis(e)
    _attacker_probes_postgresql(e)
    _triggerer_in_audit_mode(e)
    _traefik_upgrade_breaks_the_webserver_policy(e)
    _background(e)
    return e.rec.scenario()


class _Episodes:
    """What every episode works with: the recorder, the cluster and the one random generator (the episodes
    run in a fixed order, so the events stay identical for a seed)."""

    def __init__(self, rec: Recorder, c: Cluster) -> None:
        self.rec, self.c, self.rng = rec, c, rec.rng

    def spread(self, count: int, begin: float = 2.0, end: float = _DURATION_S - 10.0) -> list[float]:
        """``count`` moments between ``begin`` and ``end`` seconds, one per equal slice, jittered."""
        step = (end - begin) / count
        return [begin + i * step + self.rng.uniform(0, step * 0.8) for i in range(count)]

    def detail(self) -> int:
        return self.rng.choice((0, 0, 0, 1, 2))


def _normal_traffic(e: _Episodes) -> None:
    """1. Normal traffic."""
    rec, c, spread, detail = e.rec, e.c, e.spread, e.detail
    for s in spread(10, 1.0):
        rec.connection(
            rec.at(s),
            Conn(
                Cluster.host(WORKER),
                c.webserver,
                8080,
                "kubelet",
                "webserver",
                ingress_policy=_np("webserver"),
            ),
        )
    for component, pod, count in (
        ("webserver", c.webserver, 4),
        ("scheduler", c.scheduler, 6),
        ("worker", c.worker, 5),
    ):
        for s in spread(count):
            rec.connection(
                rec.at(s),
                Conn(
                    pod,
                    c.postgresql,
                    5432,
                    component,
                    "postgresql",
                    egress_policy=_egress(component),
                    ingress_policy=_PG_POLICY,
                    detail=detail(),
                ),
            )
    for component, pod, count in (("scheduler", c.scheduler, 5), ("worker", c.worker, 5)):
        for s in spread(count):
            rec.connection(
                rec.at(s),
                Conn(
                    pod,
                    c.redis,
                    6379,
                    component,
                    "redis",
                    egress_policy=_egress(component),
                    ingress_policy=_np("redis"),
                    detail=detail(),
                ),
            )
    for s in spread(3):
        rec.connection(
            rec.at(s),
            Conn(
                c.scheduler,
                c.worker,
                8793,
                "scheduler",
                "worker",
                egress_policy=_egress("scheduler"),
                ingress_policy=_np("worker"),
                detail=detail(),
            ),
        )


def _normal_platform_traffic(e: _Episodes) -> None:
    """1 (continued). DNS through the proxy, the Internet, StatsD, Prometheus scrapes."""
    rec, c, spread = e.rec, e.c, e.spread
    worker_egress = _egress("worker")
    queries = (
        "airflow-postgresql.airflow.svc.cluster.local.",
        "airflow-redis.airflow.svc.cluster.local.",
        "airflow-statsd.airflow.svc.cluster.local.",
        "api.github.com.",
    )
    for i, s in enumerate(spread(8)):
        rec.connection(
            rec.at(s),
            Conn(
                c.worker,
                c.coredns1,
                53,
                "worker",
                "kube-dns",
                protocol="UDP",
                egress_policy=worker_egress,
                dns_query=queries[i % len(queries)],
            ),
        )
        if i % len(queries) == len(queries) - 1:
            rec.connection(
                rec.at(s + 0.05),
                Conn(c.worker, c.github, 443, "worker", "internet", egress_policy=worker_egress, detail=1),
            )
    for component, pod, count in (("worker", c.worker, 5), ("scheduler", c.scheduler, 3)):
        for s in spread(count):
            rec.connection(
                rec.at(s),
                Conn(
                    pod,
                    c.statsd,
                    9125,
                    component,
                    "statsd",
                    protocol="UDP",
                    egress_policy=_egress(component),
                    ingress_policy=_np("statsd"),
                ),
            )
    for s in spread(2, 5.0):
        prom = c.prometheus if s < _PROMETHEUS_LABEL_LOST_S else c.prometheus_unlabelled
        rec.connection(
            rec.at(s),
            Conn(
                prom, c.webserver, 8080, "prometheus", "webserver", ingress_policy=_np("webserver"), detail=1
            ),
        )
        rec.connection(
            rec.at(s + 0.4),
            Conn(prom, c.statsd, 9102, "prometheus", "statsd", ingress_policy=_np("statsd"), detail=1),
        )


def _prometheus_loses_its_namespace_label(e: _Episodes) -> None:
    """2. Prometheus loses its namespace label: exporter scrapes dropped."""
    rec, c, rng = e.rec, e.c, e.rng
    for target, port, policy, first in (
        (c.postgresql, 9187, _PG_POLICY, 12.0),
        (c.redis, 9121, _np("redis"), 17.0),
    ):
        name = "postgresql" if target is c.postgresql else "redis"
        rec.connection(
            rec.at(first),
            Conn(c.prometheus, target, port, "prometheus", name, ingress_policy=policy, detail=1),
        )
        scrape = _PROMETHEUS_LABEL_LOST_S + first + 15.0
        while scrape < _DURATION_S - 5.0:
            rec.connection(
                rec.at(scrape + rng.uniform(0, 0.05)),
                Conn(
                    c.prometheus_unlabelled,
                    target,
                    port,
                    "prometheus",
                    name,
                    ingress_policy=policy,
                    delivered=False,
                ),
            )
            scrape += 60.0


def _debug_pod_reaches_redis(e: _Episodes) -> None:
    """3. A debug pod reaches Redis (policy too broad)."""
    rec, c = e.rec, e.c
    for s in (241.0, 247.5, 262.0):
        rec.connection(
            rec.at(s),
            Conn(c.debug_shell, c.redis, 6379, "ns:default", "redis", ingress_policy=_np("redis"), detail=1),
        )


def _attacker_probes_postgresql(e: _Episodes) -> None:
    """4. A compromised pod probes PostgreSQL: provisional egress, dropped at ingress."""
    rec, c = e.rec, e.c
    for s in (402.0, 405.2, 409.9, 431.3):
        rec.connection(
            rec.at(s),
            Conn(
                c.attacker,
                c.postgresql,
                5432,
                "ns:default",
                "postgresql",
                ingress_policy=_PG_POLICY,
                delivered=False,
            ),
        )


def _triggerer_in_audit_mode(e: _Episodes) -> None:
    """5. Audit mode on the triggerer: would be dropped, delivered."""
    rec, c, spread, detail = e.rec, e.c, e.spread, e.detail
    for s in spread(4, 20.0):
        rec.connection(
            rec.at(s),
            Conn(
                c.triggerer,
                c.postgresql,
                5432,
                "triggerer",
                "postgresql",
                egress_policy=_egress("triggerer"),
                ingress_policy=_PG_POLICY,
                egress_audit=True,
                detail=detail(),
            ),
        )


def _traefik_upgrade_breaks_the_webserver_policy(e: _Episodes) -> None:
    """6 (and 1). Traefik → webserver, broken between the Traefik upgrade and the policy fix."""
    rec, c, spread, detail = e.rec, e.c, e.spread, e.detail
    for s in spread(10, 3.0):
        if _TRAEFIK_UPGRADE_S <= s < _TRAEFIK_POLICY_FIXED_S:
            continue
        pod = c.traefik_upgraded if s >= _TRAEFIK_UPGRADE_S else c.traefik
        rec.connection(
            rec.at(s),
            Conn(
                pod,
                c.webserver,
                8080,
                "traefik",
                "webserver",
                ingress_policy=_np("webserver"),
                detail=detail(),
            ),
        )
    for s in (372.4, 389.0, 417.3, 455.8):
        rec.connection(
            rec.at(s),
            Conn(
                c.traefik_upgraded,
                c.webserver,
                8080,
                "traefik",
                "webserver",
                ingress_policy=_np("webserver"),
                delivered=False,
            ),
        )


def _background(e: _Episodes) -> None:
    """7. Out of scope, health probes, lost events."""
    rec, c, spread = e.rec, e.c, e.spread
    for i, s in enumerate(spread(4, 30.0)):
        prom = c.prometheus if s < _PROMETHEUS_LABEL_LOST_S else c.prometheus_unlabelled
        rec.connection(
            rec.at(s), Conn(prom, c.apiserver, 6443, "prometheus", "kube-apiserver", in_scope=False)
        )
        traefik = c.traefik if s < _TRAEFIK_UPGRADE_S else c.traefik_upgraded
        rec.connection(
            rec.at(s + 1.3),
            Conn(traefik, c.coredns2, 53, "traefik", "kube-dns", protocol="UDP", in_scope=False),
        )
        coredns = c.coredns1 if i % 2 else c.coredns2
        assert coredns.node is not None
        rec.connection(
            rec.at(s + 2.1),
            Conn(
                Cluster.host(coredns.node),
                coredns,
                8080 if i % 2 else 8181,
                "kubelet",
                "kube-dns",
                in_scope=False,
            ),
        )
    for s in (60.0, 360.0):
        rec.icmp_health(rec.at(s), WORKER, c.health_w2)
    rec.lost(rec.at(251.0), WORKER, 3, 1)
