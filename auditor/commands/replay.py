"""``flow-auditor replay``: judge recorded flow files and print one report (DESIGN §6.2).

Stage: front end. Input: ``hubble observe -o jsonpb`` files (plain, gzip or ``-`` for stdin) and a matrix.
Uncompressed regular files are split among ``--jobs`` worker processes (:mod:`auditor.replay_parallel`),
anything else is read by one process (:mod:`auditor.replay_input`); either way the report is the same.
Output: the report in ``--format`` on stdout or in ``--output``, and the exit code of ``--fail-on``.

Error policy: a missing or directory input, a bad matrix, an unwritable ``--output`` and an input in which no
line is a Hubble event raise :class:`~auditor.commands.common.UsageError` (exit 2) before or instead of a
report; undecodable lines in an otherwise good input are counted as ``invalid`` and listed in the report.
Exit 1 means a connection in a ``--fail-on`` class, nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from auditor.classify import CLASSES, VIOLATIONS, Auditor
from auditor.commands.common import (
    EXIT_OK,
    EXIT_VIOLATION,
    Subcommands,
    UsageError,
    add_dedup_window_option,
    add_matrix_option,
    batch_collector,
    check_output,
    env_default,
    read_matrix,
    warn,
    write_output,
)
from auditor.matrix import Matrix
from auditor.matrix.lint import warnings as matrix_warnings
from auditor.options import choice, typed
from auditor.pipeline import Pipeline
from auditor.render import FORMATS, render
from auditor.replay_input import InputSummary, UnjudgeableCheck, feed_file, no_events_reason
from auditor.replay_parallel import DEFAULT_CHUNK_BYTES, Merger, ParallelReplay, default_jobs, splittable
from auditor.sinks.report import DEFAULT_MAX_EDGES, ReportSink
from auditor.sources.files import FlowFile, SourceError

_PROGRESS_MIN_BYTES = 8 * 1024 * 1024


def add_parser(sub: Subcommands) -> None:
    replay = sub.add_parser("replay", help="judge recorded flows (hubble observe -o jsonpb files, gzip, -)")
    replay.add_argument(
        "files", nargs="+", metavar="FILE", help="JSON-lines flow files, gzip or '-' for stdin"
    )
    add_matrix_option(replay, "communication matrix YAML [FLOW_AUDITOR_MATRIX]")
    replay.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        type=typed(choice(FORMATS)),
        default=env_default("format", "table"),
        help="report format (default: table) [FLOW_AUDITOR_FORMAT]",
    )
    replay.add_argument(
        "--fail-on",
        type=typed(parse_classes),
        default=env_default("fail_on", ",".join(VIOLATIONS)),
        help="comma-separated classes that make the exit code 1, or 'none' "
        "(default: expected_dropped,unexpected_allowed) [FLOW_AUDITOR_FAIL_ON]",
    )
    replay.add_argument(
        "--output",
        "-o",
        default=env_default("output"),
        help="write the report to a file instead of stdout [FLOW_AUDITOR_OUTPUT]",
    )
    add_dedup_window_option(replay)
    replay.add_argument(
        "--max-edges",
        type=typed(_at_least_one),
        default=env_default("max_edges", str(DEFAULT_MAX_EDGES)),
        metavar="N",
        help="edges kept in detail (default: 10000); beyond, new edges are aggregated per class into "
        "'other' and the report says so; totals stay exact [FLOW_AUDITOR_MAX_EDGES]",
    )
    replay.add_argument("--no-progress", action="store_true", help="never show the progress bar")
    replay.add_argument(
        "--jobs",
        "-j",
        type=typed(_at_least_one),
        default=env_default("jobs", str(default_jobs())),
        metavar="N",
        help="worker processes for uncompressed regular files (default: the cores available); stdin, "
        "gzip and pipes are read by one process; the report is the same for any N [FLOW_AUDITOR_JOBS]",
    )
    # Bytes per chunk a worker judges (tests set it small to place chunk boundaries everywhere).
    replay.add_argument(
        "--chunk-bytes", type=typed(_at_least_one), default=DEFAULT_CHUNK_BYTES, help=argparse.SUPPRESS
    )
    replay.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    fail_on: frozenset[str] = args.fail_on
    matrix = read_matrix(args.matrix)
    warn(matrix_warnings(matrix))
    _check_inputs(args.files)
    check_output(args.output)
    inputs = {
        "files": list(args.files),
        "matrix_file": args.matrix,
        "matrix_sha256": hashlib.sha256(Path(args.matrix).read_bytes()).hexdigest(),
    }
    sink = ReportSink(matrix, max_edges=args.max_edges, inputs=inputs)
    pipeline = Pipeline(Auditor(matrix, args.dedup_window), [sink])
    unjudgeable = UnjudgeableCheck(matrix)
    with batch_collector():
        _feed_inputs(args, matrix, pipeline, sink, unjudgeable)
        pipeline.finish()
        report = sink.report()
    problem = no_scope_reason(report["flows"], matrix, args.matrix)
    if problem:
        raise UsageError(problem)
    color = args.output is None and sys.stdout.isatty()
    # The terminal's width ($COLUMNS, else the terminal itself); 160 columns when there is none.
    width = shutil.get_terminal_size((160, 24)).columns
    text = render(report, args.format, color=color, width=max(width, 40))
    if args.output:
        write_output(args.output, text)
    else:
        sys.stdout.write(text)
    warn(unjudgeable.warning())
    return exit_code(report["classes"], fail_on)


def _feed_inputs(
    args: argparse.Namespace,
    matrix: Matrix,
    pipeline: Pipeline,
    sink: ReportSink,
    unjudgeable: UnjudgeableCheck,
) -> None:
    """Judge every input file in turn: split among ``--jobs`` workers, or read by this process."""
    show_progress = not args.no_progress and sys.stderr.isatty()
    parallel: ParallelReplay | None = None
    merger = Merger(pipeline, sink, unjudgeable)  # one per run, whatever the inputs
    try:
        for name in args.files:
            if args.jobs > 1 and splittable(name, args.chunk_bytes):
                if parallel is None:
                    parallel = ParallelReplay(matrix, args.dedup_window, args.max_edges, args.jobs, merger)
                if show_progress and Path(name).stat().st_size >= _PROGRESS_MIN_BYTES:
                    summary = _parallel_with_progress(parallel, name, args.chunk_bytes)
                else:
                    summary = parallel.feed(name, args.chunk_bytes)
            else:
                with FlowFile(name) as f:
                    blocks: Iterator[list[bytes]] = f.blocks()
                    if show_progress and f.size >= _PROGRESS_MIN_BYTES:
                        blocks = _with_progress(f, blocks)
                    summary = feed_file(pipeline, name, blocks, unjudgeable)
            problem = no_events_reason(summary)
            if problem:
                raise UsageError(problem)
    except SourceError as e:
        raise UsageError(str(e)) from None
    finally:
        if parallel is not None:
            parallel.close()


def no_scope_reason(flows: dict[str, int], matrix: Matrix, matrix_file: str) -> str | None:
    """The input error for a run in which flows arrived but none was in the matrix's scope (a typo in
    ``scope.namespaces``, or a capture of other namespaces): it would otherwise pass as no violation."""
    if not flows["out_of_scope"] or any(flows[k] for k in ("judged", "reply", "provisional", "ignored")):
        return None
    scope = ", ".join(sorted(matrix.scope_namespaces or ()))
    return (
        f"none of the {flows['out_of_scope']} flows is in the matrix's scope (namespaces: {scope}): "
        f"check scope.namespaces in {matrix_file}, or record the namespaces it names"
    )


def parse_classes(text: str) -> frozenset[str]:
    """``--fail-on`` value → set of classes (any case); ``none`` is the empty set. An empty value is an
    error, not ``none``: an unset variable in ``--fail-on "$FAIL_ON"`` must not switch the check off."""
    classes = {c.strip().lower() for c in text.split(",") if c.strip()}
    if not classes:
        raise argparse.ArgumentTypeError("empty: give classes (comma-separated) or none")
    if "none" in classes:
        if len(classes) > 1:
            raise argparse.ArgumentTypeError("none cannot be combined with classes")
        return frozenset()
    unknown = sorted(classes - set(CLASSES))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown class {', '.join(unknown)} (expected {', '.join(CLASSES)} or none)"
        )
    return frozenset(classes)


def _at_least_one(text: str) -> int:
    """A whole number of at least 1 (``--max-edges``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {str(text)!r}: expected a whole number ≥ 1")
    return value


def exit_code(classes: dict[str, int], fail_on: frozenset[str]) -> int:
    """1 when any ``--fail-on`` class has a connection, else 0."""
    return EXIT_VIOLATION if any(classes[c] for c in fail_on) else EXIT_OK


def _check_inputs(names: Sequence[str]) -> None:
    """Every input exists and is not a directory (pipes and process substitution are fine)."""
    for name in names:
        if name == "-":
            continue
        path = Path(name)
        if path.is_dir():
            raise UsageError(f"{name}: is a directory (give the flow files in it)")
        if not path.exists():
            raise UsageError(f"{name}: no such file")


def _with_progress(f: FlowFile, blocks: Iterator[list[bytes]]) -> Iterator[list[bytes]]:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(Path(f.name).name, total=f.size)
        for block in blocks:
            progress.update(task, completed=f.position)
            yield block


def _parallel_with_progress(parallel: ParallelReplay, name: str, chunk_bytes: int) -> InputSummary:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(Path(name).name, total=Path(name).stat().st_size)
        return parallel.feed(name, chunk_bytes, lambda done: progress.update(task, completed=done))
