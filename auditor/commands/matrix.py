"""``flow-auditor matrix``: ``check`` validates a matrix and prints its compiled form; ``learn`` is in
:mod:`auditor.commands.learn`.

DESIGN §6.5. Stage: front end. Output of ``check``: :func:`auditor.matrix.describe` on stdout.

Error policy: a bad matrix raises :class:`~auditor.commands.common.UsageError` naming file, line and key
(exit 2).
"""

from __future__ import annotations

import argparse

from auditor.commands import learn
from auditor.commands.common import EXIT_OK, Parser, Subcommands, read_matrix
from auditor.matrix import describe


def add_parser(sub: Subcommands) -> None:
    matrix = sub.add_parser("matrix", help="communication matrix tools")
    msub = matrix.add_subparsers(dest="matrix_command", required=True, parser_class=Parser)
    check = msub.add_parser("check", help="validate a matrix and print its compiled form")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_matrix_check)
    learn.add_parser(msub)


def cmd_matrix_check(args: argparse.Namespace) -> int:
    print(describe(read_matrix(args.file)))
    return EXIT_OK
