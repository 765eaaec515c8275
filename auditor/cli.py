"""The ``flow-auditor`` command line (DESIGN §6).

Stage: front end. ``replay`` reads recorded flow files through the one pipeline and prints a report;
``matrix check`` validates and prints a compiled matrix.

Exit codes: 0 no violation; 1 at least one connection in a ``--fail-on`` class; 2 usage or input error
(a one-line message on stderr that names the problem: missing file, bad matrix with file:line:key, unknown
class). Undecodable lines are not input errors: they are counted as ``invalid`` and listed in the report.

Every option has an environment variable twin, ``FLOW_AUDITOR_<OPTION>`` (``--matrix`` →
``FLOW_AUDITOR_MATRIX``); the command line wins.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from auditor import __version__
from auditor.classify import CLASSES, DEFAULT_DEDUP_WINDOW, VIOLATIONS, Auditor
from auditor.matrix import Matrix, MatrixError, describe, load_matrix
from auditor.pipeline import Pipeline
from auditor.render import FORMATS, render
from auditor.sinks.report import ReportSink
from auditor.sources.files import FlowFile, SourceError

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE = 0, 1, 2
_PROGRESS_MIN_BYTES = 8 * 1024 * 1024
_PROGRESS_EVERY = 8192


class UsageError(Exception):
    """A problem with the command line or its inputs (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"flow-auditor: error: {message}\n")


def _env(option: str, default: Any = None) -> Any:
    return os.environ.get("FLOW_AUDITOR_" + option.upper().replace("-", "_"), default)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flow-auditor", description="Judge Hubble flows against a communication matrix.")
    parser.add_argument("--version", action="version", version=f"flow-auditor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    replay = sub.add_parser("replay", help="judge recorded flows (hubble observe -o jsonpb files, gzip, -)")
    replay.add_argument(
        "files", nargs="+", metavar="FILE", help="JSON-lines flow files, gzip or '-' for stdin"
    )
    replay.add_argument(
        "--matrix",
        "-m",
        default=_env("matrix"),
        required=_env("matrix") is None,
        help="communication matrix YAML [FLOW_AUDITOR_MATRIX]",
    )
    replay.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        default=_env("format", "table"),
        help="report format (default: table) [FLOW_AUDITOR_FORMAT]",
    )
    replay.add_argument(
        "--fail-on",
        default=_env("fail_on", ",".join(VIOLATIONS)),
        help="comma-separated classes that make the exit code 1, or 'none' "
        "(default: expected_dropped,unexpected_allowed) [FLOW_AUDITOR_FAIL_ON]",
    )
    replay.add_argument(
        "--output", "-o", default=_env("output"), help="write the report to a file instead of stdout"
    )
    replay.add_argument(
        "--dedup-window",
        type=float,
        default=float(_env("dedup_window", DEFAULT_DEDUP_WINDOW)),
        help="seconds within which events of one 5-tuple are one connection (default: 30)",
    )
    replay.add_argument("--no-progress", action="store_true", help="never show the progress bar")
    replay.set_defaults(func=cmd_replay)

    matrix = sub.add_parser("matrix", help="communication matrix tools")
    msub = matrix.add_subparsers(dest="matrix_command", required=True, parser_class=_Parser)
    check = msub.add_parser("check", help="validate a matrix and print its compiled form")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_matrix_check)
    return parser


def parse_classes(text: str) -> frozenset[str]:
    """``--fail-on`` value → set of classes; ``none`` is the empty set."""
    if text.strip().lower() in ("none", ""):
        return frozenset()
    classes = {c.strip() for c in text.split(",") if c.strip()}
    unknown = sorted(classes - set(CLASSES))
    if unknown:
        raise UsageError(
            f"--fail-on: unknown class {', '.join(unknown)} (expected {', '.join(CLASSES)} or none)"
        )
    return frozenset(classes)


def _load(path: str) -> Matrix:
    try:
        return load_matrix(path)
    except MatrixError as e:
        raise UsageError(str(e)) from None


def cmd_matrix_check(args: argparse.Namespace) -> int:
    print(describe(_load(args.file)))
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    fail_on = parse_classes(args.fail_on)
    if args.dedup_window <= 0:
        raise UsageError("--dedup-window must be a positive number of seconds")
    matrix = _load(args.matrix)
    for name in args.files:
        if name != "-" and not Path(name).is_file():
            raise UsageError(f"{name}: no such file")
    sink = ReportSink(matrix)
    pipeline = Pipeline(Auditor(matrix, args.dedup_window), [sink])
    show_progress = not args.no_progress and sys.stderr.isatty()
    try:
        for name in args.files:
            with FlowFile(name) as f:
                lines: Iterator[tuple[int, bytes]] = iter(f)
                if show_progress and f.size >= _PROGRESS_MIN_BYTES:
                    lines = _with_progress(f, lines)
                pipeline.feed_lines(name, lines)
    except SourceError as e:
        raise UsageError(str(e)) from None
    report = sink.report()
    color = args.output is None and sys.stdout.isatty()
    text = render(report, args.format, color=color)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_VIOLATION if any(report["classes"][c] for c in fail_on) else EXIT_OK


def _with_progress(f: FlowFile, lines: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(Path(f.name).name, total=f.size)
        for i, item in enumerate(lines):
            if i % _PROGRESS_EVERY == 0:
                progress.update(task, completed=f.position)
            yield item


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as e:
        print(f"flow-auditor: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
