"""The long-running auditor: live Hubble stream → the one pipeline → metrics, logs, Kubernetes Events.

Stage: wiring (I/O edge). Input: a :class:`DaemonConfig` (from ``flow-auditor run``/``demo``). Output: an
HTTP server (``/metrics``, ``/healthz``, ``/readyz``), structured logs, optional Kubernetes Events.

Threads: the *stream* thread follows Hubble and runs the pipeline (the only writer of pipeline state);
the *HTTP* thread serves scrapes and probes; the *reload* thread polls the matrix file's content
(ConfigMap mounts swap a symlink, so the path is re-read, not watched) and SIGHUP wakes it at once. The
main thread waits for signals and shuts everything down within a few seconds of SIGTERM/SIGINT.

Signals: the handlers do nothing but store a flag (Python's C-level handler writes the signal number to a
wake-up pipe); the main thread reads the pipe and acts — SIGHUP wakes the reload thread, SIGTERM/SIGINT
stop. A storm of signals therefore never re-enters any code that takes a lock or logs.

Error policy: a bad matrix at start raises :class:`~auditor.matrix.MatrixError` (the CLI exits 2); a bad
matrix on reload — whatever it raises — keeps the old one, logs why and counts
``flow_auditor_matrix_reloads_total{result="error"}``. Stream failures are retried forever (see
``auditor.sources.hubble``); nothing on the wire stops the daemon. Worker threads catch every exception;
should one end anyway, it is logged with the reason and ``/healthz`` answers 503 so that the pod restarts.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Final

import structlog
from prometheus_client import CollectorRegistry

from auditor import __version__, native, web
from auditor.classify import DEFAULT_DEDUP_WINDOW, Auditor
from auditor.http_server import HttpServer, Request, Response, Route, probe_route, registry_route
from auditor.matrix import Matrix, MatrixError, load_matrix
from auditor.matrix.lint import warnings as matrix_warnings
from auditor.pipeline import Pipeline, Sink
from auditor.sinks.live import LiveSink
from auditor.sinks.log import LogSink, drop_empty
from auditor.sinks.metrics import MetricsSink, StreamStats
from auditor.sources.hubble import HubbleConfig, HubbleSource, StreamEvents

log = structlog.get_logger("flow-auditor")


class DaemonConfigError(ValueError):
    """A configuration the daemon cannot start with (the CLI exits 2)."""


READY_GRACE: Final = 30.0  # seconds a stream that was healthy still counts as ready (reconnects do not flap)
_SIGNAL_POLL: Final = 1.0  # seconds: the main thread re-checks its flags at least this often


@dataclass(frozen=True)
class DaemonConfig:
    matrix: str
    hubble: HubbleConfig
    listen_address: str = ":9967"
    reload_interval: float = 5.0
    dedup_window: float = DEFAULT_DEDUP_WINDOW
    violation_log_interval: float = 300.0
    server_side_filter: bool = False
    node_local: bool = False
    kube_events: bool = False
    kube_events_interval: float = 300.0
    ready_grace: float = READY_GRACE
    extra_sinks: tuple[Sink, ...] = field(default=())


def parse_listen_address(text: str) -> tuple[str, int]:
    """``:9967``, ``0.0.0.0:9967``, ``127.0.0.1:0``, ``[::]:9967`` → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid listen address {text!r} (expected HOST:PORT or :PORT)")
    return host.strip("[]"), int(port)


class Daemon:
    """Owns the threads; :meth:`start`, then :meth:`wait` or :meth:`stop`."""

    def __init__(self, config: DaemonConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.matrix = load_matrix(config.matrix)  # MatrixError at start: the CLI exits 2
        self._matrix_digest = _digest(Path(config.matrix))
        self._in_use_digest = self._matrix_digest
        self._unsettled: str | None = None  # digest of a changed file that failed once (see check_reload)
        self.registry = registry or CollectorRegistry()
        tolerance = config.hubble.clock_tolerance  # a flow stamped further ahead counts at the clock
        self.metrics = MetricsSink(self.matrix, self.registry, clock_tolerance=tolerance)
        self.log_sink = LogSink(config.violation_log_interval, matrix=self.matrix, matrix_file=config.matrix)
        self.live = LiveSink(self.matrix, clock_tolerance=tolerance)
        self.live.matrix_loaded(self._matrix_digest, True)
        sinks: list[Sink] = [self.metrics, self.log_sink, self.live]
        self.kube_events: Any = None
        if config.kube_events:
            from auditor.sinks.kube_events import KubeConfigError, KubeEventsSink

            try:
                self.kube_events = KubeEventsSink.from_environment(
                    interval=config.kube_events_interval, scope=self.matrix.scope_namespaces
                )
            except KubeConfigError as e:
                raise DaemonConfigError(f"--kube-events: {e}") from None
            sinks.append(self.kube_events)
        sinks.extend(config.extra_sinks)
        auditor = Auditor(self.matrix, config.dedup_window, node_local=config.node_local)
        self.pipeline = Pipeline(auditor, sinks)
        hubble = config.hubble
        if config.server_side_filter and self.matrix.scope_namespaces:
            hubble = replace(hubble, namespaces=tuple(sorted(self.matrix.scope_namespaces)))
        self.source = HubbleSource(hubble, self.pipeline, self._stream_events())
        source = self.source
        self.metrics.stream_stats = lambda: StreamStats(
            source.resume.resent, source.gaps, source.resume.anomalies.copy()
        )
        self.stopped = threading.Event()
        self._terminate = threading.Event()
        self._reload_now = threading.Event()
        self._threads: list[threading.Thread] = []
        self._died: dict[str, str] = {}  # thread name → why it ended (should stay empty)
        self.http: HttpServer | None = None
        self._down_logged = False
        self._signals: _SignalPipe | None = None

    # -- stream health → metrics and logs -------------------------------------------------------------
    def _stream_events(self) -> StreamEvents:
        def connected() -> None:
            self.metrics.set_hubble_up(True)
            self.live.stream_state(True)
            self.log_sink.stream_up()
            self._down_logged = False
            log.info(
                "connected to hubble", server=self.config.hubble.server, reconnects=self.source.reconnects
            )

        def disconnected(reason: str) -> None:
            self.metrics.set_hubble_up(False)
            self.live.stream_state(False, reason)
            self.log_sink.stream_down(reason)
            if self.stopped.is_set():
                return
            if not self._down_logged:
                self._down_logged = True
                log.warning("hubble stream down", server=self.config.hubble.server, reason=reason)

        def reconnecting(delay: float) -> None:
            self.metrics.inc_reconnects()
            if not self.stopped.is_set():
                self.log_sink.stream_retry(delay)

        def gap(reason: str) -> None:
            log.warning("hubble stream gap", server=self.config.hubble.server, reason=reason)

        return StreamEvents(connected, disconnected, reconnecting, self.metrics.set_last_flow_timestamp, gap)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._start_http()
        self.log_sink.start()
        self._spawn("stream", self.source.run)
        self._spawn("reload", self._reload_loop)
        log.info(
            "flow-auditor started",
            version=__version__,
            core=native.describe(),
            matrix=self.matrix.name,
            rules=len(self.matrix.rules),
            server=self.config.hubble.server,
            receiver=self.config.hubble.receiver,
            listen=self.listen_address,
        )
        _log_matrix_warnings(self.matrix)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def supervised() -> None:
            try:
                target()
            except BaseException as e:  # recorded: /healthz fails and the pod restarts
                self._died[name] = f"{type(e).__name__}: {e}"
                log.critical("worker thread died", thread=name, error=self._died[name], exc_info=True)
                return
            if not self.stopped.is_set():
                self._died[name] = "returned"
                log.critical("worker thread ended", thread=name)

        thread = threading.Thread(target=supervised, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def healthy(self) -> tuple[bool, str]:
        """``/healthz``: false once a worker thread has ended (while the daemon is not stopping)."""
        if self.stopped.is_set():
            return True, "stopping"
        for thread in self._threads:
            if not thread.is_alive():
                return False, f"thread {thread.name} died: {self._died.get(thread.name, 'unknown')}"
        return True, "ok"

    def stop(self, timeout: float = 5.0) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        self._reload_now.set()
        self.source.stop()
        self.log_sink.stop()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.kube_events is not None:
            self.kube_events.close(timeout=max(0.5, deadline - time.monotonic()))
        log.info("flow-auditor stopped")

    def install_signal_handlers(self) -> None:
        """Catch SIGTERM/SIGINT/SIGHUP from now on (main thread only; before :meth:`start` in a process)."""
        if self._signals is None:
            self._signals = _SignalPipe()

    def wait(self) -> None:
        """Block until SIGTERM/SIGINT (or :meth:`terminate`), then stop. SIGHUP reloads the matrix."""
        self.install_signal_handlers()
        pipe = self._signals
        assert pipe is not None
        try:
            while not self._terminate.is_set():
                received = pipe.wait(_SIGNAL_POLL)
                if signal.SIGHUP in received:
                    self._reload_now.set()
                stop = received & {signal.SIGTERM, signal.SIGINT}
                if stop or pipe.terminate:
                    name = signal.Signals(min(stop)).name if stop else "SIGTERM"
                    log.info("signal received, shutting down", signal=name)
                    break
        finally:
            self.stop()
            pipe.close()
            self._signals = None

    def terminate(self) -> None:
        """Make :meth:`wait` return (from any thread)."""
        self._terminate.set()

    # -- readiness ------------------------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        """``/readyz``: ready while the stream is healthy — it delivered a response, or stayed open
        ``healthy_after`` seconds without failing, and answers when silent for ``idle_timeout`` — and for
        ``ready_grace`` seconds (:data:`READY_GRACE`) after a healthy stream broke. Streams that fail right
        after opening never make the daemon ready."""
        source = self.source
        if source.connected:
            return True, "ok"
        if source.last_healthy and time.monotonic() - source.last_healthy < self.config.ready_grace:
            return True, "reconnecting"
        reason = f": {source.last_reason}" if source.last_reason else ""
        return False, f"hubble stream not healthy{reason}"

    # -- hot reload -----------------------------------------------------------------------------------
    def _reload_loop(self) -> None:
        while not self.stopped.is_set():
            self._reload_now.wait(self.config.reload_interval)
            forced = self._reload_now.is_set()
            self._reload_now.clear()
            if self.stopped.is_set():
                return
            try:
                self.check_reload(forced=forced)
            except Exception as e:  # never end the thread: the next change is tried again
                log.error("matrix reload check failed", error=f"{type(e).__name__}: {e}")

    def check_reload(self, forced: bool = False) -> bool | None:
        """Reload when the file's content changed (or ``forced``). True/False: reloaded/failed; None: same, or
        a change that failed to load for the first time (it may be half-written: the next check decides)."""
        path = Path(self.config.matrix)
        digest = _digest(path)
        if digest == self._matrix_digest and not forced:
            return None
        try:
            matrix = load_matrix(path)
        except Exception as e:  # MatrixError, and whatever a hostile file provokes (deep nesting, huge ints)
            if not forced and digest != self._unsettled:
                # A file written in place (an editor, cp) may be read half-way: it counts as failed only
                # when the same content fails again at the next check. (A ConfigMap swaps files whole.)
                self._unsettled = digest
                return None
            self._matrix_digest = digest
            self._unsettled = None
            self.metrics.matrix_reloaded(False)
            error = str(e) if isinstance(e, MatrixError) else f"{path}: {type(e).__name__}: {e}"[:1000]
            self.live.matrix_loaded(self._in_use_digest, False, error)
            log.error(
                "matrix reload failed, keeping the previous matrix", error=error, matrix=self.matrix.name
            )
            return False
        self._matrix_digest = digest
        self._unsettled = None
        old_scope = self.matrix.scope_namespaces
        self.matrix = matrix
        self.pipeline.set_matrix(matrix)
        self.metrics.matrix_reloaded(True)
        self._in_use_digest = digest
        self.live.matrix_loaded(digest, True)
        log.info(
            "matrix reloaded", matrix=matrix.name, rules=len(matrix.rules), components=len(matrix.components)
        )
        _log_matrix_warnings(matrix)
        if self.config.server_side_filter and matrix.scope_namespaces != old_scope:
            self.source.set_namespaces(tuple(sorted(matrix.scope_namespaces or ())))
        return True

    # -- HTTP -----------------------------------------------------------------------------------------
    @property
    def listen_address(self) -> str:
        if self.http is None:
            return self.config.listen_address
        host, port = self.http.server_address[:2]
        return f"{host!s}:{port}"

    def _start_http(self) -> None:
        host, port = parse_listen_address(self.config.listen_address)
        routes = {
            "/metrics": registry_route(self.registry),
            "/healthz": probe_route(self.healthy),
            "/readyz": probe_route(self.ready),
            **{path: _page_route(path, self.live.snapshot) for path in web.PATHS},
        }
        self.http = HttpServer(host, port, routes)
        self._spawn("http", self.http.serve_forever)


def _page_route(path: str, snapshot: Callable[[], dict[str, Any]]) -> Route:
    """A route of the live page (``auditor.web``): static files inline, the JSON on a worker."""

    def handler(request: Request) -> Response:
        page = web.route(path, snapshot)
        assert page is not None
        return Response(page.status, page.body, page.content_type, page.headers)

    return Route(handler, inline=path != web.API_PATH)


class _SignalPipe:
    """SIGTERM/SIGINT/SIGHUP delivered through a wake-up pipe; the handlers only store a flag.

    Python's C-level handler writes each signal's number to the pipe (``signal.set_wakeup_fd``) before the
    Python-level handler runs; the handler is a plain attribute store, harmless if a storm nests it. A
    termination is also remembered in :attr:`terminate`, in case the pipe was full.
    """

    SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.terminate = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for s in self.SIGNALS:
            signal.signal(s, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGHUP:
            self.terminate = True

    def wait(self, timeout: float) -> set[signal.Signals]:
        """The signals received (at most ``timeout`` seconds of waiting for the first one)."""
        readable, _, _ = select.select([self._read], [], [], timeout)
        if not readable:
            return set()
        try:
            data = os.read(self._read, 65536)
        except BlockingIOError:
            return set()
        return {signal.Signals(n) for n in set(data) if n in _SIGNAL_NUMBERS}

    def close(self) -> None:
        """Stop writing to the pipe; the handlers stay (a late signal while exiting is ignored)."""
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._read)
        os.close(self._write)


_SIGNAL_NUMBERS: Final = frozenset(int(s) for s in _SignalPipe.SIGNALS)


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """structlog: JSON lines (default) or console; ISO timestamps, level names."""
    import logging
    import sys

    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            drop_empty,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def run(config: DaemonConfig, on_started: Callable[[Daemon], None] | None = None) -> int:
    """Start, block until a termination signal, stop. Returns the exit code."""
    daemon = Daemon(config)
    daemon.install_signal_handlers()  # before any thread starts: a signal is never lost nor fatal
    daemon.start()
    if on_started is not None:
        on_started(daemon)
    daemon.wait()
    return 0


__all__ = ["Daemon", "DaemonConfig", "Matrix", "configure_logging", "run"]


def _log_matrix_warnings(matrix: Matrix) -> None:
    """What :mod:`auditor.matrix.lint` finds in a matrix just put in use (it is used all the same)."""
    for warning in matrix_warnings(matrix):
        log.warning("matrix warning", matrix=matrix.name, warning=warning)
