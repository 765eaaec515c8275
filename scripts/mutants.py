#!/usr/bin/env python3
# ruff: noqa: E501
"""One-line mutation check of the rules that make the numbers trustworthy.

Each mutant changes one line of the code (a judging rule, dedup, first match, the reply rule in both modes,
the resolver cache, exit codes, …); the tests named for it must then fail. Prints one line per mutant and
exits 1 if any survives. Run from the repository root: ``.venv/bin/python scripts/mutants.py`` (about a
minute). The working tree is restored after each mutant, also on Ctrl-C. The tests run with
``FLOW_AUDITOR_PURE=1``, on the mutated sources rather than on the compiled core of ``make native``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JUDGING = ["tests/test_judge.py", "tests/test_classify.py", "tests/test_reply_evidence.py"]
MATRIX = ["tests/test_matrix.py", "tests/test_classify.py", "tests/test_resolver_cache.py"]
CLI = ["tests/test_replay_cli.py", "tests/test_cli_exit_codes.py"]

# (what, file, original text, mutated text, tests that must fail)
MUTANTS: list[tuple[str, str, str, str, list[str]]] = [
    # judging rules (auditor/judge.py)
    (
        "rule 1: reply bit ignored",
        "auditor/judge.py",
        "    if reply or (reply is None",
        "    if (reply is None",
        JUDGING,
    ),
    (
        "rule 1: SYN+ACK not a reply",
        "auditor/judge.py",
        "flow.tcp_flags & _SYN_ACK == _SYN_ACK):",
        "flow.tcp_flags & _SYN_ACK == TCP_SYN):",
        JUDGING,
    ),
    (
        "rule 1: node-local takes replies as evidence",
        "auditor/judge.py",
        "            node_local\n",
        "            False\n",
        JUDGING,
    ),
    (
        "rule 1: dropped reply proves delivery",
        "auditor/judge.py",
        "            or flow.verdict != Verdict.FORWARDED\n",
        "            or flow.verdict == Verdict.DROPPED\n",
        JUDGING,
    ),
    (
        "rule 1: L7 reply proves delivery",
        "auditor/judge.py",
        "            or flow.flow_type == FlowType.L7\n",
        "            or False\n",
        JUDGING,
    ),
    (
        "rule 1: any ICMP reply proves delivery",
        "auditor/judge.py",
        "(flow.protocol, flow.icmp_type) not in ICMP_REQUEST_TYPE)",
        "False)",
        JUDGING,
    ),
    (
        "rule 1: reply never evidence",
        "auditor/judge.py",
        "        return REPLY_DELIVERED",
        "        return REPLY",
        JUDGING,
    ),
    (
        "rule 2: AUDIT not a drop",
        "auditor/judge.py",
        "frozenset({Verdict.DROPPED, Verdict.ERROR, Verdict.AUDIT})",
        "frozenset({Verdict.DROPPED, Verdict.ERROR})",
        JUDGING,
    ),
    (
        "rule 2: ERROR not a drop",
        "auditor/judge.py",
        "frozenset({Verdict.DROPPED, Verdict.ERROR, Verdict.AUDIT})",
        "frozenset({Verdict.DROPPED, Verdict.AUDIT})",
        JUDGING,
    ),
    (
        "rule 2: drop without L4 placed",
        "auditor/judge.py",
        "return DROPPED if flow.protocol else IGNORED",
        "return DROPPED",
        JUDGING,
    ),
    (
        "rule 3: REDIRECTED proves nothing",
        "auditor/judge.py",
        "frozenset({Verdict.FORWARDED, Verdict.REDIRECTED})",
        "frozenset({Verdict.FORWARDED})",
        JUDGING,
    ),
    (
        "rule 3: trace to endpoint provisional",
        "auditor/judge.py",
        "    if point == ObservationPoint.TO_ENDPOINT:\n        return DELIVERED",
        "    if point == ObservationPoint.TO_ENDPOINT:\n        return PROVISIONAL",
        JUDGING,
    ),
    (
        "rule 3: ingress verdict provisional",
        "auditor/judge.py",
        "if flow.event_type == EventType.POLICY_VERDICT or point in _INGRESS_PROOF_POINTS:",
        "if point in _INGRESS_PROOF_POINTS:",
        JUDGING,
    ),
    (
        "rule 3: ingress proxy redirect provisional",
        "auditor/judge.py",
        "frozenset({ObservationPoint.TO_ENDPOINT, ObservationPoint.TO_PROXY})",
        "frozenset({ObservationPoint.TO_ENDPOINT})",
        JUDGING,
    ),
    (
        "rule 3: ingress before endpoint delivered",
        "auditor/judge.py",
        "            return DELIVERED\n        return PROVISIONAL",
        "            return DELIVERED\n        return DELIVERED",
        JUDGING,
    ),
    (
        "rule 3: egress to pods delivered",
        "auditor/judge.py",
        "return DELIVERED if is_external(flow.destination, flow.source) else PROVISIONAL",
        "return DELIVERED",
        JUDGING,
    ),
    (
        "rule 3: remote-node not external",
        "auditor/judge.py",
        "frozenset({1, 2, 3, 6, 7, 9, 10})",
        "frozenset({1, 2, 3, 7, 9, 10})",
        JUDGING,
    ),
    (
        "rule 3: unmanaged not external",
        "auditor/judge.py",
        "frozenset({1, 2, 3, 6, 7, 9, 10})",
        "frozenset({1, 2, 6, 7, 9, 10})",
        JUDGING,
    ),
    (
        "rule 3: health external",
        "auditor/judge.py",
        "frozenset({1, 2, 3, 6, 7, 9, 10})",
        "frozenset({1, 2, 3, 4, 6, 7, 9, 10})",
        JUDGING,
    ),
    (
        "rule 3: world-ipv6 not external",
        "auditor/judge.py",
        "frozenset({1, 2, 3, 6, 7, 9, 10})",
        "frozenset({1, 2, 3, 6, 7, 9})",
        JUDGING,
    ),
    (
        "rule 3: 2^24 boundary off by one",
        "auditor/judge.py",
        "ident >= LOCAL_SCOPE_IDENTITY:",
        "ident > LOCAL_SCOPE_IDENTITY:",
        JUDGING,
    ),
    (
        "rule 3: 2^24 boundary below",
        "auditor/model.py",
        "LOCAL_SCOPE_IDENTITY: Final = 1 << 24",
        "LOCAL_SCOPE_IDENTITY: Final = (1 << 24) - 1",
        JUDGING,
    ),
    (
        "rule 3: other cluster not external",
        "auditor/judge.py",
        "dst.cluster_name != src.cluster_name:",
        "dst.cluster_name == src.cluster_name:",
        JUDGING,
    ),
    (
        "rule 3: labels-only world not external",
        "auditor/judge.py",
        "    if ident == 0 or ident < 256:",
        "    if ident < 0:",
        JUDGING,
    ),
    (
        "rule 4: L7 record a verdict",
        "auditor/judge.py",
        "    if flow.flow_type == FlowType.L7 or flow.event_type not in _EVIDENCE_EVENTS:",
        "    if flow.event_type not in _EVIDENCE_EVENTS:",
        JUDGING,
    ),
    (
        "rule 4: no direction delivered",
        "auditor/judge.py",
        "        return DELIVERED if is_external(flow.destination, flow.source) else PROVISIONAL\n    return IGNORED",
        "        return DELIVERED if is_external(flow.destination, flow.source) else PROVISIONAL\n    return DELIVERED",
        JUDGING,
    ),
    # classification and dedup (auditor/classify.py)
    (
        "reply evidence not reversed",
        "auditor/classify.py",
        "            port = j.ICMP_REQUEST_TYPE[(protocol, flow.icmp_type)] if icmp else flow.source_port",
        "            port = j.ICMP_REQUEST_TYPE[(protocol, flow.icmp_type)] if icmp else flow.destination_port",
        JUDGING,
    ),
    (
        "dedup ignores the class",
        "auditor/classify.py",
        "new = not self.dedup.seen(hash((connection, cls)), flow.time)",
        "new = not self.dedup.seen(connection, flow.time)",
        JUDGING,
    ),
    (
        "dedup ignores the source port",
        "auditor/classify.py",
        "connection = hash((sip, dip, sport, port, protocol))",
        "connection = hash((sip, dip, port, protocol))",
        JUDGING,
    ),
    (
        "dedup window inclusive",
        "auditor/classify.py",
        "            if 0.0 <= since < self.window:",
        "            if 0.0 <= since <= self.window + 1:",
        JUDGING,
    ),
    (
        "provisional never resolved",
        "auditor/classify.py",
        "            self.pending.resolve(connection, flow.time)",
        "            pass",
        JUDGING,
    ),
    (
        "provisional never flushed",
        "auditor/classify.py",
        "            self.pending.flush()",
        "            pass",
        JUDGING,
    ),
    (
        "out of scope when one end is in scope",
        "auditor/classify.py",
        "            and flow.source.namespace not in scope\n            and flow.destination.namespace not in scope",
        "            and (flow.source.namespace not in scope\n            or flow.destination.namespace not in scope)",
        JUDGING,
    ),
    # resolver cache (auditor/classify.py), first match and entities (auditor/matrix/)
    (
        "cache ignores new labels",
        "auditor/classify.py",
        "                or not same_labels(r.labels, labels)\n",
        "",
        MATRIX,
    ),
    (
        "label sets compared on the shorter one's length",
        "auditor/classify.py",
        "    return len(a) == len(b) and all(a[i] == b[i] for i in range(len(a)))",
        "    return all(a[i] == b[i] for i in range(min(len(a), len(b))))",
        MATRIX,
    ),
    (
        "label sets: the last label not compared",
        "auditor/classify.py",
        "    return len(a) == len(b) and all(a[i] == b[i] for i in range(len(a)))",
        "    return len(a) == len(b) and all(a[i] == b[i] for i in range(len(a) - 1))",
        MATRIX,
    ),
    (
        "cache ignores new namespace",
        "auditor/classify.py",
        "                or r.namespace != namespace\n",
        "",
        MATRIX,
    ),
    (
        "cache ignores workloads",
        "auditor/classify.py",
        "                or (self._use_workloads and r.workloads != workloads)\n",
        "",
        MATRIX,
    ),
    (
        "cache skips address part",
        "auditor/classify.py",
        "        elif not candidates[0].selector.has_address_part:",
        "        elif candidates:",
        MATRIX,
    ),
    (
        "first match: last candidate wins",
        "auditor/matrix/model.py",
        "    for comp in comps:\n        sel = comp.selector",
        "    for comp in reversed(comps):\n        sel = comp.selector",
        MATRIX,
    ),
    (
        "first match: candidates after the first full match",
        "auditor/matrix/model.py",
        "                if not comp.selector.has_address_part:\n                    break",
        "                if not comp.selector.has_address_part:\n                    found.reverse()",
        MATRIX,
    ),
    (
        "multi-entity: one entity only",
        "auditor/matrix/selectors.py",
        "        if self.entities is not None and self.entities.isdisjoint(entities):",
        "        if self.entities is not None and (most_specific_entity(entities) not in self.entities):",
        MATRIX,
    ),
    # the live path's wire reader (auditor/decode_wire.py): the same flows as protobuf, or deferred
    (
        "wire reader: a message field twice read, not deferred",
        "auditor/decode_wire.py",
        "    if f.seen & bit:",
        "    if False:",
        ["tests/test_decode_wire.py"],
    ),
    (
        "wire reader: a key or length's one-byte path takes 0x80, the first byte of a longer one",
        "auditor/decode_wire.py",
        "    if byte < 0x80:  # one byte: most keys (fields 1-15) and lengths (under 128)",
        "    if byte <= 0x80:  # one byte: most keys (fields 1-15) and lengths (under 128)",
        ["tests/test_decode_wire.py"],
    ),
    (
        "wire reader: a cleared TCP flag stays set",
        "auditor/decode_wire.py",
        "flags = (flags | bit) if value else (flags & ~bit)",
        "flags = flags | bit",
        ["tests/test_decode_wire.py"],
    ),
    (
        "wire reader: the envelope time wins over the flow's nanoseconds",
        "auditor/decode_wire.py",
        "    if not (seconds or nanos):",
        "    if not seconds:",
        ["tests/test_decode_wire.py"],
    ),
    # exit codes (auditor/commands/replay.py)
    (
        "fail-on any → all",
        "auditor/commands/replay.py",
        "any(classes[c] for c in fail_on)",
        "all(classes[c] for c in fail_on)",
        CLI,
    ),
    # a flow stamped ahead of the clock (auditor/sinks/metrics.py, auditor/sinks/live.py)
    (
        "last-seen: a future flow time trusted",
        "auditor/sinks/metrics.py",
        "        if t > self._horizon:  # stamped ahead",
        "        if False and t > self._horizon:  # stamped ahead",
        ["tests/test_metrics_sink.py"],
    ),
    (
        "live page: a future flow time trusted",
        "auditor/sinks/live.py",
        "        if t > self._horizon:  # stamped ahead",
        "        if False and t > self._horizon:  # stamped ahead",
        ["tests/test_live_page.py::test_a_flow_stamped_a_day_ahead_of_the_clock_moves_neither_the_window_nor_its_node"],
    ),
    # queue entries left behind by late times (auditor/classify.py)
    (
        "dedup: a stale queue entry forgets a key seen since",
        "auditor/classify.py",
        "        if kept is not None and kept.t == oldest.t:",
        "        if kept is not None:",
        ["tests/test_classify.py"],
    ),
    (
        "pending: a stale queue entry expires a connection held since",
        "auditor/classify.py",
        "        if item is not None and item.flow.time == t:",
        "        if item is not None:",
        ["tests/test_classify.py"],
    ),
    (
        "--jobs: a reused identity's label sets merged into one policy slot",
        "auditor/replay_chunk.py",
        "        key = (index, src, dst)",
        "        key = (index, src, src)",
        ["tests/test_replay_parallel.py::test_label_history_tells_a_reused_identity_apart_within_a_chunk"],
    ),
    (
        "blocks: a line across two reads loses its start (replay's and the workers' reads)",
        "auditor/sources/files.py",
        '            lines[0] = b"".join((*start, lines[0]))',
        "            lines[0] = lines[0]",
        ["tests/test_replay_parallel.py::test_a_worker_reads_its_chunk_in_blocks_with_the_lines_of_the_range"],
    ),
    (
        "input files: a byte order mark at the start kept in line 1",
        "auditor/sources/files.py",
        "        if self._stream.peek(len(BOM))[: len(BOM)] == BOM:  # not part of line 1: read before any line",
        "        if False:",
        ["tests/test_sources_files.py::test_a_byte_order_mark_at_the_start_is_not_part_of_the_first_line"],
    ),
    (
        "--jobs: the first chunk starts before a byte order mark",
        "auditor/replay_parallel.py",
        "        bounds = [len(BOM) if f.read(len(BOM)) == BOM else 0]  # a byte order mark is not part of line 1",
        "        bounds = [0]",
        ["tests/test_replay_parallel.py::test_a_worker_drops_a_byte_order_mark_only_at_the_start_of_the_file"],
    ),
    (
        "--jobs: an edge noted settled one example early",
        "auditor/replay_parallel.py",
        "                    if len(stats.examples) == MAX_EXAMPLES:",
        "                    if len(stats.examples) == MAX_EXAMPLES - 1:",
        ["tests/test_replay_parallel.py::test_the_workers_learn_what_the_merge_settled_and_the_report_stays_the_same"],
    ),
    (
        "--jobs: a provisional key noted settled one example early",
        "auditor/replay_parallel.py",
        "                if stats is not None and len(stats.examples) >= MAX_EXAMPLES:",
        "                if stats is not None and len(stats.examples) >= MAX_EXAMPLES - 1:",
        ["tests/test_replay_parallel.py::test_the_workers_learn_what_the_merge_settled_and_the_report_stays_the_same"],
    ),
    (
        "--jobs: a worker skips the dropped sample of an edge that has none",
        "auditor/replay_chunk.py",
        "edge not in settled.dropped",
        "edge in settled.dropped",
        ["tests/test_replay_parallel.py::test_the_workers_learn_what_the_merge_settled_and_the_report_stays_the_same"],
    ),
    (
        "--jobs: a worker ignores what it is told is settled",
        "auditor/replay_chunk.py",
        "            kinds[kind].add(item)",
        "            pass",
        ["tests/test_replay_parallel.py::test_a_worker_skips_what_the_notes_name"],
    ),
    (
        "label history: one more label set per component than it keeps",
        "auditor/sinks/label_history.py",
        "        elif len(seen) < self.per_key and labels not in seen:",
        "        elif len(seen) <= self.per_key and labels not in seen:",
        ["tests/test_policy_hint.py::test_the_label_history_keeps_the_first_label_sets_of_a_component"],
    ),
    (
        "decode_block: a second-pass error reported after later first-pass ones",
        "auditor/decode.py",
        "        if late:\n            failed.sort()",
        "        if False:\n            failed.sort()",
        ["tests/test_decode_json.py::test_a_block_decodes_as_its_lines_do_errors_in_line_order"],
    ),
    (
        "replay in blocks: results handed over after an expired connection's unproven call",
        "auditor/replay_input.py",
        "                if pending is not None and pending.expired:\n                    hand_over(sinks, results)\n",
        "                if pending is not None and pending.expired:\n",
        ["tests/test_replay_input.py::test_sinks_see_a_file_in_blocks_as_they_see_it_line_by_line"],
    ),
    (
        "replay in blocks: results handed over after an undecodable line's report",
        "auditor/replay_input.py",
        "            if e < len(errors) and errors[e][0] == k:\n                hand_over(sinks, results)\n",
        "            if e < len(errors) and errors[e][0] == k:\n",
        ["tests/test_replay_input.py::test_sinks_see_a_file_in_blocks_as_they_see_it_line_by_line"],
    ),
    (
        "replay: the worker pool unfreezes what a batch run froze",
        "auditor/workers.py",
        "            if not frozen_before:\n                gc.unfreeze()",
        "            gc.unfreeze()",
        ["tests/test_workers.py::test_the_pool_leaves_the_collector_as_it_found_it"],
    ),
    (
        "decode: an enum's commonest name given another name's number",
        "auditor/decode.py",
        "_EGRESS_NUMBER: Final = DIRECTIONS[_EGRESS]",
        '_EGRESS_NUMBER: Final = DIRECTIONS["INGRESS"]',
        ["tests/test_decode_json.py"],
    ),
    (
        "--jobs: the connection's source end read as its destination's resolution",
        "auditor/classify.py",
        "        self.resolved_before, self.resolved = self.resolved, r",
        "        self.resolved_before, self.resolved = r, r",
        ["tests/test_replay_parallel.py"],
    ),
    (
        "address selectors: pods and nodes inside a CIDR are that component",
        "auditor/matrix/selectors.py",
        "        if (self.cidrs or self.fqdns) and not outside_cluster(ep, entities):",
        "        if False:",
        ["tests/test_matrix.py", "tests/test_classify.py"],
    ),
    (
        "pending: a proof after the window still proves",
        "auditor/classify.py",
        "            self.advance(t)  # first what the window has passed",
        "            pass  # first what the window has passed",
        ["tests/test_classify.py"],
    ),
    (
        "--fail-on: an empty value is none",
        "auditor/commands/replay.py",
        "    if not classes:\n        raise argparse.ArgumentTypeError(\"empty: give classes (comma-separated) or none\")",
        "    if not classes:\n        return frozenset()",
        ["tests/test_cli_exit_codes.py"],
    ),
    (
        "dedup: an event stamped before the connection's first counts with it however far back",
        "auditor/classify.py",
        "                if since > -self.window:",
        "                if True:",
        ["tests/test_classify.py"],
    ),
    (
        "matrix lint: a later component with fewer labels is dead",
        "auditor/matrix/lint.py",
        "        and set(a.pod_labels) <= set(b.pod_labels)",
        "        and set(a.pod_labels) >= set(b.pod_labels)",
        ["tests/test_matrix_lint.py"],
    ),
    (
        "reload: a half-written matrix counts as a failure at once",
        "auditor/daemon.py",
        "            if not forced and digest != self._unsettled:",
        "            if False:",
        ["tests/test_daemon_robust.py::test_a_matrix_caught_half_written_counts_only_when_it_stays_broken"],
    ),
    (
        "rule 4: a related ICMP error judged as a connection",
        "auditor/judge.py",
        "    if flow.trace_reason == TraceReason.RELATED and (flow.protocol, flow.icmp_type) in ICMP_ERROR_TYPES:",
        "    if False:",
        ["tests/test_judge.py"],
    ),
]


def run(tests: list[str]) -> bool:
    """True when the tests fail (the mutant is killed). They run on the Python sources
    (``FLOW_AUDITOR_PURE=1``): a compiled module from ``make native`` would not see the mutated line."""
    existing = [t for t in tests if (ROOT / t).exists()]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *existing],
        cwd=ROOT,
        env={**os.environ, "FLOW_AUDITOR_PURE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode != 0


def main() -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    survived = 0
    for what, file, old, new, tests in MUTANTS:
        path = ROOT / file
        original = path.read_text()
        count = original.count(old)
        if count != 1:
            print(f"STALE    {what}: {file} has the original text {count} times")
            survived += 1
            continue
        mutated = original.replace(old, new)
        try:
            path.write_text(mutated)
            killed = run(tests)
        finally:
            path.write_text(original)
        print(f"{'killed ' if killed else 'SURVIVED'} {what}")
        survived += not killed
    print(f"{len(MUTANTS) - survived} of {len(MUTANTS)} mutants killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
