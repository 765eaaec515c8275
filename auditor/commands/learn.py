"""``flow-auditor matrix learn``: a proposed matrix from recorded flows or a live stream (DESIGN §6.5).

Stage: front end of :mod:`auditor.learn`. Input: flow files or ``--server``, and optionally an existing
matrix. Output: the learned matrix (or, with ``--matrix``, only what the existing one lacks) as YAML on
stdout or in ``--output``; rules come only from delivered connections and AUDIT verdicts.

Error policy: files and ``--server`` together or neither, counts below 1, non-positive durations, a missing
input, a bad existing matrix and ``--output`` naming the ``--matrix`` file raise
:class:`~auditor.commands.common.UsageError` (exit 2); learning nothing is not an error (exit 0, with a note
on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auditor.classify import DEFAULT_DEDUP_WINDOW
from auditor.commands.common import EXIT_OK, Subcommands, UsageError, hubble_config, parse_since, read_matrix
from auditor.options import parse_duration
from auditor.sources.files import SourceError


def add_parser(msub: Subcommands) -> None:
    learn = msub.add_parser(
        "learn",
        help="a proposed matrix from recorded flows or a live stream (rules only from delivered "
        "connections and AUDIT verdicts; never replies, never drops)",
    )
    learn.add_argument(
        "files", nargs="*", metavar="FILE", help="JSON-lines flow files, gzip or '-' for stdin"
    )
    learn.add_argument("--output", "-o", help="write the matrix to a file instead of stdout")
    learn.add_argument(
        "--matrix",
        "-m",
        help="an existing matrix: print only what it lacks, as a patch (the file is never written)",
    )
    learn.add_argument(
        "--namespace",
        "-n",
        action="append",
        metavar="NS",
        help="learn only this namespace's traffic (repeatable)",
    )
    learn.add_argument(
        "--min-connections",
        type=int,
        default=1,
        metavar="N",
        help="leave out edges seen fewer times (listed)",
    )
    learn.add_argument(
        "--port-ranges",
        type=int,
        nargs="?",
        const=1,
        default=None,
        metavar="GAP",
        help="merge the ports of a rule into ranges where they are at most GAP apart (default GAP: 1)",
    )
    learn.add_argument("--name", default="learned", help="metadata.name of the matrix (default: learned)")
    learn.add_argument(
        "--dedup-window",
        type=parse_duration,
        default=parse_duration(str(DEFAULT_DEDUP_WINDOW)),
        help="events of one 5-tuple within this window are one connection (default: 30s)",
    )
    learn.add_argument("--server", help="follow this Hubble Relay or socket live instead of reading files")
    learn.add_argument(
        "--duration",
        type=parse_duration,
        default=parse_duration("15m"),
        help="how long to follow (default: 15m)",
    )
    learn.add_argument("--tls", action="store_true", help="use TLS")
    learn.add_argument("--tls-ca-cert-files", nargs="*", default=[], metavar="FILE", help="CA certificates")
    learn.add_argument("--tls-client-cert-file", metavar="FILE", help="client certificate for mTLS")
    learn.add_argument("--tls-client-key-file", metavar="FILE", help="client key for mTLS")
    learn.add_argument("--tls-server-name", metavar="NAME", help="server name to verify")
    learn.add_argument("--timeout", type=parse_duration, default=5.0, help="connection timeout (default: 5s)")
    learn.add_argument("--since", type=parse_since, help="also learn from Hubble's buffer this far back")
    learn.set_defaults(func=cmd_matrix_learn)


def cmd_matrix_learn(args: argparse.Namespace) -> int:
    from auditor.learn.build import Options
    from auditor.learn.run import learn_files, learn_live, text_of

    if bool(args.files) == bool(args.server):
        raise UsageError("matrix learn: give flow files or --server, not both and not neither")
    if args.min_connections < 1 or (args.port_ranges is not None and args.port_ranges < 1):
        raise UsageError("--min-connections and --port-ranges must be at least 1")
    if args.dedup_window <= 0 or (args.server and args.duration <= 0):
        raise UsageError("--dedup-window and --duration must be positive")
    existing = read_matrix(args.matrix) if args.matrix else None
    if args.output and args.matrix and Path(args.output).resolve() == Path(args.matrix).resolve():
        raise UsageError("--output must not be the --matrix file: learn never rewrites your matrix")
    options = Options(
        name=args.name,
        namespaces=frozenset(args.namespace) if args.namespace else None,
        min_connections=args.min_connections,
        port_gap=args.port_ranges,
    )
    if args.server:
        learned = learn_live(
            hubble_config(args), args.duration, options, existing, args.dedup_window, progress=sys.stderr
        )
    else:
        for name in args.files:
            if name != "-" and not Path(name).is_file():
                raise UsageError(f"{name}: no such file")
        try:
            learned = learn_files(args.files, options, existing, args.dedup_window)
        except SourceError as e:
            raise UsageError(str(e)) from None
    text = text_of(learned)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if not learned.rules:
        print("flow-auditor: matrix learn: no rule learned (see the comments)", file=sys.stderr)
    return EXIT_OK
