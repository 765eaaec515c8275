"""RSS of the daemon's live path under flows with huge, ever new endpoints (issue: caches by bytes).

What it runs: ``--flows`` flow messages, each with a source endpoint of its own (new identity, new pod) of
about ``--endpoint-bytes`` bytes of labels (Kubernetes allows any number of labels per pod), serialized as
``GetFlowsResponse`` bytes, parsed with the live source's lean schema, decoded and fed to a pipeline with
the daemon's sinks (metrics, log) — the path of ``flow-auditor run`` without gRPC. Prints (and writes to
``bench/out/memory.json``) the RSS before and after, the peak RSS, and the size of every cache.

Run it in a fresh process (this script is one): RSS is the process's. Not part of ``make test``.

    .venv/bin/python bench/memory.py                    # 24,000 flows with 33 KB endpoints
    .venv/bin/python bench/memory.py --flows 5000       # quicker

Error policy: none needed; a failure is a bench bug and raises.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from google.protobuf import json_format

from auditor import decode_pb
from auditor._proto.live import live_pb2
from auditor._proto.observer import observer_pb2
from auditor.classify import Auditor, Judgement
from auditor.matrix import load_matrix
from auditor.model import Flow
from auditor.pipeline import Pipeline
from auditor.sinks.metrics import MetricsSink

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "airflow"
OUT = ROOT / "bench" / "out" / "memory.json"


def rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def base_response(auditor: Auditor) -> observer_pb2.GetFlowsResponse:
    """The first TCP flow of the example that is judged (a final verdict), as a message to vary."""
    for line in (EXAMPLE / "flows.jsonl").read_text().splitlines():
        response = observer_pb2.GetFlowsResponse()
        json_format.ParseDict(json.loads(line), response, ignore_unknown_fields=True)
        if response.HasField("flow") and response.flow.l4.HasField("TCP"):
            record = decode_pb.record_from_response(response)
            if isinstance(record, Flow) and isinstance(auditor.process(record), Judgement):
                return response
    raise SystemExit("no judged TCP flow in the example")


def cache_sizes(pipeline: Pipeline) -> dict[str, int]:
    auditor = pipeline.auditor
    sizes = {f"decoder_{k}": v for k, v in decode_pb.endpoint_cache_info().items()}
    sizes.update({f"auditor_{k}": v for k, v in auditor.cache_info().items()})
    sizes["dedup_entries"] = len(auditor.dedup)
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flows", type=int, default=24_000)
    parser.add_argument("--endpoint-bytes", type=int, default=33_000)
    parser.add_argument("--smoke", action="store_true", help="200 flows of 2 KB endpoints (make test)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the JSON result goes")
    args = parser.parse_args()
    if args.smoke:
        args.flows, args.endpoint_bytes = 200, 2_000

    from auditor.sinks.log import LogSink

    matrix = load_matrix(EXAMPLE / "matrix.yaml")
    pipeline = Pipeline(Auditor(matrix), [MetricsSink(matrix), LogSink(interval=300.0)])
    template = base_response(Auditor(matrix))
    filler = max(0, args.endpoint_bytes // 64)
    rss_before = rss_mib()
    start = time.monotonic()
    for i in range(args.flows):
        # A fresh message each time: a mutated one keeps every old string in its arena (bench artefact).
        response = observer_pb2.GetFlowsResponse()
        response.CopyFrom(template)
        flow = response.flow
        flow.time.seconds += i
        flow.source.labels.extend(
            f"k8s:bench.example/label-{j:04d}={i:012d}{'x' * 20}" for j in range(filler)
        )
        flow.source.identity = 100_000 + i
        flow.source.pod_name = f"airflow-worker-{i}"
        flow.l4.TCP.source_port = 10_000 + i % 50_000
        data = response.SerializeToString()
        pipeline.feed(decode_pb.record_from_response(live_pb2.GetFlowsResponse.FromString(data)))
    elapsed = time.monotonic() - start
    result = {
        "flows": args.flows,
        "endpoint_bytes": len(flow.source.SerializeToString()),
        "rss_before_mib": round(rss_before, 1),
        "rss_after_mib": round(rss_mib(), 1),
        "rss_peak_mib": round(rss_mib("VmHWM"), 1),
        "seconds": round(elapsed, 1),
        **cache_sizes(pipeline),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
