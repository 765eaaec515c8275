"""``flow-auditor demo``: the daemon against an embedded Hubble server playing the Airflow scenario.

DESIGN §6.1. Stage: front end. Starts :func:`auditor.demo.start_demo` on a loopback port, then the daemon of
:mod:`auditor.commands.run` against it with the Airflow example matrix shipped in the package; the demo
server stops when the daemon does.

Error policy: as ``run`` (:class:`~auditor.commands.common.UsageError`, exit 2, for a listen address that
cannot be bound); the demo server is stopped on every way out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from auditor.commands.common import Subcommands, env_default
from auditor.commands.run import daemon_config, daemon_options, start_daemon, stream_options
from auditor.options import positive_number, typed

# The Airflow example matrix, shipped in the package for `demo` (a test keeps it equal to examples/airflow/).
DEMO_MATRIX = Path(__file__).parent.parent / "demo" / "airflow-matrix.yaml"


def add_parser(sub: Subcommands) -> None:
    demo = sub.add_parser(
        "demo", help="the daemon against an embedded Hubble server playing the Airflow scenario"
    )
    daemon_options(demo, log_format="console")
    stream_options(demo)
    demo.add_argument(
        "--speed",
        type=typed(positive_number),
        default=env_default("speed", "10"),
        help="scenario time per wall-clock second (default: 10: a violation every few seconds)",
    )
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from auditor.daemon import configure_logging
    from auditor.demo import start_demo
    from auditor.sources.hubble import HubbleConfig

    configure_logging(args.log_format, args.log_level)
    demo = start_demo("127.0.0.1:0", speed=args.speed)
    try:
        # from the demo's own start: the first record is the node status its Relay stand-in reports
        hubble = HubbleConfig(
            server=demo.address,
            timeout=5.0,
            since=time.time() - 1.0,
            field_mask=not args.no_field_mask,
            receiver=args.receiver,
        )
        return start_daemon(daemon_config(args, str(DEMO_MATRIX), hubble))
    finally:
        demo.stop()
