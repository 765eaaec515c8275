"""Inputs of the live benchmarks: synthetic Hubble events as pre-serialized ``GetFlowsResponse`` records.

Stage: measurement support for ``bench/live.py`` and ``bench/standin.py`` (never run by ``make test``
except in their smoke modes). Events come from ``auditor.scenario.synthetic_events``; they are turned into
protobuf bytes by :class:`FastJsonpb`, a descriptor-driven jsonpb → protobuf converter
(``json_format.ParseDict`` runs at ≈ 4k events/s, too slow for a million messages), which
:func:`response_builder` checks byte for byte against ``auditor.demo.response_from_event`` on the
first 500 events and replaces by it if they differ. :func:`generate` writes the records once to a cache
file (the file is the cache); :func:`read_records` reads them back lazily, in chunks.

A record: :data:`HEADER` (length, flow time in whole seconds, ephemeral-port kind, port), then the bytes.

Error policy: a jsonpb value the fast converter does not handle makes it fall back to ``json_format``
(printed); a cache file with fewer records than asked for raises ``RuntimeError`` naming it.
"""

from __future__ import annotations

import base64
import calendar
import io
import itertools
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from auditor._proto.observer import observer_pb2
from auditor.demo import response_from_event
from auditor.scenario import synthetic_events

_F = FieldDescriptor
_INTEGER_TYPES: Final = frozenset(
    {
        _F.TYPE_INT32,
        _F.TYPE_INT64,
        _F.TYPE_UINT32,
        _F.TYPE_UINT64,
        _F.TYPE_SINT32,
        _F.TYPE_SINT64,
        _F.TYPE_FIXED32,
        _F.TYPE_FIXED64,
        _F.TYPE_SFIXED32,
        _F.TYPE_SFIXED64,
    }
)
_WRAPPERS: Final = frozenset(
    f"google.protobuf.{t}Value"
    for t in ("Bool", "Int32", "Int64", "UInt32", "UInt64", "String", "Double", "Float", "Bytes")
)
_ENVELOPE_KEYS: Final = frozenset({"flow", "lost_events", "lostEvents", "node_status", "nodeStatus"})
_SCALAR, _REPEATED_SCALAR, _MESSAGE, _REPEATED_MESSAGE, _TIMESTAMP, _WRAPPER, _SHARED = range(7)

Converter = Callable[[Any], Any] | None  # None: the JSON value is the protobuf value
Table = dict[str, tuple[str, int | None, Any]]


class Unsupported(Exception):
    """A jsonpb value the fast converter does not handle (the caller falls back to ``ParseDict``)."""


def _scalar_converter(fd: FieldDescriptor) -> Converter:
    kind = fd.type
    if kind == _F.TYPE_ENUM:
        enum_type = fd.enum_type
        assert enum_type is not None
        numbers = {v.name: v.number for v in enum_type.values}

        def enum(value: Any) -> int:
            if isinstance(value, str):
                number = numbers.get(value)
                if number is None:
                    raise Unsupported(f"enum value {value!r}")
                return number
            return int(value)

        return enum
    if kind in _INTEGER_TYPES:

        def integer(value: Any) -> int:
            if isinstance(value, bool | float):
                raise Unsupported(f"integer {value!r}")
            return value if type(value) is int else int(value)

        return integer
    if kind == _F.TYPE_BOOL:

        def boolean(value: Any) -> bool:
            if type(value) is not bool:
                raise Unsupported(f"bool {value!r}")
            return value

        return boolean
    if kind == _F.TYPE_STRING:
        return None
    if kind in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return float
    if kind == _F.TYPE_BYTES:
        return base64.b64decode
    raise Unsupported(f"field type {kind}")


class FastJsonpb:
    """jsonpb dict → ``GetFlowsResponse``, the subset of ``json_format.ParseDict`` the scenarios use.

    Endpoint objects are shared between the generator's events: each is converted once (kept alive with
    its serialized bytes, so its ``id`` cannot be reused) and merged from bytes afterwards.
    """

    SHARED_TYPES: Final = frozenset({"flow.Endpoint"})

    def __init__(self, max_shared: int = 1_000_000) -> None:
        self._tables: dict[str, Table] = {}
        self._shared: dict[int, tuple[object, bytes]] = {}
        self._max_shared = max_shared
        self._epoch: dict[str, int] = {}

    def response(self, event: dict[str, Any]) -> observer_pb2.GetFlowsResponse:
        response = observer_pb2.GetFlowsResponse()
        if _ENVELOPE_KEYS.isdisjoint(event):
            response.flow.SetInParent()
            self._fill(response.flow, event)
        else:
            self._fill(response, event)
        return response

    def _table(self, desc: Any) -> Table:
        table = self._tables.get(desc.full_name)
        if table is None:
            table = {}
            for fd in desc.fields:
                kind: int | None
                extra: Any = None
                if fd.type == _F.TYPE_MESSAGE:
                    message_type = fd.message_type
                    assert message_type is not None
                    full = message_type.full_name
                    if full == "google.protobuf.Timestamp":
                        kind = _TIMESTAMP
                    elif full in _WRAPPERS:
                        kind, extra = _WRAPPER, _scalar_converter(message_type.fields_by_name["value"])
                    elif full.startswith("google.protobuf."):
                        kind, extra = None, full
                    elif full in self.SHARED_TYPES and not fd.is_repeated:
                        kind = _SHARED
                    else:
                        kind = _REPEATED_MESSAGE if fd.is_repeated else _MESSAGE
                    if fd.is_repeated and kind not in (_REPEATED_MESSAGE, None):
                        kind, extra = None, full
                else:
                    kind = _REPEATED_SCALAR if fd.is_repeated else _SCALAR
                    extra = _scalar_converter(fd)
                table[fd.name] = table[fd.json_name] = (fd.name, kind, extra)
            self._tables[desc.full_name] = table
        return table

    def _fill(self, msg: Message, obj: dict[str, Any]) -> None:
        table = self._table(msg.DESCRIPTOR)
        for key, value in obj.items():
            entry = table.get(key)
            if entry is None or value is None:
                continue  # unknown field (ignore_unknown_fields) or JSON null
            name, kind, extra = entry
            if kind == _SCALAR:
                setattr(msg, name, value if extra is None else extra(value))
            elif kind == _MESSAGE:
                sub = getattr(msg, name)
                sub.SetInParent()
                self._fill(sub, value)
            elif kind == _SHARED:
                sub = getattr(msg, name)
                sub.SetInParent()
                hit = self._shared.get(id(value))
                if hit is not None and hit[0] is value:
                    sub.MergeFromString(hit[1])
                else:
                    self._fill(sub, value)
                    if len(self._shared) >= self._max_shared:
                        self._shared.clear()
                    self._shared[id(value)] = (value, sub.SerializeToString())
            elif kind == _TIMESTAMP:
                self._timestamp(getattr(msg, name), value)
            elif kind == _WRAPPER:
                getattr(msg, name).value = value if extra is None else extra(value)
            elif kind == _REPEATED_SCALAR:
                getattr(msg, name).extend(value if extra is None else [extra(v) for v in value])
            elif kind == _REPEATED_MESSAGE:
                field = getattr(msg, name)
                for item in value:
                    self._fill(field.add(), item)
            else:
                raise Unsupported(f"{msg.DESCRIPTOR.full_name}.{name}: {extra}")

    def _timestamp(self, ts: Any, text: str) -> None:
        # RFC 3339 with a 'Z' and 1-9 fractional digits (what Hubble writes), else protobuf's own parser.
        head, dot, tail = text.partition(".")
        if dot and len(head) == 19 and tail.endswith("Z") and 1 < len(tail) <= 10 and tail[:-1].isdigit():
            seconds = self._epoch.get(head)
            if seconds is None:
                seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
                if len(self._epoch) >= 100_000:
                    self._epoch.clear()
                self._epoch[head] = seconds
            ts.seconds = seconds
            ts.nanos = int(tail[:-1].ljust(9, "0"))
        else:
            ts.FromJsonString(text)


def response_builder(
    events: list[dict[str, Any]],
) -> Callable[[dict[str, Any]], observer_pb2.GetFlowsResponse]:
    """The fast converter when it gives the same bytes as ``response_from_event`` on ``events``."""
    fast = FastJsonpb()
    try:
        same = all(
            fast.response(e).SerializeToString() == response_from_event(e).SerializeToString() for e in events
        )
    except Unsupported as e:
        print(f"  fast jsonpb converter: unsupported ({e}); using json_format (slow)", flush=True)
        return response_from_event
    if not same:
        print("  fast jsonpb converter differs from json_format; using json_format (slow)", flush=True)
        return response_from_event
    return fast.response


# A record in a cache file: header (length, flow time in whole seconds, ephemeral-port kind, port), bytes.
HEADER: Final = struct.Struct("<IqBH")
NO_PORT, TCP_SOURCE, TCP_DESTINATION, UDP_SOURCE, UDP_DESTINATION = range(5)
EPHEMERAL_MIN: Final = 32_768  # synthetic_events draws source ports from [32768, 61000)
EPHEMERAL_SPAN: Final = 61_000 - EPHEMERAL_MIN


def _ephemeral(response: observer_pb2.GetFlowsResponse) -> tuple[int, int]:
    l4 = response.flow.l4
    kind = l4.WhichOneof("protocol")
    if kind not in ("TCP", "UDP"):
        return NO_PORT, 0
    ports = l4.TCP if kind == "TCP" else l4.UDP
    base = TCP_SOURCE if kind == "TCP" else UDP_SOURCE
    if ports.source_port >= EPHEMERAL_MIN:
        return base, ports.source_port
    if ports.destination_port >= EPHEMERAL_MIN:
        return base + 1, ports.destination_port
    return NO_PORT, 0


def generate(path: Path, n: int, distinct_pods: int, seed: int = 1) -> Path:
    """Write ``n`` messages from ``synthetic_events`` to ``path`` (once; the file is the cache)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    events = synthetic_events(n, distinct_pods=distinct_pods, seed=seed)
    head = [e for _, e in zip(range(min(n, 500)), events, strict=False)]
    build = response_builder(head)
    tmp = path.with_suffix(".tmp")
    size = 0
    with tmp.open("wb") as f:
        buf = io.BytesIO()
        for i, event in enumerate(itertools.chain(head, events)):
            response = build(event)
            data = response.SerializeToString()
            kind, port = _ephemeral(response)
            buf.write(HEADER.pack(len(data), response.flow.time.seconds, kind, port))
            buf.write(data)
            size += len(data)
            if i % 10_000 == 9_999:
                f.write(buf.getvalue())
                buf = io.BytesIO()
        f.write(buf.getvalue())
    tmp.rename(path)
    print(
        f"  generated {n:,} messages ({distinct_pods:,} pods) in {time.perf_counter() - started:.1f}s → "
        f"{path.name} ({size / max(n, 1):.0f} bytes/message)",
        flush=True,
    )
    return path


def read_records(path: Path, limit: int | None = None) -> Iterator[tuple[bytes, int, int, int]]:
    """``(message, flow seconds, port kind, port)`` of each record, read in chunks (lazily)."""
    count = 0
    with path.open("rb", buffering=0) as f:
        pending = b""
        while limit is None or count < limit:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            data = pending + chunk if pending else chunk
            pos, end, size = 0, len(data), HEADER.size
            unpack = HEADER.unpack_from
            while pos + size <= end:
                length, seconds, kind, port = unpack(data, pos)
                stop = pos + size + length
                if stop > end:
                    break
                yield data[pos + size : stop], seconds, kind, port
                pos = stop
                count += 1
                if count == limit:
                    return
            pending = data[pos:]
    if limit is not None and count < limit:
        raise RuntimeError(f"{path}: {count} records, {limit} wanted")


def load_messages(path: Path, limit: int) -> list[bytes]:
    return [m for m, *_ in read_records(path, limit)]
