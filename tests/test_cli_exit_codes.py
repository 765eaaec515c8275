"""The CLI never lies by exit code: 1 means violations found, nothing else.

Every usage or input problem exits 2 with one line on stderr naming the flag, the environment variable or
the file; durations take Go's syntax in every duration flag and its environment twin. Real processes
(``python -m auditor``) on real files, except where only the parser or one function is under test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from auditor.cli import build_parser, main
from auditor.commands import replay as cli
from auditor.commands.common import EXIT_INTERNAL
from auditor.commands.replay import exit_code
from auditor.options import duration_seconds, parse_duration

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "airflow"
FLOWS = EXAMPLE / "flows.jsonl"
MATRIX = EXAMPLE / "matrix.yaml"


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOW_AUDITOR_")}
    return subprocess.run(
        [sys.executable, "-m", "auditor", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**clean, **(env or {})},
    )


def assert_usage_error(proc: subprocess.CompletedProcess[str], *names: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for name in names:
        assert name in lines[0], lines[0]


REPLAY = ("replay", str(FLOWS), "--matrix", str(MATRIX), "--format", "json")


# -- flags and environment variables ---------------------------------------------------------------


def test_a_bad_environment_variable_of_another_command_does_not_break_matrix_check() -> None:
    proc = run_cli("matrix", "check", str(MATRIX), env={"FLOW_AUDITOR_DEDUP_WINDOW": "30s"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (
            REPLAY,
            {"FLOW_AUDITOR_DEDUP_WINDOW": "30x"},
            ("--dedup-window", "FLOW_AUDITOR_DEDUP_WINDOW", "30x"),
        ),
        (REPLAY, {"FLOW_AUDITOR_DEDUP_WINDOW": "nan"}, ("FLOW_AUDITOR_DEDUP_WINDOW",)),
        ((*REPLAY, "--dedup-window", "nan"), {}, ("--dedup-window", "nan")),
        ((*REPLAY, "--dedup-window", "inf"), {}, ("--dedup-window", "inf")),
        ((*REPLAY, "--dedup-window", "0"), {}, ("--dedup-window", "more than 0")),
        ((*REPLAY, "--dedup-window=-5s"), {}, ("--dedup-window", "-5s")),
        ((*REPLAY, "--dedup-window", "1e9h"), {}, ("--dedup-window",)),
        (REPLAY[:4], {"FLOW_AUDITOR_FORMAT": "xml"}, ("FLOW_AUDITOR_FORMAT", "xml")),
        (REPLAY, {"FLOW_AUDITOR_FAIL_ON": "bogus"}, ("FLOW_AUDITOR_FAIL_ON", "unknown class bogus")),
        ((*REPLAY, "--fail-on", "bogus"), {}, ("--fail-on", "unknown class bogus")),
        # an unset variable in `--fail-on "$FAIL_ON"` must not switch the check off
        ((*REPLAY, "--fail-on", ""), {}, ("--fail-on", "empty")),
        ((*REPLAY, "--fail-on", " , "), {}, ("--fail-on", "empty")),
        (REPLAY, {"FLOW_AUDITOR_FAIL_ON": ""}, ("FLOW_AUDITOR_FAIL_ON", "empty")),
        ((*REPLAY, "--fail-on", "none,expected_dropped"), {}, ("--fail-on", "none cannot be combined")),
        (("run", "--matrix", str(MATRIX)), {"FLOW_AUDITOR_TLS": "maybe"}, ("FLOW_AUDITOR_TLS",)),
        (("run", "--matrix", str(MATRIX)), {"FLOW_AUDITOR_TIMEOUT": "5x"}, ("FLOW_AUDITOR_TIMEOUT",)),
        (("run", "--matrix", str(MATRIX), "--reload-interval", "0s"), {}, ("--reload-interval",)),
        (("run", "--matrix", str(MATRIX)), {"FLOW_AUDITOR_KUBE_EVENTS_INTERVAL": "soon"}, ("KUBE_EVENTS",)),
        (("run", "--matrix", str(MATRIX), "--since", "yesterday"), {}, ("--since", "yesterday")),
        (("run", "--matrix", str(MATRIX), "--listen-address", "nowhere"), {}, ("--listen-address",)),
        (("run", "--matrix", str(MATRIX)), {"FLOW_AUDITOR_LOG_LEVEL": "loud"}, ("FLOW_AUDITOR_LOG_LEVEL",)),
        (("demo",), {"FLOW_AUDITOR_SPEED": "nan"}, ("--speed", "FLOW_AUDITOR_SPEED")),
        (("demo", "--speed", "0"), {}, ("--speed",)),
        (("demo", "--speed", "inf"), {}, ("--speed", "inf")),
    ],
)
def test_bad_values_exit_2_with_one_line_naming_the_flag_or_variable(
    args: tuple[str, ...], env: dict[str, str], names: tuple[str, ...]
) -> None:
    assert_usage_error(run_cli(*args, env=env), *names)


def test_the_command_line_wins_over_a_bad_environment_variable() -> None:
    proc = run_cli(*REPLAY, "--dedup-window", "1h30m", env={"FLOW_AUDITOR_DEDUP_WINDOW": "30x"})
    assert proc.returncode == 1 and json.loads(proc.stdout)["matrix"] == "airflow", proc.stderr


# -- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("2m30.5s", 150.5),
        ("1h1m1s1ms", 3661.001),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("1500000ns", 0.0015),
        ("+5m", 300.0),
        (".5s", 0.5),
        ("30", 30.0),  # a bare number is seconds, as before
        ("2.5", 2.5),
        ("0", 0.0),
    ],
)
def test_durations_in_go_syntax(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "nan", "inf", "-1s", "-5", "1e3", "5 s", "1d", "s", ".", "1h-5m", "5S", "1.5.5s", "3000000h"]
)
def test_invalid_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration_seconds(text)


def test_zero_is_no_duration_for_a_flag() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="more than 0"):
        parse_duration("0s")


DURATION_FLAGS = [
    ("replay", "--dedup-window", "dedup_window"),
    ("run", "--dedup-window", "dedup_window"),
    ("run", "--timeout", "timeout"),
    ("run", "--reload-interval", "reload_interval"),
    ("run", "--kube-events-interval", "kube_events_interval"),
    ("demo", "--dedup-window", "dedup_window"),
    ("demo", "--reload-interval", "reload_interval"),
]


def _parse(command: str, *extra: str) -> argparse.Namespace:
    files = ["x.jsonl"] if command == "replay" else []
    matrix = ["--matrix", str(MATRIX)] if command != "demo" else []
    return build_parser().parse_args([command, *files, *matrix, *extra])


@pytest.mark.parametrize(("command", "flag", "dest"), DURATION_FLAGS)
@pytest.mark.parametrize(("text", "seconds"), [("1h30m", 5400.0), ("2m30.5s", 150.5), ("500ms", 0.5)])
def test_every_duration_flag_and_its_environment_twin_take_go_durations(
    monkeypatch: pytest.MonkeyPatch, command: str, flag: str, dest: str, text: str, seconds: float
) -> None:
    assert getattr(_parse(command, flag, text), dest) == pytest.approx(seconds)
    monkeypatch.setenv("FLOW_AUDITOR_" + dest.upper(), text)
    assert getattr(_parse(command), dest) == pytest.approx(seconds)


def test_since_takes_a_go_duration_back_from_now() -> None:
    import time

    since = _parse("run", "--since", "1h30m").since
    assert time.time() - 5400 - 5 < since <= time.time() - 5400


def test_timeout_from_the_environment_as_bare_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOW_AUDITOR_TIMEOUT", "5")
    assert _parse("run").timeout == 5.0


def test_replay_accepts_the_same_durations_as_run() -> None:
    proc = run_cli(*REPLAY, env={"FLOW_AUDITOR_DEDUP_WINDOW": "2m30.5s"})
    assert proc.returncode == 1, proc.stderr


# -- files -----------------------------------------------------------------------------------------


def test_unwritable_output_exits_2_before_reading_the_input(tmp_path: Path) -> None:
    missing_dir = tmp_path / "missing" / "report.json"
    proc = run_cli(*REPLAY, "-o", str(missing_dir))
    assert_usage_error(proc, "--output", str(missing_dir), "no such directory")
    assert_usage_error(run_cli(*REPLAY, "-o", str(tmp_path)), "--output", "is a directory")
    env = {"FLOW_AUDITOR_OUTPUT": str(missing_dir)}
    assert_usage_error(run_cli(*REPLAY, env=env), "FLOW_AUDITOR_OUTPUT")
    gen = ("policies", "generate", "--matrix", str(MATRIX), "-o", str(tmp_path))
    assert_usage_error(run_cli(*gen), "--output", "is a directory")


def test_a_directory_as_input_exits_2(tmp_path: Path) -> None:
    proc = run_cli("replay", str(tmp_path), "--matrix", str(MATRIX))
    assert_usage_error(proc, str(tmp_path), "is a directory")


def test_a_named_pipe_is_read_like_a_file(tmp_path: Path) -> None:
    """``replay <(hubble observe …)`` hands the auditor a pipe, not a regular file."""
    fifo = tmp_path / "flows.pipe"
    os.mkfifo(fifo)

    def write() -> None:
        with fifo.open("wb") as f:
            f.write(FLOWS.read_bytes())

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    proc = run_cli("replay", str(fifo), "--matrix", str(MATRIX), "--format", "json")
    writer.join(timeout=10)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["flows"]["invalid"] == 0


# -- exit 1 means violations, and only that --------------------------------------------------------


def clean_flows(tmp_path: Path) -> Path:
    """The example without its violations: only expected_allowed and unexpected_dropped connections."""
    clean = tmp_path / "clean.jsonl"
    with FLOWS.open() as src, clean.open("w") as dst:
        for line in src:
            if not any(p in line for p in ("debug-shell", "prometheus", "traefik", "triggerer")):
                dst.write(line)
    return clean


def test_fail_on_exits_1_when_any_one_of_its_classes_has_connections(tmp_path: Path) -> None:
    clean = clean_flows(tmp_path)
    proc = run_cli("replay", str(clean), "--matrix", str(MATRIX), "--format", "json")
    classes = json.loads(proc.stdout)["classes"]
    assert classes["expected_allowed"] > 0 and classes["expected_dropped"] == 0, classes
    one_of_two = ("--fail-on", "expected_dropped,expected_allowed")
    proc = run_cli("replay", str(clean), "--matrix", str(MATRIX), "--format", "json", *one_of_two)
    assert proc.returncode == 1
    proc = run_cli("replay", str(clean), "--matrix", str(MATRIX), "--format", "json", "--fail-on", "none")
    assert proc.returncode == 0
    shouted = ("--fail-on", "Expected_Dropped, EXPECTED_ALLOWED")  # class names in any case, as `none`
    proc = run_cli("replay", str(clean), "--matrix", str(MATRIX), "--format", "json", *shouted)
    assert proc.returncode == 1, proc.stderr


@pytest.mark.parametrize(
    ("classes", "fail_on", "code"),
    [
        ({"a": 1, "b": 0}, {"a", "b"}, 1),
        ({"a": 0, "b": 3}, {"a", "b"}, 1),
        ({"a": 0, "b": 0}, {"a", "b"}, 0),
        ({"a": 5, "b": 0}, {"b"}, 0),
        ({"a": 5, "b": 0}, set(), 0),
    ],
)
def test_exit_code_table(classes: dict[str, int], fail_on: set[str], code: int) -> None:
    assert exit_code(classes, frozenset(fail_on)) == code


def test_an_internal_error_is_exit_3_never_1(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(cli, "render", broken)
    code = main(["replay", str(FLOWS), "--matrix", str(MATRIX), "--fail-on", "none"])
    assert code == EXIT_INTERNAL == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error: RuntimeError: renderer bug" in err


# -- inputs in which no line is a Hubble event ------------------------------------------------------

# `hubble observe` default (compact) and table output, written from Hubble's printer formats (not recorded).
COMPACT = (
    "Nov 23 09:00:01.123: airflow/airflow-worker-0:41234 (ID:4242) -> airflow/airflow-postgresql-0:5432 "
    "(ID:5151) to-endpoint FORWARDED (TCP Flags: SYN)\n"
)
TABLE = (
    "TIMESTAMP             SOURCE                              DESTINATION                     TYPE    "
    "      VERDICT     SUMMARY\n"
    "Nov 23 09:00:01.123   airflow/airflow-worker-0:41234      airflow/airflow-postgresql-0:5432   "
    "to-endpoint   FORWARDED   TCP Flags: SYN\n"
)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "the input is empty"),
        ("\n\n   \n", "the input is empty"),
        (COMPACT, "its only line is not a Hubble event"),
        (TABLE, "none of its 2 lines is a Hubble event"),
        (MATRIX.read_text(), "line 1"),
        ('{"kind": "Pod", "apiVersion": "v1"}\n{}\n', "JSON, but no flow"),
    ],
)
def test_an_input_in_which_no_line_is_a_hubble_event_exits_2_naming_the_fix(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "capture.txt"
    path.write_text(content)
    proc = run_cli("replay", str(path), "--matrix", str(MATRIX))
    assert_usage_error(proc, str(path), expected, "hubble observe -o jsonpb")


def test_empty_standard_input_exits_2() -> None:
    assert_usage_error(run_cli("replay", "-", "--matrix", str(MATRIX)), "standard input", "empty")


def test_several_files_are_judged_per_file_and_the_bad_one_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "node-b.jsonl"
    empty.write_text("")
    proc = run_cli("replay", str(FLOWS), str(empty), "--matrix", str(MATRIX))
    assert_usage_error(proc, str(empty))
    assert str(FLOWS) not in proc.stderr


def test_a_file_of_lost_events_only_is_valid_input(tmp_path: Path) -> None:
    lost = tmp_path / "lost.jsonl"
    lost.write_text(
        '{"lost_events": {"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": "12"}, "node_name": "n1"}\n'
    )
    proc = run_cli("replay", str(lost), "--matrix", str(MATRIX), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["lost_events"] == {"PERF_EVENT_RING_BUFFER": 12}


def test_a_few_good_lines_among_garbage_are_not_an_input_error(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(COMPACT + FLOWS.read_text().splitlines(keepends=True)[0])
    proc = run_cli("replay", str(mixed), "--matrix", str(MATRIX), "--format", "json", "--fail-on", "none")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["flows"]["invalid"] == 1


def test_a_run_with_no_flow_in_the_matrixs_scope_is_an_input_error_not_a_pass(tmp_path: Path) -> None:
    # A typo in scope.namespaces (or a capture of other namespaces) leaves nothing to judge: exit 2, not
    # "no violation". One flow in scope is enough to judge the run as usual.
    typo = tmp_path / "matrix.yaml"
    text = MATRIX.read_text()
    assert "- airflow\n" in text or "[airflow]" in text
    typo.write_text(text.replace("[airflow]", "[airflw]").replace("- airflow\n", "- airflw\n", 1))
    proc = run_cli("replay", str(FLOWS), "--matrix", str(typo), "--format", "json")
    assert_usage_error(proc, "none of the", "in the matrix's scope (namespaces: airflw)", str(typo))
    proc = run_cli("replay", str(FLOWS), "--matrix", str(MATRIX), "--format", "json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["flows"]["out_of_scope"] > 0


def test_matrix_check_reads_standard_input_as_replay_does() -> None:
    good = run_cli("matrix", "check", "-", stdin=MATRIX.read_text())
    assert good.returncode == 0 and good.stdout.startswith("matrix 'airflow' (-): "), good.stderr
    bad = run_cli(
        "matrix", "check", "-", stdin=MATRIX.read_text().replace("to: webserver,", "to: websrv,", 1)
    )
    assert_usage_error(bad, "-:", "unknown component 'websrv'")
