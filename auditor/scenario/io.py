"""The only I/O: writing JSON lines, and ``python -m auditor.scenario``.

Part of :mod:`auditor.scenario`; its docstring gives the stage, the modelling choices and the error
policy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from auditor.scenario.airflow import airflow_scenario
from auditor.scenario.model import DEFAULT_START, Event
from auditor.scenario.synthetic import synthetic_events

# ------------------------------------------------------------------------------------------------
# I/O
# ------------------------------------------------------------------------------------------------


def write_jsonl(scenario_events: Iterable[Event], path: Path) -> None:
    """Write records as compact JSON, one per line, keys in insertion (Hubble's) order."""
    encoder = msgspec.json.Encoder()
    buffer = bytearray()
    with path.open("wb") as out:
        for event in scenario_events:
            encoder.encode_into(event, buffer, -1)
            buffer.extend(b"\n")
            if len(buffer) >= 1 << 20:
                out.write(buffer)
                buffer.clear()
        out.write(buffer)


def _parse_start(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m auditor.scenario --out FILE``: write the Airflow example (or a synthetic stream)."""
    parser = argparse.ArgumentParser(prog="python -m auditor.scenario", description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output JSON-lines file")
    parser.add_argument(
        "--start",
        type=_parse_start,
        default=DEFAULT_START,
        help="flow time of the first event, RFC 3339 (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: 7, synthetic: 1)")
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        default=None,
        help="write N synthetic benchmark events instead of the Airflow example",
    )
    parser.add_argument("--distinct-pods", type=int, default=1000, help="pods of the synthetic stream")
    args = parser.parse_args(argv)
    try:
        if args.synthetic is not None:
            seed = 1 if args.seed is None else args.seed
            events: Iterable[Event] = synthetic_events(
                args.synthetic, distinct_pods=args.distinct_pods, seed=seed, start=args.start
            )
        else:
            events = airflow_scenario(args.start, seed=7 if args.seed is None else args.seed).events
        write_jsonl(events, args.out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
