"""The receiver process: the GetFlows call received in a process of its own (``--receiver process``).

Stage: source (I/O edge), below :mod:`auditor.sources.hubble`. In one interpreter, gRPC's Python iterator
(~10 µs a message) and judging share one GIL; here a child process owns the call and forwards the raw
response bytes, and the daemon's process only parses and judges. Input: the parent's
:class:`~auditor.sources.hubble.HubbleConfig` and, per stream, its serialized ``GetFlowsRequest``.
Output: :class:`ReceivedCall`, which :meth:`HubbleSource._consume` iterates like the gRPC call it replaces.

The child is a fresh interpreter (``subprocess``: fork and exec at once, so grpc is never forked, as
with ``multiprocessing``'s *spawn*, but without spawn's resource-tracker process or its re-run of the
parent's ``__main__``) that imports with the parent's module path. It builds its own channel from the
config at each stream — the same channel options, TLS credentials read from their files then, so a
rotated certificate is used by the next stream — and sends the messages to the parent over a pipe in
batches: a batch goes when it holds :data:`BATCH_MESSAGES` messages or :data:`BATCH_BYTES` bytes, and at
most :data:`BATCH_DELAY` seconds after its first message (a timer thread), so a quiet stream delivers at
once. Order is kept (one send lock). Memory is bounded: while a send blocks (the parent is behind), the
child stops reading the call — gRPC's flow control then holds the server back — so at most the pipe's
buffer (:data:`PIPE_BYTES`, room for a whole batch: the child reads on while the parent is still at the
batch before), two batches (one being sent, one filling) and the batch the parent is iterating wait
between gRPC and the parent; what else the server sent waits in gRPC's flow-control window and the
kernel's socket buffers, which both grow with the link (tens of MiB on a fast one).

Lifecycle: the child starts at the first stream and serves the following ones; one that died (killed,
out of memory) ends the stream it was serving, and the next stream starts a new one. The child exits when
asked (:meth:`ReceiverProcess.close`: asked to exit, joined for a bound, then killed by its PID) and when
the parent goes away (end of file on its command pipe). It ignores SIGINT and SIGHUP: a terminal's Ctrl-C
or hang-up reaches the daemon, which stops it in order.

Error policy: the call's end is passed on exactly — a gRPC error raises :class:`ReceiverError` in the
parent with the same ``code()`` and ``details()``, so the parent's handling of a cancelled call, an
oversized message or an unavailable server is the one of the thread receiver; a normal end of the stream
ends the iteration. A child that dies mid-stream raises ``UNAVAILABLE`` "receiver process exited (signal
9)"; a stream opened after :meth:`~ReceiverProcess.close` raises ``CANCELLED``. Anything unexpected in the
child ends its stream with ``UNKNOWN`` and the reason (the child goes on serving).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import grpc

if TYPE_CHECKING:
    from auditor._proto.observer import observer_pb2
    from auditor.sources.hubble import HubbleConfig

BATCH_MESSAGES: Final = 256
BATCH_BYTES: Final = 1 << 20
BATCH_DELAY: Final = 0.005  # seconds from a batch's first message to its send, at most
# The data pipe's buffer: a whole batch fits, so the receiver goes on reading while the daemon is still
# at the batch before (with Linux's default 64 KiB it waited for every batch: 66k against 80k msgs/s).
PIPE_BYTES: Final = 1 << 20
STOP_TIMEOUT: Final = 2.0  # seconds the child is given to exit before it is killed
PROCESS_NAME: Final = "flow-auditor-receiver"  # the child's first argument: what ps shows

# One pipe message, child → parent: (stream id, messages, end); end is None while the stream goes on,
# else (status code name or None for a normal end, details). Streams count from 1; the child's first
# message, (_READY, [], None), says it has started (every stream skips it).
_READY: Final = 0
End: TypeAlias = "tuple[str | None, str]"


class ReceiverError(grpc.RpcError):
    """The receiver's call ended with a gRPC status (or the receiver process died): as the call's error."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _status(name: str) -> grpc.StatusCode:
    return grpc.StatusCode.__members__.get(name, grpc.StatusCode.UNKNOWN)


# -- parent side ------------------------------------------------------------------------------------------


class _Child:
    """One receiver process and the parent's ends of its two pipes."""

    def __init__(self, config: HubbleConfig) -> None:
        setup = pickle.dumps(config)  # before the process exists: an unpicklable config starts nothing
        commands_in, commands_out = os.pipe()  # not inherited by other processes (close-on-exec)
        data_in, data_out = os.pipe()
        _widen(data_in)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, PROCESS_NAME, str(commands_in), str(data_out)],
                pass_fds=(commands_in, data_out),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            os.close(commands_out)
            os.close(data_in)
            raise
        finally:
            os.close(commands_in)  # the child holds its own copies: end of file reaches each side
            os.close(data_out)
        self.commands = Connection(commands_out, readable=False)
        self.data = Connection(data_in, writable=False)
        self.reading = False  # a ReceivedCall is reading ``data`` (only it may close it then)
        self.ready = False  # its first message, "ready", was read by ReceiverProcess.start()
        with contextlib.suppress(OSError):  # it died at once: its first stream reads end of file
            self.commands.send(sys.path)
            self.commands.send_bytes(setup)

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, command: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError, ValueError):  # the child is gone: its stream reads end of file
            self.commands.send(command)

    def exit_reason(self) -> str:
        try:
            code = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return "receiver process closed its pipe"
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        return f"receiver process exited ({how})"

    def close_data(self) -> None:
        with contextlib.suppress(OSError):  # closed by the garbage collector (an abandoned reader)
            self.data.close()

    def stop(self, timeout: float) -> None:
        self.send(("exit",))
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)
        self.commands.close()


def _widen(pipe: int) -> None:
    """Give the data pipe :data:`PIPE_BYTES` of buffer where the system allows (Linux; else its default)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is not None:
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size or the user's pipe pages
            fcntl.fcntl(pipe, set_size, PIPE_BYTES)


# The child's start: the parent's module path (so that it imports what the parent imports, as
# multiprocessing's spawn does), then child_main. argv: PROCESS_NAME (for ps), the two pipes.
_BOOT: Final = (
    "import sys; from multiprocessing.connection import Connection as C; "
    "c = C(int(sys.argv[2]), writable=False); sys.path[:] = c.recv(); "
    "from auditor.sources.receiver import child_main; child_main(c, int(sys.argv[3]))"
)


class ReceiverProcess:
    """The parent's handle on the receiver process: :meth:`open` a stream, :meth:`close` at the end.

    Thread-safe: :meth:`open` is called by the stream thread (the only reader of the data pipe),
    :meth:`ReceivedCall.cancel` and :meth:`close` from any thread.
    """

    def __init__(self, config: HubbleConfig, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.config = config
        self.stop_timeout = stop_timeout
        self.started = 0  # receiver processes started so far
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._closed = False
        self._stream = 0

    @property
    def pid(self) -> int | None:
        """The current receiver process's PID (``None`` before the first stream)."""
        child = self._child
        return child.process.pid if child is not None else None

    def start(self, timeout: float = 60.0) -> bool:
        """Start the receiver process now (if none is alive) and wait until it is ready to open a call;
        false if it was not within ``timeout``. Only before a stream is open (benchmarks call it, to time
        streams without the process's start); streams start the process by themselves."""
        with self._lock:
            if self._closed:
                return False
            child = self._alive_child()
            if child.reading:
                raise RuntimeError("ReceiverProcess.start() while a stream is open")
            if not child.ready and child.data.poll(timeout):
                child.ready = pickle.loads(child.data.recv_bytes())[0] == _READY
            return child.ready

    def open(self, request: observer_pb2.GetFlowsRequest) -> ReceivedCall:
        """Open a GetFlows call with ``request`` in the receiver process (started now if none is alive)."""
        payload = request.SerializeToString()
        with self._lock:
            if self._closed:
                return ReceivedCall(self, None, 0)
            child = self._alive_child()
            self._stream += 1
            stream = self._stream
            child.send(("open", stream, payload))
            child.reading = True
        return ReceivedCall(self, child, stream)

    def _alive_child(self) -> _Child:
        child = self._child
        if child is None or not child.alive():
            if child is not None:
                child.stop(self.stop_timeout)  # reaps the dead one and closes its pipes
                if not child.reading:
                    child.close_data()
            child = self._child = _Child(self.config)
            self.started += 1
        return child

    def cancel(self, child: _Child, stream: int) -> None:
        with self._lock:
            if not child.commands.closed:
                child.send(("cancel", stream))

    def done_reading(self, child: _Child) -> None:
        with self._lock:
            child.reading = False
            if self._closed or child is not self._child:
                child.close_data()

    def close(self) -> None:
        """Stop the receiver process (asked, joined for ``stop_timeout``, then killed); no stream opens
        after this."""
        with self._lock:
            self._closed = True
            child = self._child
            if child is not None:
                child.stop(self.stop_timeout)
                if not child.reading:
                    child.close_data()


class ReceivedCall:
    """One stream received by the receiver process, as the parent iterates it: raw ``bytes`` in order,
    :class:`ReceiverError` for a gRPC error, and :meth:`cancel`."""

    def __init__(self, owner: ReceiverProcess, child: _Child | None, stream: int) -> None:
        self._owner, self._child, self._stream = owner, child, stream

    def cancel(self) -> None:
        if self._child is not None:
            self._owner.cancel(self._child, self._stream)

    def __iter__(self) -> Iterator[bytes]:
        child = self._child
        if child is None:
            raise ReceiverError(grpc.StatusCode.CANCELLED, "the receiver process is stopped")
        return self._messages(child)

    def _messages(self, child: _Child) -> Iterator[bytes]:
        recv, loads, stream = child.data.recv_bytes, pickle.loads, self._stream
        try:
            while True:
                try:
                    sid, messages, end = loads(recv())
                except (EOFError, OSError):
                    raise ReceiverError(grpc.StatusCode.UNAVAILABLE, child.exit_reason()) from None
                if sid != stream:
                    continue  # the rest of an earlier stream that was left unread
                yield from messages
                if end is not None:
                    code, details = end
                    if code is None:
                        return
                    raise ReceiverError(_status(code), details)
        finally:
            self._owner.done_reading(child)


# -- child side -------------------------------------------------------------------------------------------


class _Batcher:
    """Collects one stream's messages into batches and sends them, in order, over the shared pipe: full
    ones from the stream thread (:meth:`pump`), late ones from a timer thread."""

    def __init__(self, stream: int, data: Connection, send_lock: threading.Lock) -> None:
        self.stream = stream
        self._data, self._send_lock = data, send_lock
        self._lock = threading.Lock()  # the batch: a plain lock, taken once per message
        self._batch: list[bytes] = []
        self._first = 0.0  # monotonic time of the current batch's first message
        self._sent = 0  # batches taken so far (the timer's batch may have gone meanwhile)
        self._started = threading.Event()  # a batch got its first message (set under _lock)
        self._done = threading.Event()
        self._timer = threading.Thread(target=self._flush_late, name="receiver-timer", daemon=True)
        self._timer.start()

    def pump(self, call: Iterable[bytes]) -> None:
        """Batch every message of ``call`` (the hot loop: locals only, one lock per message)."""
        lock, started, monotonic = self._lock, self._started, time.monotonic
        current: list[bytes] | None = None
        size = 0
        for raw in call:
            with lock:
                batch = self._batch
                if batch is not current:  # taken meanwhile (full here, or late by the timer)
                    current, size = batch, 0
                batch.append(raw)
                if len(batch) == 1:
                    self._first = monotonic()
                    started.set()
            size += len(raw)
            if len(batch) >= BATCH_MESSAGES or size >= BATCH_BYTES:
                self.flush()

    def flush(self, end: End | None = None) -> None:
        with self._send_lock:  # taken before the batch: batches leave in the order they were taken
            with self._lock:
                batch, self._batch = self._batch, []
                self._sent += 1
            if batch or end is not None:
                self._data.send_bytes(pickle.dumps((self.stream, batch, end), pickle.HIGHEST_PROTOCOL))

    def finish(self, end: End) -> None:
        """Send what is left and the stream's end; stop the timer."""
        self._done.set()
        self._started.set()
        self.flush(end)
        self._timer.join()

    def _flush_late(self) -> None:
        started, done = self._started, self._done
        while True:
            started.wait()
            if done.is_set():
                return
            with self._lock:
                started.clear()  # the next batch's first message sets it again
                if not self._batch:
                    continue  # sent full meanwhile
                taken, first = self._sent, self._first
            delay = first + BATCH_DELAY - time.monotonic()
            if delay > 0 and done.wait(delay):
                return
            with self._lock:
                late = self._sent == taken
            if late:
                try:
                    self.flush()
                except OSError:  # the parent is gone: the stream thread notices too
                    return


class _Streams:
    """The child's one stream at a time: opened, cancelled and ended on the parent's commands."""

    def __init__(self, config: HubbleConfig, data: Connection) -> None:
        self.config = config
        self.data = data
        self.send_lock = threading.Lock()
        self.stream = 0
        self.call: Any = None
        self.thread: threading.Thread | None = None

    def open(self, stream: int, request: bytes) -> None:
        self.cancel(self.stream)
        if self.thread is not None:
            self.thread.join()  # sends the earlier stream's end (the parent skips it)
        self.thread, self.call, self.stream = None, None, stream
        batcher = _Batcher(stream, self.data, self.send_lock)
        try:
            channel = _channel(self.config)
        except Exception as e:  # unreadable certificate files…
            batcher.finish(("UNAVAILABLE", f"receiver process: {type(e).__name__}: {e}"))
            return
        try:
            self.call = _get_flows(channel)(request)
        except Exception as e:
            channel.close()
            batcher.finish(("UNKNOWN", f"receiver process: {type(e).__name__}: {e}"))
            return
        self.thread = threading.Thread(
            target=self._forward, args=(self.call, channel, batcher), name="receiver-stream", daemon=True
        )
        self.thread.start()

    def cancel(self, stream: int) -> None:
        call = self.call
        if call is not None and stream == self.stream:
            call.cancel()

    def _forward(self, call: Any, channel: grpc.Channel, batcher: _Batcher) -> None:
        end: End = (None, "")
        try:
            batcher.pump(call)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            end = (code.name if code is not None else "UNKNOWN", details or "")
        except OSError:  # the parent is gone
            os._exit(0)
        except Exception as e:
            end = ("UNKNOWN", f"receiver process: {type(e).__name__}: {e}")
        finally:
            channel.close()
        try:
            batcher.finish(end)
        except OSError:
            os._exit(0)


def _get_flows(channel: grpc.Channel) -> Any:
    """GetFlows on ``channel``: the request already serialized, the responses raw."""
    from auditor.sources.hubble import GET_FLOWS

    return channel.unary_stream(GET_FLOWS, request_serializer=None, response_deserializer=None)


def _channel(config: HubbleConfig) -> grpc.Channel:
    from auditor.sources.hubble import credentials

    options = config.channel_options()
    if config.tls:
        return grpc.secure_channel(config.target, credentials(config), options=options)
    return grpc.insecure_channel(config.target, options=options)


def child_main(commands: Connection, data_fd: int) -> None:
    """The receiver process: serve the parent's commands until it says ``exit`` or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        config = commands.recv()  # the HubbleConfig
    except (EOFError, OSError):
        os._exit(0)
    data = Connection(data_fd, readable=False)
    try:
        data.send_bytes(pickle.dumps((_READY, [], None)))
    except OSError:
        os._exit(0)
    streams = _Streams(config, data)
    try:
        while True:
            try:
                command = commands.recv()
            except (EOFError, OSError):
                break
            if command[0] == "open":
                streams.open(command[1], command[2])
            elif command[0] == "cancel":
                streams.cancel(command[1])
            else:
                break
    finally:
        streams.cancel(streams.stream)
        os._exit(0)  # no interpreter shutdown with gRPC threads running
