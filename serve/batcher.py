"""Cross-request batching: one worker thread per model owns its ``Embedder``.

Requests put their (already prompt-prefixed) texts in a queue; the worker forms batches from the
texts of *all* waiting requests, runs them, and hands each request its rows when the last one is
done. Texts are taken round-robin, one per waiting request in turn, so a request of 2,000 texts is
cut into batch-sized chunks interleaved with small requests instead of starving them.

The worker always embeds at full dimension without normalisation; Matryoshka truncation and L2
normalisation are per request and happen after (``runtime.vectors.finish``, as ``Embedder.encode``
does them), so requests asking for different dims or prompts can share a batch.

Standard library + numpy + the runtime only (no web framework), so it can be tested on its own.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import threading
import warnings
from typing import Iterator, Sequence

import numpy as np

from runtime import Embedder, TruncationWarning
from runtime.batching import length_batches

log = logging.getLogger("serve.batcher")

# The server decides about long texts itself before they reach the worker (truncate=false requests
# are refused with a 400), so the runtime's TruncationWarning would only be noise in the server log.
# Embedder.encode warns with stacklevel=3, which attributes the warning to *this* module (our call
# site), so this filter silences exactly our calls and nobody else's.
warnings.filterwarnings("ignore", category=TruncationWarning, module=r"serve\.batcher$")


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new work."""


class BatcherBusy(RuntimeError):
    """More texts are waiting than ``max_pending_texts`` allows."""


class _Job:
    """One request's texts, where its rows land, and the future its handler awaits."""

    __slots__ = ("texts", "costs", "out", "next", "remaining", "future", "loop", "cancelled")

    def __init__(self, texts: list[str], costs: list[int], dim: int, future: asyncio.Future,
                 loop: asyncio.AbstractEventLoop):
        self.texts = texts
        self.costs = costs
        self.out = np.empty((len(texts), dim), dtype=np.float32)
        self.next = 0                   # index of the next text not yet given to the worker
        self.remaining = len(texts)     # texts whose vectors have not arrived yet
        self.future = future
        self.loop = loop
        self.cancelled = False


def _settle(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    """Runs on the event loop: complete the future unless the handler already gave up on it."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """Owns one ``Embedder`` and a worker thread that embeds texts from many requests together.

    max_batch_texts: texts per inference batch (1 turns cross-request batching off).
    max_batch_tokens: budget of (unpadded) tokens per batch, so a batch of long texts stays short in
    time; a single text always fits. The Embedder then splits by its own padded-token cap.
    max_pending_texts: texts allowed to wait (queued + running) before ``submit`` says busy.
    cross_request: mix texts of different requests in one batch (the point of this class); False
    batches each request on its own, round-robin by chunk, as a baseline for load tests.
    """

    def __init__(self, embedder: Embedder, *, name: str = "model", max_batch_texts: int = 32,
                 max_batch_tokens: int = 4096, max_pending_texts: int = 65536, cross_request: bool = True):
        if max_batch_texts < 1:
            raise ValueError(f"max_batch_texts must be >= 1, got {max_batch_texts}")
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        if max_pending_texts < 1:
            raise ValueError(f"max_pending_texts must be >= 1, got {max_pending_texts}")
        self.embedder = embedder
        self.name = name
        self.max_batch_texts = max_batch_texts
        self.max_batch_tokens = max_batch_tokens
        self.max_pending_texts = max_pending_texts
        self.cross_request = cross_request
        self._cond = threading.Condition()
        self._active: collections.deque[_Job] = collections.deque()  # jobs with texts not yet scheduled
        self._pending_texts = 0
        self._paused = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._inference_runs = 0
        self._stats = {
            "requests": 0, "texts": 0, "batches": 0, "max_texts_in_batch": 0, "max_requests_in_batch": 0,
            "cross_request_batches": 0, "failed_batches": 0, "cancelled_requests": 0,
        }

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._closing:
                raise BatcherClosed(f"model {self.name!r} is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"embed-{self.name}", daemon=True)
                self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, let the worker finish every queued text, and wait for it to exit."""
        with self._cond:
            self._closing = True
            self._paused = 0  # a pause must not turn shutdown into a hang
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the worker between batches (the batch in progress finishes); for tests and maintenance.

        Work submitted meanwhile queues up and is batched together on release.
        """
        with self._cond:
            self._paused += 1
        try:
            yield
        finally:
            with self._cond:
                self._paused = max(0, self._paused - 1)
                self._cond.notify_all()

    # ---- requests ----------------------------------------------------------------------------

    def submit(self, texts: Sequence[str], costs: Sequence[int]) -> tuple[asyncio.Future, object]:
        """Queue prompt-prefixed texts; call from the event loop.

        costs: tokens per text (as the model will see them) for the batch token budget. Returns the
        future (resolving to a float32 array [n, full dim], raw, not normalised) and a handle for
        ``cancel``.
        """
        if len(texts) != len(costs):
            raise ValueError("texts and costs differ in length")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not texts:
            future.set_result(np.zeros((0, self.embedder.dim), dtype=np.float32))
            return future, None
        job = _Job(list(texts), [max(1, int(c)) for c in costs], self.embedder.dim, future, loop)
        self.start()
        with self._cond:
            if self._closing:
                raise BatcherClosed(f"model {self.name!r} is shutting down")
            if self._pending_texts + len(texts) > self.max_pending_texts:
                raise BatcherBusy(f"model {self.name!r} has {self._pending_texts} texts waiting; "
                                  f"the limit is {self.max_pending_texts}, retry shortly")
            self._active.append(job)
            self._pending_texts += len(texts)
            self._stats["requests"] += 1
            self._cond.notify()
        return future, job

    def cancel(self, handle) -> None:
        """Drop a request's texts that have not run yet (its client went away)."""
        if handle is None:
            return
        job: _Job = handle
        with self._cond:
            if job.cancelled:
                return
            job.cancelled = True
            self._stats["cancelled_requests"] += 1
            unscheduled = len(job.texts) - job.next
            if unscheduled:
                job.next = len(job.texts)
                self._pending_texts -= unscheduled
                job.remaining -= unscheduled
                with contextlib.suppress(ValueError):
                    self._active.remove(job)

    @property
    def stats(self) -> dict:
        """A snapshot of counters: requests, texts, batches, cross_request_batches, queue depth, ..."""
        with self._cond:
            snap = dict(self._stats)
            snap["queued_requests"] = len(self._active)
            snap["pending_texts"] = self._pending_texts
            snap["max_batch_texts"] = self.max_batch_texts
            snap["cross_request"] = self.cross_request
            snap["inference_runs"] = self._inference_runs
            snap["running"] = self._thread is not None and self._thread.is_alive()
        return snap

    # ---- worker ------------------------------------------------------------------------------

    def _take_batch(self) -> list[tuple[_Job, int]]:
        """Round-robin over waiting jobs, one text each per turn, up to the text and token budgets.

        Called with the lock held. Rotating after every pick means the next batch starts with the
        job after the last one served, so fairness carries across batches too.
        """
        picks: list[tuple[_Job, int]] = []
        tokens = 0
        while self._active and len(picks) < self.max_batch_texts:
            job = self._active[0]
            if not self.cross_request and picks and job is not picks[-1][0]:
                break
            i = job.next
            cost = job.costs[i]
            if picks and tokens + cost > self.max_batch_tokens:
                break
            picks.append((job, i))
            tokens += cost
            job.next += 1
            if job.next == len(job.texts):
                self._active.popleft()   # fully scheduled; still referenced by picks
            elif self.cross_request:
                self._active.rotate(-1)
        if not self.cross_request and picks and self._active and self._active[0] is picks[-1][0]:
            self._active.rotate(-1)      # the next batch serves the next request
        return picks

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._active or (self._paused and not self._closing):
                    if self._closing and not self._active:
                        return
                    self._cond.wait()
                picks = self._take_batch()
            texts = [job.texts[i] for job, i in picks]
            jobs = list(dict.fromkeys(job for job, _ in picks))  # distinct, in order
            try:
                raw = self._embed(texts, [job.costs[i] for job, i in picks])
            except Exception as exc:  # noqa: BLE001 - any failure must reach the waiting requests
                log.exception("batch of %d texts failed on model %s", len(texts), self.name)
                with self._cond:
                    self._stats["failed_batches"] += 1
                    self._pending_texts -= len(picks)
                    for job in jobs:
                        # The request has failed as a whole: drop what it still had queued.
                        unscheduled = len(job.texts) - job.next
                        job.next = len(job.texts)
                        self._pending_texts -= unscheduled
                        with contextlib.suppress(ValueError):
                            self._active.remove(job)
                for job in jobs:
                    self._deliver(job, error=exc)
                continue
            finished = []
            with self._cond:
                for row, (job, i) in enumerate(picks):
                    job.out[i] = raw[row]
                    job.remaining -= 1
                self._pending_texts -= len(picks)
                for job in jobs:
                    if job.remaining == 0 and not job.cancelled:
                        finished.append(job)
                s = self._stats
                s["batches"] += 1
                s["texts"] += len(picks)
                s["max_texts_in_batch"] = max(s["max_texts_in_batch"], len(picks))
                s["max_requests_in_batch"] = max(s["max_requests_in_batch"], len(jobs))
                if len(jobs) > 1:
                    s["cross_request_batches"] += 1
            log.debug("model %s: batch of %d texts from %d requests", self.name, len(picks), len(jobs))
            for job in finished:
                self._deliver(job, result=job.out)

    def _embed(self, texts: list[str], costs: list[int]) -> np.ndarray:
        """Raw full-size vectors for a batch, run as length-homogeneous groups.

        A batch mixes requests, so it mixes short queries with long documents, and padding the
        queries to a document's length costs several times the compute of running them apart
        (docs/notes/serve.md). The Embedder sorts by length only within its own batch_size, so the
        grouping is done here.
        """
        out = np.empty((len(texts), self.embedder.dim), dtype=np.float32)
        groups = length_groups(costs)
        self._inference_runs += len(groups)  # only the worker thread writes it
        for group in groups:
            # prompt="" because texts already carry their prompt; full dim, raw: see module doc.
            out[group] = self.embedder.encode([texts[i] for i in group], prompt="", normalize=False,
                                              batch_size=len(group), truncate=True)
        return out

    @staticmethod
    def _deliver(job: _Job, result=None, error: BaseException | None = None) -> None:
        try:
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)
        except RuntimeError:
            pass  # the event loop is closed: nobody is waiting any more


def length_groups(costs: Sequence[int], slack: float = 0.3, free_padding: int = 64) -> list[list[int]]:
    """Split batch positions into groups of similar token length, longest first
    (``runtime.batching.length_batches``): a text starts a new group where it is more than ``slack``
    shorter than the group's longest and would be padded by more than ``free_padding`` tokens;
    smaller padding costs little."""
    if not costs:
        return []
    return [b.tolist() for b in length_batches(costs, max_rows=len(costs), max_tokens=sys.maxsize,
                                               max_padding=slack, min_rows=len(costs) + 1,
                                               free_padding=free_padding)]
