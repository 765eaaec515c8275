"""End to end through a real Prometheus and a real Alertmanager (DESIGN §6: metrics, alerts, dashboard).

One module-scoped stack on loopback, every port ephemeral: the embedded Hubble server playing the Airflow
scenario in a loop (``python -m auditor.demo.server --loop``), the daemon following it (``python -m auditor
run``), Alertmanager (Debian ``prometheus-alertmanager``) and Prometheus (Debian ``prometheus``) scraping the
daemon every second and evaluating the FAST rule file (``python -m monitoring.build --fast-rules``: ``for:
0s``, 30 s windows, 1 s evaluation). Everything is asserted through the HTTP APIs of Prometheus and
Alertmanager: the scrape, the violation alerts with their edge labels and annotations, every dashboard panel
query, and — last, because it breaks the stream — the stream-down alert after the Hubble server is killed.

Every process is started here, stopped by PID in the fixture's ``finally`` (also when an assertion or the
setup fails) and checked with ``pgrep -f`` to be gone. Every wait is bounded and polls; a failed wait names
what it waited for, the last API answer and the tails of the processes' logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import pytest
import yaml
from daemon_helpers import free_port

from monitoring import build, dashboard, rules

ROOT: Final = Path(__file__).resolve().parent.parent
MATRIX: Final = ROOT / "examples" / "airflow" / "matrix.yaml"
JOB: Final = "flow-auditor"
SPEED: Final = "60"  # the ten-minute scenario in ten seconds: every violation recurs within the 30 s window
WAIT: Final = 60.0  # first scrape ≈ 5 s after Prometheus starts, alerts in Alertmanager ≈ 6.5 s
STOP_GRACE: Final = 15.0  # Prometheus needs more than a second to shut down
POLL: Final = 0.25
ALERTMANAGER_RECEIVER: Final = "null"

T = TypeVar("T")

# The edge each violation alert is checked on (episodes of the demo scenario, see README.md "Quick start").
VIOLATION_ALERTS: Final[dict[str, dict[str, str]]] = {
    # The `monitoring` namespace lost its label: Prometheus' scrapes of the PostgreSQL exporter are dropped.
    "FlowAuditorLegitimateTrafficDropped": {
        "source": "prometheus",
        "destination": "postgresql",
        "port": "9187",
        "protocol": "TCP",
        "verdict": "DROPPED",
        "severity": "critical",
    },
    # A debug pod in `default` reaches Redis: no default-deny.
    "FlowAuditorUnexpectedTrafficAllowed": {
        "source": "ns:default",
        "destination": "redis",
        "port": "6379",
        "protocol": "TCP",
        "verdict": "FORWARDED",
        "severity": "critical",
    },
    # The triggerer's new egress policy (audit mode) forgets PostgreSQL.
    "FlowAuditorPolicyWouldDropLegitimateTraffic": {
        "source": "triggerer",
        "destination": "postgresql",
        "port": "5432",
        "protocol": "TCP",
        "verdict": "AUDIT",
        "severity": "warning",
    },
}

# Health alerts that must not fire while the daemon is scraped and follows a live stream. (The demo loses
# three events per pass, so FlowAuditorLostEvents fires; allow rules the scenario never uses fire
# FlowAuditorExpectedEdgeSilent with the 30 s fast window.)
QUIET_WHILE_HEALTHY: Final = (
    "FlowAuditorHubbleStreamDown",
    "FlowAuditorNoFlows",
    "FlowAuditorMatrixReloadFailed",
    "FlowAuditorHubbleStreamGap",
    "FlowAuditorDown",
)

# Panel titles whose queries are allowed to return nothing against the demo, each with the reason. Every
# panel returns data today: the reload, label-overflow and lost-event counters and the node gauges are
# exported at 0 before anything happens, the scenario loses events in every pass, and `$__range` (1 h)
# covers the whole run. An entry here must stay true: its query is asserted to be empty.
EMPTY_IN_THE_DEMO: Final[dict[str, str]] = {}

PANEL_QUERIES: Final = dashboard.panel_queries()


# -- processes ---------------------------------------------------------------------------------------


@dataclass
class Process:
    """A subprocess of the stack; its stderr (and stdout, except the Hubble server's) goes to ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]
    killed: bool = False  # stopped on purpose by a test

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        status = "running" if self.popen.poll() is None else f"exited {self.popen.returncode}"
        body = "\n".join(f"    {line[:300]}" for line in text) or "    (empty)"
        return f"  {self.name} (pid {self.popen.pid}, {status}):\n{body}"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run scripts/install-test-deps.sh (make test does)")
    return path


def spawn(name: str, args: list[str], tmp: Path, stdout_pipe: bool = False) -> Process:
    log = tmp / f"{name}.log"
    log_file = log.open("wb")
    try:
        popen = subprocess.Popen(
            args,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log_file,
            stderr=log_file,
        )
    except OSError:
        log_file.close()
        raise
    return Process(name, popen, log, log_file)


def stop_all(processes: list[Process]) -> None:
    """SIGTERM every process still running, wait for each PID (SIGKILL after the grace), close the logs."""
    for proc in processes:
        if proc.popen.poll() is None:
            os.kill(proc.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for proc in processes:
        try:
            proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.kill(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):  # reported by the fixture's pgrep check
                proc.popen.wait(timeout=10)
        finally:
            if proc.popen.stdout is not None:
                proc.popen.stdout.close()
            proc.log_file.close()


def alive_pids(pids: set[int]) -> set[int]:
    """Those of ``pids`` that ``pgrep -f`` still finds among the stack's kinds of processes."""
    found = subprocess.run(
        ["pgrep", "-f", "auditor|prometheus|alertmanager"], capture_output=True, text=True, timeout=10
    )
    return pids & {int(pid) for pid in found.stdout.split()}


# -- HTTP -------------------------------------------------------------------------------------------------


def get_json(url: str) -> Any:
    """The JSON answer of ``url``, also for HTTP errors (Prometheus explains them in JSON), or an error."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "http-error", "code": err.code, "body": body[:1000]}
    except OSError as err:
        return {"status": "unreachable", "error": str(err)}


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def render(answer: object, limit: int = 4000) -> str:
    text = json.dumps(answer, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


# -- the stack --------------------------------------------------------------------------------------------


@dataclass
class Stack:
    tmp: Path
    hubble: str = ""
    daemon: str = ""
    alertmanager: str = ""
    prometheus: str = ""
    processes: dict[str, Process] = field(default_factory=dict)

    def diagnostics(self) -> str:
        return "process logs (tails):\n" + "\n".join(p.tail() for p in self.processes.values())

    def fail(self, message: str, answer: object = None) -> AssertionError:
        last = "" if answer is None else f"\nlast answer: {render(answer)}"
        return AssertionError(f"{message}{last}\n{self.diagnostics()}")

    def check_running(self) -> None:
        """Fail at once, with the logs, when a process of the stack died without being asked to."""
        for proc in self.processes.values():
            if not proc.killed and proc.popen.poll() is not None:
                raise self.fail(f"{proc.name} exited with status {proc.popen.returncode}")

    def wait_until(self, probe: Callable[[], tuple[T | None, object]], what: str, timeout: float = WAIT) -> T:
        """Poll ``probe`` (→ result or None, the answer it looked at) until it gives a result."""
        deadline = time.monotonic() + timeout
        answer: object = None
        while True:
            self.check_running()
            result, answer = probe()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise self.fail(f"timed out after {timeout:.0f}s waiting for {what}", answer)
            time.sleep(POLL)

    # Prometheus and Alertmanager APIs

    def query(self, expr: str) -> Any:
        params = urllib.parse.urlencode({"query": expr, "time": f"{time.time():.3f}"})
        answer = get_json(f"http://{self.prometheus}/api/v1/query?{params}")
        if answer.get("status") != "success":
            raise self.fail(f"Prometheus rejected the query {expr!r}", answer)
        return answer

    def query_vector(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.query(expr)["data"]["result"]
        return result

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        answer = get_json(f"http://{self.prometheus}/api/v1/alerts")
        if answer.get("status") != "success":
            raise self.fail("Prometheus /api/v1/alerts failed", answer)
        alerts: list[dict[str, Any]] = answer["data"]["alerts"]
        return alerts

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        answer = get_json(f"http://{self.alertmanager}/api/v2/alerts")
        if not isinstance(answer, list):
            raise self.fail("Alertmanager /api/v2/alerts failed", answer)
        return answer

    def wait_for_prometheus_alert(self, labels: dict[str, str]) -> dict[str, Any]:
        def probe() -> tuple[dict[str, Any] | None, object]:
            alerts = self.prometheus_alerts()
            found = next((a for a in alerts if a["labels"] == labels and a["state"] == "firing"), None)
            return found, _same_name(alerts, labels, lambda a: a["state"])

        return self.wait_until(probe, f"Prometheus to fire the alert {labels}")

    def wait_for_alertmanager_alert(self, labels: dict[str, str]) -> dict[str, Any]:
        def probe() -> tuple[dict[str, Any] | None, object]:
            alerts = self.alertmanager_alerts()
            found = next(
                (a for a in alerts if a["labels"] == labels and a["status"]["state"] == "active"), None
            )
            return found, _same_name(alerts, labels, lambda a: a["status"]["state"])

        return self.wait_until(probe, f"Alertmanager to list the active alert {labels}")

    def kill_hubble(self) -> None:
        proc = self.processes["hubble"]
        if proc.killed or proc.popen.poll() is not None:  # never signal a PID that may have been reused
            raise self.fail("the Hubble server is not running any more")
        proc.killed = True
        os.kill(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)


def _same_name(alerts: list[dict[str, Any]], labels: dict[str, str], state: Callable[[Any], str]) -> object:
    """What a failed alert wait shows: labels and state of the alerts with the awaited name."""
    name = labels["alertname"]
    return [
        {"labels": a["labels"], "state": state(a)} for a in alerts if a["labels"].get("alertname") == name
    ]


def _http_ok_probe(url: str) -> Callable[[], tuple[bool | None, object]]:
    return lambda: (True if http_ok(url) else None, url)


def _vector_probe(
    stack: Stack, expr: str, accept: Callable[[list[dict[str, Any]]], bool]
) -> Callable[[], tuple[list[dict[str, Any]] | None, object]]:
    """A probe for :meth:`Stack.wait_until`: the instant vector of ``expr`` once ``accept`` takes it."""

    def probe() -> tuple[list[dict[str, Any]] | None, object]:
        result = stack.query_vector(expr)
        return (result if accept(result) else None), result

    return probe


def _only_value(value: str) -> Callable[[list[dict[str, Any]]], bool]:
    """Accepts a vector of exactly one sample whose value is ``value``."""
    return lambda result: len(result) == 1 and result[0]["value"][1] == value


def _read_listening_line(stack: Stack, proc: Process, timeout: float = 20.0) -> str:
    stdout = proc.popen.stdout
    assert stdout is not None
    ready, _, _ = select.select([stdout], [], [], timeout)
    line = stdout.readline().decode(errors="replace").strip() if ready else ""
    if not line.startswith("listening on 127.0.0.1:"):
        raise stack.fail(f"the Hubble server did not print 'listening on …' within {timeout:.0f}s: {line!r}")
    return line.removeprefix("listening on ")


def _write_configs(stack: Stack) -> tuple[Path, Path]:
    rule_file = stack.tmp / "flow-auditor.fast.rules.yaml"
    assert build.main(["--fast-rules", str(rule_file)]) == 0
    prometheus_config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rule_file)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [stack.alertmanager]}]}]},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [stack.daemon]}]}],
    }
    alertmanager_config = {
        "route": {"receiver": ALERTMANAGER_RECEIVER},
        "receivers": [{"name": ALERTMANAGER_RECEIVER}],  # no notifications: the API is what is checked
    }
    prometheus_yml, alertmanager_yml = stack.tmp / "prometheus.yml", stack.tmp / "alertmanager.yml"
    prometheus_yml.write_text(yaml.safe_dump(prometheus_config, sort_keys=False), encoding="utf-8")
    alertmanager_yml.write_text(yaml.safe_dump(alertmanager_config, sort_keys=False), encoding="utf-8")
    return prometheus_yml, alertmanager_yml


def _start(stack: Stack) -> None:
    prometheus_bin, alertmanager_bin = binary("prometheus"), binary("prometheus-alertmanager")
    stack.daemon, stack.alertmanager, stack.prometheus = (f"127.0.0.1:{free_port()}" for _ in range(3))
    prometheus_yml, alertmanager_yml = _write_configs(stack)
    hubble = spawn(
        "hubble",
        [sys.executable, "-m", "auditor.demo.server", "--listen", "127.0.0.1:0", "--loop", "--speed", SPEED],
        stack.tmp,
        stdout_pipe=True,
    )
    stack.processes["hubble"] = hubble
    stack.hubble = _read_listening_line(stack, hubble)
    daemon = [sys.executable, "-m", "auditor", "run", "--server", stack.hubble, "--matrix", str(MATRIX)]
    daemon += ["--since", "1h", "--listen-address", stack.daemon, "--log-format", "json"]
    stack.processes["daemon"] = spawn("daemon", daemon, stack.tmp)
    alertmanager = [
        alertmanager_bin,
        f"--config.file={alertmanager_yml}",
        f"--storage.path={stack.tmp / 'alertmanager'}",
        f"--web.listen-address={stack.alertmanager}",
        "--cluster.listen-address=",  # empty: no gossip port
    ]
    stack.processes["alertmanager"] = spawn("alertmanager", alertmanager, stack.tmp)
    prometheus = [
        prometheus_bin,
        f"--config.file={prometheus_yml}",
        f"--storage.tsdb.path={stack.tmp / 'tsdb'}",
        f"--web.listen-address={stack.prometheus}",
    ]
    stack.processes["prometheus"] = spawn("prometheus", prometheus, stack.tmp)
    for url in (
        f"http://{stack.daemon}/healthz",
        f"http://{stack.alertmanager}/-/ready",
        f"http://{stack.prometheus}/-/ready",
    ):
        stack.wait_until(_http_ok_probe(url), f"{url} to answer 200")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = Stack(tmp_path_factory.mktemp("e2e-monitoring"))
    try:
        _start(started)
        yield started
    finally:
        processes = list(started.processes.values())
        stop_all(processes)
        pids = {p.popen.pid for p in processes}
        survivors = alive_pids(pids)
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
        assert not survivors, f"processes still alive after the stack was stopped: {sorted(survivors)}"


@pytest.fixture
def live(stack: Stack) -> Stack:
    """The stack with its Hubble stream: every test but the last, which kills the Hubble server."""
    if stack.processes["hubble"].killed:
        pytest.fail("the Hubble server was already killed: the stream-down test must run last in this module")
    return stack


def _rule(name: str) -> rules.Alert:
    return next(a for a in rules.alerts(rules.FAST) if a.name == name)


# -- (a) the scrape -------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_daemon_and_the_target_is_up(live: Stack) -> None:
    up = f'up{{job="{JOB}"}}'
    (sample,) = live.wait_until(_vector_probe(live, up, _only_value("1")), f"{up} == 1")
    assert sample["metric"] == {"__name__": "up", "job": JOB, "instance": live.daemon}
    targets = get_json(f"http://{live.prometheus}/api/v1/targets?state=active")
    active = [t for t in targets["data"]["activeTargets"] if t["labels"]["job"] == JOB]
    assert len(active) == 1, render(targets)
    assert active[0]["health"] == "up" and active[0]["lastError"] == "", render(active)
    assert active[0]["scrapeUrl"] == f"http://{live.daemon}/metrics"


def test_prometheus_loads_and_evaluates_every_fast_rule_without_error(live: Stack) -> None:
    def probe() -> tuple[list[dict[str, Any]] | None, object]:
        answer = get_json(f"http://{live.prometheus}/api/v1/rules")
        groups: list[dict[str, Any]] = answer.get("data", {}).get("groups", [])
        evaluated = groups and all(r["health"] != "unknown" for g in groups for r in g["rules"])
        return (groups if evaluated else None), answer

    groups = live.wait_until(probe, "every rule to be evaluated once")
    expected = {g["name"]: [r["alert"] for r in g["rules"]] for g in rules.rule_groups(rules.FAST)}
    assert {g["name"]: [r["name"] for r in g["rules"]] for g in groups} == expected
    assert {g["interval"] for g in groups} == {rules.seconds(rules.FAST_INTERVAL)}
    broken = [
        (r["name"], r["health"], r.get("lastError"))
        for g in groups
        for r in g["rules"]
        if r["health"] != "ok"
    ]
    assert not broken, broken


# -- (b) violation alerts ----------------------------------------------------------------------------------


def _violation_labels(name: str) -> dict[str, str]:
    # Traffic alerts aggregate away `instance` (one alert per edge for node-local auditors) and `class`.
    return {"alertname": name, "job": JOB, **VIOLATION_ALERTS[name]}


def _assert_violation_annotations(name: str, annotations: dict[str, str]) -> None:
    rule = _rule(name)
    assert annotations["summary"] == rule.summary
    assert annotations["runbook_url"] == rule.runbook_url
    edge = {key: re.escape(value) for key, value in VIOLATION_ALERTS[name].items()}
    description = (
        rf"[1-9][0-9]* connection\(s\) from {edge['source']} to {edge['destination']} on "
        rf"{edge['port']}/{edge['protocol']} .+ \(verdict {edge['verdict']}, last {rules.FAST_WINDOW}\)\."
    )
    assert re.fullmatch(description, annotations["description"]), annotations["description"]


@pytest.mark.parametrize("name", VIOLATION_ALERTS)
def test_violation_alert_fires_in_prometheus_with_the_edge_labels(live: Stack, name: str) -> None:
    labels = _violation_labels(name)
    assert labels["severity"] == _rule(name).severity
    alert = live.wait_for_prometheus_alert(labels)
    _assert_violation_annotations(name, alert["annotations"])
    assert float(alert["value"]) >= 1


@pytest.mark.parametrize("name", VIOLATION_ALERTS)
def test_violation_alert_reaches_alertmanager_with_labels_and_annotations(live: Stack, name: str) -> None:
    alert = live.wait_for_alertmanager_alert(_violation_labels(name))
    _assert_violation_annotations(name, alert["annotations"])
    assert [r["name"] for r in alert["receivers"]] == [ALERTMANAGER_RECEIVER]


def test_health_alerts_stay_quiet_while_the_daemon_is_scraped_and_streaming(live: Stack) -> None:
    # Fast rules have no `for`: before the first scrapes FlowAuditorDown (absent up) and FlowAuditorNoFlows
    # (no rate yet) may fire for a moment. Judge them once five scrapes are stored.
    scrapes = f'count_over_time(up{{job="{JOB}"}}[1m])'
    live.wait_until(
        _vector_probe(live, scrapes, lambda r: len(r) == 1 and float(r[0]["value"][1]) >= 5),
        "five scrapes of the daemon",
    )
    noisy = [a for a in live.prometheus_alerts() if a["labels"]["alertname"] in QUIET_WHILE_HEALTHY]
    assert not noisy, render(noisy)


# -- (d) dashboard -----------------------------------------------------------------------------------------


def test_every_intentionally_empty_panel_exists() -> None:
    assert set(EMPTY_IN_THE_DEMO) <= {title for title, _ in PANEL_QUERIES}


@pytest.mark.parametrize(
    ("title", "expr"), PANEL_QUERIES, ids=[f"{i}:{title}" for i, (title, _) in enumerate(PANEL_QUERIES)]
)
def test_dashboard_panel_query_returns_data_from_prometheus(live: Stack, title: str, expr: str) -> None:
    query = dashboard.substitute_variables(expr)
    if title in EMPTY_IN_THE_DEMO:
        assert live.query_vector(query) == [], f"{title!r} has data now: remove it from EMPTY_IN_THE_DEMO"
        return
    result = live.wait_until(_vector_probe(live, query, bool), f"data for the panel {title!r}: {query}")
    values = [float(sample["value"][1]) for sample in result]
    assert all(math.isfinite(v) for v in values), render(result)


# -- (c) stream down: last, it kills the Hubble server ----------------------------------------------------


def test_killing_the_hubble_server_fires_hubble_stream_down_up_to_alertmanager(stack: Stack) -> None:
    hubble_up = f'flow_auditor_hubble_up{{job="{JOB}"}}'
    stack.wait_until(_vector_probe(stack, hubble_up, _only_value("1")), f"{hubble_up} == 1 before the kill")
    stack.kill_hubble()
    stack.wait_until(
        _vector_probe(stack, hubble_up, _only_value("0")),
        f"{hubble_up} == 0 after the Hubble server was killed",
    )
    rule = _rule("FlowAuditorHubbleStreamDown")
    labels = {"alertname": rule.name, "severity": rule.severity, "job": JOB, "instance": stack.daemon}
    fired = stack.wait_for_prometheus_alert(labels)
    assert fired["annotations"]["summary"] == rule.summary
    assert fired["annotations"]["runbook_url"] == rule.runbook_url
    assert (
        f"flow-auditor {stack.daemon} (job {JOB}) has not been connected"
        in fired["annotations"]["description"]
    )
    received = stack.wait_for_alertmanager_alert(labels)
    assert received["annotations"] == fired["annotations"]
    stream_panel = next(expr for title, expr in PANEL_QUERIES if title == "Hubble stream")
    assert [s["value"][1] for s in stack.query_vector(dashboard.substitute_variables(stream_panel))] == ["0"]
