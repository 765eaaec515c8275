"""The ``flow-auditor`` command line (DESIGN §6).

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
import hashlib
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from auditor import __version__
from auditor.classify import CLASSES, DEFAULT_DEDUP_WINDOW, VIOLATIONS, Auditor
from auditor.matrix import Matrix, MatrixError, describe, load_matrix
from auditor.options import (
    choice,
    duration_seconds,
    env,
    env_bool,
    origin,
    parse_duration,
    positive_number,
    typed,
)
from auditor.pipeline import Pipeline
from auditor.render import FORMATS, render
from auditor.replay_input import InputSummary, UnjudgeableCheck, feed_file, no_events_reason
from auditor.replay_parallel import DEFAULT_CHUNK_BYTES, Merger, ParallelReplay, default_jobs, splittable
from auditor.sinks.report import DEFAULT_MAX_EDGES, ReportSink
from auditor.sources.files import FlowFile, SourceError

if TYPE_CHECKING:
    from auditor.daemon import DaemonConfig
    from auditor.sources.hubble import HubbleConfig

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
# The Airflow example matrix, shipped in the package for `demo` (a test keeps it equal to examples/airflow/).
DEMO_MATRIX = Path(__file__).parent / "demo" / "airflow-matrix.yaml"
_PROGRESS_MIN_BYTES = 8 * 1024 * 1024
_PROGRESS_EVERY = 8192


class UsageError(Exception):
    """A problem with the command line or its inputs (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"flow-auditor: error: {message} (see {self.prog} --help)\n")


def _env(option: str, default: Any = None) -> Any:
    return env(option, default)


_DURATION = typed(parse_duration)
# store_true options with environment twins
_BOOL_OPTIONS = (
    "tls",
    "server_side_filter",
    "no_server_side_filter",
    "no_field_mask",
    "kube_events",
    "node_local",
)


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
        type=typed(choice(FORMATS)),
        default=_env("format", "table"),
        help="report format (default: table) [FLOW_AUDITOR_FORMAT]",
    )
    replay.add_argument(
        "--fail-on",
        type=typed(parse_classes),
        default=_env("fail_on", ",".join(VIOLATIONS)),
        help="comma-separated classes that make the exit code 1, or 'none' "
        "(default: expected_dropped,unexpected_allowed) [FLOW_AUDITOR_FAIL_ON]",
    )
    replay.add_argument(
        "--output",
        "-o",
        default=_env("output"),
        help="write the report to a file instead of stdout [FLOW_AUDITOR_OUTPUT]",
    )
    replay.add_argument(
        "--dedup-window",
        type=_DURATION,
        default=_env("dedup_window", f"{DEFAULT_DEDUP_WINDOW:g}s"),
        help="events of one 5-tuple within this window are one connection (default: 30s) "
        "[FLOW_AUDITOR_DEDUP_WINDOW]",
    )
    replay.add_argument(
        "--max-edges",
        type=typed(_at_least_one),
        default=_env("max_edges", str(DEFAULT_MAX_EDGES)),
        metavar="N",
        help="edges kept in detail (default: 10000); beyond, new edges are aggregated per class into "
        "'other' and the report says so; totals stay exact [FLOW_AUDITOR_MAX_EDGES]",
    )
    replay.add_argument("--no-progress", action="store_true", help="never show the progress bar")
    replay.add_argument(
        "--jobs",
        "-j",
        type=typed(_at_least_one),
        default=_env("jobs", str(default_jobs())),
        metavar="N",
        help="worker processes for uncompressed regular files (default: the cores available); stdin, "
        "gzip and pipes are read by one process; the report is the same for any N [FLOW_AUDITOR_JOBS]",
    )
    # Bytes per chunk a worker judges (tests set it small to place chunk boundaries everywhere).
    replay.add_argument(
        "--chunk-bytes", type=typed(_at_least_one), default=DEFAULT_CHUNK_BYTES, help=argparse.SUPPRESS
    )
    replay.set_defaults(func=cmd_replay)

    run = sub.add_parser(
        "run", help="the daemon: follow Hubble live, serve metrics, health and alerts' input"
    )
    _daemon_options(run)
    run.add_argument(
        "--server",
        default=_env("server", "localhost:4245"),
        help="Hubble Relay host:port or unix:///var/run/cilium/hubble.sock (default: localhost:4245) "
        "[FLOW_AUDITOR_SERVER]",
    )
    run.add_argument(
        "--matrix",
        "-m",
        default=_env("matrix"),
        required=_env("matrix") is None,
        help="communication matrix YAML, hot-reloaded when it changes [FLOW_AUDITOR_MATRIX]",
    )
    run.add_argument("--tls", action="store_true", default=_env("tls"), help="use TLS [FLOW_AUDITOR_TLS]")
    run.add_argument(
        "--tls-ca-cert-files",
        nargs="*",
        default=_env_list("tls_ca_cert_files"),
        metavar="FILE",
        help="CA certificates to trust [FLOW_AUDITOR_TLS_CA_CERT_FILES, comma-separated]",
    )
    run.add_argument(
        "--tls-client-cert-file",
        default=_env("tls_client_cert_file"),
        metavar="FILE",
        help="client certificate for mTLS [FLOW_AUDITOR_TLS_CLIENT_CERT_FILE]",
    )
    run.add_argument(
        "--tls-client-key-file",
        default=_env("tls_client_key_file"),
        metavar="FILE",
        help="client key for mTLS [FLOW_AUDITOR_TLS_CLIENT_KEY_FILE]",
    )
    run.add_argument(
        "--tls-server-name",
        default=_env("tls_server_name"),
        metavar="NAME",
        help="server name to verify, e.g. instance.hubble-relay.cilium.io [FLOW_AUDITOR_TLS_SERVER_NAME]",
    )
    run.add_argument(
        "--timeout",
        type=_DURATION,
        default=_env("timeout", "5s"),
        help="connection timeout (default: 5s) [FLOW_AUDITOR_TIMEOUT]",
    )
    run.add_argument(
        "--since",
        type=typed(parse_since),
        default=_env("since"),
        help="on start, also judge flows this far back from Hubble's buffer: a duration (10m) or "
        "RFC 3339 time [FLOW_AUDITOR_SINCE]",
    )
    _stream_options(run)
    run.add_argument(
        "--node-local",
        action="store_true",
        default=_env("node_local", False),
        help="this auditor sees one node only (a DaemonSet reading the node's Hubble socket): delivery "
        "is counted on the destination's side only, never from replies, so that the sum over nodes "
        "counts each connection once [FLOW_AUDITOR_NODE_LOCAL]",
    )
    run.add_argument(
        "--kube-events",
        action="store_true",
        default=_env("kube_events"),
        help="post Kubernetes Events for violation edges [FLOW_AUDITOR_KUBE_EVENTS]",
    )
    run.add_argument(
        "--kube-events-interval",
        type=_DURATION,
        default=_env("kube_events_interval", "5m"),
        help="at most one Event update per edge per interval (default: 5m) "
        "[FLOW_AUDITOR_KUBE_EVENTS_INTERVAL]",
    )
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo", help="the daemon against an embedded Hubble server playing the Airflow scenario"
    )
    _daemon_options(demo, log_format="console")
    _stream_options(demo)
    demo.add_argument(
        "--speed",
        type=typed(positive_number),
        default=_env("speed", "10"),
        help="scenario time per wall-clock second (default: 10: a violation every few seconds)",
    )
    demo.set_defaults(func=cmd_demo)

    policies = sub.add_parser(
        "policies", help="NetworkPolicies from a matrix, and deployed policies vs. a matrix"
    )
    psub = policies.add_subparsers(dest="policies_command", required=True, parser_class=_Parser)
    gen = psub.add_parser(
        "generate", help="emit the NetworkPolicies that enforce the matrix (YAML on stdout)"
    )
    gen.add_argument("--matrix", "-m", default=_env("matrix"), required=_env("matrix") is None)
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
    pdiff.add_argument("--matrix", "-m", default=_env("matrix"), required=_env("matrix") is None)
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

    matrix = sub.add_parser("matrix", help="communication matrix tools")
    msub = matrix.add_subparsers(dest="matrix_command", required=True, parser_class=_Parser)
    check = msub.add_parser("check", help="validate a matrix and print its compiled form")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_matrix_check)
    _matrix_learn_parser(msub)
    return parser


# -- matrix learn (auditor/learn/) ----------------------------------------------------------------------


def _matrix_learn_parser(msub: Any) -> None:
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
    existing = _load(args.matrix) if args.matrix else None
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
            _hubble_config(args), args.duration, options, existing, args.dedup_window, progress=sys.stderr
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


# -- end of matrix learn --------------------------------------------------------------------------------


def _stream_options(p: argparse.ArgumentParser) -> None:
    """What the daemon asks Hubble for: the scope filter and the field mask (``run`` and ``demo``)."""
    p.add_argument(
        "--no-server-side-filter",
        action="store_true",
        default=_env("no_server_side_filter"),
        help="ask Hubble for every flow, not only for flows from/to the matrix's scope namespaces (the "
        "default when the matrix has a scope) [FLOW_AUDITOR_NO_SERVER_SIDE_FILTER]",
    )
    p.add_argument(
        "--server-side-filter",
        action="store_true",
        default=_env("server_side_filter"),
        help="on by default now; accepted so that existing command lines keep working "
        "[FLOW_AUDITOR_SERVER_SIDE_FILTER]",
    )
    p.add_argument(
        "--no-field-mask",
        action="store_true",
        default=_env("no_field_mask"),
        help="ask Hubble for whole flows instead of only the fields judging reads "
        "[FLOW_AUDITOR_NO_FIELD_MASK]",
    )


def _daemon_options(p: argparse.ArgumentParser, log_format: str = "json") -> None:
    p.add_argument(
        "--listen-address",
        type=typed(_listen_address),
        default=_env("listen_address", ":9967"),
        metavar="HOST:PORT",
        help="metrics and health HTTP server (default: :9967) [FLOW_AUDITOR_LISTEN_ADDRESS]",
    )
    p.add_argument(
        "--log-format",
        choices=("json", "console"),
        type=typed(choice(("json", "console"))),
        default=_env("log_format", log_format),
        help=f"log format (default: {log_format}) [FLOW_AUDITOR_LOG_FORMAT]",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        type=typed(choice(("debug", "info", "warning", "error"))),
        default=_env("log_level", "info"),
        help="[FLOW_AUDITOR_LOG_LEVEL]",
    )
    p.add_argument(
        "--reload-interval",
        type=_DURATION,
        default=_env("reload_interval", "5s"),
        help="how often the matrix file is checked for changes (default: 5s); SIGHUP checks at once "
        "[FLOW_AUDITOR_RELOAD_INTERVAL]",
    )
    p.add_argument(
        "--dedup-window",
        type=_DURATION,
        default=_env("dedup_window", f"{DEFAULT_DEDUP_WINDOW:g}s"),
        help="events of one 5-tuple within this window are one connection (default: 30s) "
        "[FLOW_AUDITOR_DEDUP_WINDOW]",
    )


def _env_list(option: str) -> list[str]:
    return [v for v in str(_env(option, "")).replace(",", " ").split() if v]


def _listen_address(text: str) -> str:
    from auditor.daemon import parse_listen_address

    try:
        parse_listen_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return str(text)


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


def parse_classes(text: str) -> frozenset[str]:
    """``--fail-on`` value → set of classes; ``none`` is the empty set."""
    if text.strip().lower() in ("none", ""):
        return frozenset()
    classes = {c.strip() for c in text.split(",") if c.strip()}
    unknown = sorted(classes - set(CLASSES))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown class {', '.join(unknown)} (expected {', '.join(CLASSES)} or none)"
        )
    return frozenset(classes)


def _hubble_config(args: argparse.Namespace) -> HubbleConfig:
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
    )


def _daemon_config(args: argparse.Namespace, matrix: str, hubble: HubbleConfig) -> DaemonConfig:
    from auditor.daemon import DaemonConfig

    return DaemonConfig(
        matrix=matrix,
        hubble=hubble,
        listen_address=args.listen_address,
        reload_interval=args.reload_interval,
        dedup_window=args.dedup_window,
        server_side_filter=_server_side_filter(args),
        node_local=getattr(args, "node_local", False),
        kube_events=getattr(args, "kube_events", False),
        kube_events_interval=getattr(args, "kube_events_interval", 300.0),
    )


def _server_side_filter(args: argparse.Namespace) -> bool:
    """On unless ``--no-server-side-filter``; ``--server-side-filter`` (the old opt-in) is still accepted."""
    off, on = getattr(args, "no_server_side_filter", False), getattr(args, "server_side_filter", False)
    if off and on:
        raise UsageError("--server-side-filter and --no-server-side-filter contradict each other")
    return not off


def _start_daemon(config: DaemonConfig) -> int:
    from auditor.daemon import DaemonConfigError
    from auditor.daemon import run as daemon_run

    try:
        return daemon_run(config)
    except (MatrixError, DaemonConfigError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:  # the listen address is taken, …
        raise UsageError(f"{config.listen_address}: {e.strerror or e}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from auditor.daemon import configure_logging

    configure_logging(args.log_format, args.log_level)
    return _start_daemon(_daemon_config(args, args.matrix, _hubble_config(args)))


def cmd_demo(args: argparse.Namespace) -> int:
    from auditor.daemon import configure_logging
    from auditor.demo import start_demo
    from auditor.sources.hubble import HubbleConfig

    configure_logging(args.log_format, args.log_level)
    demo = start_demo("127.0.0.1:0", speed=args.speed)
    try:
        # from the demo's own start: the first record is the node status its Relay stand-in reports
        hubble = HubbleConfig(
            server=demo.address, timeout=5.0, since=time.time() - 1.0, field_mask=not args.no_field_mask
        )
        return _start_daemon(_daemon_config(args, str(DEMO_MATRIX), hubble))
    finally:
        demo.stop()


def _load(path: str) -> Matrix:
    try:
        return load_matrix(path)
    except MatrixError as e:
        raise UsageError(str(e)) from None


def cmd_matrix_check(args: argparse.Namespace) -> int:
    print(describe(_load(args.file)))
    return EXIT_OK


def cmd_policies_generate(args: argparse.Namespace) -> int:
    from auditor.kube.policies import build, to_yaml

    matrix = _load(args.matrix)
    _check_output(args.output)
    try:
        result = build(matrix, args.flavor, cluster_cidrs=args.cluster_cidr)
    except ValueError as e:
        raise UsageError(str(e)) from None
    text = to_yaml(result.objects)
    if args.output:
        _write_output(args.output, text)
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

    matrix = _load(args.matrix)
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


def cmd_replay(args: argparse.Namespace) -> int:
    fail_on: frozenset[str] = args.fail_on
    matrix = _load(args.matrix)
    _check_inputs(args.files)
    _check_output(args.output)
    inputs = {
        "files": list(args.files),
        "matrix_file": args.matrix,
        "matrix_sha256": hashlib.sha256(Path(args.matrix).read_bytes()).hexdigest(),
    }
    sink = ReportSink(matrix, max_edges=args.max_edges, inputs=inputs)
    pipeline = Pipeline(Auditor(matrix, args.dedup_window), [sink])
    unjudgeable = UnjudgeableCheck(matrix)
    show_progress = not args.no_progress and sys.stderr.isatty()
    parallel: ParallelReplay | None = None
    try:
        for name in args.files:
            if args.jobs > 1 and splittable(name, args.chunk_bytes):
                if parallel is None:
                    parallel = ParallelReplay(matrix, args.dedup_window, args.max_edges, args.jobs)
                merger = Merger(pipeline, sink, unjudgeable)
                if show_progress and Path(name).stat().st_size >= _PROGRESS_MIN_BYTES:
                    summary = _parallel_with_progress(parallel, merger, name, args.chunk_bytes)
                else:
                    summary = parallel.feed(merger, name, args.chunk_bytes)
            else:
                with FlowFile(name) as f:
                    lines: Iterator[tuple[int, bytes]] = iter(f)
                    if show_progress and f.size >= _PROGRESS_MIN_BYTES:
                        lines = _with_progress(f, lines)
                    summary = feed_file(pipeline, name, lines, unjudgeable)
            problem = no_events_reason(summary)
            if problem:
                raise UsageError(problem)
    except SourceError as e:
        raise UsageError(str(e)) from None
    finally:
        if parallel is not None:
            parallel.close()
    pipeline.finish()
    report = sink.report()
    color = args.output is None and sys.stdout.isatty()
    # The terminal's width ($COLUMNS, else the terminal itself); 160 columns when there is none.
    width = shutil.get_terminal_size((160, 24)).columns
    text = render(report, args.format, color=color, width=max(width, 40))
    if args.output:
        _write_output(args.output, text)
    else:
        sys.stdout.write(text)
    for line in unjudgeable.warning():
        print(f"flow-auditor: warning: {line}", file=sys.stderr)
    return exit_code(report["classes"], fail_on)


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


def _check_output(path: str | None) -> None:
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


def _write_output(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{origin('--output', path)} {path}: cannot write: {e.strerror or e}") from None


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


def _parallel_with_progress(
    parallel: ParallelReplay, merger: Merger, name: str, chunk_bytes: int
) -> InputSummary:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(Path(name).name, total=Path(name).stat().st_size)
        return parallel.feed(merger, name, chunk_bytes, lambda done: progress.update(task, completed=done))


def main(argv: Sequence[str] | None = None) -> int:
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
