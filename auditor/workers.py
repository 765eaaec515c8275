"""An ordered pool of forked worker processes: tasks in, results out in task order (``replay --jobs``).

Stage: none (process plumbing for :mod:`auditor.replay_parallel`). The main thread sends each worker its
tasks and receives its results itself, over one pipe per worker, and blocks only while it waits for one
(``multiprocessing.connection.wait``). ``multiprocessing.Pool`` hands tasks and results through two
helper threads instead, which take the interpreter lock from the merging main thread for every chunk:
measured on 200,000 events in 4 MiB chunks, the parent of a ``--jobs 2`` replay spent 0.42 s of CPU with
``Pool`` against 0.17 s for the merge itself. Work goes to whichever worker is free (at most two tasks
queued per worker), so a worker slowed by other load does not hold the others back; results wait in order
for the merge, at most ``ahead`` tasks beyond the oldest one not merged yet, so memory does not grow with
the input.

Error policy: an exception the task raises in a worker is re-raised here (pickled, as ``Pool`` does) in
task order, once every earlier result was taken; a
worker that ends without answering (killed, out of memory) raises :class:`WorkerDied` with its exit code,
where ``Pool`` would wait forever; :meth:`OrderedPool.close` stops every worker by its PID (``SIGTERM``,
then ``SIGKILL`` after a second).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")

QUEUED_PER_WORKER = 2
"""Tasks sent to a worker before it answered: the next one is there when it finishes one."""


class WorkerDied(RuntimeError):
    """A worker process ended without returning the result of its task."""


def _serve(
    conn: Connection, fn: Callable[[Any], Any], initializer: Callable[..., None], initargs: tuple[Any, ...]
) -> None:
    """A worker's whole life: set up, then answer every task until told to stop (``None``) or cut off."""
    try:
        initializer(*initargs)
        while (task := conn.recv()) is not None:
            try:
                answer: tuple[bool, Any] = (True, fn(task))
            except Exception as e:  # the task's own error: the parent re-raises it
                answer = (False, e)
            conn.send(answer)
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the parent is gone or stopping: nothing to answer


def _died(process: BaseProcess) -> str:
    process.join(1)
    code = process.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return (
        f"a replay worker (pid {process.pid}) ended without an answer ({how}); if memory is short "
        "(signal 9 is what the kernel's out-of-memory killer sends), give fewer --jobs"
    )


class OrderedPool(Generic[T, R]):
    """``jobs`` forked processes that run ``fn`` on tasks (after ``initializer(*initargs)`` once each)."""

    def __init__(
        self,
        jobs: int,
        fn: Callable[[T], R],
        initializer: Callable[..., None],
        initargs: tuple[Any, ...] = (),
    ) -> None:
        ctx = multiprocessing.get_context("fork")
        self._workers: list[tuple[BaseProcess, Connection]] = []
        self._idle = True  # no task is out: close() may let the workers end on their own
        # The parent's objects out of the workers' collections (as CPython advises before a fork): their
        # pages stay shared instead of being copied when a worker's collector walks them. A caller that
        # froze them already (a batch run: commands.common.batch_collector) keeps them frozen.
        frozen_before = gc.get_freeze_count() > 0
        gc.freeze()
        try:
            for _ in range(jobs):
                here, there = ctx.Pipe()
                process = ctx.Process(target=_serve, args=(there, fn, initializer, initargs), daemon=True)
                process.start()
                there.close()
                self._workers.append((process, here))
        except BaseException:
            self.close()
            raise
        finally:
            if not frozen_before:
                gc.unfreeze()

    def map(self, tasks: Iterable[T], ahead: int, stamp: Callable[[int, T], T] | None = None) -> Iterator[R]:
        """The results of ``tasks``, in their order; at most ``ahead`` tasks are sent beyond the oldest
        result not yet taken. ``stamp(worker, task)``, when given, is what is sent instead of ``task``,
        made as it is sent (``worker``: the index of the worker it goes to, from 0), so that it can carry
        what the caller learnt from the results taken so far. Stop iterating early only by closing the
        pool."""
        todo = iter(tasks)
        queued: dict[Connection, deque[int]] = {conn: deque() for _, conn in self._workers}
        index_of = {conn: i for i, (_, conn) in enumerate(self._workers)}
        process_of = {conn: process for process, conn in self._workers}
        answers: dict[int, tuple[bool, Any]] = {}  # (ok, result or the task's exception)
        sent = taken = 0
        more = True
        self._idle = False
        while True:
            for conn, waiting in queued.items():  # top up every worker with room
                while more and len(waiting) < QUEUED_PER_WORKER and sent - taken < ahead:
                    task = next(todo, None)
                    if task is None:
                        more = False
                        break
                    try:
                        conn.send(task if stamp is None else stamp(index_of[conn], task))
                    except OSError:  # the worker is gone (its end of the pipe closed)
                        raise WorkerDied(_died(process_of[conn])) from None
                    waiting.append(sent)
                    sent += 1
            if taken in answers:
                ok, value = answers.pop(taken)
                if not ok:  # raised in task order: every earlier result was taken
                    raise value
                taken += 1
                yield value
                continue
            if taken == sent:
                self._idle = True
                return
            for ready in wait([conn for conn, waiting in queued.items() if waiting]):
                conn = cast(Connection, ready)  # wait() returns the objects it was given
                try:
                    answers[queued[conn].popleft()] = conn.recv()
                except (EOFError, OSError):
                    raise WorkerDied(_died(process_of[conn])) from None

    def close(self) -> None:
        """Stop every worker by its PID: told to stop when none has a task, else ``SIGTERM`` at once
        (``SIGKILL`` for one still running a second later)."""
        for process, conn in self._workers:
            with contextlib.suppress(OSError):
                conn.send(None)
            if self._idle:
                process.join(1)
        for process, conn in self._workers:
            if process.is_alive():
                process.terminate()
                process.join(1)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self._workers.clear()
