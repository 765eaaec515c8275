"""Caches and tables are bounded by bytes, not only entries: huge, ever new endpoints cannot grow memory.

An endpoint carries every label of its pod (tens of KB are possible, and cluster data is attacker-controlled):
24,000 flows with 33 KB endpoints once took the process from 56 MB to 1.9 GB. The figures for the whole
path are measured by ``bench/memory.py``; these tests pin each cache's bound and that its charge is not an
underestimate.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from pathlib import Path

import pytest
from factory import REDIS, flow, pod

from auditor import classify, decode_pb
from auditor._proto.flow import flow_pb2
from auditor.classify import Auditor, CacheBudgets, DedupTable, Judgement
from auditor.matrix import load_matrix
from auditor.model import Endpoint

MATRIX = load_matrix(Path(__file__).parent.parent / "examples" / "airflow" / "matrix.yaml")
KB = 1024
BUDGET = 1024 * KB


def huge_labels(i: int, size: int = 20 * KB) -> tuple[str, ...]:
    return tuple(f"k8s:example.com/label-{j:04d}={i:012d}{'x' * 24}" for j in range(size // 64))


def huge_endpoint(i: int, identity: int) -> Endpoint:
    base = pod("airflow", f"shell-{i}", identity, "run=shell")
    return Endpoint(
        identity=identity,
        namespace="airflow",
        labels=tuple(sorted(base.labels + huge_labels(i))),
        pod_name=base.pod_name,
    )


def retained(resolved: dict[object, classify.Resolution]) -> int:
    return sum(len(label) for r in resolved.values() for label in r.labels)


@pytest.mark.parametrize("identities", [True, False], ids=["by identity", "anonymous"])
def test_resolution_caches_hold_no_more_label_bytes_than_their_budget(identities: bool) -> None:
    """Before: 50,000 entries whatever their size (200 endpoints of 20 KB were all kept, 4 MB)."""
    auditor = Auditor(MATRIX, budgets=CacheBudgets(identity=BUDGET, anon=BUDGET))
    for i in range(200):
        source = huge_endpoint(i, 60_000 + i if identities else 0)
        auditor.process(flow(source=source, destination=REDIS, destination_port=6379, source_port=20_000 + i))
    cache = auditor._ids if identities else auditor._anon
    assert 0 < retained(cache) <= BUDGET  # type: ignore[arg-type]
    assert len(cache) < 200


def wire_endpoint(i: int, size: int = 30 * KB) -> bytes:
    ep = flow_pb2.Endpoint(identity=70_000 + i, namespace="airflow", pod_name=f"shell-{i}")
    ep.labels.extend(huge_labels(i, size))
    return ep.SerializeToString()


def test_decoder_endpoint_cache_is_bounded_by_charged_bytes() -> None:
    cache = decode_pb.EndpointCache(budget=BUDGET)
    for i in range(100):  # 3 MB of wire bytes
        data = wire_endpoint(i)
        assert cache.decode(data).pod_name == f"shell-{i}"
        assert cache.charged <= BUDGET
    assert 0 < len(cache.entries) < 100 and cache.resets >= 1
    assert sum(len(k) for k in cache.entries) <= BUDGET
    alone = wire_endpoint(1000, size=2 * BUDGET)  # larger than the whole budget: decoded, not kept
    assert cache.decode(alone).pod_name == "shell-1000"
    assert alone not in cache.entries


def test_decoder_endpoint_charge_is_not_an_underestimate() -> None:
    """The charge (3 x wire + overhead) covers what an entry really keeps: key, strings, tuple, struct."""
    blobs = [wire_endpoint(i) for i in range(40)]
    cache = decode_pb.EndpointCache(budget=1 << 40)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for data in blobs:
            cache.decode(data)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    keys = sum(len(b) for b in blobs)  # the keys existed before (the test holds them): add them back
    assert cache.charged >= kept + keys


def replica_endpoint(i: int) -> bytes:
    """A pod of a 2,000-replica Deployment: the labels of every replica, its own name (as Hubble sends it)."""
    ep = flow_pb2.Endpoint(identity=51_234, namespace="airflow", pod_name=f"airflow-worker-7d9c6b5f4-{i:05d}")
    ep.labels.extend(
        [
            "k8s:app.kubernetes.io/component=worker",
            "k8s:app.kubernetes.io/name=airflow",
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=airflow",
            "k8s:io.cilium.k8s.policy.cluster=default",
            "k8s:io.cilium.k8s.policy.serviceaccount=airflow-worker",
            "k8s:io.kubernetes.pod.namespace=airflow",
        ]
    )
    ep.workloads.add(kind="Deployment", name="airflow-worker")
    return ep.SerializeToString()


def test_replicas_share_their_labels_and_the_charge_still_covers_what_is_kept() -> None:
    """Interned label sets: 2,000 replicas keep one label tuple, and each entry is charged what it keeps
    (key, struct, pod name, dict slot) — measured, so the budget holds 100,000 pods in tens of MB."""
    blobs = [replica_endpoint(i) for i in range(2000)]
    cache = decode_pb.EndpointCache(budget=1 << 40)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        decoded = [cache.decode(data) for data in blobs]
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    kept -= sys.getsizeof(decoded)  # the test's own list
    keys = sum(sys.getsizeof(b) for b in blobs)  # the keys existed before (the test holds them)
    assert cache.charged >= kept + keys
    assert cache.charged <= 2 * (kept + keys)  # not a gross overestimate either: 100k pods must fit
    assert all(e.labels is decoded[0].labels and e.workloads is decoded[0].workloads for e in decoded)
    assert {e.pod_name for e in decoded} == {f"airflow-worker-7d9c6b5f4-{i:05d}" for i in range(2000)}
    assert cache.info()["label_sets"] == 1


def test_an_emptied_cache_interns_again_and_charges_again() -> None:
    """When the budget is reached, the interned label sets go with the entries and are charged again."""
    first = replica_endpoint(0)
    cache = decode_pb.EndpointCache(budget=1 << 40)
    cache.decode(first)
    one = cache.charged
    cache.budget = one + 1  # the second replica does not fit: emptied, then kept alone
    second = cache.decode(replica_endpoint(1))
    assert cache.resets == 1 and list(cache.entries) == [replica_endpoint(1)]
    assert cache.charged == one  # the label set and names charged again (same-length pod names)
    assert second.labels == cache.decode(first).labels


def test_the_live_decoder_uses_the_bounded_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_pb.ENDPOINTS, "budget", BUDGET)
    decode_pb.ENDPOINTS.clear()
    try:
        for i in range(60):
            msg = flow_pb2.Flow()
            msg.source.ParseFromString(wire_endpoint(i))
            assert decode_pb.flow_from_pb(msg).source.pod_name == f"shell-{i}"
        assert decode_pb.endpoint_cache_info()["charged_bytes"] <= BUDGET
        assert sum(len(k) for k in decode_pb.ENDPOINTS.entries) <= BUDGET
    finally:
        decode_pb.ENDPOINTS.clear()


def test_the_dedup_table_at_its_cap_stays_within_40_mib() -> None:
    """The dedup table is bounded by entries (250,000 of a fixed size): at the cap it must hold within the
    40 MiB that sizing promises, compiled too (the compiled core once boxed each entry's time once per
    container: 49 MiB)."""
    table = DedupTable(window=1e9)  # nothing expires: the cap alone bounds it
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(table.max_entries + 1000):
            table.seen(hash((i, "connection")), 1_000.0 + i / 1000)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == table.queued == table.max_entries == 250_000
    assert kept <= 40 * 1024 * KB


def test_edge_cache_holds_no_more_name_bytes_than_its_budget() -> None:
    """Each distinct edge is built once and kept; its names come from the cluster (here a namespace of
    the source's own choosing, 20 KB long), so the cache is bounded by bytes too."""
    auditor = Auditor(MATRIX, budgets=CacheBudgets(edge=BUDGET))
    for i in range(200):
        source = pod(f"{i:04d}-" + "n" * 20 * KB, "shell", 0, "run=shell")
        j = auditor.process(flow(source=source, destination=REDIS, destination_port=6379, source_port=i + 1))
        assert isinstance(j, Judgement) and j.edge.source == f"ns:{source.namespace}"
    names = sum(len(e.source) + len(e.destination) for e in auditor._edges.values())
    assert 0 < names <= BUDGET
    assert len(auditor._edges) < 200
