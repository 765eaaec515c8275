"""The demo server as a whole: ``flow-auditor demo``'s stand-in for Hubble Relay, and its command line.

Stage: none of the pipeline's — the entry point of the embedded Hubble-compatible server. It wires the
parts, each in its own module:

- :mod:`auditor.demo.flowlog` — the log: a bounded ring of serialized responses, shared across threads;
- :mod:`auditor.demo.responses` — jsonpb records and ``lost_events``/``node_status`` notices as responses;
- :mod:`auditor.demo.feed` — players appending to the log over time (the Airflow scenario in a loop);
- :mod:`auditor.demo.filters` — a ``GetFlows`` request compiled into the plan of what it is sent, with
  :mod:`auditor.demo.labels` (label selectors) and :mod:`auditor.demo.fieldmask` (field masks);
- :mod:`auditor.demo.service` — the ``observer.Observer`` gRPC service, TLS included.

Input: the Airflow scenario (:func:`start_demo`, ``--loop``) or jsonpb files (``--jsonl``). Output: a
running :class:`~auditor.demo.service.HubbleServer`; :func:`main` (``python -m auditor.demo.server``, a
subprocess for tests that must kill the server) prints ``listening on HOST:PORT`` as its first line and
serves until SIGTERM/SIGINT.

Error policy: :func:`start_demo` lets the parts' errors through (``RuntimeError`` when binding fails);
:func:`main` prints ``error: …`` and exits 2 on bad arguments, unreadable or invalid input
(``ValueError`` naming ``file:line``) and binding failures, and exits 0 when stopped by a signal.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from auditor.demo.feed import DEFAULT_SPEED, LiveScenario, Player
from auditor.demo.flowlog import DEFAULT_CAPACITY, NS_PER_S, FlowLog
from auditor.demo.responses import load_jsonl, log_from_responses
from auditor.demo.service import HubbleServer, ServerTls

__all__ = ["Demo", "main", "start_demo"]


@dataclass
class Demo:
    """What ``flow-auditor demo`` runs: a :class:`~auditor.demo.feed.LiveScenario` feeding a
    :class:`~auditor.demo.service.HubbleServer`."""

    log: FlowLog
    server: HubbleServer
    player: LiveScenario

    @property
    def address(self) -> str:
        return self.server.address

    def stop(self, grace: float | None = 1.0) -> None:
        self.player.stop()
        self.server.stop(grace)


def start_demo(
    listen: str = "127.0.0.1:0",
    *,
    speed: float = DEFAULT_SPEED,
    tls: ServerTls | None = None,
    capacity: int = DEFAULT_CAPACITY,
) -> Demo:
    """Start the embedded Hubble Relay stand-in playing the Airflow scenario; ``demo.address`` is
    where to point ``run --server``. Stop it with :meth:`Demo.stop`."""
    log = FlowLog(capacity)
    player = LiveScenario(log, speed=speed)
    server = HubbleServer(log, address=listen, tls=tls)
    server.start()
    player.start()
    return Demo(log, server, player)


# ------------------------------------------------------------------------------------------------
# Command line (a subprocess for tests that must kill the server)
# ------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m auditor.demo.server",
        description="Hubble-compatible gRPC server (observer.Observer) on loopback, for demos and tests. "
        "Prints 'listening on HOST:PORT' as its first line; stops on SIGTERM/SIGINT.",
    )
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to bind, port 0 = ephemeral")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--jsonl", action="append", type=Path, metavar="FILE", help="serve these jsonpb records (repeatable)"
    )
    source.add_argument("--loop", action="store_true", help="play the Airflow scenario in a loop")
    p.add_argument(
        "--speed", type=float, default=DEFAULT_SPEED, help="--loop: speed-up factor (default %(default)s)"
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="N",
        help="--jsonl: append the records N per second after start instead of preloading them",
    )
    p.add_argument("--capacity", type=int, default=None, help="ring size (default: max(65536, records))")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="server key (PEM)")
    p.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA")
    p.add_argument("--no-relay", action="store_true", help="answer ServerStatus as a node, not a Relay")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; exit 0 then, 2 on bad arguments or input."""
    args = _parser().parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca and not args.tls_cert):
        print("error: --tls-cert and --tls-key go together (and --tls-client-ca needs them)", file=sys.stderr)
        return 2
    if args.rate is not None and args.loop:
        print("error: --rate applies to --jsonl (use --speed with --loop)", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        log, player = _feed(args)
        tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
        server = HubbleServer(log, address=args.listen, tls=tls, relay=not args.no_relay)
        server.start()
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"listening on {server.address}", flush=True)
    if player is not None:
        player.start()
    while not stop.wait(1.0):
        pass
    if player is not None:
        player.stop()
    server.stop(1.0)
    return 0


def _feed(args: argparse.Namespace) -> tuple[FlowLog, Player | None]:
    if args.loop:
        log = FlowLog(args.capacity or DEFAULT_CAPACITY)
        return log, LiveScenario(log, speed=args.speed)
    responses = [r for path in args.jsonl for r in load_jsonl(path)]
    capacity = args.capacity or max(DEFAULT_CAPACITY, len(responses))
    if args.rate is None:
        return log_from_responses(responses, capacity), None
    if not args.rate > 0:
        raise ValueError(f"--rate must be positive, got {args.rate}")
    log = FlowLog(capacity)
    step = NS_PER_S / args.rate
    return log, Player(log, [(int(i * step), r) for i, r in enumerate(responses)])


if __name__ == "__main__":
    raise SystemExit(main())
