"""Feeding the demo server's log over time: recorded responses on their own schedule, or the Airflow scenario.

Stage: none of the pipeline's — the writer side of the embedded Hubble stand-in. Input: ``(offset_ns,
GetFlowsResponse)`` templates (:class:`Player`) or the bundled scenario (:class:`LiveScenario`,
:func:`auditor.scenario.airflow_scenario`). Output: appends to a :class:`~auditor.demo.flowlog.FlowLog`
from one background thread, ``speed`` times faster than the templates' offsets, once or in a loop, with
the original timestamps or fresh ones.

Error policy: a speed that is not a positive finite number raises :class:`ValueError` at construction;
the player thread itself never raises (it only stamps and appends messages it owns).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

from auditor._proto.observer import observer_pb2
from auditor.demo.flowlog import IDLE_WAIT_S, NS_PER_S, FlowLog, timestamp_ns
from auditor.demo.responses import node_status_response, response_from_event
from auditor.scenario import DEFAULT_START, airflow_scenario

__all__ = ["DEFAULT_SPEED", "LiveScenario", "Player"]

# The bundled scenario is ten minutes of flow time: at 10x a loop takes a minute and a violation
# shows up every few seconds.
DEFAULT_SPEED: Final = 10.0


class Player:
    """A thread appending ``templates`` to a log on their own schedule: ``(offset_ns, response)`` pairs,
    offsets from the start of one pass, divided by ``speed`` to get wall time.

    With ``loop``, passes repeat every ``period_ns / speed``; with ``retime``, each response is stamped
    with the wall-clock time of its (scheduled) append, and flow UUIDs change from one pass to the next
    (the first 8 hex digits carry the pass number) so that passes never repeat an identifier. The
    templates are owned by the player afterwards (it stamps them in place).
    """

    def __init__(
        self,
        log: FlowLog,
        templates: Sequence[tuple[int, observer_pb2.GetFlowsResponse]],
        *,
        speed: float = 1.0,
        loop: bool = False,
        retime: bool = False,
        period_ns: int | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if not speed > 0 or math.isinf(speed):
            raise ValueError(f"speed must be a positive number, got {speed}")
        self.log = log
        self._templates = sorted(templates, key=lambda t: t[0])
        self._uuids = [m.flow.uuid for _, m in self._templates]
        self._speed = speed
        self._loop = loop
        self._retime = retime
        last = self._templates[-1][0] if self._templates else 0
        self._period_ns = period_ns if period_ns is not None else last + NS_PER_S
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hubble-demo-player", daemon=True)
        self.passes = 0
        self.played = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the player to finish (a non-looping one ends after its pass); true if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        base = self._clock()
        while not self._stop.is_set() and self._templates:
            self._play_pass(base, self.passes)
            self.passes += 1
            if not self._loop:
                return
            base += int(self._period_ns / self._speed)

    def _play_pass(self, base: int, number: int) -> None:
        templates, speed = self._templates, self._speed
        i, n = 0, len(templates)
        while i < n and not self._stop.is_set():
            now = self._clock()
            due: list[observer_pb2.GetFlowsResponse] = []
            while i < n:
                at = base + int(templates[i][0] / speed)
                if at > now:
                    break
                due.append(self._stamp(i, at, number) if self._retime else templates[i][1])
                i += 1
            if due:
                self.played += len(due)
                self.log.extend(due)
            if i < n:
                wait_ns = base + int(templates[i][0] / speed) - self._clock()
                if wait_ns > 0:
                    self._stop.wait(min(wait_ns / NS_PER_S, IDLE_WAIT_S))

    def _stamp(self, i: int, ns: int, number: int) -> observer_pb2.GetFlowsResponse:
        msg = self._templates[i][1]
        msg.time.FromNanoseconds(ns)
        if msg.HasField("flow"):
            msg.flow.time.FromNanoseconds(ns)
            uuid = self._uuids[i]
            if uuid and number:
                msg.flow.uuid = f"{number % (1 << 32):08x}{uuid[8:]}"
        return msg


class LiveScenario(Player):
    """The bundled Airflow scenario (:func:`auditor.scenario.airflow_scenario`) played in a loop with
    fresh timestamps, ``speed`` times faster than its ten minutes of flow time (a pass takes a minute at
    the default speed). Each pass opens with a ``node_status`` record naming the scenario's nodes (as
    Relay reports the nodes it is connected to) and includes the scenario's lost-events record."""

    def __init__(
        self,
        log: FlowLog,
        *,
        speed: float = DEFAULT_SPEED,
        seed: int = 7,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        start_ns = _ns_of(DEFAULT_START)
        templates = []
        for event in airflow_scenario(DEFAULT_START, seed=seed).events:
            msg = response_from_event(event)
            offset = (timestamp_ns(msg.flow.time) if msg.HasField("flow") else 0) or timestamp_ns(msg.time)
            templates.append((offset - start_ns, msg))
        # Each pass opens with the nodes Relay is connected to (a node_status record, as Relay sends).
        nodes = sorted({m.flow.node_name or m.node_name for _, m in templates if m.HasField("flow")} - {""})
        templates.insert(0, (0, node_status_response("NODE_CONNECTED", nodes, time_ns=start_ns)))
        last = max(offset for offset, _ in templates)
        period = (
            math.ceil(last / (60 * NS_PER_S)) * 60 * NS_PER_S
        )  # whole minutes: ten for the bundled scenario
        super().__init__(log, templates, speed=speed, loop=True, retime=True, period_ns=period, clock=clock)


def _ns_of(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1_000
