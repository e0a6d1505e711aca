"""Micro-batching for the server: requests wait in a queue, one worker takes up to
`max_batch` queued images at once and runs them in a thread, so the event loop keeps reading
uploads while the model computes.

The worker waits at most `max_wait` seconds after the first queued image for more to arrive;
under load the queue is already full when a batch ends, so it never waits. A request with
more images than `max_batch` is cut into chunks (each queued like a request of its own) and
its records come back in order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["MicroBatcher"]

# predict(arrays, top_k) -> one record per array, in order (Predictor.predict_arrays)
PredictFn = Callable[[list[np.ndarray], int], list[dict]]


@dataclass
class _Job:
    arrays: list[np.ndarray]
    top_k: int
    future: asyncio.Future


class MicroBatcher:
    """Batches the images of concurrent `predict` calls; one model call at a time.

    Counters (`stats()`): batches run, images served, the largest batch, the seconds the
    model computed, failed batches and the images waiting now."""

    def __init__(self, predict: PredictFn, max_batch: int = 16, max_wait: float = 0.005):
        if max_batch < 1 or max_wait < 0:
            raise ValueError("max_batch must be at least 1 and max_wait at least 0")
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # images in self._jobs
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.batches = self.images = self.largest_batch = self.failed_batches = 0
        self.compute_seconds = 0.0

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._arrived = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="automl-tl-batch")
        self._worker = asyncio.create_task(self._run(), name="automl-tl-batcher")

    async def stop(self) -> None:
        """Stop the worker; calls still waiting get RuntimeError."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        _fail(self._jobs, RuntimeError("the server is shutting down"))
        self._jobs.clear()
        self._queued = 0
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

    # ------------------------------------------------------------------ the calls
    async def predict(self, arrays: list[np.ndarray], top_k: int = 1) -> list[dict]:
        """The records of `arrays` (decoded images), in order, computed in shared batches."""
        if not self.alive:
            raise RuntimeError("the batcher is not running")
        if not arrays:
            return []
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(arrays), self.max_batch):
            chunk = arrays[start : start + self.max_batch]
            future = loop.create_future()
            self._jobs.append(_Job(chunk, top_k, future))
            self._queued += len(chunk)
            futures.append(future)
        self._arrived.set()
        parts = await asyncio.gather(*futures)
        return [record for part in parts for record in part]

    def stats(self) -> dict:
        return {
            "batches": self.batches,
            "images": self.images,
            "mean_batch": round(self.images / self.batches, 3) if self.batches else 0.0,
            "largest_batch": self.largest_batch,
            "compute_seconds": round(self.compute_seconds, 3),
            "failed_batches": self.failed_batches,
            "queued_images": self._queued,
        }

    # ------------------------------------------------------------------ the worker
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._jobs:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.max_wait
            while self._queued < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._execute(loop, batch)

    def _take(self) -> list[_Job]:
        """Queued jobs, oldest first, up to max_batch images (the first always fits: each job
        holds at most max_batch images); jobs whose caller went away are dropped."""
        batch: list[_Job] = []
        size = 0
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():  # cancelled: the client disconnected
                self._jobs.popleft()
                self._queued -= len(job.arrays)
                continue
            if batch and size + len(job.arrays) > self.max_batch:
                break
            self._jobs.popleft()
            self._queued -= len(job.arrays)
            batch.append(job)
            size += len(job.arrays)
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        arrays = [a for job in batch for a in job.arrays]
        top_k = max(job.top_k for job in batch)
        started = time.perf_counter()
        try:
            records = await loop.run_in_executor(self._pool, self._predict, arrays, top_k)
        except asyncio.CancelledError:  # stop() while the model computes
            _fail(batch, RuntimeError("the server is shutting down"))
            raise
        except Exception as e:  # the model failed: every caller of this batch hears it
            self.failed_batches += 1
            _fail(batch, e)
            return
        finally:
            self.compute_seconds += time.perf_counter() - started
        self.batches += 1
        self.images += len(arrays)
        self.largest_batch = max(self.largest_batch, len(arrays))
        at = 0
        for job in batch:
            mine = records[at : at + len(job.arrays)]
            at += len(job.arrays)
            if job.top_k < top_k:
                mine = [{**r, "top": r["top"][: job.top_k]} for r in mine]
            if not job.future.done():
                job.future.set_result(mine)


def _fail(jobs, error: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)
