"""``flow-auditor policies``: the NetworkPolicies that enforce a matrix, and deployed policies vs. a matrix.

DESIGN §6.5. ``generate`` writes policies of either flavor; ``diff`` compares what deployed policies allow
with what the matrix intends (statically).

Stage: front end of offline tooling (:mod:`auditor.kube`); reads files, never a flow.

Error policy: a bad matrix, unreadable or invalid manifests (named by file and document), a matrix that
cannot be expressed in the flavor and an unwritable ``--output`` raise
:class:`~auditor.commands.common.UsageError` (exit 2). ``diff`` exits 1 when the policies and the matrix
differ, 0 when they agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auditor.commands.common import (
    EXIT_OK,
    EXIT_VIOLATION,
    Parser,
    Subcommands,
    UsageError,
    add_matrix_option,
    check_output,
    read_matrix,
    write_output,
)


def add_parser(sub: Subcommands) -> None:
    policies = sub.add_parser(
        "policies", help="NetworkPolicies from a matrix, and deployed policies vs. a matrix"
    )
    psub = policies.add_subparsers(dest="policies_command", required=True, parser_class=Parser)
    gen = psub.add_parser(
        "generate", help="emit the NetworkPolicies that enforce the matrix (YAML on stdout)"
    )
    add_matrix_option(gen)
    gen.add_argument(
        "--flavor",
        choices=("kubernetes", "cilium"),
        default="kubernetes",
        help="networking.k8s.io/v1 NetworkPolicy (default) or cilium.io/v2 CiliumNetworkPolicy",
    )
    gen.add_argument(
        "--cluster-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="pod/service CIDRs to exclude from world ipBlocks (repeatable)",
    )
    gen.add_argument("--output", "-o", help="write to a file instead of stdout")
    gen.set_defaults(func=cmd_policies_generate)
    pdiff = psub.add_parser(
        "diff",
        help="what deployed NetworkPolicies and Cilium policies allow vs. what the matrix intends (static)",
    )
    pdiff.add_argument(
        "files",
        nargs="+",
        metavar="PATH",
        help="policy manifests: YAML/JSON files (multi-document, kubectl -o yaml lists), directories "
        "(searched for *.yaml, *.yml, *.json; other kinds skipped and counted), or - for stdin",
    )
    add_matrix_option(pdiff)
    pdiff.add_argument(
        "--format",
        "-f",
        choices=("table", "json", "markdown"),
        default="table",
        help="report format (default: table); exit 0 no difference, 1 differences, 2 invalid input",
    )
    pdiff.add_argument("--output", "-o", help="write the report to a file instead of stdout")
    pdiff.add_argument(
        "--strict", action="store_true", help="reject unknown fields in policies (default: warn and ignore)"
    )
    pdiff.set_defaults(func=cmd_policies_diff)


def cmd_policies_generate(args: argparse.Namespace) -> int:
    from auditor.kube.policies import build, to_yaml

    matrix = read_matrix(args.matrix)
    check_output(args.output)
    try:
        result = build(matrix, args.flavor, cluster_cidrs=args.cluster_cidr)
    except ValueError as e:
        raise UsageError(str(e)) from None
    text = to_yaml(result.objects)
    if args.output:
        write_output(args.output, text)
    else:
        sys.stdout.write(text)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK


def cmd_policies_diff(args: argparse.Namespace) -> int:
    from auditor.kube.checks import PolicyError
    from auditor.kube.diff import diff
    from auditor.kube.diff_render import inputs_line, render_diff
    from auditor.kube.manifests import ManifestError, read_manifests

    matrix = read_matrix(args.matrix)
    try:
        manifests, files = read_manifests(args.files)
    except ManifestError as e:
        raise UsageError(str(e)) from None
    try:
        result = diff([m.obj for m in manifests], matrix, strict=args.strict)
    except PolicyError as e:
        origin = next((m.origin for m in manifests if m.ref == e.policy), None)
        raise UsageError(f"{origin}: {e}" if origin else str(e)) from None
    text = render_diff(result, matrix.name, args.format, files=files)
    if args.format == "table":
        print(inputs_line(result, matrix.name, files), file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_VIOLATION if result.edges else EXIT_OK
