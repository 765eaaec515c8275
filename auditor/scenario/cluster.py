"""The modelled kind cluster: nodes, pods, their labels and identities, reserved peers.

Part of :mod:`auditor.scenario`; its docstring gives the stage, the modelling choices and the error
policy.
"""

from __future__ import annotations

import hashlib
import uuid as _uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from auditor.scenario.model import CLUSTER

# ------------------------------------------------------------------------------------------------
# The cluster: nodes, pods and reserved peers
# ------------------------------------------------------------------------------------------------


def crc32_of(text: str) -> int:
    return zlib.crc32(text.encode())


def identity_of(labels: Sequence[str]) -> int:
    """A stable security identity per label set (Cilium allocates them from 256 up; these look alike)."""
    return 10_000 + crc32_of("\n".join(labels)) % 55_000


def mac_address(seed: str) -> str:
    raw = hashlib.sha256(seed.encode()).digest()[:6]
    first = (raw[0] & 0xFE) | 0x02  # locally administered unicast, like veth pairs
    return ":".join(f"{b:02x}" for b in (first, *raw[1:]))


def stable_uuid(seed: str) -> str:
    return str(_uuid.UUID(bytes=hashlib.md5(seed.encode()).digest(), version=4))


@dataclass(frozen=True)
class Node:
    name: str
    ip: str
    router_ip: str  # cilium_host address, the source of kubelet probes
    mac: str
    labels: tuple[str, ...]


def make_node(name: str, ip: str, router_ip: str, *, control_plane: bool = False) -> Node:
    labels = [
        "beta.kubernetes.io/arch=amd64",
        "beta.kubernetes.io/os=linux",
        "kubernetes.io/arch=amd64",
        f"kubernetes.io/hostname={name}",
        "kubernetes.io/os=linux",
    ]
    if control_plane:
        labels += [
            "node-role.kubernetes.io/control-plane=",
            "node.kubernetes.io/exclude-from-external-load-balancers=",
        ]
    return Node(name, ip, router_ip, mac_address("node/" + name), tuple(labels))


_CONTROL_PLANE: Final = make_node("kind-control-plane", "172.18.0.2", "10.244.0.61", control_plane=True)
WORKER: Final = make_node("kind-worker", "172.18.0.3", "10.244.1.47")
_WORKER2: Final = make_node("kind-worker2", "172.18.0.4", "10.244.2.198")


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (with node, endpoint ID, interface) or a reserved identity."""

    ip: str
    identity: int
    labels: tuple[str, ...]
    namespace: str = ""
    pod_name: str = ""
    node: Node | None = None
    ep_id: int = 0
    workloads: tuple[tuple[str, str], ...] = ()
    mac: str = ""
    ifindex: int = 0
    lxc: str = ""
    names: tuple[str, ...] = ()

    def endpoint(self, observer: Node) -> dict[str, Any]:
        """The ``Endpoint`` message as seen from ``observer`` (the endpoint ID only for local pods)."""
        ep: dict[str, Any] = {}
        if self.ep_id and self.node is observer:
            ep["ID"] = self.ep_id
        ep["identity"] = self.identity
        if self.pod_name:
            ep["cluster_name"] = CLUSTER
            ep["namespace"] = self.namespace
        ep["labels"] = list(self.labels)
        if self.pod_name:
            ep["pod_name"] = self.pod_name
        if self.workloads:
            ep["workloads"] = [{"name": name, "kind": kind} for name, kind in self.workloads]
        return ep


_NS_LABELS: Final[dict[str, dict[str, str]]] = {
    "airflow": {"kubernetes.io/metadata.name": "airflow", "name": "airflow"},
    "monitoring": {"kubernetes.io/metadata.name": "monitoring", "name": "monitoring"},
    "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
    "default": {"kubernetes.io/metadata.name": "default"},
}


def cilium_labels(
    namespace: str,
    service_account: str,
    pod_labels: Mapping[str, str],
    ns_labels: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """Cilium's label list of a pod: pod labels, namespace labels, cluster, service account, namespace."""
    out = [f"k8s:{k}={v}" for k, v in pod_labels.items()]
    for k, v in (_NS_LABELS[namespace] if ns_labels is None else ns_labels).items():
        out.append(f"k8s:io.cilium.k8s.namespace.labels.{k}={v}")
    out += [
        f"k8s:io.cilium.k8s.policy.cluster={CLUSTER}",
        f"k8s:io.cilium.k8s.policy.serviceaccount={service_account}",
        f"k8s:io.kubernetes.pod.namespace={namespace}",
    ]
    return tuple(sorted(out))


def _pod(
    name: str, namespace: str, node: Node, ip: str, labels: tuple[str, ...], workload: tuple[str, str] | None
) -> Peer:
    digest = crc32_of(f"{namespace}/{name}")
    return Peer(
        ip=ip,
        identity=identity_of(labels),
        labels=labels,
        namespace=namespace,
        pod_name=name,
        node=node,
        ep_id=100 + digest % 3900,
        workloads=(workload,) if workload else (),
        mac=mac_address(f"pod/{namespace}/{name}"),
        ifindex=10 + digest % 40,
        lxc="lxc" + format(crc32_of("lxc/" + name), "08x") + format(digest % 0xFFFF, "04x"),
    )


def airflow_labels(component: str) -> tuple[str, ...]:
    return cilium_labels(
        "airflow", f"airflow-{component}", {"component": component, "release": "airflow", "tier": "airflow"}
    )


PG_LABELS: Final = cilium_labels(
    "airflow",
    "airflow-postgresql",
    {
        "app.kubernetes.io/component": "primary",
        "app.kubernetes.io/instance": "airflow",
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/name": "postgresql",
        "app.kubernetes.io/version": "16.1.0",
        "helm.sh/chart": "postgresql-13.2.24",
    },
)


def prometheus_labels(ns_label_present: bool) -> tuple[str, ...]:
    ns_labels = dict(_NS_LABELS["monitoring"])
    if not ns_label_present:
        del ns_labels["name"]
    return cilium_labels(
        "monitoring",
        "kube-prometheus-stack-prometheus",
        {
            "app.kubernetes.io/instance": "kube-prometheus-stack-prometheus",
            "app.kubernetes.io/managed-by": "prometheus-operator",
            "app.kubernetes.io/name": "prometheus",
            "app.kubernetes.io/version": "2.54.1",
            "operator.prometheus.io/name": "kube-prometheus-stack-prometheus",
            "operator.prometheus.io/shard": "0",
            "prometheus": "kube-prometheus-stack-prometheus",
        },
        ns_labels,
    )


def traefik_labels(instance: str, chart: str) -> tuple[str, ...]:
    return cilium_labels(
        "kube-system",
        "traefik",
        {
            "app.kubernetes.io/instance": instance,
            "app.kubernetes.io/managed-by": "Helm",
            "app.kubernetes.io/name": "traefik",
            "helm.sh/chart": chart,
        },
    )


COREDNS_LABELS: Final = cilium_labels("kube-system", "coredns", {"k8s-app": "kube-dns"})


def _airflow_pod(component: str, name: str, node: Node, ip: str, kind: str) -> Peer:
    """A pod of the official Airflow chart (labels tier/component/release, one service account each)."""
    return _pod(name, "airflow", node, ip, airflow_labels(component), (f"airflow-{component}", kind))


class Cluster:
    """The pods and peers of the Airflow example."""

    def __init__(self) -> None:
        w1, w2 = WORKER, _WORKER2
        self.webserver = _airflow_pod(
            "webserver", "airflow-webserver-7d9f8c6b5-x2k4p", w1, "10.244.1.23", "Deployment"
        )
        self.scheduler = _airflow_pod(
            "scheduler", "airflow-scheduler-6b8f7d9c4-m5n7q", w1, "10.244.1.57", "Deployment"
        )
        self.triggerer = _airflow_pod("triggerer", "airflow-triggerer-0", w1, "10.244.1.88", "StatefulSet")
        self.statsd = _airflow_pod(
            "statsd", "airflow-statsd-5c9d8b7f6-p2r4t", w1, "10.244.1.102", "Deployment"
        )
        self.worker = _airflow_pod("worker", "airflow-worker-0", w2, "10.244.2.31", "StatefulSet")
        self.redis = _airflow_pod("redis", "airflow-redis-0", w2, "10.244.2.77", "StatefulSet")
        pg_workload = ("airflow-postgresql", "StatefulSet")
        self.postgresql = _pod("airflow-postgresql-0", "airflow", w2, "10.244.2.64", PG_LABELS, pg_workload)
        prom = ("prometheus-kube-prometheus-stack-prometheus-0", "monitoring", w1, "10.244.1.140")
        prom_workload = ("prometheus-kube-prometheus-stack-prometheus", "StatefulSet")
        self.prometheus = _pod(*prom, prometheus_labels(True), prom_workload)
        self.prometheus_unlabelled = _pod(*prom, prometheus_labels(False), prom_workload)
        traefik = ("traefik", "Deployment")
        old, new = (
            traefik_labels("traefik", "traefik-27.0.2"),
            traefik_labels("traefik-kube-system", "traefik-28.0.0"),
        )
        self.traefik = _pod("traefik-5f6c8d7b9-h4j6k", "kube-system", w2, "10.244.2.15", old, traefik)
        self.traefik_upgraded = _pod(
            "traefik-7b4d9f8c6-r8t2v", "kube-system", w2, "10.244.2.219", new, traefik
        )
        coredns = ("coredns", "Deployment")
        self.coredns1 = _pod(
            "coredns-7db6d8ff4d-4xk9m", "kube-system", w1, "10.244.1.12", COREDNS_LABELS, coredns
        )
        self.coredns2 = _pod(
            "coredns-7db6d8ff4d-9wz2r", "kube-system", w2, "10.244.2.11", COREDNS_LABELS, coredns
        )
        debug_labels = cilium_labels("default", "default", {"run": "debug-shell"})
        self.debug_shell = _pod("debug-shell", "default", w1, "10.244.1.201", debug_labels, None)
        attacker_labels = cilium_labels("default", "default", {"app": "attacker"})
        attacker = ("attacker", "Deployment")
        self.attacker = _pod(
            "attacker-7c9f6d5b8-k2x9w", "default", w1, "10.244.1.233", attacker_labels, attacker
        )
        world = ("reserved:world",)
        self.github = Peer(ip="140.82.112.3", identity=2, labels=world, names=("api.github.com",))
        apiserver = ("reserved:kube-apiserver", "reserved:remote-node")
        self.apiserver = Peer(ip="172.18.0.2", identity=7, labels=apiserver)
        health = ("reserved:health",)
        self.health_w2 = Peer(
            ip="10.244.2.52",
            identity=4,
            labels=health,
            node=w2,
            ep_id=1537,
            mac=mac_address("health/w2"),
            ifindex=8,
            lxc="lxc_health",
        )

    @staticmethod
    def host(node: Node) -> Peer:
        return Peer(ip=node.router_ip, identity=1, labels=("reserved:host",), node=node, mac=node.mac)

    @staticmethod
    def remote_node(node: Node) -> Peer:
        return Peer(ip=node.ip, identity=6, labels=("reserved:remote-node",), mac=node.mac)
