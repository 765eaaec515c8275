"""``replay --jobs N``: the report of N worker processes is byte-identical to the single-process one.

Chunk boundaries are placed everywhere (``--chunk-bytes 1`` makes every line its own chunk), so they fall
inside SYN-retransmit bursts, between a request and its reply, and between a provisional event and the
reply that proves it; the generated file adds thousands of connections, the edge cap and a short window.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
from pathlib import Path

import msgspec
import pytest

from auditor.classify import PROVISIONAL, Auditor
from auditor.cli import main
from auditor.decode import decode_line
from auditor.matrix import load_matrix
from auditor.model import Flow
from auditor.pipeline import Pipeline
from auditor.render import render
from auditor.replay_chunk import (
    SETTLED_DROPPED,
    SETTLED_EXAMPLES,
    SETTLED_SAMPLES,
    SETTLED_UNPROVEN,
)
from auditor.replay_input import UnjudgeableCheck, feed_file
from auditor.replay_parallel import (
    Merger,
    ParallelReplay,
    _blocks,
    chunks,
    init_worker,
    judge_chunk,
    splittable,
)
from auditor.scenario import synthetic_events
from auditor.sinks.report import ReportSink
from auditor.sources.files import BLOCK_BYTES, BOM, FlowFile

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "examples" / "airflow" / "matrix.yaml"
EXAMPLES = sorted(ROOT.glob("examples/*/flows.jsonl"))
SAMPLES = sorted((ROOT / "tests" / "data" / "hubble-samples").rglob("*.json*"))


def replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: list[Path], *extra: str
) -> tuple[int, bytes, str]:
    """Exit code, report bytes and stderr of one replay."""
    out = tmp_path / "report.json"
    out.unlink(missing_ok=True)
    code = main(
        [
            "replay",
            *map(str, files),
            "--matrix",
            str(MATRIX),
            "--format",
            "json",
            "--output",
            str(out),
            *extra,
        ]
    )
    err = capsys.readouterr().err
    return code, out.read_bytes() if out.exists() else b"", err


def assert_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: list[Path], chunk: int, *extra: str
) -> bytes:
    one = replay(tmp_path, capsys, files, "--jobs", "1", *extra)
    assert all(splittable(str(f), chunk) for f in files)  # the parallel path really runs
    many = replay(tmp_path, capsys, files, "--jobs", "2", "--chunk-bytes", str(chunk), *extra)
    assert many == one
    return one[1]


def five_tuples(path: Path) -> list[tuple[str, str, int, int, str, bool | None, int]]:
    found = []
    for line in path.read_bytes().splitlines():
        record = decode_line(line)
        if type(record) is Flow:
            f = record
            found.append(
                (
                    f.source_ip,
                    f.destination_ip,
                    f.source_port,
                    f.destination_port,
                    f.protocol,
                    f.is_reply,
                    f.tcp_flags,
                )
            )
    return found


def test_the_example_has_retransmit_bursts_and_replies_to_cut_through() -> None:
    """What the one-line chunks below cut through is really in the example."""
    tuples = five_tuples(EXAMPLES[0])
    syns = [t[:5] for t in tuples if t[6] & 0x02 and not t[6] & 0x10]  # SYN without ACK
    assert len(syns) > len(set(syns))  # some SYN is sent again: a retransmit burst
    requests = {t[:5] for t in tuples if t[5] is False}
    replies = {(t[1], t[0], t[3], t[2], t[4]) for t in tuples if t[5] is True}
    assert requests & replies  # requests whose replies follow


@pytest.mark.parametrize("parts", [0, 2, 7], ids=["line-per-chunk", "halves", "sevenths"])
@pytest.mark.parametrize("path", EXAMPLES + SAMPLES, ids=lambda p: p.name)
def test_every_example_and_sample_gives_the_same_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], path: Path, parts: int
) -> None:
    chunk = path.stat().st_size // parts if parts else 1
    assert_identical(tmp_path, capsys, [path], chunk)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "synthetic.jsonl"
    encode = msgspec.json.Encoder().encode
    path.write_bytes(b"".join(encode(e) + b"\n" for e in synthetic_events(4000, distinct_pods=200, seed=3)))
    return path


@pytest.mark.parametrize(
    "extra",
    [(), ("--max-edges", "4"), ("--dedup-window", "50ms"), ("--max-edges", "2", "--dedup-window", "2s")],
    ids=["defaults", "edge-cap", "short-window", "both"],
)
def test_a_large_generated_file_gives_the_same_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], generated: Path, extra: tuple[str, ...]
) -> None:
    report = assert_identical(tmp_path, capsys, [generated], 9_000, *extra)
    if not extra:  # chunks of many of a worker's reads, lines across them
        assert assert_identical(tmp_path, capsys, [generated], generated.stat().st_size // 3) == report
    parsed = json.loads(report)
    assert parsed["flows"]["received"] == 4000
    if "--max-edges" in extra:
        assert parsed["edge_limit"]["aggregated_connections"] > 0  # the cap was exercised


def test_every_line_its_own_chunk_on_generated_traffic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], generated: Path
) -> None:
    head = tmp_path / "head.jsonl"
    head.write_bytes(b"".join(generated.read_bytes().splitlines(keepends=True)[:600]))
    assert_identical(tmp_path, capsys, [head], 1, "--max-edges", "3")


def test_damaged_input_same_samples_line_numbers_warning_and_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Invalid lines (more than are sampled), blank lines, lost events, masked fields, several files."""
    lines = EXAMPLES[0].read_bytes().splitlines(keepends=True)
    damaged = []
    for i, line in enumerate(lines):
        if i % 37 == 5:
            damaged.append(b"not json at all\n")
        if i % 53 == 7:
            damaged.append(b"\n   \n")
        if i % 61 == 3:
            damaged.append(b'{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events":"7"}}\n')
        if i % 11 == 0:
            line = line.replace(b'"event_type":', b'"ignored_event_type":')
        damaged.append(line)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    half = len(damaged) // 2
    first.write_bytes(b"".join(damaged[:half]))
    second.write_bytes(b"".join(damaged[half:]))
    code, report, err = replay(tmp_path, capsys, [first, second], "--jobs", "1")
    assert "could not be judged" in err and code == 1
    parsed = json.loads(report)
    assert len(parsed["invalid_samples"]) == 10 and parsed["lost_events"]
    for chunk in (1, 3000):
        many = replay(tmp_path, capsys, [first, second], "--jobs", "2", "--chunk-bytes", str(chunk))
        assert many == (code, report, err)


def test_a_file_without_hubble_events_is_the_same_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text("\n".join(["[1, 2]", "", "not json"] * 50) + "\n")
    one = replay(tmp_path, capsys, [junk], "--jobs", "1")
    many = replay(tmp_path, capsys, [junk], "--jobs", "2", "--chunk-bytes", "64")
    assert one == many and one[0] == 2 and "junk.jsonl: none of its 100 lines" in one[2]


def test_stdin_gzip_and_pipes_stay_in_one_process(tmp_path: Path) -> None:
    plain = tmp_path / "flows.jsonl"
    plain.write_bytes(EXAMPLES[0].read_bytes())
    gz = tmp_path / "flows.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert splittable(str(plain), 1)
    assert not splittable(str(plain), plain.stat().st_size)  # one chunk: no workers
    assert not splittable("-", 1) and not splittable(str(gz), 1) and not splittable(str(fifo), 1)


def test_a_byte_order_mark_changes_nothing_with_or_without_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file saved with a UTF-8 byte order mark (as Windows tools write one) gives the report of the same
    file without it, in one process and in chunks (the first chunk starts with the mark)."""
    data = EXAMPLES[0].read_bytes()
    plain, marked = tmp_path / "plain" / "flows.jsonl", tmp_path / "marked" / "flows.jsonl"
    for path, content in ((plain, data), (marked, BOM + data)):
        path.parent.mkdir()
        path.write_bytes(content)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(tmp_path / "plain")
    expected = replay(work, capsys, [Path("flows.jsonl")], "--jobs", "1")
    assert b'"invalid": 0' in expected[1]
    monkeypatch.chdir(tmp_path / "marked")
    assert assert_identical(work, capsys, [Path("flows.jsonl")], 3000) == expected[1]


@pytest.mark.parametrize("chunk", [1, 100, 4096])
def test_chunks_start_at_line_boundaries_and_cover_the_file(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "f.jsonl"
    data = b"".join(b"x" * (i % 300) + b"\n" for i in range(200)) + b"no newline at the end"
    path.write_bytes(data)
    ranges = chunks(str(path), chunk)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(data[s - 1 : s] == b"\n" for s, _ in ranges[1:])
    assert b"".join(data[s:e] for s, e in ranges) == data


@pytest.mark.parametrize("chunk", [1, 70_000, 300_000, 1 << 20])
def test_a_worker_reads_its_chunk_in_blocks_with_the_lines_of_the_range(tmp_path: Path, chunk: int) -> None:
    """Lines cross the worker's 128 KiB reads, one is longer than two reads, the last has no newline."""
    path = tmp_path / "f.jsonl"
    lines = [b"y" * (i * 7919 % 9000) + b"\n" for i in range(300)]
    lines[150] = b"z" * (2 * BLOCK_BYTES + 5) + b"\n"
    data = b"".join(lines) + b"the last line"
    path.write_bytes(data)
    for start, end in chunks(str(path), chunk):
        with path.open("rb") as f:
            blocks = list(_blocks(f, str(path), start, end))
        assert [line for block in blocks for line in block] == data[start:end].splitlines(keepends=True)
        assert all(blocks) and all(sum(map(len, b)) <= BLOCK_BYTES + len(b[0]) for b in blocks)  # a read's


def test_a_worker_drops_a_byte_order_mark_only_at_the_start_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(BOM + b'{"a":1}\n' + BOM + b'{"b":2}\n{"c":3}\n')
    ranges = chunks(str(path), 1)  # a chunk a line: the second one starts with a mark of its line's
    got = []
    for start, end in ranges:
        with path.open("rb") as f:
            got.append([line for block in _blocks(f, str(path), start, end) for line in block])
    assert got == [[b'{"a":1}\n'], [BOM + b'{"b":2}\n'], [b'{"c":3}\n']]


def test_one_node_captures_pending_connections_and_replies_in_later_chunks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], generated: Path
) -> None:
    """Events of one node only: connections seen leaving it stay provisional unless a forwarded reply from
    the other node proves them — the pending table crosses every chunk boundary."""
    capture = one_node(generated, tmp_path)
    for extra in ((), ("--dedup-window", "200ms"), ("--max-edges", "2")):
        report = json.loads(assert_identical(tmp_path, capsys, [capture], 1, *extra))
        assert report["provisional"] and report["flows"]["reply"] and report["flows"]["provisional"]


def one_node(generated: Path, tmp_path: Path) -> Path:
    """The events of one node of the generated traffic: connections that wait for proof, some in vain."""
    lines = generated.read_bytes().splitlines(keepends=True)
    node = json.loads(lines[0])["node_name"]
    capture = tmp_path / "one-node.jsonl"
    capture.write_bytes(b"".join(line for line in lines if json.loads(line)["node_name"] == node))
    return capture


def violation_pair(k: int) -> bytes:
    """The example's connections of one pod on an ``unexpected_allowed`` edge, made pod ``k``'s."""
    base = [line for line in EXAMPLES[0].read_bytes().splitlines(keepends=True) if b'10.244.1.201"' in line]
    return b"".join(
        line.replace(b'10.244.1.201"', b'10.244.9.%d"' % k).replace(
            b'policy.serviceaccount=default"', b'policy.serviceaccount=sa%d"' % k
        )
        for line in base
    )


def violation_pairs(tmp_path: Path, pairs: int) -> Path:
    """:func:`violation_pair` of ``pairs`` pods, in one file."""
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"".join(violation_pair(k) for k in range(pairs)))
    return path


def unproven_spread(tmp_path: Path, generated: Path, pods: int) -> Path:
    """One provisional connection of the generated traffic sent again from ``pods`` pods a second apart,
    never proven, ten blank lines between them (with one line per chunk, many tasks apart)."""
    auditor = Auditor(load_matrix(MATRIX), 0.01)
    records = [(line, decode_line(line)) for line in generated.read_bytes().splitlines()]
    flows = [(line, r) for line, r in records if type(r) is Flow]
    [line] = [line for line, r in flows if auditor.process(r) == PROVISIONAL][:1]
    event = json.loads(line)
    out = []
    for k in range(pods):
        flow = event["flow"]
        flow["source"]["pod_name"] = f"pod-{k}"
        flow["l4"]["TCP"]["source_port"] = 40000 + k
        flow["time"] = event["time"] = f"2026-11-23T10:00:{k:02d}Z"
        out.append(json.dumps(event).encode() + b"\n" + b"\n" * 10)
    path = tmp_path / "unproven.jsonl"
    path.write_bytes(b"".join(out))
    return path


def both_ways(path: Path, chunk: int, window: float) -> tuple[str, str, list[tuple[int, object]], list[int]]:
    """The JSON report of one process and of two workers, the merge's notes and how many each worker got."""
    matrix = load_matrix(MATRIX)
    reports = []
    for parallel in (False, True):
        sink = ReportSink(matrix)
        pipeline = Pipeline(Auditor(matrix, window), [sink])
        if parallel:
            merger = Merger(pipeline, sink, UnjudgeableCheck(matrix))
            workers = ParallelReplay(matrix, window, 10_000, 2, merger)
            try:
                workers.feed(str(path), chunk)
            finally:
                workers.close()
        else:
            with FlowFile(str(path)) as f:
                feed_file(pipeline, str(path), f.blocks(), UnjudgeableCheck(matrix))
        pipeline.finish()
        reports.append(render(sink.report(), "json"))
    return reports[0], reports[1], merger.settled, workers.told


def test_the_workers_learn_what_the_merge_settled_and_the_report_stays_the_same(
    tmp_path: Path, generated: Path
) -> None:
    """The merge notes what it will not use any more (an edge's examples, a dropped edge's sample, a violation
    edge's suggestion samples, a provisional key's examples) as it completes it; later tasks carry the notes,
    the workers skip what they name, and the report is byte-identical to one process's."""
    noted: set[int] = set()
    for path, chunk, window in (
        (one_node(generated, tmp_path), 9_000, 0.01),
        (violation_pairs(tmp_path, 60), 9_000, 5.0),
        (unproven_spread(tmp_path, generated, 20), 1, 0.01),
    ):
        one, two, notes, told = both_ways(path, chunk, window)
        assert two == one
        assert all(told)  # every worker was sent notes
        noted |= {kind for kind, _ in notes}
        assert len(notes) == len(set(notes))  # each noted once
    assert noted == {SETTLED_EXAMPLES, SETTLED_DROPPED, SETTLED_SAMPLES, SETTLED_UNPROVEN}


def test_a_worker_skips_what_the_notes_name(tmp_path: Path, generated: Path) -> None:
    """Given every edge and provisional key as settled, a worker's result for a chunk holds no example, no
    dropped judgement and no suggestion sample — and the same events, keys and counts."""
    capture = one_node(generated, tmp_path)
    size = capture.stat().st_size
    init_worker(load_matrix(MATRIX), 0.01, 10_000)
    before = judge_chunk((str(capture), 0, size, []))
    assert any(ex for *_, ex in before.slots) and any(ex for *_, ex in before.unproven)
    assert any(type(p) is not tuple for p in before.policy)  # a dropped edge's judgement
    assert before.samples  # a violation edge's suggestion samples
    edges = [edge for edge, *_ in before.edges]
    keys = [(s, d, port, protocol) for s, d, port, protocol, _ in before.unproven]
    notes: list[tuple[int, object]] = [(SETTLED_UNPROVEN, key) for key in keys]
    notes += [(kind, edge) for edge in edges for kind in (SETTLED_EXAMPLES, SETTLED_DROPPED, SETTLED_SAMPLES)]
    after = judge_chunk((str(capture), 0, size, notes))
    assert not any(ex for *_, ex in after.slots) and not any(ex for *_, ex in after.unproven)
    assert all(type(p) is tuple for p in after.policy) and not after.samples
    for name in ("times", "conns", "keys", "outcomes", "edges", "events", "lines"):
        assert getattr(after, name) == getattr(before, name), name


def test_many_endpoint_pairs_on_one_violation_edge_mark_the_suggestion_partial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """More than 32 distinct endpoint pairs on an ``unexpected_allowed`` edge, spread over chunks or not."""
    first = b"".join(violation_pair(k) for k in range(40))
    many = tmp_path / "many.jsonl"
    many.write_bytes(first + violation_pair(0) + violation_pair(1))  # the second chunk brings no new pair
    for chunk in (1, 20_000, len(first)):  # len(first): the first chunk alone has more than 32 pairs
        report = json.loads(assert_identical(tmp_path, capsys, [many], chunk))
        [edge] = [e for e in report["edges"] if e["class"] == "unexpected_allowed"]
        assert edge["connections"] >= 40 and edge["suggestion"]["partial"] is True


def test_label_history_of_both_ends_crosses_chunks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A connection dropped after the destination's pod labels changed: the policy change names the changed
    destination label, learnt from delivered connections in earlier chunks (the merge keeps both ends)."""
    lines = EXAMPLES[0].read_bytes().splitlines(keepends=True)
    [template] = [json.loads(line) for line in lines if b'"destination_port":5432' in line][:1]
    flow = template["flow"]
    flow["verdict"], flow["drop_reason_desc"] = "DROPPED", "POLICY_DENIED"
    flow["l4"]["TCP"]["source_port"] = 40001
    flow["traffic_direction"], flow["event_type"] = "INGRESS", {"type": 1}
    old, new = "k8s:app.kubernetes.io/version=16.1.0", "k8s:app.kubernetes.io/version=17.0.0"
    flow["destination"]["labels"] = [
        new if label == old else label for label in flow["destination"]["labels"]
    ]
    flow["time"] = template["time"] = "2026-11-23T23:59:00Z"
    capture = tmp_path / "changed.jsonl"
    capture.write_bytes(b"".join(lines) + json.dumps(template).encode() + b"\n")
    for parts in (0, 3):
        chunk = capture.stat().st_size // parts if parts else 1
        report = json.loads(assert_identical(tmp_path, capsys, [capture], chunk))
        [edge] = [
            e
            for e in report["edges"]
            if (e["source"], e["destination"], e["class"]) == ("worker", "postgresql", "expected_dropped")
        ]
        changes = edge["policy_change"]["label_changes"]
        assert [c["end"] for c in changes] == ["destination"], changes
        assert changes[0]["labels"] == {"app.kubernetes.io/version": ["16.1.0", "17.0.0"]}, changes


def test_label_history_tells_a_reused_identity_apart_within_a_chunk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL delivered under one identity with two label sets (the identity reused after a relabel),
    both in the last chunk, then a drop with the second set: the history knows both sets, so the drop
    names no label change."""
    lines = EXAMPLES[0].read_bytes().splitlines(keepends=True)
    [template] = [json.loads(line) for line in lines if b'"destination_port":5432' in line][:1]
    old, new = "k8s:app.kubernetes.io/version=16.1.0", "k8s:app.kubernetes.io/version=17.0.0"
    relabelled = [new if label == old else label for label in template["flow"]["destination"]["labels"]]
    assert relabelled != template["flow"]["destination"]["labels"]

    def event(port: int, minute: int, labels: list[str], dropped: bool = False) -> bytes:
        line = json.loads(json.dumps(template))
        flow = line["flow"]
        flow["l4"]["TCP"]["source_port"] = port
        flow["destination"]["labels"] = labels
        flow["time"] = line["time"] = f"2026-11-23T23:{minute:02d}:00Z"
        flow["traffic_direction"] = "INGRESS"  # a policy verdict at the destination: delivered
        if dropped:
            flow["verdict"], flow["drop_reason_desc"] = "DROPPED", "POLICY_DENIED"
            flow["traffic_direction"], flow["event_type"] = "INGRESS", {"type": 1}
        return json.dumps(line).encode() + b"\n"

    capture = tmp_path / "reused.jsonl"
    added = [
        event(40002, 50, template["flow"]["destination"]["labels"]),
        event(40003, 51, relabelled),
        event(40001, 59, relabelled, dropped=True),
    ]
    capture.write_bytes(b"".join(lines + added))
    report = json.loads(assert_identical(tmp_path, capsys, [capture], capture.stat().st_size // 2))
    [edge] = [
        e
        for e in report["edges"]
        if (e["source"], e["destination"], e["class"]) == ("worker", "postgresql", "expected_dropped")
    ]
    assert edge["connections"] == 1
    assert edge["policy_change"]["label_changes"] == [], edge["policy_change"]
