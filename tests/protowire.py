"""The protobuf wire format written out by hand, for tests that need messages protobuf would not build
(unknown fields, wrong wire types, overlong or negative varints): field numbers and wire types are facts
of the format, not taken from any implementation."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """``value`` as a varint; a negative number as its 64-bit two's complement (ten bytes)."""
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def overlong(value: int, size: int) -> bytes:
    """``value`` as a varint of ``size`` bytes (padded with continuation bytes, as the format allows)."""
    out = bytearray()
    for _ in range(size - 1):
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes([value & 0x7F])


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def vfield(number: int, value: int) -> bytes:
    """A varint field (wire type 0)."""
    return key(number, 0) + varint(value)


def lfield(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field (wire type 2): bytes, a string (UTF-8) or an embedded message."""
    data = payload.encode() if isinstance(payload, str) else payload
    return key(number, 2) + varint(len(data)) + data
