"""Live flow source: ``observer.Observer/GetFlows`` over gRPC (Hubble Relay or a node's Hubble server).

Stage: source (I/O edge). Input: a :class:`HubbleConfig` — a server address, optionally TLS/mTLS. Output:
decoded records fed into the one pipeline, plus stream-health callbacks (healthy, disconnected, gap).

Resilience:

* The stream is followed (``follow``) and re-opened whenever it breaks or the server is unreachable, with
  capped, fully jittered exponential backoff. No exception ends the stream thread: anything unexpected is
  logged through ``disconnected`` and retried like a broken stream; an exception while handling one event
  counts that event as ``invalid`` and the stream goes on.
* What is asked for: only the fields the live decoder reads (``field_mask``: :data:`FIELD_MASK_PATHS`,
  unless ``HubbleConfig.field_mask`` is off) and, with a scope, only flows with an end in a scoped namespace
  (:func:`scope_filters`: pod and namespace-label whitelist filters); a scope change re-opens the stream.
* Resuming never trusts a flow time (Hubble applies ``since`` to live events too; see
  :mod:`auditor.sources.resume`): a re-opened stream asks for the newest events Hubble holds (``number``:
  ``resume_backlog`` per node, less with many nodes), and re-sent events already processed are recognised
  exactly, per node, and skipped.
  Flows stamped ahead of the auditor's clock, or a node clock stepping back, are counted as anomalies.
* A message larger than ``max_message_bytes`` cannot be received: it is counted as ``invalid``, the next
  stream starts at the server's current end (skipping past it) and the gap is reported (``gap``).
* Health: a stream is *healthy* once it delivered a response or stayed open ``healthy_after`` seconds
  without failing. A stream silent for ``idle_timeout`` seconds is probed with a ``ServerStatus`` call
  (deadline ``timeout``); no answer means a frozen server: the stream is cancelled and re-opened.
  Transport keepalive pings go out at most every 5.5 minutes, only while a call is open: Hubble Relay
  (grpc-go's default enforcement, minimum 5 minutes, no pings without calls) would otherwise close the
  connection with ``too_many_pings``.
* Certificates are read from their files at every (re)connection, and the files are polled while a
  stream is open: a rotated certificate (Kubernetes updates mounted Secrets in place) re-opens the stream.
* Receiving: in this process (``receiver="thread"``), or in a receiver process
  (``receiver="process"``, :mod:`auditor.sources.receiver`) that owns the GetFlows call and forwards the
  raw messages in batches, so that receiving no longer shares the GIL with judging. Only the call moves:
  the connection check, the probes, certificate polling and every decision stay here.

Error policy: nothing on the wire stops the daemon. Responses are received as raw bytes and read by the
per-message loop (:mod:`auditor.sources.consume`, compiled with the core), so an undecodable message is
counted as ``invalid`` and skipped instead of breaking the stream; unknown fields and enum values are
tolerated. Connection errors are reported once per state change.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc

from auditor._proto.flow import flow_pb2
from auditor._proto.live import live_pb2
from auditor._proto.observer import observer_pb2
from auditor.pipeline import Pipeline
from auditor.sources import RECEIVERS
from auditor.sources.consume import MessageLoop
from auditor.sources.receiver import ReceiverProcess
from auditor.sources.resume import DEFAULT_BACKLOG, DEFAULT_TOLERANCE, ResumeState

GET_FLOWS: Final = "/observer.Observer/GetFlows"
SERVER_STATUS: Final = "/observer.Observer/ServerStatus"
# grpc-go's default enforcement policy: no pings more often than every 5 min (a margin for timer jitter).
KEEPALIVE_MS: Final = 330_000
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
IDLE_TIMEOUT: Final = 30.0  # seconds of silence before the server is probed
HEALTHY_AFTER: Final = 1.0  # seconds a stream must stay open (without a response) to count as healthy
# grpc.experimental.ChannelOptions.SingleThreadedUnaryStream (not in the type stubs)
SINGLE_THREADED_UNARY_STREAM: Final = "SingleThreadedUnaryStream"
# The live decoder's reads (proto/live/live.proto, auditor.decode_pb), asked for with
# GetFlowsRequest.field_mask: every field of live.Flow, narrowed to the sub-fields read where the decoder
# reads only part of a message. ``l4`` stays whole: its cases are a oneof (a path into one would make
# Hubble allocate every case) and it is small.
ENDPOINT_FIELDS: Final = ("identity", "namespace", "labels", "pod_name", "workloads", "cluster_name")
NARROWED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "source": ENDPOINT_FIELDS,
    "destination": ENDPOINT_FIELDS,
    "IP": ("source", "destination"),
    "event_type": ("type",),
}
NAMESPACE_LABEL: Final = "k8s:io.kubernetes.pod.namespace"
_WATCH_TICK: Final = 0.2  # seconds between two looks of the stream watcher
_REASON_MAX: Final = 300  # characters of a failure reason kept (gRPC details come from the server)


def field_mask_paths() -> tuple[str, ...]:
    """The ``field_mask`` paths of what the live decoder reads (see :data:`NARROWED_FIELDS`)."""
    paths: list[str] = []
    for fd in live_pb2.Flow.DESCRIPTOR.fields:
        narrowed = NARROWED_FIELDS.get(fd.name)
        paths += [f"{fd.name}.{sub}" for sub in narrowed] if narrowed else [fd.name]
    return tuple(paths)


FIELD_MASK_PATHS: Final = field_mask_paths()


def scope_filters(namespaces: Sequence[str]) -> list[flow_pb2.FlowFilter]:
    """Whitelist filters for flows from or to ``namespaces`` (none: no filter, every flow).

    A flow is in scope when either end is in a scoped namespace, by its ``namespace`` field or, for an
    endpoint Hubble knows only by its identity (no namespace, no pod name: e.g. a pod of another cluster
    or one whose metadata Cilium did not have yet), by its ``k8s:io.kubernetes.pod.namespace`` label —
    the decoder takes the namespace from that label too. Hubble ORs whitelist filters and the values of
    one field, so four filters cover any number of namespaces. Reserved identities (world, host,
    remote-node…) carry no namespace: a flow between two of them is out of scope either way.
    """
    if not namespaces:
        return []
    pods = [f"{ns}/" for ns in namespaces]
    labels = [f"{NAMESPACE_LABEL}={ns}" for ns in namespaces]
    return [
        flow_pb2.FlowFilter(source_pod=pods),
        flow_pb2.FlowFilter(destination_pod=pods),
        flow_pb2.FlowFilter(source_label=labels),
        flow_pb2.FlowFilter(destination_label=labels),
    ]


class SourceConfigError(ValueError):
    """A configuration that can never work (unreadable certificate files…)."""


@dataclass(frozen=True)
class HubbleConfig:
    """Where and how to connect; names follow the ``hubble`` CLI's flags."""

    server: str
    tls: bool = False
    tls_ca_cert_files: tuple[str, ...] = ()
    tls_client_cert_file: str | None = None
    tls_client_key_file: str | None = None
    tls_server_name: str | None = None
    timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    cert_poll_interval: float = 10.0
    namespaces: tuple[str, ...] = ()  # server-side filter: only flows from/to these namespaces
    field_mask: bool = True  # ask only for the fields the decoder reads (FIELD_MASK_PATHS)
    since: float | None = None  # first stream only: start this far back (seconds since the epoch)
    single_threaded_stream: bool = True
    max_message_bytes: int = MAX_MESSAGE_BYTES
    idle_timeout: float = IDLE_TIMEOUT
    healthy_after: float = HEALTHY_AFTER
    resume_backlog: int = DEFAULT_BACKLOG
    clock_tolerance: float = DEFAULT_TOLERANCE
    receiver: str = "thread"  # one of RECEIVERS: "process" receives in a process of its own
    extra_options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.receiver not in RECEIVERS:
            raise ValueError(f"receiver {self.receiver!r}: one of {', '.join(RECEIVERS)}")

    @property
    def target(self) -> str:
        return self.server

    def channel_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.enable_retries", 0),
        ]
        if self.single_threaded_stream:
            # ~3x the receive rate of the default sync client (see TOOLS.md).
            options.append((SINGLE_THREADED_UNARY_STREAM, 1))
        if self.tls and self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options + list(self.extra_options)

    def cert_files(self) -> list[str]:
        files = list(self.tls_ca_cert_files)
        files += [f for f in (self.tls_client_cert_file, self.tls_client_key_file) if f]
        return files


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SourceConfigError(f"{what} {path}: {e.strerror or e}") from None


def credentials(config: HubbleConfig) -> grpc.ChannelCredentials:
    """TLS credentials from the certificate files, read now (they may have been rotated)."""
    roots = b"".join(_read(f, "--tls-ca-cert-files") for f in config.tls_ca_cert_files) or None
    key = _read(config.tls_client_key_file, "--tls-client-key-file") if config.tls_client_key_file else None
    cert = (
        _read(config.tls_client_cert_file, "--tls-client-cert-file") if config.tls_client_cert_file else None
    )
    if (key is None) != (cert is None):
        raise SourceConfigError("--tls-client-cert-file and --tls-client-key-file go together")
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=cert)


def files_digest(paths: Sequence[str]) -> str:
    """Digest of the files' contents (missing files count as empty): detects rotation."""
    h = hashlib.sha256()
    for p in paths:
        try:
            h.update(Path(p).read_bytes())
        except OSError:
            h.update(b"\0missing\0")
    return h.hexdigest()


class Backoff:
    """Capped exponential backoff with full jitter; ``reset`` after a healthy stream."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial, self.maximum = initial, maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** min(self.attempt, 64)))
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class StreamEvents:
    """Callbacks for stream health (metrics and logs); all optional. ``connected`` fires when a stream
    becomes healthy; ``gap`` when events are knowingly skipped (with the reason)."""

    connected: Callable[[], None] = lambda: None
    disconnected: Callable[[str], None] = lambda reason: None
    reconnecting: Callable[[float], None] = lambda delay: None
    newest_flow_time: Callable[[float], None] = lambda t: None
    gap: Callable[[str], None] = lambda reason: None


class HubbleSource:
    """Follows the flow stream into a pipeline until :meth:`stop`; reconnects and resumes by itself."""

    def __init__(self, config: HubbleConfig, pipeline: Pipeline, events: StreamEvents | None = None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.events = events or StreamEvents()
        self.connected = False  # the current stream is healthy (see the module docstring)
        self.last_healthy = 0.0  # monotonic time the stream was last known healthy (0: never)
        self.last_reason = ""  # why the last stream ended
        self.reconnects = 0
        self.gaps = 0  # streams started at the server's end, skipping events (after an oversized message)
        self.errors = 0  # unexpected exceptions survived by the stream thread
        self.resume = ResumeState(config.resume_backlog, tolerance=config.clock_tolerance)
        self.requests: list[observer_pb2.GetFlowsRequest] = []  # for inspection in tests (bounded)
        self._opened = False  # a stream has been opened before: the next one resumes
        self._skip_backlog = False
        self._retry_now = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._ready: Any = None  # the channel-ready future of a connection attempt in progress
        self._reopen = threading.Event()
        self._cancel_reason = ""
        self._loop = MessageLoop(pipeline, self.resume, config.target)  # the per-message half (compiled)
        self.namespaces = config.namespaces
        # The receiver process (receiver="process"); its process starts with the first stream.
        self.receiver = ReceiverProcess(config) if config.receiver == "process" else None

    @property
    def newest_time(self) -> float:
        """Newest plausible flow time processed (flows stamped ahead of the auditor's clock excluded)."""
        return self.resume.newest

    @property
    def received(self) -> int:
        """Messages received from the server so far, over every stream (read-only; benchmarks wait on it)."""
        return self._loop.received

    def consume(self, messages: Iterable[bytes]) -> str:
        """Feed raw ``GetFlowsResponse`` messages through the per-message path of a stream, in the caller's
        thread: parse, decode, resume check, pipeline, with the same error handling (a bad message is
        counted as ``invalid``). For benchmarks of the live path without gRPC; returns why it ended."""
        return self._consume(iter(messages), Backoff(self.config.backoff_initial, self.config.backoff_max))

    def set_namespaces(self, namespaces: tuple[str, ...]) -> None:
        """Change the server-side namespace filter (after a matrix reload): re-opens the stream."""
        if namespaces != self.namespaces:
            self.namespaces = namespaces
            self.reopen()

    # -- control --------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            ready = self._ready
        if ready is not None:
            ready.cancel()  # a connection attempt would otherwise hold stop() for up to --timeout
        self._cancel("stopped")
        if self.receiver is not None:
            self.receiver.close()

    def reopen(self) -> None:
        """Close the current stream and open a new one (resuming): used after a scope change."""
        self._reopen.set()
        self._cancel("re-opened")

    def _cancel(self, reason: str) -> None:
        with self._lock:
            call = self._call
            self._cancel_reason = reason
        if call is not None:
            call.cancel()

    # -- main loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Blocking: follow, reconnect, resume, until :meth:`stop`. Never raises."""
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        while not self._stop.is_set():
            try:
                reason = self._stream_once(backoff)
            except Exception as e:  # a bug must not end the thread: report it, retry like a broken stream
                self.errors += 1
                reason = f"internal error: {type(e).__name__}: {e}"
            try:
                if self._after_stream(reason):
                    continue
                delay = backoff.next_delay()
                self.events.reconnecting(delay)
            except Exception:
                self.errors += 1
                delay = backoff.next_delay()
            self._stop.wait(delay)

    def _after_stream(self, reason: str) -> bool:
        """Bookkeeping after a stream ended; true when the next one opens at once (no backoff)."""
        if self._stop.is_set():
            return True
        if self.connected:
            self.connected = False
            self.last_healthy = time.monotonic()
        reason = reason if len(reason) <= _REASON_MAX else reason[:_REASON_MAX] + "…"  # server-chosen text
        self.last_reason = reason
        self.reconnects += 1
        if self.resume.newest:
            self.events.newest_flow_time(self.resume.newest)
        self.events.disconnected(reason)
        if self._reopen.is_set():
            self._reopen.clear()
            return True
        retry_now, self._retry_now = self._retry_now, False
        return retry_now  # once, right after an oversized message: the gap stays short

    def _request(self) -> observer_pb2.GetFlowsRequest:
        req = observer_pb2.GetFlowsRequest(follow=True)
        if self._skip_backlog:
            self._skip_backlog = False  # from the server's current end, past the message we cannot take
        elif self.resume.keys:
            req.number = self.resume.share  # resume: each node's newest events, whatever their time
        elif self.config.since is not None:
            req.since.FromNanoseconds(int(self.config.since * 1e9))
        elif self._opened:
            req.number = self.config.resume_backlog  # nothing seen yet: what happened while we were away
        req.whitelist.extend(scope_filters(self.namespaces))
        if self.config.field_mask:
            req.field_mask.paths.extend(FIELD_MASK_PATHS)
        return req

    def _channel(self) -> grpc.Channel:
        options = self.config.channel_options()
        if self.config.tls:
            return grpc.secure_channel(self.config.target, credentials(self.config), options=options)
        return grpc.insecure_channel(self.config.target, options=options)

    def _stream_once(self, backoff: Backoff) -> str:
        """One connection: returns the reason it ended."""
        try:
            channel = self._channel()
        except SourceConfigError as e:
            return f"tls configuration: {e}"
        watcher: threading.Thread | None = None
        done = threading.Event()
        try:
            ready = grpc.channel_ready_future(channel)
            with self._lock:
                self._ready = ready
            if self._stop.is_set():
                ready.cancel()
            try:
                ready.result(timeout=self.config.timeout)
            except grpc.FutureTimeoutError:
                why = self._why_not_connected(channel)
                return f"cannot connect to {self.config.target} within {self.config.timeout:g}s{why}"
            except grpc.FutureCancelledError:
                return "stopped while connecting"
            finally:
                with self._lock:
                    self._ready = None
            request = self._request()
            if len(self.requests) < 100:
                self.requests.append(request)
            self._opened = True
            call = self._open(channel, request)
            with self._lock:
                self._call = call
                self._cancel_reason = ""
            if self._stop.is_set():
                call.cancel()
            watcher = threading.Thread(
                target=self._watch, args=(call, channel, done), name="stream-watch", daemon=True
            )
            watcher.start()
            return self._consume(call, backoff)
        finally:
            done.set()
            with self._lock:
                self._call = None
            channel.close()  # also ends a probe in flight
            if watcher is not None:
                watcher.join(timeout=self.config.timeout + 1)

    def _open(self, channel: grpc.Channel, request: observer_pb2.GetFlowsRequest) -> Any:
        """The GetFlows call: on ``channel``, or in the receiver process (the same iteration, errors and
        ``cancel``). Raw bytes in: we parse, so a bad message is counted, not fatal for the stream."""
        if self.receiver is not None:
            return self.receiver.open(request)
        method: grpc.UnaryStreamMultiCallable[observer_pb2.GetFlowsRequest, bytes] = channel.unary_stream(
            GET_FLOWS, request_serializer=observer_pb2.GetFlowsRequest.SerializeToString
        )
        return method(request)

    def _consume(self, call: Any, backoff: Backoff) -> str:
        def first() -> None:
            backoff.reset()  # only a stream that delivers resets the backoff
            self._healthy()

        try:
            self._loop.run(call, first)
            return "stream ended by the server"  # a follow stream should not end
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            if code is grpc.StatusCode.CANCELLED:
                with self._lock:
                    return self._cancel_reason or "cancelled"
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or ""):
                return self._oversized(details or "")
            return f"{code.name if code else 'error'}: {details}"

    def _oversized(self, details: str) -> str:
        """The next message exceeds the receive limit: count it, skip past it, report the gap."""
        where = f"{self.config.target}#{self._loop.received + 1}"
        with self.pipeline.lock:
            self.pipeline.invalid(where, f"message larger than the receive limit: {details}")
        self.gaps += 1
        self._skip_backlog = self._retry_now = True
        reason = (
            f"a message larger than the receive limit ({self.config.max_message_bytes} bytes) was skipped; "
            "events Hubble held after it are not judged"
        )
        self.events.gap(reason)
        return f"RESOURCE_EXHAUSTED: {details}"

    def _healthy(self) -> None:
        with self._lock:
            if self.connected:
                return
            self.connected = True
            self.last_healthy = time.monotonic()
        self.events.connected()

    # -- watching an open stream: health, silence, certificate rotation -----------------------------
    def _watch(self, call: Any, channel: grpc.Channel, done: threading.Event) -> None:
        try:
            self._watch_stream(call, channel, done)
        except Exception:  # the stream goes on without its watcher (counted, never fatal)
            self.errors += 1

    def _watch_stream(self, call: Any, channel: grpc.Channel, done: threading.Event) -> None:
        config = self.config
        opened = last_change = time.monotonic()
        count = self._loop.received
        certs = config.cert_files() if config.tls else []
        digest = files_digest(certs) if certs else ""
        next_cert_poll = opened + config.cert_poll_interval
        tick = max(0.01, min(_WATCH_TICK, config.healthy_after, config.idle_timeout))
        newest = 0.0
        while not (done.wait(tick) or self._stop.is_set()):
            now = time.monotonic()
            if self.resume.newest != newest:  # the metric follows within a tick (no per-flow callback)
                newest = self.resume.newest
                self.events.newest_flow_time(newest)
            if self._loop.received != count:
                count, last_change = self._loop.received, now
                self.last_healthy = now
            elif not self.connected and now - opened >= config.healthy_after:
                self._healthy()  # open and not failing: a quiet but healthy stream
            if now - last_change >= config.idle_timeout:
                if not self._answers(channel):
                    self._cancel(f"no response from {config.target} for {now - last_change:.0f}s (frozen?)")
                    return
                last_change = time.monotonic()
                self.last_healthy = last_change
            if certs and now >= next_cert_poll:
                next_cert_poll = now + config.cert_poll_interval
                if files_digest(certs) != digest:
                    self._reopen.set()
                    self._cancel("certificate files changed")
                    return

    def _why_not_connected(self, channel: grpc.Channel) -> str:
        """gRPC's own account of the last connection attempt (a refused port, a failed TLS handshake:
        the channel's readiness says only "not yet"), from a call that does not wait for the channel;
        ``""`` when it has none."""
        try:
            _server_status(channel)(observer_pb2.ServerStatusRequest(), timeout=1.0, wait_for_ready=False)
        except grpc.RpcError as e:
            details = e.details() if hasattr(e, "details") else None
            return f": {details}" if details else ""
        except ValueError:  # the channel was closed meanwhile (stopping)
            return ""
        return ""

    def _answers(self, channel: grpc.Channel) -> bool:
        """Whether the server answers a ``ServerStatus`` call within ``timeout`` (any answer counts)."""
        try:
            _server_status(channel)(observer_pb2.ServerStatusRequest(), timeout=self.config.timeout)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            return code not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        except ValueError:  # the channel was closed meanwhile: the stream is over anyway
            return True
        return True


def _server_status(channel: grpc.Channel) -> Any:
    """The ``ServerStatus`` call on ``channel`` (any answer will do: the response stays unparsed)."""
    return channel.unary_unary(
        SERVER_STATUS,
        request_serializer=observer_pb2.ServerStatusRequest.SerializeToString,
        response_deserializer=None,
    )
