"""``flow-auditor matrix``: ``check`` validates a matrix and prints its compiled form; ``learn`` is in
:mod:`auditor.commands.learn`.

DESIGN §6.5. Stage: front end. Output of ``check``: :func:`auditor.matrix.describe` on stdout, and the
warnings of :mod:`auditor.matrix.lint` on stderr (exit 0: the matrix is valid).

Error policy: a bad matrix raises :class:`~auditor.commands.common.UsageError` naming file, line and key
(exit 2).
"""

from __future__ import annotations

import argparse
import sys

from auditor.commands import learn
from auditor.commands.common import EXIT_OK, Parser, Subcommands, UsageError, read_matrix, warn
from auditor.matrix import MatrixError, describe, parse_matrix
from auditor.matrix.lint import warnings


def add_parser(sub: Subcommands) -> None:
    matrix = sub.add_parser("matrix", help="communication matrix tools")
    msub = matrix.add_subparsers(dest="matrix_command", required=True, parser_class=Parser)
    check = msub.add_parser("check", help="validate a matrix and print its compiled form")
    check.add_argument("file", metavar="FILE", help="the matrix file, or - for standard input")
    check.set_defaults(func=cmd_matrix_check)
    learn.add_parser(msub)


def cmd_matrix_check(args: argparse.Namespace) -> int:
    if args.file == "-":  # as replay and policies diff read their inputs
        try:
            matrix = parse_matrix(sys.stdin.read(), "-")
        except MatrixError as e:
            raise UsageError(str(e)) from None
    else:
        matrix = read_matrix(args.file)
    print(describe(matrix))
    warn(warnings(matrix))  # it loads, and means less than it says
    return EXIT_OK
