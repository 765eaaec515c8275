"""The ``flow-auditor`` command line (DESIGN §6): one parser wiring the commands of :mod:`auditor.commands`.

Stage: front end. ``replay`` reads recorded flow files through the one pipeline and prints a report;
``run`` is the daemon (live Hubble stream); ``demo`` runs the daemon against an embedded Hubble server
playing the Airflow scenario; ``matrix check`` validates and prints a compiled matrix; ``policies generate``
emits the NetworkPolicies that enforce a matrix and ``policies diff`` compares deployed ones with it.

Exit codes — 1 means violations found, nothing else: 0 no violation; 1 at least one connection in a
``--fail-on`` class (``policies diff``: a difference); 2 usage or input error, one line on stderr naming the
flag, variable or file (missing file or directory as input, bad matrix with file:line:key, unknown class, bad
duration, unwritable ``--output``, an input in which no line is a Hubble event); 3 an internal error (a bug:
the traceback follows). Undecodable lines in an otherwise good input are not input errors: they are counted
as ``invalid`` and listed in the report.

Every option has an environment variable twin, ``FLOW_AUDITOR_<OPTION>`` (``--matrix`` →
``FLOW_AUDITOR_MATRIX``); the command line wins, and a bad value is reported naming the variable
(``auditor.options``). Durations take Go's syntax (``1h30m``, ``90s``, ``500ms``) everywhere.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from auditor import __version__, native
from auditor.commands import demo, matrix, policies, replay, run
from auditor.commands.common import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, Parser, UsageError
from auditor.options import env_bool

# The commands in the order `flow-auditor --help` lists them.
COMMANDS = (replay, run, demo, policies, matrix)

# store_true options with environment twins
_BOOL_OPTIONS = (
    "tls",
    "server_side_filter",
    "no_server_side_filter",
    "no_field_mask",
    "kube_events",
    "node_local",
)


class _Version(argparse.Action):
    """``--version``: the version and whether the judging core is compiled (worked out only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and the build of the core")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(version_line())
        parser.exit()


def version_line() -> str:
    """``flow-auditor 0.1.0 (native: 7 modules)`` or ``flow-auditor 0.1.0 (pure Python)``."""
    return f"flow-auditor {__version__} ({native.describe()})"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: each command module adds its subparser, with its handler as ``func``."""
    parser = Parser(prog="flow-auditor", description="Judge Hubble flows against a communication matrix.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names; the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for dest in _BOOL_OPTIONS:
            if hasattr(args, dest):
                setattr(args, dest, env_bool(getattr(args, dest)))
    except argparse.ArgumentTypeError as e:
        print(f"flow-auditor: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except UsageError as e:
        print(f"flow-auditor: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # a bug: never let it pass for "violations found" (exit 1)
        traceback.print_exc()
        print(f"flow-auditor: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INTERNAL
