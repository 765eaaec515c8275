"""Recorded flow files: the replay source (DESIGN §3).

Stage: source. Input: paths of JSON-lines files (plain or gzip, detected by content, not by name) or
``-`` for standard input. Output, per file, either ``(line_number, line)`` pairs with blank lines skipped
(iterating a :class:`FlowFile`), or blocks of lines (:meth:`FlowFile.blocks`: every line of about a MiB of
input in one list, blank ones included, so that a compiled loop numbers and tests them and the per-line
cost of a Python iterator is paid once per block); plus a byte counter for progress display.

A UTF-8 byte order mark at the start of a file (as some editors and Windows tools write one) is not part of
its first line: JSON parsers may ignore it (RFC 8259 §8.1), and jq does.

Error policy: a file that cannot be opened raises :class:`SourceError` naming it (the CLI turns that into
exit code 2 before any report is printed); a gzip stream that is cut short raises :class:`SourceError`
with the file name and the last complete line number.
"""

from __future__ import annotations

import gzip
import io
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

_GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"
"""UTF-8's byte order mark, dropped from the start of a file."""
BLOCK_BYTES = 1 << 17
"""About how much input one block of :meth:`FlowFile.blocks` holds (a line is never cut). Small enough that
a block and its lines stay in the core's cache while they are decoded: in runs alternating block sizes,
replay ran 0.5-6 % faster with 64 KiB or 128 KiB blocks than with 1 MiB ones."""


def split_lines(data: bytes) -> list[bytes]:
    """The lines of ``data`` as iterating a binary file gives them (``BytesIO`` finds newlines with
    ``memchr``, where ``bytes.split`` looks at every byte)."""
    return io.BytesIO(data).readlines()


def line_blocks(read: Callable[[], bytes]) -> Iterator[list[bytes]]:
    """The lines of what successive ``read()`` calls return (until ``b""``), one list per read: a line
    that goes on in the next read is joined to its end first (lines as iterating a file gives them, the
    last one may lack its newline). Read errors propagate to the caller."""
    start: list[bytes] = []  # the start of a line that goes on in the next read
    while data := read():
        lines = split_lines(data)  # not empty: data is not
        if start:
            lines[0] = b"".join((*start, lines[0]))
            start.clear()
        if not lines[-1].endswith(b"\n"):
            start.append(lines.pop())  # goes on in the next read
            if not lines:
                continue
        yield lines
    if start:
        yield [b"".join(start)]


class SourceError(OSError):
    """A flow file that cannot be read."""


class FlowFile:
    """One input file; iterate it for ``(line_number, line)``; ``position`` tracks bytes consumed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.size = 0
        self._raw: io.BufferedReader
        if name == "-":
            self._raw = sys.stdin.buffer  # type: ignore[assignment]  # a BufferedReader at run time
        else:
            try:
                self._raw = open(Path(name), "rb")  # noqa: SIM115 - closed in close()
                self.size = Path(name).stat().st_size
            except OSError as e:
                raise SourceError(f"{name}: cannot open: {e.strerror or e}") from None
        self.compressed = self._raw.peek(2)[:2] == _GZIP_MAGIC
        self._stream: IO[bytes] | gzip.GzipFile = self._raw
        if self.compressed:
            self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb")
        if self._stream.peek(len(BOM))[: len(BOM)] == BOM:  # not part of line 1: read before any line
            self._stream.read(len(BOM))

    @property
    def position(self) -> int:
        """Bytes of the underlying (possibly compressed) file consumed so far."""
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        number = 0
        try:
            for number, line in enumerate(self._stream, 1):
                if line.strip():
                    yield number, line
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise SourceError(f"{self.name}: compressed stream is damaged after line {number}: {e}") from None

    def blocks(self, size: int = BLOCK_BYTES) -> Iterator[list[bytes]]:
        """Every line, in order, in lists of about ``size`` bytes of input; lines are as iterating the file
        gives them (with their newline; the last one may lack it), blank ones included: the caller numbers
        lines by counting them."""
        stream = self._stream
        # A damaged gzip stream fails the read that meets the damage: small reads name the line closely.
        read = stream.read1 if isinstance(stream, gzip.GzipFile) else stream.read
        number = 0
        try:
            for lines in line_blocks(lambda: read(size)):
                number += len(lines)
                yield lines
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise SourceError(f"{self.name}: compressed stream is damaged after line {number}: {e}") from None

    def close(self) -> None:
        if self.name != "-":
            self._stream.close()
            self._raw.close()

    def __enter__(self) -> FlowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
