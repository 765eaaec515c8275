"""The daemon's HTTP endpoints (``/metrics``, ``/healthz``, ``/readyz``), bounded by construction.

Stage: I/O edge. Input: TCP connections on the listen address. Output: one HTTP/1.1 response per
connection (``Connection: close``), produced by the :class:`Route` registered for the request path.

Design: one *loop* thread owns the listening socket and every connection that has not sent its full
request head yet. It reads with a selector (non-blocking), so a slow or silent client costs a file
descriptor and a small buffer, never a thread. Once the head is in:

- *inline* routes (the probes) are answered on the loop thread at once: they never queue behind scrapes;
- other routes (``/metrics``) go to a bounded queue served by a fixed pool of worker threads; a full queue
  answers ``503`` with ``Retry-After`` at once instead of piling up.

Bounds (see :class:`HttpLimits`): open connections (the oldest one still sending its head is closed to
make room for a new one, so a flood of slow sockets cannot lock probes out), the time to send the request
head (slowloris sockets are closed), the head's size (``431``), the worker count and queue, the time to
write a response, and the listen backlog. When ``accept`` fails for lack of file descriptors (``EMFILE``)
the loop stops accepting for :attr:`HttpLimits.accept_pause` seconds and closes the oldest quarter of the
unfinished connections, instead of spinning on an accept that keeps failing; the connection cap is also
lowered to a quarter of the process's descriptor limit (``RLIMIT_NOFILE``) so that this stays rare.

:func:`registry_route` renders a Prometheus registry at most once per ``max_age`` seconds and shares the
body between concurrent scrapers, so a scrape flood costs bounded CPU and the stream keeps flowing.

Error policy: never raises into the caller after start; a handler that raises answers ``500`` (logged
once per kind), a client error closes that connection only; :meth:`HttpServer.serve_forever` returns only
after :meth:`HttpServer.shutdown`. Counters for tests and logs are in :attr:`HttpServer.stats`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = structlog.get_logger("flow-auditor")

TEXT: Final = "text/plain; charset=utf-8"
_FD_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BATCH: Final = 64
_REASONS: Final = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class HttpLimits:
    """Every bound of the server (defaults suit Prometheus scrapes and kubelet probes)."""

    workers: int = 4
    queue: int = 32  # requests waiting for a worker; more get 503 at once
    max_connections: int = 256  # open connections still sending their request head
    header_timeout: float = 10.0  # seconds from accept to a complete request head
    write_timeout: float = 10.0  # seconds a worker may spend writing one response
    max_header_bytes: int = 16384
    backlog: int = 256
    accept_pause: float = 0.25  # seconds without accepting after EMFILE


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    accept: str


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Route:
    """A handler; ``inline`` ones run on the loop thread and must be cheap (probes)."""

    handler: Callable[[Request], Response]
    inline: bool = False


@dataclass
class HttpStats:
    """Counters (written by the server's threads, read by tests and logs)."""

    accepted: int = 0
    served: int = 0
    timed_out: int = 0  # closed: request head not complete within header_timeout
    evicted: int = 0  # closed: oldest unfinished connection, to make room
    busy: int = 0  # answered 503: worker queue full
    too_large: int = 0
    accept_errors: int = 0  # accept() failed for lack of descriptors/memory (each one pauses accepting)
    handler_errors: int = 0


@dataclass
class _Conn:
    sock: socket.socket
    deadline: float
    buf: bytearray = field(default_factory=bytearray)


class HttpServer:
    """Selector loop for request heads, a fixed worker pool for slow routes (see the module docstring)."""

    def __init__(
        self, host: str, port: int, routes: Mapping[str, Route], limits: HttpLimits | None = None
    ) -> None:
        self.routes = dict(routes)
        limits = limits or HttpLimits()
        # Never hold more unfinished connections than a quarter of the descriptors the process may open.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if 0 < soft < 4 * limits.max_connections:
            limits = replace(limits, max_connections=max(4, soft // 4))
        self.limits = limits
        self.stats = HttpStats()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server(
            (host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port),
            family=family,
            backlog=self.limits.backlog,
        )
        self._listener.setblocking(False)
        self.server_address: tuple[str, int] = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._jobs: queue.Queue[tuple[socket.socket, Request] | None] = queue.Queue(self.limits.queue)
        self._conns: dict[socket.socket, _Conn] = {}  # insertion order = oldest first
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._done = threading.Event()
        self._workers: list[threading.Thread] = []
        self._accept_resume = 0.0
        self._errors_logged: set[str] = set()

    @property
    def open_connections(self) -> int:
        """Connections still sending their request head (the loop's table)."""
        return len(self._conns)

    # -- lifecycle ------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Run the loop on the calling thread until :meth:`shutdown` (starts the workers first)."""
        try:
            if self._stop.is_set():
                return  # stopped before it started
            for i in range(self.limits.workers):
                worker = threading.Thread(target=self._work, name=f"http-worker-{i}", daemon=True)
                worker.start()
                self._workers.append(worker)
            self._selector.register(self._listener, selectors.EVENT_READ)
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            self._running.set()
            while not self._stop.is_set():
                try:
                    self._step()
                except Exception as e:  # never let one bad turn end the loop
                    if self._stop.is_set():
                        break
                    self._log_error("loop", e)
                    self._stop.wait(0.05)  # a persistent failure must not spin
        except (OSError, ValueError):
            if not self._stop.is_set():
                raise
        finally:
            self._done.set()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the loop and wait (bounded) for :meth:`serve_forever` to return."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._running.is_set():
            self._done.wait(timeout)

    def server_close(self) -> None:
        """Close the listener and every connection; stop the workers."""
        self._stop.set()
        for _ in self._workers:
            with contextlib.suppress(queue.Full):
                self._jobs.put_nowait(None)
        for conn in list(self._conns.values()):
            self._close(conn)
        with contextlib.suppress(OSError):
            self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(Exception):
            self._selector.close()

    # -- the loop -------------------------------------------------------------------------------------
    def _step(self) -> None:
        now = time.monotonic()
        timeout = 1.0
        if self._conns:
            oldest = next(iter(self._conns.values()))  # deadlines grow with insertion order
            timeout = min(timeout, max(0.0, oldest.deadline - now))
        if self._accept_resume:
            timeout = min(timeout, max(0.0, self._accept_resume - now))
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            else:
                conn = self._conns.get(key.fileobj)  # type: ignore[call-overload]
                if conn is not None:
                    self._read(conn)
        now = time.monotonic()
        while self._conns:
            oldest = next(iter(self._conns.values()))
            if oldest.deadline > now:
                break
            self.stats.timed_out += 1
            self._close(oldest)
        if self._accept_resume and now >= self._accept_resume:
            self._accept_resume = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno not in _FD_ERRORS:
                    return  # e.g. ECONNABORTED: the client gave up; nothing to do
                self.stats.accept_errors += 1
                if self.stats.accept_errors == 1:
                    log.warning("http accept failed, pausing", error=str(e), open=len(self._conns))
                self._selector.unregister(self._listener)
                self._accept_resume = time.monotonic() + self.limits.accept_pause
                for _ in range(max(1, len(self._conns) // 4)):
                    self._evict_oldest()
                return
            self.stats.accepted += 1
            if len(self._conns) >= self.limits.max_connections:
                self._evict_oldest()
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.limits.header_timeout)
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ)

    def _evict_oldest(self) -> None:
        if self._conns:
            self.stats.evicted += 1
            self._close(next(iter(self._conns.values())))

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.buf += data
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            end = conn.buf.find(b"\n\n")
        if end < 0:
            if len(conn.buf) > self.limits.max_header_bytes:
                self.stats.too_large += 1
                self._finish_inline(conn, Response(431, b"request head too large\n"))
            return
        if end > self.limits.max_header_bytes:
            self.stats.too_large += 1
            self._finish_inline(conn, Response(431, b"request head too large\n"))
            return
        request = _parse_head(bytes(conn.buf[:end]))
        if request is None:
            self._finish_inline(conn, Response(400, b"bad request\n"))
            return
        route = self.routes.get(request.path)
        if request.method not in ("GET", "HEAD"):
            self._finish_inline(conn, Response(405, b"method not allowed\n", headers=(("Allow", "GET"),)))
        elif route is None:
            self._finish_inline(conn, Response(404, b"not found\n"))
        elif route.inline:
            self._finish_inline(conn, self._call(route, request), head=request.method == "HEAD")
        else:
            self._detach(conn)
            try:
                self._jobs.put_nowait((conn.sock, request))
            except queue.Full:
                self.stats.busy += 1
                busy = Response(503, b"busy, retry later\n", headers=(("Retry-After", "1"),))
                _send_nowait(conn.sock, busy, False)
                _close_socket(conn.sock)

    def _finish_inline(self, conn: _Conn, response: Response, head: bool = False) -> None:
        self._detach(conn)
        _send_nowait(conn.sock, response, head)
        _close_socket(conn.sock)
        self.stats.served += 1

    def _detach(self, conn: _Conn) -> None:
        self._conns.pop(conn.sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)

    def _close(self, conn: _Conn) -> None:
        self._detach(conn)
        _close_socket(conn.sock)

    # -- workers --------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stop.is_set():
                if job is not None:
                    _close_socket(job[0])
                return
            sock, request = job
            try:
                response = self._call(self.routes[request.path], request)
                sock.setblocking(True)
                sock.settimeout(self.limits.write_timeout)
                sock.sendall(_encode(response, request.method == "HEAD"))
                self.stats.served += 1
            except Exception as e:  # a client that went away, a write timeout: this connection only
                if not isinstance(e, OSError):
                    self._log_error("worker", e)
            finally:
                _close_socket(sock)

    def _call(self, route: Route, request: Request) -> Response:
        try:
            return route.handler(request)
        except Exception as e:
            self.stats.handler_errors += 1
            self._log_error(request.path, e)
            return Response(500, b"internal error\n")

    def _log_error(self, where: str, e: Exception) -> None:
        kind = f"{where}:{type(e).__name__}"
        if kind not in self._errors_logged and len(self._errors_logged) < 100:
            self._errors_logged.add(kind)
            log.error("http handler failed", where=where, error=repr(e)[:300])


def registry_route(registry: CollectorRegistry, max_age: float = 1.0) -> Route:
    """``/metrics`` of ``registry``: rendered at most once per ``max_age`` seconds per format, shared
    between concurrent scrapers (one render at a time)."""
    lock = threading.Lock()
    cache: dict[str, tuple[float, bytes, str]] = {}

    def handler(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.accept)
        with lock:
            hit = cache.get(content_type)
            now = time.monotonic()
            if hit is None or now - hit[0] >= max_age:
                hit = (now, encoder(registry), content_type)
                cache[content_type] = hit
        return Response(200, hit[1], hit[2])

    return Route(handler)


def text_route(text: str) -> Route:
    body = text.encode()
    return Route(lambda request: Response(200, body), inline=True)


def probe_route(check: Callable[[], tuple[bool, str]]) -> Route:
    """200 with the reason when ``check`` says ok, else 503 (answered on the loop thread)."""

    def handler(request: Request) -> Response:
        ok, why = check()
        return Response(200 if ok else 503, f"{why}\n".encode())

    return Route(handler, inline=True)


def _parse_head(head: bytes) -> Request | None:
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    accept = ""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"accept":
            accept = value.strip().decode("latin-1")
    path = parts[1].split(b"?", 1)[0].decode("latin-1")
    return Request(parts[0].decode("latin-1"), path, accept)


def _encode(response: Response, head: bool) -> bytes:
    reason = _REASONS.get(response.status, "")
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        "Server: flow-auditor",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else response.body)


def _send_nowait(sock: socket.socket, response: Response, head: bool) -> None:
    """Small responses fit the socket buffer; a client that does not read loses its answer."""
    with contextlib.suppress(OSError):
        sock.send(_encode(response, head))


def _close_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
