"""Running ``matrix learn``: recorded files or a live Hubble stream into the one pipeline, then YAML.

Stage: front end (I/O). Input: flow files (plain, gzip, ``-``) or a :class:`~auditor.sources.hubble.
HubbleConfig` and a duration. Output: the learned matrix (or, with an existing matrix, the patch) as text.
The pipeline is :class:`~auditor.pipeline.Pipeline` around an :class:`~auditor.classify.Auditor` whose
matrix has no components and no rules, scoped to ``--namespace`` (or the existing matrix's scope).

Live: the stream runs on a thread (:class:`~auditor.sources.hubble.HubbleSource`, with its reconnects and
resume) while the caller's thread reports progress on ``progress`` every few seconds; it stops when the
duration is over or on ``KeyboardInterrupt``/SIGTERM, and what was learned until then is still returned.

Error policy: an unreadable input raises :class:`~auditor.sources.files.SourceError`; undecodable lines
are counted (``invalid``) and skipped, as in ``replay``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from auditor.classify import DEFAULT_DEDUP_WINDOW, Auditor
from auditor.learn.build import Learned, Options, build
from auditor.learn.observe import LearnSink
from auditor.learn.write import matrix_text, patch_text
from auditor.matrix import Matrix
from auditor.pipeline import Pipeline
from auditor.sources.files import FlowFile

if TYPE_CHECKING:
    from auditor.sources.hubble import HubbleConfig

PROGRESS_EVERY = 2.0


def learning_pipeline(
    options: Options, existing: Matrix | None = None, dedup_window: float = DEFAULT_DEDUP_WINDOW
) -> tuple[Pipeline, LearnSink]:
    """The one pipeline with an empty matrix (every verdict unexpected) and the learning sink."""
    scope = options.namespaces
    if scope is None and existing is not None:
        scope = existing.scope_namespaces
    empty = Matrix(options.name, "<learn>", (), (), scope, {})
    sink = LearnSink(dedup_window)
    return Pipeline(Auditor(empty, dedup_window), [sink]), sink


def text_of(learned: Learned) -> str:
    return patch_text(learned) if learned.existing is not None else matrix_text(learned)


def learn_files(
    files: Sequence[str],
    options: Options,
    existing: Matrix | None = None,
    dedup_window: float = DEFAULT_DEDUP_WINDOW,
) -> Learned:
    """Learn from recorded flow files (``-`` is stdin)."""
    pipeline, sink = learning_pipeline(options, existing, dedup_window)
    for name in files:
        with FlowFile(name) as f:
            pipeline.feed_blocks(name, f.blocks())
    pipeline.finish()
    return build(sink.obs, options, existing)


def learn_live(
    config: HubbleConfig,
    duration: float,
    options: Options,
    existing: Matrix | None = None,
    dedup_window: float = DEFAULT_DEDUP_WINDOW,
    progress: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Learned:
    """Follow a live Hubble stream for ``duration`` seconds (or until Ctrl-C/SIGTERM) and learn."""
    from auditor.sources.hubble import HubbleSource, StreamEvents

    pipeline, sink = learning_pipeline(options, existing, dedup_window)

    def say(text: str) -> None:
        if progress is not None:
            print(text, file=progress, flush=True)

    events = StreamEvents(
        connected=lambda: say(f"learn: connected to {config.server}"),
        disconnected=lambda reason: say(f"learn: stream ended ({reason}); reconnecting"),
    )
    source = HubbleSource(config, pipeline, events)
    thread = threading.Thread(target=source.run, name="learn-stream", daemon=True)
    stop = threading.Event()
    previous = _on_sigterm(stop)
    start = clock()
    thread.start()
    say(f"learn: following {config.server} for {duration:g}s (Ctrl-C stops early and still writes)")
    try:
        while not stop.is_set():
            left = duration - (clock() - start)
            if left <= 0:
                break
            if stop.wait(min(PROGRESS_EVERY, left)):
                break
            say(_progress(sink, clock() - start))
    except KeyboardInterrupt:
        say("learn: interrupted; writing what was learned")
    finally:
        source.stop()
        thread.join(timeout=10)
        _restore_sigterm(previous)
    with pipeline.lock:
        pipeline.finish()
        say(_progress(sink, clock() - start))
        return build(sink.obs, options, existing)


def _progress(sink: LearnSink, elapsed: float) -> str:
    obs = sink.obs
    events = sum(obs.outcomes.values())
    connections = sum(s.connections for s in obs.allowed.values())
    return (
        f"learn: {elapsed:.0f}s, {events} events, {connections} delivered/audited connections on "
        f"{len(obs.allowed)} edges, {sum(s.connections for s in obs.dropped.values())} dropped"
    )


_Handler = Callable[[int, FrameType | None], object] | int | None


def _on_sigterm(stop: threading.Event) -> _Handler:
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())


def _restore_sigterm(previous: _Handler) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
