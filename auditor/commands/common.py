"""What the ``flow-auditor`` commands share: exit codes, the parser, matrix and file checks (DESIGN §6.4).

Stage: front end. The command modules of :mod:`auditor.commands` build their subparsers and handlers from
these; option converters (durations, environment twins, choices) live in :mod:`auditor.options`.

Error policy: a problem with the command line or its inputs raises :class:`UsageError` with a one-line
message naming the flag, the variable or the file (``auditor.cli.main`` prints it and exits 2); argument
converters raise :class:`argparse.ArgumentTypeError`, which the parser reports the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

from auditor.classify import DEFAULT_DEDUP_WINDOW
from auditor.matrix import Matrix, MatrixError, load_matrix
from auditor.options import duration_seconds, env, origin, parse_duration, typed

if TYPE_CHECKING:
    from auditor.sources.hubble import HubbleConfig

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
BATCH_YOUNG_COLLECTION = 10_000  # allocations between two collections of the youngest generation (700)


class UsageError(Exception):
    """A problem with the command line or its inputs (exit 2)."""


class Parser(argparse.ArgumentParser):
    """Every command's parser: a usage error is one line on stderr and exit 2 (not argparse's usage text)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"flow-auditor: error: {message} (see {self.prog} --help)\n")


Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"
"""What a command module's ``add_parser`` adds its subparser to."""


def env_default(option: str, default: Any = None) -> Any:
    """An option's default: its environment twin ``FLOW_AUDITOR_<OPTION>`` when set, else ``default``."""
    return env(option, default)


def env_list(option: str) -> list[str]:
    """A list option's environment twin, comma- or space-separated."""
    return [v for v in str(env_default(option, "")).replace(",", " ").split() if v]


DURATION = typed(parse_duration)


def add_dedup_window_option(p: argparse.ArgumentParser) -> None:
    """``--dedup-window`` of the commands that judge (``replay``, ``run``, ``demo``)."""
    p.add_argument(
        "--dedup-window",
        type=DURATION,
        default=env_default("dedup_window", f"{DEFAULT_DEDUP_WINDOW:g}s"),
        help="events of one 5-tuple within this window are one connection (default: 30s) "
        "[FLOW_AUDITOR_DEDUP_WINDOW]",
    )


def add_matrix_option(p: argparse.ArgumentParser, text: str | None = None) -> None:
    """``--matrix``/``-m``, required unless its twin ``FLOW_AUDITOR_MATRIX`` is set; ``text`` is its help."""
    p.add_argument(
        "--matrix", "-m", default=env_default("matrix"), required=env_default("matrix") is None, help=text
    )


def parse_since(text: str) -> float:
    """``--since``: a duration back from now (Go syntax, 0 = now), or an RFC 3339 time; epoch seconds."""
    try:
        return time.time() - duration_seconds(text)
    except argparse.ArgumentTypeError:
        pass
    from auditor.decode import DecodeError, parse_time

    try:
        return parse_time(text)
    except DecodeError:
        raise argparse.ArgumentTypeError(
            f"invalid value {str(text)!r} (a duration like 10m or 1h30m, or an RFC 3339 time)"
        ) from None


def read_matrix(path: str) -> Matrix:
    """The matrix a command was given; a bad one is a usage error naming file, line and key."""
    try:
        return load_matrix(path)
    except MatrixError as e:
        raise UsageError(str(e)) from None


def warn(lines: Iterable[str]) -> None:
    """Warnings on stderr, one ``flow-auditor: warning:`` line each (they change no exit code)."""
    for line in lines:
        print(f"flow-auditor: warning: {line}", file=sys.stderr)


def check_output(path: str | None) -> None:
    """Refuse an ``--output`` that cannot be written before reading any input."""
    if path is None:
        return
    where = f"{origin('--output', path)} {path}"
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{where}: is a directory")
    if not target.parent.is_dir():
        raise UsageError(f"{where}: no such directory {target.parent}")
    if not os.access(target if target.exists() else target.parent, os.W_OK):
        raise UsageError(f"{where}: not writable")


def write_output(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{origin('--output', path)} {path}: cannot write: {e.strerror or e}") from None


@contextlib.contextmanager
def batch_collector() -> Iterator[None]:
    """The cyclic garbage collector for a batch run over files (``replay``): what was set up before (modules,
    the matrix and its compiled matchers) is frozen out of every collection, and the youngest generation is
    collected every :data:`BATCH_YOUNG_COLLECTION` allocations instead of 700.

    Replay makes no reference cycles (a test replays files with the collector off and finds no unreachable
    object), so a collection only walks the objects a block holds between its passes; it still runs, in
    case a cycle appears. Worker processes forked inside inherit it. Restored on exit. Measured: replay
    1-5 % faster (four alternating runs of each, 200,000 events)."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(BATCH_YOUNG_COLLECTION, before[1], before[2])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def hubble_config(args: argparse.Namespace) -> HubbleConfig:
    from auditor.sources.hubble import HubbleConfig

    if (args.tls_client_cert_file is None) != (args.tls_client_key_file is None):
        raise UsageError("--tls-client-cert-file and --tls-client-key-file go together")
    for f in [*args.tls_ca_cert_files, args.tls_client_cert_file, args.tls_client_key_file]:
        if f is not None and not Path(f).is_file():
            raise UsageError(f"{f}: no such file")
    uses_tls = args.tls or bool(args.tls_ca_cert_files or args.tls_client_cert_file)
    return HubbleConfig(
        server=args.server,
        tls=uses_tls,
        tls_ca_cert_files=tuple(args.tls_ca_cert_files),
        tls_client_cert_file=args.tls_client_cert_file,
        tls_client_key_file=args.tls_client_key_file,
        tls_server_name=args.tls_server_name,
        timeout=args.timeout,
        since=args.since,
        field_mask=not getattr(args, "no_field_mask", False),  # `matrix learn` has no such flag
        receiver=getattr(args, "receiver", "thread"),  # nor `--receiver`
    )
