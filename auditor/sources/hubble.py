"""The live source: Hubble's ``observer.Observer/GetFlows`` stream over gRPC (DESIGN §3).

Stage: source (live). Input: a Hubble Relay address (``host:port``) or a node's Hubble socket
(``unix:///var/run/cilium/hubble.sock``), optionally TLS/mTLS. Output: decoded records fed into the one
pipeline, plus stream-health callbacks (connected, disconnected, newest flow time).

Resilience:

* The stream is followed (``follow``) and re-opened whenever it breaks or the server is unreachable, with
  capped, fully jittered exponential backoff.
* A re-opened stream resumes with ``since`` = the time of the newest flow processed (less a millisecond),
  so flows that happened during the outage are still judged; the events that overlap the previous stream
  (the same events sent again) are recognised and skipped, so counts equal those of an uninterrupted
  stream. The connection dedup window absorbs anything else.
* Keepalive pings are sent at most every 5 minutes: Hubble Relay (grpc-go) closes connections that ping
  more often (``too_many_pings``).
* Certificates are read from their files at every (re)connection, and the files are polled while a
  stream is open: a rotated certificate (Kubernetes updates mounted Secrets in place) re-opens the stream.

Error policy: nothing on the wire stops the daemon. Responses are received as raw bytes and parsed here,
so an undecodable message is counted as ``invalid`` and skipped instead of breaking the stream; unknown
fields and enum values are tolerated by protobuf. Connection errors are logged once per state change.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError as ProtobufDecodeError

from auditor._proto.flow import flow_pb2
from auditor._proto.live import live_pb2
from auditor._proto.observer import observer_pb2
from auditor.decode_pb import DomainError, record_from_response
from auditor.model import Flow
from auditor.pipeline import Pipeline

GET_FLOWS: Final = "/observer.Observer/GetFlows"
KEEPALIVE_MS: Final = 300_000  # grpc-go's default enforcement policy: no pings more often than 5 min
# grpc.experimental.ChannelOptions.SingleThreadedUnaryStream (not in the type stubs)
SINGLE_THREADED_UNARY_STREAM: Final = "SingleThreadedUnaryStream"
RESUME_OVERLAP: Final = 0.001  # seconds re-requested before the newest flow seen
_RECENT_MAX: Final = 1024


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
    since: float | None = None  # first stream only: start this far back (seconds since the epoch)
    single_threaded_stream: bool = True
    extra_options: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def target(self) -> str:
        return self.server

    def channel_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
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
        ceiling = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class StreamEvents:
    """Callbacks for stream health (metrics and logs); all optional."""

    connected: Callable[[], None] = lambda: None
    disconnected: Callable[[str], None] = lambda reason: None
    reconnecting: Callable[[float], None] = lambda delay: None
    newest_flow_time: Callable[[float], None] = lambda t: None


class HubbleSource:
    """Follows the flow stream into a pipeline until :meth:`stop`; reconnects and resumes by itself."""

    def __init__(self, config: HubbleConfig, pipeline: Pipeline, events: StreamEvents | None = None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.events = events or StreamEvents()
        self.connected = False
        self.last_connected = 0.0  # monotonic time of the last successful (re)connection
        self.newest_time = 0.0  # flow time of the newest flow processed
        self.reconnects = 0
        self.requests: list[observer_pb2.GetFlowsRequest] = []  # for inspection in tests (bounded)
        self._recent: deque[Flow] = deque(maxlen=_RECENT_MAX)  # flows within RESUME_OVERLAP of newest_time
        self._resuming = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._ready: Any = None  # the channel-ready future of a connection attempt in progress
        self._reopen = threading.Event()
        self._received = 0
        self.namespaces = config.namespaces

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
        self._cancel()

    def reopen(self) -> None:
        """Close the current stream and open a new one (resuming): used after a scope change."""
        self._reopen.set()
        self._cancel()

    def _cancel(self) -> None:
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    # -- main loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Blocking: follow, reconnect, resume, until :meth:`stop`."""
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        first = True
        while not self._stop.is_set():
            if not first:
                self.reconnects += 1
            first = False
            reason = self._stream_once(backoff)
            if self._stop.is_set():
                break
            if self.connected:
                self.connected = False
            self.events.disconnected(reason)
            if self._reopen.is_set():
                self._reopen.clear()
                continue
            delay = backoff.next_delay()
            self.events.reconnecting(delay)
            self._stop.wait(delay)

    def _request(self) -> observer_pb2.GetFlowsRequest:
        req = observer_pb2.GetFlowsRequest(follow=True)
        if self.newest_time:
            req.since.FromNanoseconds(int((self.newest_time - RESUME_OVERLAP) * 1e9))
            self._resuming = True
        elif self.config.since is not None:
            req.since.FromNanoseconds(int(self.config.since * 1e9))
        for ns in self.namespaces:
            req.whitelist.append(flow_pb2.FlowFilter(source_pod=[f"{ns}/"]))
            req.whitelist.append(flow_pb2.FlowFilter(destination_pod=[f"{ns}/"]))
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
        try:
            ready = grpc.channel_ready_future(channel)
            with self._lock:
                self._ready = ready
            if self._stop.is_set():
                ready.cancel()
            try:
                ready.result(timeout=self.config.timeout)
            except grpc.FutureTimeoutError:
                return f"cannot connect to {self.config.target} within {self.config.timeout:g}s"
            except grpc.FutureCancelledError:
                return "stopped while connecting"
            finally:
                with self._lock:
                    self._ready = None
            request = self._request()
            if len(self.requests) < 100:
                self.requests.append(request)
            # Raw bytes in: we parse, so a bad message is counted, not fatal for the stream.
            method: grpc.UnaryStreamMultiCallable[observer_pb2.GetFlowsRequest, bytes] = channel.unary_stream(
                GET_FLOWS, request_serializer=observer_pb2.GetFlowsRequest.SerializeToString
            )
            call = method(request)
            with self._lock:
                self._call = call
            if self._stop.is_set():
                call.cancel()
            if self.config.tls and self.config.cert_files():
                watcher = threading.Thread(target=self._watch_certs, args=(call,), daemon=True)
                watcher.start()
            return self._consume(call, backoff)
        finally:
            with self._lock:
                self._call = None
            channel.close()
            if watcher is not None:
                watcher.join(timeout=1)

    def _consume(self, call: Any, backoff: Backoff) -> str:
        parse = live_pb2.GetFlowsResponse.FromString  # the lean view: only what the auditor reads
        feed, invalid, lock = self.pipeline.feed, self.pipeline.invalid, self.pipeline.lock
        healthy = False
        self._on_connected()  # the channel is ready and the call is open (the stream may be quiet)
        try:
            for raw in call:
                if not healthy:
                    healthy = True
                    backoff.reset()  # only a stream that delivers resets the backoff
                self._received += 1
                try:
                    record = record_from_response(parse(raw))
                except (ProtobufDecodeError, DomainError) as e:
                    with lock:
                        invalid(f"{self.config.target}#{self._received}", f"undecodable message: {e}")
                    continue
                if type(record) is Flow:
                    if self._resuming and self._seen_before(record):
                        continue
                    self._track_time(record)
                with lock:
                    feed(record)
            return "stream ended by the server"  # a follow stream should not end
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code is grpc.StatusCode.CANCELLED:
                return "cancelled"
            details = e.details() if hasattr(e, "details") else str(e)
            return f"{code.name if code else 'error'}: {details}"

    def _on_connected(self) -> None:
        self.connected = True
        self.last_connected = time.monotonic()
        self.events.connected()

    def _seen_before(self, flow: Flow) -> bool:
        if flow.time > self.newest_time:
            self._resuming = False
            return False
        return flow in self._recent

    def _track_time(self, flow: Flow) -> None:
        t = flow.time
        recent = self._recent
        if t > self.newest_time:
            self.newest_time = t
            self.events.newest_flow_time(t)
            horizon = t - RESUME_OVERLAP
            while recent and recent[0].time < horizon:
                recent.popleft()
        elif t < self.newest_time - RESUME_OVERLAP:
            return
        recent.append(flow)  # bounded by maxlen: enough for the flows of one millisecond

    def _watch_certs(self, call: Any) -> None:
        files = self.config.cert_files()
        digest = files_digest(files)
        while not self._stop.wait(self.config.cert_poll_interval):
            if not call.is_active():
                return
            if files_digest(files) != digest:
                self._reopen.set()
                call.cancel()
                return
