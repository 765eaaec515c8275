"""``flow-auditor run``: the daemon, following Hubble live (DESIGN §6.1).

Stage: front end. Input: the command line and its ``FLOW_AUDITOR_*`` twins. Output: a
:class:`~auditor.daemon.DaemonConfig` handed to :func:`auditor.daemon.run`, which serves metrics, health and
the live page until it is stopped. The daemon options and the stream options are shared with ``demo``
(:mod:`auditor.commands.demo`).

Error policy: inconsistent flags (a client certificate without its key, both server-side-filter flags), a
missing certificate file, a bad matrix at start and a listen address that cannot be bound raise
:class:`~auditor.commands.common.UsageError` (exit 2); once running, the daemon itself never exits on a bad
event or a bad reloaded matrix (see :mod:`auditor.daemon`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from auditor.commands.common import (
    DURATION,
    Subcommands,
    UsageError,
    add_dedup_window_option,
    add_matrix_option,
    env_default,
    env_list,
    hubble_config,
    parse_since,
)
from auditor.matrix import MatrixError
from auditor.options import choice, env_name, typed
from auditor.sources import RECEIVERS

if TYPE_CHECKING:
    from auditor.daemon import DaemonConfig
    from auditor.sources.hubble import HubbleConfig


def add_parser(sub: Subcommands) -> None:
    run = sub.add_parser(
        "run", help="the daemon: follow Hubble live, serve metrics, health and alerts' input"
    )
    daemon_options(run)
    run.add_argument(
        "--server",
        default=env_default("server", "localhost:4245"),
        help="Hubble Relay host:port or unix:///var/run/cilium/hubble.sock (default: localhost:4245) "
        "[FLOW_AUDITOR_SERVER]",
    )
    add_matrix_option(run, "communication matrix YAML, hot-reloaded when it changes [FLOW_AUDITOR_MATRIX]")
    _hubble_options(run)
    stream_options(run)
    run.add_argument(
        "--node-local",
        action="store_true",
        default=env_default("node_local", False),
        help="this auditor sees one node only (a DaemonSet reading the node's Hubble socket): delivery "
        "is counted on the destination's side only, never from replies, so that the sum over nodes "
        "counts each connection once [FLOW_AUDITOR_NODE_LOCAL]",
    )
    run.add_argument(
        "--kube-events",
        action="store_true",
        default=env_default("kube_events"),
        help="post Kubernetes Events for violation edges [FLOW_AUDITOR_KUBE_EVENTS]",
    )
    run.add_argument(
        "--kube-events-interval",
        type=DURATION,
        default=env_default("kube_events_interval", "5m"),
        help="at most one Event update per edge per interval (default: 5m) "
        "[FLOW_AUDITOR_KUBE_EVENTS_INTERVAL]",
    )
    run.set_defaults(func=cmd_run)


def _hubble_options(p: argparse.ArgumentParser) -> None:
    """How to reach Hubble: TLS, the connection timeout and how far back to start."""
    p.add_argument(
        "--tls", action="store_true", default=env_default("tls"), help="use TLS [FLOW_AUDITOR_TLS]"
    )
    p.add_argument(
        "--tls-ca-cert-files",
        nargs="*",
        default=env_list("tls_ca_cert_files"),
        metavar="FILE",
        help="CA certificates to trust [FLOW_AUDITOR_TLS_CA_CERT_FILES, comma-separated]",
    )
    for option, metavar, text in (
        ("tls-client-cert-file", "FILE", "client certificate for mTLS"),
        ("tls-client-key-file", "FILE", "client key for mTLS"),
        ("tls-server-name", "NAME", "server name to verify, e.g. instance.hubble-relay.cilium.io"),
    ):
        p.add_argument(
            f"--{option}", default=env_default(option), metavar=metavar, help=f"{text} [{env_name(option)}]"
        )
    p.add_argument(
        "--timeout",
        type=DURATION,
        default=env_default("timeout", "5s"),
        help="connection timeout (default: 5s) [FLOW_AUDITOR_TIMEOUT]",
    )
    p.add_argument(
        "--since",
        type=typed(parse_since),
        default=env_default("since"),
        help="on start, also judge flows this far back from Hubble's buffer: a duration (10m) or "
        "RFC 3339 time [FLOW_AUDITOR_SINCE]",
    )


def stream_options(p: argparse.ArgumentParser) -> None:
    """What the daemon asks Hubble for (the scope filter, the field mask) and where it receives it
    (``run`` and ``demo``)."""
    p.add_argument(
        "--no-server-side-filter",
        action="store_true",
        default=env_default("no_server_side_filter"),
        help="ask Hubble for every flow, not only for flows from/to the matrix's scope namespaces (the "
        "default when the matrix has a scope) [FLOW_AUDITOR_NO_SERVER_SIDE_FILTER]",
    )
    p.add_argument(
        "--server-side-filter",
        action="store_true",
        default=env_default("server_side_filter"),
        help="on by default now; accepted so that existing command lines keep working "
        "[FLOW_AUDITOR_SERVER_SIDE_FILTER]",
    )
    p.add_argument(
        "--no-field-mask",
        action="store_true",
        default=env_default("no_field_mask"),
        help="ask Hubble for whole flows instead of only the fields judging reads "
        "[FLOW_AUDITOR_NO_FIELD_MASK]",
    )
    p.add_argument(
        "--receiver",
        choices=RECEIVERS,
        type=typed(choice(RECEIVERS)),
        default=env_default("receiver", "thread"),
        help="where the flow stream is received: in the daemon's stream thread (thread, the default), or in "
        "a second process (process: ~25 MB of memory of its own, and up to one more core busy) that hands "
        "the raw messages over in batches, so that receiving no longer shares one interpreter lock with "
        "judging: more flows/s from a busy Relay when a second core is free [FLOW_AUDITOR_RECEIVER]",
    )


def daemon_options(p: argparse.ArgumentParser, log_format: str = "json") -> None:
    p.add_argument(
        "--listen-address",
        type=typed(_listen_address),
        default=env_default("listen_address", ":9967"),
        metavar="HOST:PORT",
        help="metrics and health HTTP server (default: :9967) [FLOW_AUDITOR_LISTEN_ADDRESS]",
    )
    p.add_argument(
        "--log-format",
        choices=("json", "console"),
        type=typed(choice(("json", "console"))),
        default=env_default("log_format", log_format),
        help=f"log format (default: {log_format}) [FLOW_AUDITOR_LOG_FORMAT]",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        type=typed(choice(("debug", "info", "warning", "error"))),
        default=env_default("log_level", "info"),
        help="[FLOW_AUDITOR_LOG_LEVEL]",
    )
    p.add_argument(
        "--reload-interval",
        type=DURATION,
        default=env_default("reload_interval", "5s"),
        help="how often the matrix file is checked for changes (default: 5s); SIGHUP checks at once "
        "[FLOW_AUDITOR_RELOAD_INTERVAL]",
    )
    add_dedup_window_option(p)


def _listen_address(text: str) -> str:
    from auditor.daemon import parse_listen_address

    try:
        parse_listen_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return str(text)


def daemon_config(args: argparse.Namespace, matrix: str, hubble: HubbleConfig) -> DaemonConfig:
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


def start_daemon(config: DaemonConfig) -> int:
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
    return start_daemon(daemon_config(args, args.matrix, hubble_config(args)))
