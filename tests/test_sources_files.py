"""FlowFile.blocks: replay reads its input in blocks of lines; every line must come out exactly as iterating
the file gives it, in order, whatever the block size, the line lengths and the compression.

The truth is Python's own line iteration over the same bytes (``io.BytesIO(data)``), which the replay loop
used before it read in blocks.
"""

from __future__ import annotations

import gzip
import io
import itertools
from pathlib import Path

import pytest

from auditor.replay_input import feed_file
from auditor.sources.files import BOM, FlowFile, SourceError, split_lines

SHAPES = {
    "plain": b'{"a":1}\n{"b":2}\n',
    "no final newline": b'{"a":1}\n{"b":2}',
    "blank and whitespace lines": b'\n{"a":1}\n\n   \n\t\r\n{"b":2}\n\n',
    "crlf": b'{"a":1}\r\n{"b":2}\r\n',
    "a bare carriage return inside a line": b'{"a":1}\r{"b":2}\n{"c":3}\n',
    "long and short lines": b"".join(b"x" * n + b"\n" for n in (0, 1, 7, 300, 5, 1000, 2, 64, 65, 63)),
    "one line longer than many blocks": b"y" * 5000 + b"\n" + b"z\n",
    "empty": b"",
    "only a newline": b"\n",
}


def lines_of(path: Path, size: int) -> list[bytes]:
    with FlowFile(str(path)) as f:
        blocks = list(f.blocks(size))
    assert all(blocks), "no empty block is yielded"
    return list(itertools.chain.from_iterable(blocks))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000, 1 << 20])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("compressed", [False, True])
def test_blocks_give_every_line_as_file_iteration_does(
    tmp_path: Path, shape: str, size: int, compressed: bool
) -> None:
    data = SHAPES[shape]
    path = tmp_path / "flows.jsonl"
    path.write_bytes(gzip.compress(data) if compressed else data)
    assert lines_of(path, size) == list(io.BytesIO(data))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 1 << 20])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("compressed", [False, True])
def test_a_byte_order_mark_at_the_start_is_not_part_of_the_first_line(
    tmp_path: Path, shape: str, size: int, compressed: bool
) -> None:
    """As jq reads such a file (RFC 8259 lets a parser ignore the mark): the lines of the same file without
    it, in blocks of any size (reads shorter than the mark included) and line by line."""
    data = SHAPES[shape]
    path = tmp_path / "flows.jsonl"
    path.write_bytes(gzip.compress(BOM + data) if compressed else BOM + data)
    assert lines_of(path, size) == list(io.BytesIO(data))
    with FlowFile(str(path)) as f:
        assert [line for _, line in f] == [line for line in io.BytesIO(data) if line.strip()]


def test_a_byte_order_mark_elsewhere_stays_where_it_is(tmp_path: Path) -> None:
    data = b'{"a":1}\n' + BOM + b'{"b":2}\n'
    path = tmp_path / "flows.jsonl"
    path.write_bytes(data)
    assert lines_of(path, 3) == list(io.BytesIO(data))
    path.write_bytes(BOM * 2 + data)  # only the first mark is the file's
    assert lines_of(path, 3) == list(io.BytesIO(BOM + data))


def test_split_lines_is_file_iteration() -> None:
    for data in SHAPES.values():
        assert split_lines(data) == list(io.BytesIO(data))


def test_blocks_hold_about_the_asked_size(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    path.write_bytes(b"".join(b"%05d\n" % i for i in range(10_000)))  # 6 bytes a line
    with FlowFile(str(path)) as f:
        sizes = [len(block) for block in f.blocks(6_000)]
    assert sum(sizes) == 10_000
    assert max(sizes) <= 1_000 and len(sizes) >= 10


def test_a_damaged_gzip_stream_names_the_file_and_a_line_before_the_damage(tmp_path: Path) -> None:
    data = b"".join(b'{"n":%d}\n' % i for i in range(50_000))
    path = tmp_path / "cut.jsonl.gz"
    packed = gzip.compress(data)
    path.write_bytes(packed[: len(packed) // 2])
    seen: list[bytes] = []
    with FlowFile(str(path)) as f, pytest.raises(SourceError) as raised:
        for block in f.blocks():
            seen.extend(block)
    message = str(raised.value)
    assert message.startswith(f"{path}: compressed stream is damaged after line ")
    line = int(message.split("after line ")[1].split(":")[0])
    assert line == len(seen) > 0  # the lines read before the damage, every one of them whole
    assert seen == list(io.BytesIO(data))[:line]


def test_replay_numbers_lines_across_blocks(tmp_path: Path) -> None:
    """An invalid line's number counts the blank lines and the lines of earlier blocks."""
    from auditor.classify import Auditor
    from auditor.matrix import load_matrix
    from auditor.pipeline import Pipeline
    from auditor.replay_input import UnjudgeableCheck
    from auditor.sinks.report import ReportSink

    matrix = load_matrix(Path(__file__).resolve().parent.parent / "examples" / "airflow" / "matrix.yaml")
    lines = [b'{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"1"}}\n'] * 40
    bad = {3: b"\n", 17: b"not json\n", 18: b"   \n", 33: b"[1]\n", 39: b"{}\n"}
    for index, line in bad.items():
        lines[index] = line
    path = tmp_path / "flows.jsonl"
    path.write_bytes(b"".join(lines))
    sink = ReportSink(matrix)
    with FlowFile(str(path)) as f:
        summary = feed_file(Pipeline(Auditor(matrix), [sink]), "f", f.blocks(100), UnjudgeableCheck(matrix))
    report = sink.report()
    assert [(s["file"], s["line"]) for s in report["invalid_samples"]] == [("f", 18), ("f", 34)]
    assert summary.lines == 38 and summary.events == 35 and summary.first_error is not None
    assert summary.first_error[0] == 18


def test_pipeline_feed_blocks_numbers_and_skips_as_replay_does(tmp_path: Path) -> None:
    """matrix learn feeds blocks through Pipeline.feed_blocks: the same numbering and blank lines."""
    from auditor.classify import Auditor
    from auditor.matrix import load_matrix
    from auditor.pipeline import Pipeline
    from auditor.sinks.report import ReportSink

    matrix = load_matrix(Path(__file__).resolve().parent.parent / "examples" / "airflow" / "matrix.yaml")
    lines = [b'{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"1"}}\n'] * 30
    for index, line in {2: b"\r\n", 11: b"oops\n", 12: b" \t \n", 27: b'{"flow": 7}\n'}.items():
        lines[index] = line
    path = tmp_path / "flows.jsonl"
    path.write_bytes(b"".join(lines))
    sink = ReportSink(matrix)
    with FlowFile(str(path)) as f:
        Pipeline(Auditor(matrix), [sink]).feed_blocks("f", f.blocks(90))
    report = sink.report()
    assert [(s["file"], s["line"]) for s in report["invalid_samples"]] == [("f", 12), ("f", 28)]
    assert report["flows"]["invalid"] == 2
