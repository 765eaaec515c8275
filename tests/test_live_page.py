"""The daemon's live page (``/``) and ``/api/v1/edges``: the live matrix, tested as a person sees it in
Debian's headless Chromium against a real daemon following a real gRPC Hubble server on loopback.

Truth: the live counts per edge equal the replay report of the same events (the one pipeline); the
"last 15 minutes" view counts only connections whose flow time lies within 900 s of the newest flow or
the clock; hostile names arrive as data and stay text.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import FLOWS, MATRIX, replay_cli, wait_for

from auditor.classify import Auditor
from auditor.daemon import Daemon, DaemonConfig
from auditor.decode import decode_line
from auditor.demo import FlowLog, HubbleServer, load_jsonl
from auditor.matrix import load_matrix
from auditor.model import Flow, Record
from auditor.pipeline import Pipeline
from auditor.sinks.live import LiveSink
from auditor.sources.hubble import HubbleConfig
from auditor.web import CSP

WORST_FIRST = ("expected_dropped", "unexpected_allowed", "unexpected_dropped", "expected_allowed")


def replay_edges(*files: Path) -> dict[tuple[Any, ...], int]:
    report = json.loads(replay_cli(*files))
    return {
        (e["source"], e["destination"], e["port"], e["protocol"], e["class"]): e["connections"]
        for e in report["edges"]
    }


def api_edges(snapshot: dict[str, Any], field: str = "connections") -> dict[tuple[Any, ...], int]:
    return {
        (e["source"], e["destination"], e["port"], e["protocol"], e["class"]): e[field]
        for e in snapshot["edges"]
        if e[field]
    }


def live_sink(clock: Callable[[], float], then: Record | None = None) -> LiveSink:
    """A live sink fed the example's events, and ``then`` after them."""
    matrix = load_matrix(MATRIX)
    sink = LiveSink(matrix, clock=clock)
    pipeline = Pipeline(Auditor(matrix), [sink])
    for line in FLOWS.read_bytes().splitlines():
        pipeline.feed(decode_line(line))
    if then is not None:
        pipeline.feed(then)
    return sink


def test_live_counts_equal_the_replay_of_the_same_events() -> None:
    sink = live_sink(clock=lambda: 0.0)
    assert api_edges(sink.snapshot()) == replay_edges(FLOWS)


def test_recent_view_counts_only_the_last_15_minutes() -> None:
    times = [decode_line(line).time for line in FLOWS.read_bytes().splitlines() if b'"flow"' in line]
    newest = max(t for t in times if t)
    sink = live_sink(clock=lambda: newest)  # the example spans ten minutes: all of it is recent
    snap = sink.snapshot()
    assert api_edges(snap, "connections_recent") == api_edges(snap)
    later = live_sink(clock=lambda: newest + 3600)  # an hour later, nothing is recent any more
    snap = later.snapshot()
    assert api_edges(snap, "connections_recent") == {}
    assert sum(snap["classes"]["recent"].values()) == 0
    assert sum(snap["classes"]["since_start"].values()) == sum(api_edges(snap).values())


def test_a_flow_stamped_a_day_ahead_of_the_clock_moves_neither_the_window_nor_its_node() -> None:
    flows = [f for f in map(decode_line, FLOWS.read_bytes().splitlines()) if type(f) is Flow and f.time]
    newest = max(f.time for f in flows)
    last = max(flows, key=lambda f: f.time)
    ahead = last.replace(time=newest + 86_400, source_port=last.source_port + 1)
    sink = live_sink(clock=lambda: newest, then=ahead)
    snap = sink.snapshot()
    assert api_edges(snap, "connections_recent") == api_edges(snap) != {}  # still all in the window
    (node,) = [n for n in snap["nodes"] if n["name"] == last.node_name]
    assert node["last_flow"] == datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_edges_beyond_the_cap_fold_into_other() -> None:
    matrix = load_matrix(MATRIX)
    sink = LiveSink(matrix, clock=lambda: 0.0, max_edges=3)
    pipeline = Pipeline(Auditor(matrix), [sink])
    for line in FLOWS.read_bytes().splitlines():
        pipeline.feed(decode_line(line))
    edges = sink.snapshot()["edges"]
    assert len([e for e in edges if e["source"] != "other"]) == 3
    assert sum(e["connections"] for e in edges) == sum(replay_edges(FLOWS).values())


# -- the page in a browser, served by a real daemon ---------------------------------------------------

HOSTILE = '<img src=x onerror="window.__pwned=1;alert(1)">'


def hostile_jsonl(tmp_path: Path) -> Path:
    """One delivered connection (trace to the endpoint, built from Hubble's field semantics) from a pod
    whose name, namespace label and node name are script payloads."""
    flow = {
        "time": "2026-11-23T09:10:00.000000Z",
        "verdict": "FORWARDED",
        "IP": {"source": "10.244.9.9", "destination": "10.244.2.20"},
        "l4": {"TCP": {"source_port": 41234, "destination_port": 6379, "flags": {"SYN": True}}},
        "source": {
            "identity": 4999,
            "namespace": "evil",
            "pod_name": HOSTILE,
            "labels": [f"k8s:app={HOSTILE}", "k8s:io.kubernetes.pod.namespace=evil"],
        },
        "destination": {
            "identity": 1004,
            "namespace": "airflow",
            "pod_name": "airflow-redis-0",
            "labels": ["k8s:component=redis", "k8s:tier=airflow", "k8s:io.kubernetes.pod.namespace=airflow"],
        },
        "Type": "L3_L4",
        "node_name": HOSTILE,
        "event_type": {"type": 4},
        "traffic_direction": "INGRESS",
        "trace_observation_point": "TO_ENDPOINT",
        "is_reply": False,
    }
    path = tmp_path / "hostile.jsonl"
    path.write_text(json.dumps({"flow": flow, "node_name": HOSTILE, "time": flow["time"]}) + "\n")
    return path


@pytest.fixture
def daemon_with_example() -> Iterator[tuple[Daemon, FlowLog]]:
    log = FlowLog()
    log.extend(load_jsonl(FLOWS))
    server = HubbleServer(log)
    server.start()
    config = DaemonConfig(
        matrix=str(MATRIX),
        hubble=HubbleConfig(
            server=server.address, since=0.0, timeout=2.0, backoff_initial=0.1, backoff_max=0.5
        ),
        listen_address="127.0.0.1:0",
    )
    daemon = Daemon(config)
    daemon.start()
    try:
        yield daemon, log
    finally:
        daemon.stop()
        server.stop(0)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(json.loads(resp.read()))


def test_live_page_shows_the_matrix_and_updates_in_place(
    daemon_with_example: tuple[Daemon, FlowLog], browser: Any, tmp_path: Path, screenshots: Path
) -> None:
    daemon, log = daemon_with_example
    base = f"http://{daemon.listen_address}"
    expected = replay_edges(FLOWS)
    wait_for(lambda: api_edges(get_json(base + "/api/v1/edges")) == expected, what="the example judged")
    with urllib.request.urlopen(base + "/", timeout=5) as resp:
        assert resp.headers["Content-Security-Policy"] == CSP
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(base + "/?refresh=1")
    page.wait_for_selector("table.grid td[data-connections]")
    cells = {}
    columns = [c.inner_text() for c in page.locator("table.grid thead th").all()][1:]
    for row in page.locator("table.grid tbody tr").all():
        source = row.locator("th").inner_text()
        for destination, cell in zip(columns, row.locator("td").all(), strict=True):
            if cell.get_attribute("data-connections"):
                cells[(source, destination)] = (
                    cell.get_attribute("data-class"),
                    int(cell.get_attribute("data-connections")),
                )
    pairs: dict[tuple[str, str], tuple[str, int]] = {}
    for (s, d, _, _, cls), n in expected.items():
        old = pairs.get((s, d))
        worst = cls if old is None else min(old[0], cls, key=WORST_FIRST.index)
        pairs[(s, d)] = (worst, n + (old[1] if old else 0))
    assert cells == pairs
    assert "25 violations" in page.locator("#verdict").inner_text()
    page.screenshot(path=str(screenshots / "live-page.png"), full_page=True)

    page.evaluate("window.__marker = 'same page'")
    log.extend(load_jsonl(hostile_jsonl(tmp_path)))
    page.wait_for_selector('table.grid tbody th:text-is("ns:evil")', timeout=15_000)
    assert page.evaluate("window.__marker") == "same page"  # refreshed without a reload
    assert dialogs == [] and page.evaluate("window.__pwned") is None
    assert page.locator("img").count() == 0
    assert HOSTILE in page.locator("#nodes").inner_text()  # the node name, shown as text
    violations = page.locator("#violations").inner_text()
    assert "ns:evil" in violations and "unexpected_allowed" in violations
    page.screenshot(path=str(screenshots / "live-page-hostile.png"), full_page=True)
