"""The demo server's gRPC service: ``observer.Observer`` (``GetFlows``, ``ServerStatus``, ``GetNodes``).

Stage: none of the pipeline's — it stands in for Hubble Relay (the *input* of ``run``) in ``flow-auditor
demo``, in the daemon's integration tests and in benchmarks. Input: a :class:`~auditor.demo.flowlog.FlowLog`
that other threads may append to while streams are open. Output: ``GetFlows`` streams, ``ServerStatus``
and ``GetNodes`` answers, with or without TLS/mTLS (:class:`ServerTls`).

``GetFlows`` streams what the request's plan selects (:mod:`auditor.demo.filters`: filters, ``since``/
``until``, ``number``/``first``, field mask): first the backlog, then, with ``follow``, every new append
until the client cancels or the server stops. As in Hubble, ``since`` applies to live entries too: a live
entry stamped before ``since`` is not sent (a client resuming with ``since`` misses what a server with a
clock behind stamps), and the first live entry later than ``until`` ends the stream. A follower that falls
more than the ring's capacity behind gets a ``lost_events`` response (source ``HUBBLE_RING_BUFFER``, the
number of entries it missed), as Hubble does.

Speed: responses are serialized once, when appended; ``GetFlows`` is registered with a response
serializer of ``None`` (gRPC's identity), so the server only hands the stored bytes to the transport.

Error policy: a request the plan refuses ends with ``INVALID_ARGUMENT`` and a message naming the problem;
an invalid field mask fails the call with ``UNKNOWN`` ("invalid fieldmask"), as Hubble's plain error does;
binding failures raise ``RuntimeError`` from gRPC (and a second :meth:`HubbleServer.start` too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc  # type: ignore[import-untyped,unused-ignore]

from auditor import __version__
from auditor._proto.observer import observer_pb2
from auditor.demo.fieldmask import INVALID_MESSAGE, InvalidFieldMask
from auditor.demo.filters import Plan, RequestError
from auditor.demo.flowlog import IDLE_WAIT_S, NS_PER_S, FlowLog
from auditor.demo.responses import lost_events_response

__all__ = ["SERVICE", "HubbleServer", "ServerTls"]

SERVICE: Final = "observer.Observer"


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
            plan = Plan.from_request(request)
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

    def _stream(self, plan: Plan, done: threading.Event) -> Iterator[bytes]:
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
                log.wait(cursor, IDLE_WAIT_S, done, stopping)
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
            flows_rate=self.log.flows_since(now - 60 * NS_PER_S) / 60.0,
        )
        if self._relay:
            unavailable = sorted(n for n, s in stats.nodes.items() if s != observer_pb2.NODE_CONNECTED)
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
