"""Kubernetes Events for violations (``run --kube-events``, DESIGN §6).

Stage: sink. Input: the pipeline's judgements; only new connections (``Judgement.new_connection``) of
the two violation classes count. Output: core/v1 Events, so that
``kubectl get events -n airflow --field-selector reason=NetworkPolicyViolation`` lists what the matrix
forbids but the network let through:

- ``unexpected_allowed`` → reason ``NetworkPolicyViolation``, type ``Warning``;
- ``expected_dropped`` → reason ``LegitimateTrafficDropped``, type ``Warning`` (verdict ``AUDIT`` keeps
  the reason; the message says the traffic would be dropped under enforcement).

One Event object per (involved pod, edge): created on the first connection, then updated (PATCH of
``count`` and ``lastTimestamp``) at most once per ``interval`` with the number of connections seen since,
instead of one object per connection. The involved object is a Pod: the destination pod if the
destination is a pod (it was reached, or its policy dropped the traffic), else the source pod, preferring
an end inside :attr:`KubeEventsSink.scope`; the Event lives in that pod's namespace. Judgements where
neither end is a pod are skipped and counted. Event names are deterministic:
``<pod>.<16 hex digits of a hash of (edge, reporting instance)>``.

Threading: :meth:`KubeEventsSink.on_judgement` runs on the pipeline thread, aggregates under a lock and
only enqueues; API calls run on one background worker thread fed by a bounded queue. Aggregation state is
bounded (least recently used edges are forgotten first) in entries and so in bytes: an entry's strings are
capped (namespace and pod at :data:`MAX_NAME`, the message at :data:`MAX_MESSAGE`; the edge holds component,
entity and namespace names), about 3 KB at most, so ``max_events`` (10,000) entries stay under 30 MB.

Error policy: never blocks or raises into the pipeline. A full queue drops the update and counts it
(``dropped``); API errors (403, 5xx, connection refused, timeouts, …) are logged as one structlog line
without traceback and counted (``errors``). A 404 on PATCH (the Event expired or was deleted) creates the
Event again; a 409 on create (the Event already exists, e.g. after a restart) adopts it: its count is read
and the update is added to it. Missing or broken Kubernetes configuration is the only error raised, by
:func:`api_client_from_environment` at start-up, as :class:`KubeConfigError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import structlog
from kubernetes.client import (
    ApiClient,
    Configuration,
    CoreV1Api,
    CoreV1Event,
    V1EventSource,
    V1ObjectMeta,
    V1ObjectReference,
)
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException, load_incluster_config, load_kube_config

from auditor.classify import EXPECTED_DROPPED, UNEXPECTED_ALLOWED, Edge, Judgement
from auditor.judge import ICMP_REQUEST_TYPE
from auditor.matrix import Matrix
from auditor.model import Endpoint
from auditor.pipeline import QuietSink

REASON_UNEXPECTED_ALLOWED: Final = "NetworkPolicyViolation"
REASON_EXPECTED_DROPPED: Final = "LegitimateTrafficDropped"
REASONS: Final = {UNEXPECTED_ALLOWED: REASON_UNEXPECTED_ALLOWED, EXPECTED_DROPPED: REASON_EXPECTED_DROPPED}
EVENT_TYPE: Final = "Warning"
COMPONENT: Final = "flow-auditor"

DEFAULT_INTERVAL: Final = 300.0
DEFAULT_QUEUE_SIZE: Final = 1000
DEFAULT_MAX_EVENTS: Final = 10_000
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
DEFAULT_SWEEP_EVERY: Final = 1.0

MAX_MESSAGE: Final = 1024  # the API server's limit on an Event's note/message
MAX_NAME: Final = 253  # DNS subdomain
MAX_INSTANCE: Final = 128
_HASH_CHARS: Final = 16
_MAX_ERROR_TEXT: Final = 300
_NOT_DNS: Final = re.compile(r"[^a-z0-9.-]+")

log = structlog.get_logger(__name__)


class KubeConfigError(RuntimeError):
    """No usable Kubernetes client configuration (neither in-cluster nor kubeconfig)."""


def api_client_from_environment(kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    """An API client configured like ``kubectl`` would be.

    An explicit ``kubeconfig`` wins; otherwise the in-cluster service account when running in a pod
    (``KUBERNETES_SERVICE_HOST`` set), else ``$KUBECONFIG`` or ``~/.kube/config``. Never touches the
    client library's global default configuration. Raises :class:`KubeConfigError` naming the source.
    """
    config = Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        except (ConfigException, OSError) as e:
            raise KubeConfigError(f"in-cluster Kubernetes configuration: {e}") from e
        return ApiClient(config)
    path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context, client_configuration=config, persist_config=False
        )
    except (ConfigException, OSError, ValueError, TypeError) as e:
        raise KubeConfigError(f"kubeconfig {path}: {e}") from e
    return ApiClient(config)


def default_reporting_instance() -> str:
    """The node name (``NODE_NAME``, set from the downward API in the manifests) or the host name."""
    return (os.environ.get("NODE_NAME") or socket.gethostname() or COMPONENT)[:MAX_INSTANCE]


def event_name(pod: str, edge: Edge, instance: str) -> str:
    """``<pod>.<hash>``: deterministic per (pod, edge, reporting instance), a valid DNS subdomain."""
    key = "\x1f".join(str(part) for part in (*edge, instance))
    digest = hashlib.sha256(key.encode()).hexdigest()[:_HASH_CHARS]
    head = _NOT_DNS.sub("-", pod.lower())[: MAX_NAME - _HASH_CHARS - 1].strip(".-")
    return f"{head}.{digest}" if head else digest


def describe(judgement: Judgement) -> str:
    """The Event message: who talked to whom, on which port, what happened, what the matrix says."""
    flow = judgement.flow
    src, dst, port, protocol, cls = judgement.edge
    icmp_type = flow.icmp_type
    if judgement.reply:
        icmp_type = ICMP_REQUEST_TYPE.get((protocol, icmp_type), icmp_type)
    target = f"{protocol} type {icmp_type}" if port is None else f"{port}/{protocol}"
    source = _end(judgement.source, judgement.source_ip, src)
    destination = _end(judgement.destination, judgement.destination_ip, dst)
    text = f"{source} → {destination} {target} {_outcome(judgement.verdict, flow.drop_reason)}"
    if cls == EXPECTED_DROPPED:
        text += f"; allowed by matrix rule {judgement.rule} ({src} → {dst})"
    else:
        text += f"; not allowed by the matrix ({src} → {dst})"
    return text[:MAX_MESSAGE]


def _end(ep: Endpoint, ip: str, component: str) -> str:
    if ep.pod_name:
        return ep.pod
    return f"{ip} ({component})" if ip else component


def _outcome(verdict: str, drop_reason: str) -> str:
    if verdict == "AUDIT":
        detail = f"verdict AUDIT, {drop_reason}" if drop_reason else "verdict AUDIT"
        return f"would be dropped under policy enforcement ({detail})"
    if verdict == "ERROR":
        return f"dropped (verdict ERROR, {drop_reason})" if drop_reason else "dropped (verdict ERROR)"
    text = verdict.lower()
    return f"{text} ({drop_reason})" if drop_reason else text


def _timestamp(t: float) -> datetime:
    """Whole seconds in UTC (core/v1 Event timestamps have second precision)."""
    return datetime.fromtimestamp(int(t if t > 0 else time.time()), UTC)


@dataclass(frozen=True, slots=True)
class _Spec:
    """What never changes for one Event object."""

    namespace: str
    name: str
    pod: str
    reason: str
    message: str
    first: float  # flow time of the first connection


@dataclass(frozen=True, slots=True)
class _Update:
    """One API call to make: create (first connection) or patch; ``count`` is cumulative."""

    spec: _Spec
    count: int
    last: float
    create: bool


@dataclass(slots=True)
class _Aggregate:
    """Pipeline-side state of one Event: connections counted, and how many of them were sent when."""

    spec: _Spec
    count: int
    last: float
    sent: int
    sent_at: float  # clock time of the last update handed to the worker


_Key = tuple[str, str, Edge]  # (namespace, pod, edge)


class KubeEventsSink(QuietSink):
    """Turns violation edges into counted core/v1 Events (see the module docstring).

    ``api`` is a configured :class:`~kubernetes.client.ApiClient` or :class:`~kubernetes.client.CoreV1Api`
    (see :meth:`from_environment`). ``clock`` (monotonic seconds) paces the per-edge ``interval``;
    ``scope`` (the matrix's scope namespaces, replaced by :meth:`set_matrix` on hot reload) decides which
    end of a connection is the involved pod. Counters for metrics: ``posted``, ``patched``, ``errors``,
    ``dropped`` (queue full) and ``skipped`` (no pod at either end).
    """

    def __init__(
        self,
        api: ApiClient | CoreV1Api,
        *,
        interval: float = DEFAULT_INTERVAL,
        scope: Collection[str] | None = None,
        reporting_instance: str | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_events: int = DEFAULT_MAX_EVENTS,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sweep_every: float = DEFAULT_SWEEP_EVERY,
    ) -> None:
        self.api = api if isinstance(api, CoreV1Api) else CoreV1Api(api)
        self.interval = interval
        self.scope: frozenset[str] | None = None if scope is None else frozenset(scope)
        self.instance = (reporting_instance or default_reporting_instance())[:MAX_INSTANCE]
        self.max_events = max_events
        self.request_timeout = request_timeout
        self.posted = 0
        self.patched = 0
        self.errors = 0
        self.dropped = 0
        self.skipped = 0
        self._clock = clock
        self._sweep_every = sweep_every
        self._lock = threading.Lock()
        self._events: OrderedDict[_Key, _Aggregate] = OrderedDict()
        self._pending: set[_Key] = set()  # counted connections not sent yet
        self._offsets: dict[str, int] = {}  # worker only: counts of adopted pre-existing Events
        self._queue: queue.Queue[_Update | None] = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="kube-events", daemon=True)
        self._worker.start()

    @classmethod
    def from_environment(
        cls,
        kubeconfig: str | None = None,
        context: str | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        scope: Collection[str] | None = None,
    ) -> KubeEventsSink:
        """A sink talking to the cluster of :func:`api_client_from_environment` (raises KubeConfigError)."""
        return cls(api_client_from_environment(kubeconfig, context), interval=interval, scope=scope)

    def set_matrix(self, matrix: Matrix) -> None:
        """Hot reload (called by the pipeline's feeding thread): the new scope picks the involved pod."""
        self.scope = matrix.scope_namespaces

    # -- Sink (outcomes, lost events, node states, invalid lines and unproven connections: nothing to
    # tell the pods' owners) ------------------------------------------------------------------------

    def on_judgement(self, judgement: Judgement) -> None:
        if not judgement.new_connection:
            return
        reason = REASONS.get(judgement.edge.cls)
        if reason is None:
            return
        flow = judgement.flow
        pod = self._involved(judgement)
        if pod is None:
            self.skipped += 1
            return
        key = (pod.namespace[:MAX_NAME], pod.pod_name[:MAX_NAME], judgement.edge)
        now = self._clock()
        with self._lock:
            if self._closed:
                self.dropped += 1
                return
            agg = self._events.get(key)
            if agg is None:
                self._start(key, judgement, pod, reason, now)
                return
            self._events.move_to_end(key)
            agg.count += 1
            if flow.time > agg.last:
                agg.last = flow.time
            if now - agg.sent_at >= self.interval:
                self._send(key, agg, now)
            else:
                self._pending.add(key)

    # -- life cycle ---------------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> bool:
        """Send the counts still pending, let the worker drain its queue, stop it.

        Returns False when the worker did not finish within ``timeout`` seconds (it is a daemon thread,
        so it never holds the process up). Judgements after close are counted as ``dropped``.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if not self._closed:
                self._closed = True
                now = self._clock()
                for key in list(self._pending):
                    self._send(key, self._events[key], now)
                self._pending.clear()
        if not self._worker.is_alive():
            return True
        with contextlib.suppress(queue.Full):  # the worker is stuck on a slow API server: give up waiting
            self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        self._worker.join(max(0.0, deadline - time.monotonic()))
        return not self._worker.is_alive()

    # -- pipeline side (_start, _send, _enqueue run under the lock) -----------------------------------
    def _involved(self, judgement: Judgement) -> Endpoint | None:
        ends = (judgement.destination, judgement.source)
        scope = self.scope
        if scope is not None:
            for ep in ends:
                if ep.pod_name and ep.namespace in scope:
                    return ep
        for ep in ends:
            if ep.pod_name and ep.namespace:
                return ep
        return None

    def _start(self, key: _Key, judgement: Judgement, pod: Endpoint, reason: str, now: float) -> None:
        flow = judgement.flow
        spec = _Spec(
            namespace=key[0],
            name=event_name(pod.pod_name, judgement.edge, self.instance),
            pod=key[1],
            reason=reason,
            message=describe(judgement),
            first=flow.time,
        )
        if not self._enqueue(_Update(spec, 1, flow.time, create=True)):
            return  # not remembered: the next connection tries to create it again
        while len(self._events) >= self.max_events:
            old, _ = self._events.popitem(last=False)
            self._pending.discard(old)
        self._events[key] = _Aggregate(spec, count=1, last=flow.time, sent=1, sent_at=now)

    def _send(self, key: _Key, agg: _Aggregate, now: float) -> None:
        agg.sent_at = now  # a dropped update is retried after another interval, not at once
        if self._enqueue(_Update(agg.spec, agg.count, agg.last, create=False)):
            agg.sent = agg.count
            self._pending.discard(key)
        else:
            self._pending.add(key)

    def _enqueue(self, update: _Update) -> bool:
        try:
            self._queue.put_nowait(update)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _sweep(self) -> None:
        """Hand over the counts of edges that went quiet after their interval (no connection since)."""
        with self._lock:
            if not self._pending or self._closed:
                return
            now = self._clock()
            for key in list(self._pending):
                agg = self._events[key]
                if now - agg.sent_at >= self.interval:
                    self._send(key, agg, now)

    # -- worker thread ------------------------------------------------------------------------------
    def _work(self) -> None:
        next_sweep = time.monotonic() + self._sweep_every
        while True:
            try:
                update = self._queue.get(timeout=self._sweep_every)
            except queue.Empty:
                pass
            else:
                if update is None:
                    return
                self._run(update)
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + self._sweep_every

    def _run(self, update: _Update) -> None:
        try:
            if update.create:
                self._create(update, adopt=True)
            else:
                self._patch(update, recreate=True)
        except ApiException as e:
            self._failed(update, e.status, _api_error_text(e))
        except Exception as e:  # the worker must survive anything the client raises
            self._failed(update, None, f"{type(e).__name__}: {e}")

    def _create(self, update: _Update, *, adopt: bool) -> None:
        try:
            self.api.create_namespaced_event(
                update.spec.namespace, self._event(update), _request_timeout=self.request_timeout
            )
        except ApiException as e:
            if e.status == 409 and adopt:
                self._adopt(update)
                return
            raise
        self._offsets.pop(update.spec.name, None)
        self.posted += 1

    def _adopt(self, update: _Update) -> None:
        """The Event exists already (a previous run of this instance): continue its count."""
        spec = update.spec
        existing = self.api.read_namespaced_event(
            spec.name, spec.namespace, _request_timeout=self.request_timeout
        )
        self._offsets[spec.name] = existing.count or 1
        if len(self._offsets) > self.max_events:
            self._offsets.pop(next(iter(self._offsets)))
        self._patch(update, recreate=False)

    def _patch(self, update: _Update, *, recreate: bool) -> None:
        spec = update.spec
        body = {
            "count": self._offsets.get(spec.name, 0) + update.count,
            "lastTimestamp": _timestamp(update.last).isoformat(),
        }
        try:
            self.api.patch_namespaced_event(
                spec.name, spec.namespace, body, _request_timeout=self.request_timeout
            )
        except ApiException as e:
            if e.status == 404 and recreate:  # expired (event TTL) or deleted: start it again
                self._offsets.pop(spec.name, None)
                self._create(update, adopt=False)
                return
            raise
        self.patched += 1

    def _event(self, update: _Update) -> CoreV1Event:
        spec = update.spec
        return CoreV1Event(
            api_version="v1",
            kind="Event",
            metadata=V1ObjectMeta(name=spec.name, namespace=spec.namespace),
            involved_object=V1ObjectReference(
                api_version="v1", kind="Pod", name=spec.pod, namespace=spec.namespace
            ),
            reason=spec.reason,
            message=spec.message,
            type=EVENT_TYPE,
            count=update.count,
            first_timestamp=_timestamp(spec.first),
            last_timestamp=_timestamp(update.last),
            source=V1EventSource(component=COMPONENT, host=self.instance),
            reporting_component=COMPONENT,
            reporting_instance=self.instance,
        )

    def _failed(self, update: _Update, status: int | None, error: str) -> None:
        self.errors += 1
        log.warning(
            "kubernetes event not written",
            action="create" if update.create else "patch",
            namespace=update.spec.namespace,
            name=update.spec.name,
            reason=update.spec.reason,
            status=status,
            error=" ".join(error.split())[:_MAX_ERROR_TEXT],
        )


def _api_error_text(e: ApiException) -> str:
    """The API server's Status message when there is one (``events is forbidden: …``), else the reason."""
    try:
        status = json.loads(e.body or "")
    except (TypeError, ValueError):
        status = None
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return str(status["message"])
    return str(e.reason or "")
