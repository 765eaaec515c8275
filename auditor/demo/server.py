"""An embedded Hubble-compatible gRPC server: ``observer.Observer`` on loopback, fed from memory.

Stage: none of the pipeline's — it stands in for Hubble Relay (the *input* of ``run``) in ``flow-auditor
demo``, in the daemon's integration tests and in benchmarks. Input: a :class:`FlowLog`, an append-only
bounded ring of ``(time_ns, serialized GetFlowsResponse)`` entries that other threads may append to while
streams are open (loaded from jsonpb records, or played by a :class:`Player` / :class:`LiveScenario`).
Output: ``GetFlows`` streams, ``ServerStatus`` and ``GetNodes`` answers, with or without TLS/mTLS.

``GetFlows`` semantics (those of Hubble, restricted to what the auditor and its tests use):

- without ``follow``: the matching retained entries (the last ``number`` when ``number > 0``, the first
  ``number`` when ``first`` is also set, else all), then the stream ends;
- with ``follow``: a backlog — all matching entries with time >= ``since`` when ``since`` is set (the last
  ``number`` of them when ``number`` is set too), else the last ``number`` when set, else nothing — then
  every new append until the client cancels or the server stops. ``first`` with ``follow`` is refused;
- ``since``/``until`` compare with the flow time (the envelope time when the flow has none); entries
  without any time pass. As in Hubble, ``since`` applies to live entries too: a live entry stamped before
  ``since`` is not sent (a client resuming with ``since`` misses what a server with a clock behind
  stamps). With ``follow``, the first live entry later than ``until`` ends the stream;
- ``whitelist``/``blacklist``: an entry passes if it matches any whitelist filter (or there is none) and
  no blacklist filter; all set fields of one filter must match, any value of one field. Fields
  implemented: ``source_pod``/``destination_pod`` (prefix of ``"namespace/pod"``; ``"ns/"`` is a whole
  namespace; an endpoint without namespace never matches), ``source_label``/``destination_label`` (label
  selectors over the endpoint's labels, see :mod:`auditor.demo.labels`), ``verdict`` and ``node_name``
  (prefix). A
  filter using any other field is refused with ``INVALID_ARGUMENT`` rather than silently ignored.
  Filters apply to flows only: ``lost_events``, ``node_status`` and raw entries are always sent;
- ``field_mask``: as Hubble, only the masked fields of a flow are sent, after the filters saw the whole
  flow, and the envelope's ``time``/``node_name`` come from the masked flow; an invalid mask fails the
  call with ``UNKNOWN`` ("invalid fieldmask"). See :mod:`auditor.demo.fieldmask`;
- a follower that falls more than the ring's capacity behind gets a ``lost_events`` response
  (source ``HUBBLE_RING_BUFFER``, the number of entries it missed), as Hubble does.

Speed: responses are serialized once, when appended; ``GetFlows`` is registered with a response
serializer of ``None`` (gRPC's identity), so the server only hands the stored bytes to the transport.

Error policy: invalid requests end with ``INVALID_ARGUMENT`` and a message naming the problem; loading
jsonpb input raises :class:`ValueError` naming ``file:line``; binding failures raise ``RuntimeError``
from gRPC. :func:`main` (``python -m auditor.demo.server``) prints ``error: …`` and exits 2 on any of them.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

import grpc  # type: ignore[import-untyped,unused-ignore]
from google.protobuf import json_format, timestamp_pb2

from auditor import __version__
from auditor._proto.flow import flow_pb2
from auditor._proto.observer import observer_pb2
from auditor.demo.fieldmask import INVALID_MESSAGE, FlowMask, InvalidFieldMask
from auditor.demo.labels import Selector, compile_selector, selects_any
from auditor.scenario import DEFAULT_START, airflow_scenario
from auditor.sources.files import FlowFile

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_SPEED",
    "Demo",
    "Entry",
    "FlowLog",
    "HubbleServer",
    "LiveScenario",
    "LogStats",
    "Player",
    "ServerTls",
    "load_jsonl",
    "log_from_responses",
    "lost_events_response",
    "main",
    "node_status_response",
    "response_from_event",
    "start_demo",
]

SERVICE: Final = "observer.Observer"
DEFAULT_CAPACITY: Final = 65_536
# The bundled scenario is ten minutes of flow time: at 10x a loop takes a minute and a violation
# shows up every few seconds.
DEFAULT_SPEED: Final = 10.0
SUPPORTED_FILTER_FIELDS: Final = frozenset(
    {"source_pod", "destination_pod", "source_label", "destination_label", "verdict", "node_name"}
)

_NS: Final = 1_000_000_000
_READ_BATCH: Final = 512  # entries taken from the ring per lock acquisition
_IDLE_WAIT_S: Final = 0.5  # upper bound on a follower's sleep; wake-ups normally come sooner
_NODE_CONNECTED: Final = observer_pb2.NODE_CONNECTED
_NODE_GONE: Final = observer_pb2.NODE_GONE


# ------------------------------------------------------------------------------------------------
# The log
# ------------------------------------------------------------------------------------------------


class Entry(NamedTuple):
    """One stored response with the fields the filters read, extracted once at append time.

    ``source_pod``/``destination_pod`` are ``"namespace/pod"`` (``""`` without namespace); ``time_ns`` is
    0 when the response carries no time; ``is_flow`` is false for lost-event, node-status and raw entries.
    """

    time_ns: int
    data: bytes
    is_flow: bool
    source_pod: str
    destination_pod: str
    verdict: int
    node_name: str
    source_labels: tuple[str, ...] = ()
    destination_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogStats:
    """Counters of a :class:`FlowLog` at one moment; ``nodes`` maps node name to ``NodeState`` number."""

    capacity: int
    retained: int
    flows_retained: int
    flows_seen: int
    appended: int
    nodes: dict[str, int]


def _ns(ts: Any) -> int:
    return int(ts.seconds) * _NS + int(ts.nanos)


def _pod_key(endpoint: flow_pb2.Endpoint) -> str:
    return f"{endpoint.namespace}/{endpoint.pod_name}" if endpoint.namespace else ""


def _entry(response: observer_pb2.GetFlowsResponse) -> Entry:
    data = response.SerializeToString()
    if response.WhichOneof("response_types") != "flow":
        return Entry(_ns(response.time), data, False, "", "", 0, response.node_name)
    flow = response.flow
    time_ns = _ns(flow.time) or _ns(response.time)
    return Entry(
        time_ns,
        data,
        True,
        _pod_key(flow.source),
        _pod_key(flow.destination),
        flow.verdict,
        flow.node_name or response.node_name,
        tuple(flow.source.labels),
        tuple(flow.destination.labels),
    )


class FlowLog:
    """Append-only bounded ring of serialized ``GetFlowsResponse`` entries, safe across threads.

    Entries have absolute sequence numbers (0, 1, 2, …); the ring keeps the last ``capacity`` of them.
    Writers call :meth:`append`/:meth:`extend`/:meth:`append_raw`; readers (one per open stream) take
    :meth:`snapshot` once and then :meth:`read` forward from a cursor, sleeping in :meth:`wait`.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._slots: list[Entry | None] = [None] * capacity
        self._next = 0
        self._cond = threading.Condition(threading.Lock())
        self._flows_retained = 0
        self._flows_seen = 0
        self._nodes: dict[str, int] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def end(self) -> int:
        """Sequence number the next append will get (= entries appended so far)."""
        return self._next

    @property
    def start(self) -> int:
        """Sequence number of the oldest retained entry."""
        return max(0, self._next - self._capacity)

    # -- writing -------------------------------------------------------------------------------

    def append(self, response: observer_pb2.GetFlowsResponse) -> int:
        """Store one response (serialized now); returns its sequence number."""
        entry = _entry(response)
        with self._cond:
            seq = self._put(entry)
            if response.WhichOneof("response_types") == "node_status":
                self._node_status(response.node_status)
            self._cond.notify_all()
        return seq

    def extend(self, responses: Iterable[observer_pb2.GetFlowsResponse]) -> int:
        """Store many responses under one lock acquisition; returns :attr:`end` afterwards."""
        items = [(_entry(r), r.node_status if r.HasField("node_status") else None) for r in responses]
        with self._cond:
            for entry, status in items:
                self._put(entry)
                if status is not None:
                    self._node_status(status)
            self._cond.notify_all()
            return self._next

    def append_raw(self, data: bytes, *, time_ns: int = 0) -> int:
        """Store arbitrary bytes as one response (e.g. an undecodable message for error-path tests).

        Raw entries are not flows: filters do not apply to them and they do not count in flow statistics.
        """
        with self._cond:
            seq = self._put(Entry(time_ns, bytes(data), False, "", "", 0, ""))
            self._cond.notify_all()
        return seq

    def _put(self, entry: Entry) -> int:
        seq = self._next
        slot = seq % self._capacity
        old = self._slots[slot]
        if old is not None and old.is_flow:
            self._flows_retained -= 1
        self._slots[slot] = entry
        self._next = seq + 1
        if entry.is_flow:
            self._flows_retained += 1
            self._flows_seen += 1
            if entry.node_name and entry.node_name not in self._nodes:
                self._nodes[entry.node_name] = _NODE_CONNECTED
        return seq

    def _node_status(self, status: observer_pb2.NodeStatusEvent) -> None:
        for name in status.node_names:
            if status.state_change == _NODE_GONE:
                self._nodes.pop(name, None)
            else:
                self._nodes[name] = status.state_change

    # -- reading -------------------------------------------------------------------------------

    def snapshot(self, *, entries: bool = True) -> tuple[int, list[Entry]]:
        """``(end, retained entries oldest first)``; with ``entries=False`` only ``end`` is meaningful."""
        with self._cond:
            end = self._next
            if not entries:
                return end, []
            start = max(0, end - self._capacity)
            return end, self._copy(start, end)

    def read(self, cursor: int, limit: int = _READ_BATCH) -> tuple[int, int, list[Entry]]:
        """Entries from ``cursor`` on, at most ``limit``: ``(next cursor, entries missed, entries)``.

        ``entries missed`` is how many entries were overwritten before this reader got to them.
        Never blocks (beyond the lock).
        """
        with self._cond:
            start = max(0, self._next - self._capacity)
            missed = start - cursor if cursor < start else 0
            cursor += missed
            stop = min(self._next, cursor + limit)
            return stop, missed, self._copy(cursor, stop)

    def wait(self, cursor: int, timeout: float, *interrupts: threading.Event) -> bool:
        """Sleep until an entry at or after ``cursor`` exists, any of ``interrupts`` is set (then
        :meth:`wake` was called), or ``timeout`` seconds passed; true when there is something to read."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._next > cursor or any(e.is_set() for e in interrupts), timeout=timeout
            )
            return self._next > cursor

    def wake(self) -> None:
        """Wake every reader sleeping in :meth:`wait` (so it re-checks its interrupts)."""
        with self._cond:
            self._cond.notify_all()

    def _copy(self, start: int, stop: int) -> list[Entry]:
        if start >= stop:
            return []
        first, last = start % self._capacity, (stop - 1) % self._capacity
        slots = self._slots
        chunk = slots[first : last + 1] if first <= last else slots[first:] + slots[: last + 1]
        return chunk  # type: ignore[return-value]  # every slot in [start, stop) is filled

    # -- statistics ----------------------------------------------------------------------------

    def stats(self) -> LogStats:
        with self._cond:
            return LogStats(
                capacity=self._capacity,
                retained=min(self._next, self._capacity),
                flows_retained=self._flows_retained,
                flows_seen=self._flows_seen,
                appended=self._next,
                nodes=dict(self._nodes),
            )

    def flows_since(self, time_ns: int) -> int:
        """Retained flows with a time >= ``time_ns``, counted from the newest backwards until the first
        older flow (appends are in time order in every feeder of this module)."""
        count = 0
        with self._cond:
            seq = self._next - 1
            start = max(0, self._next - self._capacity)
            while seq >= start:
                entry = self._slots[seq % self._capacity]
                seq -= 1
                if entry is None or not entry.is_flow:
                    continue
                if entry.time_ns < time_ns:
                    break
                count += 1
        return count


# ------------------------------------------------------------------------------------------------
# Building responses
# ------------------------------------------------------------------------------------------------

_ENVELOPE_KEYS: Final = frozenset({"flow", "lost_events", "lostEvents", "node_status", "nodeStatus"})


def response_from_event(event: dict[str, Any]) -> observer_pb2.GetFlowsResponse:
    """A jsonpb record (``hubble observe -o jsonpb`` / exporter envelope, or a bare Flow object, proto or
    camelCase field names) as a ``GetFlowsResponse``; unknown fields are dropped.

    Raises ``json_format.ParseError`` when the record does not fit the schema (unknown enum names are
    dropped like unknown fields: newer Hubble versions add values).
    """
    response = observer_pb2.GetFlowsResponse()
    if _ENVELOPE_KEYS.isdisjoint(event):
        json_format.ParseDict(event, response.flow, ignore_unknown_fields=True)
    else:
        json_format.ParseDict(event, response, ignore_unknown_fields=True)
    return response


def load_jsonl(path: str | Path) -> list[observer_pb2.GetFlowsResponse]:
    """Every record of a JSON-lines file (plain or gzip; ``-`` is stdin), in file order.

    Raises :class:`ValueError` naming ``file:line`` for a line that is not a jsonpb record, and
    ``auditor.sources.files.SourceError`` (an ``OSError``) when the file cannot be read.
    """
    out: list[observer_pb2.GetFlowsResponse] = []
    with FlowFile(str(path)) as source:
        for number, line in source:
            try:
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError(f"expected a JSON object, got {type(event).__name__}")
                out.append(response_from_event(event))
            except (ValueError, json_format.Error) as exc:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{number}: {exc}") from None
    return out


def log_from_responses(
    responses: Sequence[observer_pb2.GetFlowsResponse], capacity: int | None = None
) -> FlowLog:
    """A new log holding ``responses`` (capacity: at least their number and :data:`DEFAULT_CAPACITY`)."""
    log = FlowLog(capacity if capacity is not None else max(DEFAULT_CAPACITY, len(responses)))
    log.extend(responses)
    return log


def _timestamp(ns: int | None) -> dict[str, Any]:
    return {} if ns is None else {"time": _ts(ns)}


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def lost_events_response(
    num_events_lost: int,
    *,
    source: str | int = "PERF_EVENT_RING_BUFFER",
    node_name: str = "",
    cpu: int | None = None,
    time_ns: int | None = None,
) -> observer_pb2.GetFlowsResponse:
    """A ``lost_events`` notice as Hubble sends it (``source`` by ``LostEventSource`` name or number;
    ``time_ns`` defaults to now)."""
    lost = flow_pb2.LostEvent(
        source=flow_pb2.LostEventSource.Value(source) if isinstance(source, str) else source,  # type: ignore[arg-type]
        num_events_lost=num_events_lost,
    )
    if cpu is not None:
        lost.cpu.value = cpu
    return observer_pb2.GetFlowsResponse(
        lost_events=lost, node_name=node_name, **_timestamp(time.time_ns() if time_ns is None else time_ns)
    )


def node_status_response(
    state: str | int, node_names: Sequence[str], message: str = "", *, time_ns: int | None = None
) -> observer_pb2.GetFlowsResponse:
    """A Relay ``node_status`` notice (``state`` by ``NodeState`` name or number; ``time_ns`` defaults to
    now). Appending one also updates the node counts of ``ServerStatus``/``GetNodes``."""
    status = observer_pb2.NodeStatusEvent(
        state_change=observer_pb2.NodeState.Value(state) if isinstance(state, str) else state,  # type: ignore[arg-type]
        node_names=list(node_names),
        message=message,
    )
    return observer_pb2.GetFlowsResponse(
        node_status=status, **_timestamp(time.time_ns() if time_ns is None else time_ns)
    )


# ------------------------------------------------------------------------------------------------
# GetFlows request → plan
# ------------------------------------------------------------------------------------------------


class RequestError(ValueError):
    """A GetFlows request this server cannot honour (becomes ``INVALID_ARGUMENT``)."""


@dataclass(frozen=True, slots=True)
class _Criteria:
    """One ``FlowFilter``: every non-empty field must match."""

    source_pods: tuple[str, ...]
    destination_pods: tuple[str, ...]
    verdicts: frozenset[int]
    node_names: tuple[str, ...]
    source_labels: tuple[Selector, ...] = ()
    destination_labels: tuple[Selector, ...] = ()

    @classmethod
    def compile(cls, flt: flow_pb2.FlowFilter) -> _Criteria:
        unsupported = sorted(f.name for f, _ in flt.ListFields() if f.name not in SUPPORTED_FILTER_FIELDS)
        if unsupported:
            raise RequestError(
                f"filter field(s) not implemented by the demo server: {', '.join(unsupported)} "
                f"(supported: {', '.join(sorted(SUPPORTED_FILTER_FIELDS))})"
            )
        try:
            source_labels = tuple(compile_selector(s) for s in flt.source_label)
            destination_labels = tuple(compile_selector(s) for s in flt.destination_label)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return cls(
            tuple(flt.source_pod),
            tuple(flt.destination_pod),
            frozenset(flt.verdict),
            tuple(flt.node_name),
            source_labels,
            destination_labels,
        )

    def matches(self, e: Entry) -> bool:
        if self.source_pods and not (e.source_pod and e.source_pod.startswith(self.source_pods)):
            return False
        if self.destination_pods and not (
            e.destination_pod and e.destination_pod.startswith(self.destination_pods)
        ):
            return False
        if self.verdicts and e.verdict not in self.verdicts:
            return False
        if self.source_labels and not selects_any(self.source_labels, e.source_labels):
            return False
        if self.destination_labels and not selects_any(self.destination_labels, e.destination_labels):
            return False
        return not (self.node_names and not e.node_name.startswith(self.node_names))


@dataclass(frozen=True, slots=True)
class _Plan:
    follow: bool
    number: int
    first: bool
    since_ns: int | None
    until_ns: int | None
    whitelist: tuple[_Criteria, ...]
    blacklist: tuple[_Criteria, ...]
    mask: FlowMask | None = None

    @classmethod
    def from_request(cls, req: observer_pb2.GetFlowsRequest) -> _Plan:
        if req.first and req.follow:
            raise RequestError("first cannot be combined with follow")
        return cls(
            follow=req.follow,
            number=req.number,
            first=req.first,
            since_ns=_ns(req.since) if req.HasField("since") else None,
            until_ns=_ns(req.until) if req.HasField("until") else None,
            whitelist=tuple(_Criteria.compile(f) for f in req.whitelist),
            blacklist=tuple(_Criteria.compile(f) for f in req.blacklist),
            mask=FlowMask.from_request(req),
        )

    def data(self, e: Entry) -> bytes:
        """The bytes to send for an entry that passed: a flow masked when the request has a mask."""
        mask = self.mask
        return mask.response(e.data) if mask is not None and e.is_flow else e.data

    @property
    def filtered(self) -> bool:
        return bool(self.whitelist or self.blacklist)

    def passes(self, e: Entry) -> bool:
        """Filters only (time bounds are checked by the callers)."""
        if not e.is_flow:
            return True
        if self.whitelist and not any(c.matches(e) for c in self.whitelist):
            return False
        return not any(c.matches(e) for c in self.blacklist)

    def in_window(self, e: Entry) -> bool:
        t = e.time_ns
        if not t:
            return True
        if self.since_ns is not None and t < self.since_ns:
            return False
        return self.until_ns is None or t <= self.until_ns

    def needs_backlog(self) -> bool:
        return not self.follow or self.number > 0 or self.since_ns is not None

    def backlog(self, retained: list[Entry]) -> list[Entry]:
        if not self.needs_backlog():
            return []
        chosen: list[Entry]
        if self.number and not self.first:
            chosen = []
            for e in reversed(retained):
                if self.in_window(e) and self.passes(e):
                    chosen.append(e)
                    if len(chosen) == self.number:
                        break
            chosen.reverse()
            return chosen
        chosen = [e for e in retained if self.in_window(e) and self.passes(e)]
        return chosen[: self.number] if self.number else chosen


# ------------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerTls:
    """PEM files for TLS; with ``client_ca`` set, clients must present a certificate signed by it."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> Any:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )


class HubbleServer:
    """``observer.Observer`` (``GetFlows``, ``ServerStatus``, ``GetNodes``) serving a :class:`FlowLog`.

    ``relay=True`` answers ``ServerStatus`` as Hubble Relay does (node counts from the log's nodes).
    One worker thread per open stream: ``max_workers`` bounds concurrent calls.
    """

    def __init__(
        self,
        log: FlowLog,
        *,
        address: str = "127.0.0.1:0",
        tls: ServerTls | None = None,
        relay: bool = True,
        max_workers: int = 32,
    ) -> None:
        self.log = log
        self._address = address
        self._tls = tls
        self._relay = relay
        self._max_workers = max_workers
        self._server: Any = None
        self._port = 0
        self._started_ns = 0
        self._stopping = threading.Event()

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> int:
        """Bind and start serving; returns the bound port (an ephemeral one for port 0)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="hubble-demo"),
            # Refuse a port that another live server holds instead of sharing it silently.
            options=[("grpc.so_reuseport", 0)],
        )
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "GetFlows": grpc.unary_stream_rpc_method_handler(
                self._get_flows,
                request_deserializer=observer_pb2.GetFlowsRequest.FromString,
                response_serializer=None,  # the log holds serialized responses
            ),
            "ServerStatus": grpc.unary_unary_rpc_method_handler(
                self._server_status,
                request_deserializer=observer_pb2.ServerStatusRequest.FromString,
                response_serializer=observer_pb2.ServerStatusResponse.SerializeToString,
            ),
            "GetNodes": grpc.unary_unary_rpc_method_handler(
                self._get_nodes,
                request_deserializer=observer_pb2.GetNodesRequest.FromString,
                response_serializer=observer_pb2.GetNodesResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_registered_method_handlers(SERVICE, handlers)
        if self._tls is None:
            port: int = server.add_insecure_port(self._address)
        else:
            port = server.add_secure_port(self._address, self._tls.credentials())
        if port == 0:
            raise RuntimeError(f"cannot listen on {self._address}")
        server.start()
        self._stopping = threading.Event()  # a fresh one: this object may be started again after stop()
        self._server, self._port = server, port
        self._started_ns = time.monotonic_ns()
        return port

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` actually bound (the host as given to the constructor)."""
        return f"{self._address.rsplit(':', 1)[0]}:{self._port}"

    def stop(self, grace: float | None = None) -> None:
        """Stop and wait: new calls are refused at once, open calls are cancelled after ``grace``
        seconds (``None``: at once). Clients see their stream fail, as when a real server goes away."""
        server = self._server
        if server is None:
            return
        done = server.stop(grace)
        self._stopping.set()
        self.log.wake()
        done.wait()
        self._server = None

    def __enter__(self) -> HubbleServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(None)

    # -- handlers ------------------------------------------------------------------------------

    def _get_flows(self, request: observer_pb2.GetFlowsRequest, context: Any) -> Iterator[bytes]:
        try:
            plan = _Plan.from_request(request)
        except RequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))  # raises
            return iter(())
        except InvalidFieldMask:  # Hubble returns a plain error: status UNKNOWN
            context.abort(grpc.StatusCode.UNKNOWN, INVALID_MESSAGE)  # raises
            return iter(())
        done = threading.Event()

        def on_done() -> None:
            done.set()
            self.log.wake()

        if not context.add_callback(on_done):
            return iter(())
        return self._stream(plan, done)

    def _stream(self, plan: _Plan, done: threading.Event) -> Iterator[bytes]:
        log, stopping = self.log, self._stopping
        end, retained = log.snapshot(entries=plan.needs_backlog())
        data = plan.data
        for entry in plan.backlog(retained):
            yield data(entry)
        del retained
        if not plan.follow:
            return
        cursor = end
        since, until = plan.since_ns, plan.until_ns
        filtered = plan.filtered
        passes = plan.passes
        plain = plan.mask is None
        while not (done.is_set() or stopping.is_set()):
            cursor, missed, batch = log.read(cursor)
            if missed:
                yield lost_events_response(missed, source="HUBBLE_RING_BUFFER").SerializeToString()
            if not batch:
                log.wait(cursor, _IDLE_WAIT_S, done, stopping)
                continue
            if since is None and until is None and not filtered:
                for entry in batch:
                    yield entry.data if plain else data(entry)
                continue
            for entry in batch:
                t = entry.time_ns
                if t and until is not None and t > until:
                    return
                if t and since is not None and t < since:
                    continue  # as Hubble does: since applies to live events too
                if passes(entry):
                    yield data(entry)

    def _server_status(
        self, request: observer_pb2.ServerStatusRequest, context: Any
    ) -> observer_pb2.ServerStatusResponse:
        stats = self.log.stats()
        now = time.time_ns()
        response = observer_pb2.ServerStatusResponse(
            num_flows=stats.flows_retained,
            max_flows=stats.capacity,
            seen_flows=stats.flows_seen,
            uptime_ns=time.monotonic_ns() - self._started_ns,
            version=f"flow-auditor-demo/{__version__}",
            flows_rate=self.log.flows_since(now - 60 * _NS) / 60.0,
        )
        if self._relay:
            unavailable = sorted(n for n, s in stats.nodes.items() if s != _NODE_CONNECTED)
            response.num_connected_nodes.value = len(stats.nodes) - len(unavailable)
            response.num_unavailable_nodes.value = len(unavailable)
            response.unavailable_nodes.extend(unavailable)
        return response

    def _get_nodes(
        self, request: observer_pb2.GetNodesRequest, context: Any
    ) -> observer_pb2.GetNodesResponse:
        nodes = self.log.stats().nodes
        return observer_pb2.GetNodesResponse(
            nodes=[
                observer_pb2.Node(
                    name=name,
                    version=f"flow-auditor-demo/{__version__}",
                    address="127.0.0.1",
                    state=state,  # type: ignore[arg-type]
                    tls=observer_pb2.TLS(enabled=self._tls is not None),
                )
                for name, state in sorted(nodes.items())
            ]
        )


# ------------------------------------------------------------------------------------------------
# Feeding a log over time
# ------------------------------------------------------------------------------------------------


class Player:
    """A thread appending ``templates`` to a log on their own schedule: ``(offset_ns, response)`` pairs,
    offsets from the start of one pass, divided by ``speed`` to get wall time.

    With ``loop``, passes repeat every ``period_ns / speed``; with ``retime``, each response is stamped
    with the wall-clock time of its (scheduled) append, and flow UUIDs change from one pass to the next
    (the first 8 hex digits carry the pass number) so that passes never repeat an identifier. The
    templates are owned by the player afterwards (it stamps them in place).
    """

    def __init__(
        self,
        log: FlowLog,
        templates: Sequence[tuple[int, observer_pb2.GetFlowsResponse]],
        *,
        speed: float = 1.0,
        loop: bool = False,
        retime: bool = False,
        period_ns: int | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if not speed > 0 or math.isinf(speed):
            raise ValueError(f"speed must be a positive number, got {speed}")
        self.log = log
        self._templates = sorted(templates, key=lambda t: t[0])
        self._uuids = [m.flow.uuid for _, m in self._templates]
        self._speed = speed
        self._loop = loop
        self._retime = retime
        last = self._templates[-1][0] if self._templates else 0
        self._period_ns = period_ns if period_ns is not None else last + _NS
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hubble-demo-player", daemon=True)
        self.passes = 0
        self.played = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the player to finish (a non-looping one ends after its pass); true if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        base = self._clock()
        while not self._stop.is_set() and self._templates:
            self._play_pass(base, self.passes)
            self.passes += 1
            if not self._loop:
                return
            base += int(self._period_ns / self._speed)

    def _play_pass(self, base: int, number: int) -> None:
        templates, speed = self._templates, self._speed
        i, n = 0, len(templates)
        while i < n and not self._stop.is_set():
            now = self._clock()
            due: list[observer_pb2.GetFlowsResponse] = []
            while i < n:
                at = base + int(templates[i][0] / speed)
                if at > now:
                    break
                due.append(self._stamp(i, at, number) if self._retime else templates[i][1])
                i += 1
            if due:
                self.played += len(due)
                self.log.extend(due)
            if i < n:
                wait_ns = base + int(templates[i][0] / speed) - self._clock()
                if wait_ns > 0:
                    self._stop.wait(min(wait_ns / _NS, _IDLE_WAIT_S))

    def _stamp(self, i: int, ns: int, number: int) -> observer_pb2.GetFlowsResponse:
        msg = self._templates[i][1]
        msg.time.FromNanoseconds(ns)
        if msg.HasField("flow"):
            msg.flow.time.FromNanoseconds(ns)
            uuid = self._uuids[i]
            if uuid and number:
                msg.flow.uuid = f"{number % (1 << 32):08x}{uuid[8:]}"
        return msg


class LiveScenario(Player):
    """The bundled Airflow scenario (:func:`auditor.scenario.airflow_scenario`) played in a loop with
    fresh timestamps, ``speed`` times faster than its ten minutes of flow time (a pass takes a minute at
    the default speed). Each pass opens with a ``node_status`` record naming the scenario's nodes (as
    Relay reports the nodes it is connected to) and includes the scenario's lost-events record."""

    def __init__(
        self,
        log: FlowLog,
        *,
        speed: float = DEFAULT_SPEED,
        seed: int = 7,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        start_ns = _ns_of(DEFAULT_START)
        templates = []
        for event in airflow_scenario(DEFAULT_START, seed=seed).events:
            msg = response_from_event(event)
            offset = (_ns(msg.flow.time) if msg.HasField("flow") else 0) or _ns(msg.time)
            templates.append((offset - start_ns, msg))
        # Each pass opens with the nodes Relay is connected to (a node_status record, as Relay sends).
        nodes = sorted({m.flow.node_name or m.node_name for _, m in templates if m.HasField("flow")} - {""})
        templates.insert(0, (0, node_status_response("NODE_CONNECTED", nodes, time_ns=start_ns)))
        last = max(offset for offset, _ in templates)
        period = math.ceil(last / (60 * _NS)) * 60 * _NS  # whole minutes: ten for the bundled scenario
        super().__init__(log, templates, speed=speed, loop=True, retime=True, period_ns=period, clock=clock)


def _ns_of(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1_000


@dataclass
class Demo:
    """What ``flow-auditor demo`` runs: a :class:`LiveScenario` feeding a :class:`HubbleServer`."""

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
    step = _NS / args.rate
    return log, Player(log, [(int(i * step), r) for i, r in enumerate(responses)])


if __name__ == "__main__":
    raise SystemExit(main())
