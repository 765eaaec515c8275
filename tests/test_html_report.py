"""The HTML report as a person sees it, in headless Chromium: the verdict and a violation without
scrolling, the matrix grid (a cell per component pair with its worst class and connection count),
inert hostile cluster data, a phone-sized screen. Screenshots go to build/test-output/screenshots/.

The expected grid is derived from the JSON report of the same replay (the contract the page renders):
per (source, destination) the sum of connections and the worst class in the order expected_dropped,
unexpected_allowed, unexpected_dropped, expected_allowed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from daemon_helpers import replay_cli

FLOWS = "examples/airflow/flows.jsonl"
MATRIX = "examples/airflow/matrix.yaml"
WORST_FIRST = ("expected_dropped", "unexpected_allowed", "unexpected_dropped", "expected_allowed")


def replay(fmt: str, *files: str) -> str:
    # Paths relative to the repository, as the report names them.
    return replay_cli(*files, matrix=MATRIX, fmt=fmt)


def open_page(browser: Any, html_text: str, tmp_path: Path, width: int = 1280, height: int = 800) -> Any:
    path = tmp_path / "report.html"
    path.write_text(html_text)
    page = browser.new_page(viewport={"width": width, "height": height})
    page.dialogs = []  # type: ignore[attr-defined]
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    return page


def test_grid_has_a_cell_per_component_pair_with_its_worst_class_and_count(
    browser: Any, tmp_path: Path, screenshots: Path
) -> None:
    report = json.loads(replay("json", FLOWS))
    expected: dict[tuple[str, str], tuple[str, int]] = {}
    for e in report["edges"]:
        key = (e["source"], e["destination"])
        cls, n = expected.get(key, ("expected_allowed", 0))
        worst = min(cls, e["class"], key=WORST_FIRST.index) if n else e["class"]
        expected[key] = (worst, n + e["connections"])
    page = open_page(browser, replay("html", FLOWS), tmp_path)
    page.screenshot(path=str(screenshots / "report-1280.png"), full_page=True)
    columns = [c.inner_text() for c in page.locator("table.grid thead th").all()][1:]
    seen: dict[tuple[str, str], tuple[str, int]] = {}
    for row in page.locator("table.grid tbody tr").all():
        source = row.locator("th").inner_text()
        for destination, cell in zip(columns, row.locator("td").all(), strict=True):
            connections = cell.get_attribute("data-connections")
            if connections is not None:
                seen[(source, destination)] = (cell.get_attribute("data-class"), int(connections))
                assert cell.locator(".count").inner_text() == connections
    assert seen == expected
    # every cell links to the details of its worst edge, which exist on the page
    for link in page.locator("table.grid td a").all():
        target = link.get_attribute("href")
        assert target and page.locator(target).count() == 1
    # the rule the example leaves unused is outlined
    unused = page.locator('table.grid td[data-class="unused"]')
    assert unused.count() == sum(
        len([r["from"]] if isinstance(r["from"], str) else r["from"])
        * len([r["to"]] if isinstance(r["to"], str) else r["to"])
        for r in report["unused_rules"]
    )


def test_a_violation_is_visible_without_scrolling(browser: Any, tmp_path: Path) -> None:
    page = open_page(browser, replay("html", FLOWS), tmp_path)
    verdict = page.locator("#verdict")
    assert "25 violations" in verdict.inner_text()
    first = page.locator("li.violation").first
    box = first.bounding_box()
    assert box is not None and box["y"] + box["height"] <= 800
    assert "prometheus → postgresql 9187/TCP" in first.inner_text()
    first.locator("a").click()
    target = page.locator("tr:target")
    assert target.count() == 1 and "9187/TCP" in target.inner_text()


def hostile_flows(tmp_path: Path) -> str:
    """Delivered flows (trace to the endpoint, built from Hubble's field semantics) whose pod name, labels
    and namespace carry script payloads."""
    payloads = [
        "<script>window.__pwned=1;document.title='pwned'</script>",
        '<img src=x onerror="window.__pwned=2;alert(1)">',
        '"><svg onload=alert(3)>',
    ]
    lines = []
    for i, payload in enumerate(payloads):
        source = {
            "identity": 4000 + i,
            "namespace": f"evil{i}",
            "labels": [f"k8s:app={payload}", f"k8s:io.kubernetes.pod.namespace=evil{i}"],
            "pod_name": payload,
        }
        destination = {
            "identity": 1003,
            "namespace": "airflow",
            "labels": ["k8s:app.kubernetes.io/name=postgresql", "k8s:io.kubernetes.pod.namespace=airflow"],
            "pod_name": "airflow-postgresql-0",
        }
        flow = {
            "time": f"2026-11-23T09:00:0{i}.000000Z",
            "verdict": "FORWARDED",
            "IP": {"source": f"10.244.9.{i + 1}", "destination": "10.244.2.20"},
            "l4": {"TCP": {"source_port": 40000 + i, "destination_port": 5432, "flags": {"SYN": True}}},
            "source": source,
            "destination": destination,
            "Type": "L3_L4",
            "node_name": payload,
            "event_type": {"type": 4},
            "traffic_direction": "INGRESS",
            "trace_observation_point": "TO_ENDPOINT",
            "is_reply": False,
        }
        lines.append(json.dumps({"flow": flow, "node_name": "n", "time": flow["time"]}))
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_script_payloads_in_cluster_data_are_inert_text(
    browser: Any, tmp_path: Path, screenshots: Path
) -> None:
    page = open_page(browser, replay("html", hostile_flows(tmp_path)), tmp_path)
    page.screenshot(path=str(screenshots / "report-hostile.png"), full_page=True)
    assert page.dialogs == []
    assert page.evaluate("window.__pwned") is None
    assert page.title() == "flow-auditor report: airflow"
    assert page.locator("script").count() == 0 and page.locator("img").count() == 0
    assert page.locator("svg").count() == 0
    body = page.locator("body").inner_text()
    assert "<script>window.__pwned=1;document.title='pwned'</script>" in body
    csp = page.locator('meta[http-equiv="Content-Security-Policy"]').get_attribute("content")
    assert csp is not None and "default-src 'none'" in csp and "script-src" not in csp


def test_phone_screen_scrolls_only_inside_the_grid(browser: Any, tmp_path: Path, screenshots: Path) -> None:
    page = open_page(browser, replay("html", FLOWS), tmp_path, width=390, height=844)
    page.screenshot(path=str(screenshots / "report-phone.png"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator("#verdict").bounding_box()["y"] < 844
    grid = page.locator(".grid-wrap")
    assert grid.evaluate("el => el.scrollWidth > el.clientWidth")  # the grid scrolls in its own box


def test_styles_apply_under_the_pages_own_policy(browser: Any, tmp_path: Path) -> None:
    """The stylesheet is allowed by its hash: a violation cell is coloured, so the CSP did not block it."""
    page = open_page(browser, replay("html", FLOWS), tmp_path)
    colour = page.locator('table.grid td[data-class="expected_dropped"]').first.evaluate(
        "el => getComputedStyle(el).backgroundColor"
    )
    assert colour == "rgb(213, 94, 0)"


def test_dark_mode_and_print_follow_the_media(browser: Any, tmp_path: Path, screenshots: Path) -> None:
    page = open_page(browser, replay("html", FLOWS), tmp_path)
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.screenshot(path=str(screenshots / "report-dark.png"))
    assert (light, dark) == ("rgb(255, 255, 255)", "rgb(22, 22, 22)")
    # the loud classes keep their text labels in dark mode (colour is never the only signal)
    cell = page.locator('table.grid td[data-class="unexpected_allowed"]').first
    assert cell.locator(".label").inner_text() == "unexpected, allowed"
    page.emulate_media(media="print")
    assert page.locator(".grid-wrap").evaluate("el => getComputedStyle(el).overflow") == "visible"
    pdf = page.pdf()  # prints without error, more than one page for the whole report
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) >= 2
