"""The ordered worker pool of ``replay --jobs`` (auditor/workers.py), with real forked processes.

Truths come from the tasks themselves: each task names its index, so order is checked against the input;
how long a task takes is chosen by the test, so that results come back out of order.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from auditor.commands.common import BATCH_YOUNG_COLLECTION, batch_collector
from auditor.workers import OrderedPool, WorkerDied

_setup: list[str] = []


def init(tag: str) -> None:
    _setup.append(tag)


def work(task: tuple[int, float]) -> tuple[int, int, str]:
    index, delay = task
    time.sleep(delay)
    return index, os.getpid(), _setup[-1]


def fail_on_three(task: int) -> int:
    if task == 3:
        raise ValueError(f"task {task} refused")
    return task * 10


def die_on_two(task: int) -> int:
    if task == 2:
        os._exit(7)
    return task


def killed_on_one(task: int) -> int:
    if task == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return task


def pids_of(pool: OrderedPool[object, object]) -> list[int]:
    return [p.pid for p, _ in pool._workers if p.pid is not None]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie not yet reaped still answers; its state says it is gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def bounded(fn: Callable[[], object], seconds: float = 20.0) -> object:
    """Run ``fn`` in a thread; fail (not hang) when it takes longer than ``seconds``."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds}s"
    if "error" in box:
        error = box["error"]
        assert isinstance(error, BaseException)
        raise error
    return box.get("value")


def test_results_come_in_task_order_whatever_order_the_workers_finish() -> None:
    # early tasks are slow, later ones fast: workers answer out of order
    tasks = [(i, 0.15 if i % 5 == 0 else 0.0) for i in range(40)]
    pool: OrderedPool[tuple[int, float], tuple[int, int, str]] = OrderedPool(3, work, init, ("set up",))
    try:
        got = list(pool.map(tasks, ahead=12))
    finally:
        pool.close()
    assert [index for index, _, _ in got] == list(range(40))
    assert len({pid for _, pid, _ in got}) == 3  # every worker took tasks
    assert all(tag == "set up" for _, _, tag in got)  # the initializer ran in every worker
    assert os.getpid() not in {pid for _, pid, _ in got}


def test_no_more_than_ahead_tasks_are_taken_beyond_the_oldest_result_not_merged() -> None:
    pulled: list[int] = []

    def tasks() -> Iterator[tuple[int, float]]:
        for i in range(100):
            pulled.append(i)
            yield (i, 0.0)

    pool: OrderedPool[tuple[int, float], tuple[int, int, str]] = OrderedPool(2, work, init, ("x",))
    try:
        results = pool.map(tasks(), ahead=6)
        first = next(results)
        time.sleep(0.3)  # the merge is slow: the workers must not run on through the input
        assert first[0] == 0 and len(pulled) <= 6 + 1
        rest = list(results)
    finally:
        pool.close()
    assert [r[0] for r in rest] == list(range(1, 100))


def test_a_task_error_is_raised_in_the_parent_and_close_stops_every_worker() -> None:
    pool: OrderedPool[int, int] = OrderedPool(2, fail_on_three, init, ("x",))
    pids = pids_of(pool)  # type: ignore[arg-type]
    got: list[int] = []
    with pytest.raises(ValueError, match="task 3 refused"):
        bounded(lambda: got.extend(pool.map(range(10), ahead=8)))
    pool.close()
    assert got == [0, 10, 20]
    assert not any(alive(pid) for pid in pids)


def test_a_worker_that_dies_is_an_error_not_a_hang() -> None:
    """multiprocessing.Pool, which --jobs used before, waits forever for the task of a killed worker."""
    pool: OrderedPool[int, int] = OrderedPool(2, die_on_two, init, ("x",))
    pids = pids_of(pool)  # type: ignore[arg-type]
    try:
        with pytest.raises(WorkerDied, match=r"exit code 7"):
            bounded(lambda: list(pool.map(range(6), ahead=4)))
    finally:
        pool.close()
    assert not any(alive(pid) for pid in pids)


def test_close_after_the_merge_stopped_ends_busy_workers_at_once() -> None:
    """The merge raised (or was interrupted) while the workers were in long tasks: close() does not wait."""
    pool: OrderedPool[tuple[int, float], tuple[int, int, str]] = OrderedPool(2, work, init, ("x",))
    pids = pids_of(pool)  # type: ignore[arg-type]
    results = pool.map([(0, 0.0)] + [(i, 30.0) for i in range(1, 6)], ahead=6)
    assert next(results)[0] == 0  # meanwhile both workers took a 30 s task
    time.sleep(0.2)
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 5
    assert not any(alive(pid) for pid in pids)


def test_a_worker_killed_by_a_signal_is_named_so() -> None:
    pool: OrderedPool[int, int] = OrderedPool(2, killed_on_one, init, ("x",))
    try:
        with pytest.raises(WorkerDied, match=r"killed by signal 9.*give fewer --jobs"):
            bounded(lambda: list(pool.map(range(4), ahead=4)))
    finally:
        pool.close()


def young_threshold(task: int) -> tuple[int, int]:
    return gc.get_threshold()[0], gc.get_freeze_count()


@pytest.mark.parametrize("batch", [False, True], ids=["plain", "in a batch run"])
def test_the_pool_leaves_the_collector_as_it_found_it(batch: bool) -> None:
    """The pool freezes the parent's objects for the fork and unfreezes them after, unless a batch run
    (``batch_collector``) had frozen them already: then they stay frozen, and its workers inherit its
    thresholds."""
    gc.collect()
    with batch_collector() if batch else contextlib.nullcontext():
        pool: OrderedPool[int, tuple[int, int]] = OrderedPool(2, young_threshold, init, ("x",))
        try:
            inside = gc.get_freeze_count()
            (young, frozen_in_worker), _ = pool.map([0, 1], ahead=2)
        finally:
            pool.close()
        assert (inside > 0) is batch
        assert frozen_in_worker > 0 and young == (BATCH_YOUNG_COLLECTION if batch else 700)
    assert gc.get_freeze_count() == 0 and gc.get_threshold()[0] == 700
