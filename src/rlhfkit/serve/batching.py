"""One thread that generates for every request the server gets, batching those that arrive together."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from rlhfkit.serve.engine import Engine, Job


class QueueFull(Exception):
    """More requests are waiting than the server takes (the client should retry later: 503)."""


class BatchWorker:
    """Takes the oldest waiting job, then up to ``max_batch − 1`` more that can share its batch (same
    sampling distribution), waiting up to ``wait_s`` for them to arrive, and runs them as one batch.

    Jobs of other distributions keep their place in the queue. A job cancelled while waiting is dropped.
    """

    def __init__(self, engine: Engine, *, wait_s: float = 0.01, max_queue: int = 256):
        self.engine, self.wait_s, self.max_queue = engine, wait_s, max_queue
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="rlhfkit-generate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._queue:  # their clients hear the server is going away
                job.cancelled, job.error = True, RuntimeError("the server is shutting down")
                job.close()
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs (one request's choices go in together, so they share a batch where they fit)."""
        with self._cond:
            if len(self._queue) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting; try again shortly")
            self._queue.extend(jobs)
            self._cond.notify_all()

    def _take_batch(self) -> list[Job]:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
            first = self._queue.popleft()
            batch, key = [first], first.sampling.batch_key()
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.engine.max_batch:
                mates = [j for j in self._queue if j.sampling.batch_key() == key][: self.engine.max_batch - len(batch)]
                for j in mates:
                    self._queue.remove(j)
                batch += mates
                left = deadline - time.monotonic()
                if len(batch) >= self.engine.max_batch or left <= 0 or self._stopping:
                    break
                self._cond.wait(timeout=left)
        live = [j for j in batch if not j.cancelled]
        for j in batch:
            if j.cancelled:
                j.finish_reason = j.finish_reason or "stop"
                j.close()
        return live

    def _loop(self) -> None:
        while not self._stopping:
            batch = self._take_batch()
            if batch:
                try:
                    self.engine.run_batch(batch)
                except Exception:  # the jobs carry the error to their clients (500); the server goes on
                    logging.getLogger("rlhfkit.serve").exception("generation failed for a batch of %d", len(batch))
