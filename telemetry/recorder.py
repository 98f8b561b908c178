"""Writes gateway usage events (and their captures) off the response path.

`record()` puts the rows on an in-process bounded queue and returns in microseconds; a
background writer thread drains it in batches (`bulk_create`, idempotent on
(tenant, event_id)) every `INTERVAL_SECONDS` or as soon as a batch fills.

Trade-offs, chosen for the gateway's latency goal:
- A clean shutdown loses nothing: `flush()` runs at exit (gunicorn workers exit through
  `sys.exit`, which runs `atexit`; granian's are multiprocessing children, which run
  multiprocessing's finalizers instead). A hard kill (SIGKILL, OOM) loses at most the queued rows
  — under a second of traffic. Redis RPUSH + a drain task would survive that too, at the cost
  of a network round trip per call; the queue is the better trade for a sub-3 ms overhead.
- When the database is down, batches are retried with backoff and the queue keeps filling; once
  it is full, `record()` writes synchronously in the calling thread (back-pressure instead of
  dropping events).
- Tests (and callers that need read-your-write) call `flush()`, which drains in the calling
  thread. `LLMOBS_RECORDER_BACKGROUND = False` disables the thread (rows wait for `flush()`).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import queue
import threading
import time

import psycopg
from django.conf import settings
from django.db import DataError, close_old_connections, transaction

from telemetry import ingest, metrics, partitions
from telemetry.models import CapturedContent, UsageEvent

logger = logging.getLogger(__name__)

MAX_QUEUED = 20_000
BATCH_SIZE = 500
INTERVAL_SECONDS = 0.2

Item = tuple[UsageEvent, CapturedContent | None]
# A value the database cannot store. COPY (ingest's writer, for batches over 16 events) runs on
# psycopg's own cursor object, so its errors arrive unwrapped by Django.
UNSTORABLE = (DataError, psycopg.DataError)


class Recorder:
    def __init__(self) -> None:
        self._queue: queue.Queue[Item] = queue.Queue(maxsize=MAX_QUEUED)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pid_started = 0

    def record(self, event: UsageEvent, capture: CapturedContent | None = None) -> None:
        self._ensure_thread()
        try:
            self._queue.put_nowait((event, capture))
        except queue.Full:
            logger.warning("Usage recorder queue is full; writing synchronously (is the database slow?)")
            self._write([(event, capture)])
            return
        if self._queue.qsize() >= BATCH_SIZE:
            self._wake.set()

    def pending(self) -> int:
        return self._queue.qsize()

    def flush(self) -> int:
        """Write everything queued now, in the calling thread. Returns how many events."""
        written = 0
        while True:
            batch = self._take(BATCH_SIZE)
            if not batch:
                return written
            self._write(batch)
            written += len(batch)

    def _take(self, limit: int) -> list[Item]:
        batch: list[Item] = []
        while len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[Item]) -> None:
        by_tenant: dict[int, list[ingest.EventRow]] = {}
        for event, _ in batch:
            by_tenant.setdefault(event.tenant_id, []).append(ingest.row_of(event))
        captures = [capture for _, capture in batch if capture is not None]
        with self._write_lock:
            try:
                with transaction.atomic():
                    for tenant_id, rows in by_tenant.items():
                        ingest.write_events(tenant=tenant_id, rows=rows)
                    if captures:
                        CapturedContent.objects.bulk_create(captures, ignore_conflicts=True)
            except UNSTORABLE:
                # One row the database refuses (a value it cannot store) must not hold the
                # whole batch hostage, retried forever: write them one at a time instead.
                self._write_one_by_one(batch)

    @staticmethod
    def _write_one_by_one(batch: list[Item]) -> None:
        for event, capture in batch:
            try:
                with transaction.atomic():
                    partitions.insert_new_events([event])
            except UNSTORABLE:
                logger.exception("Usage event %s cannot be stored and is dropped", event.event_id)
                metrics.RECORDER_DROPPED.inc()
                continue
            if capture is None:
                continue
            try:
                with transaction.atomic():
                    CapturedContent.objects.bulk_create([capture], ignore_conflicts=True)
            except DataError:
                # The money (the event) is kept; only the captured text is lost.
                logger.exception("Captured content of %s cannot be stored and is dropped", event.event_id)

    def _ensure_thread(self) -> None:
        if not getattr(settings, "LLMOBS_RECORDER_BACKGROUND", True):
            return
        import os

        # A forked worker (gunicorn) inherits the object but not the thread: start one per process.
        if self._thread is not None and self._thread.is_alive() and self._pid_started == os.getpid():
            return
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive() and self._pid_started == os.getpid():
                return
            self._pid_started = os.getpid()
            self._thread = threading.Thread(target=self._run, name="usage-recorder", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        delay = INTERVAL_SECONDS
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            batch = self._take(BATCH_SIZE)
            if not batch:
                delay = INTERVAL_SECONDS
                continue
            try:
                close_old_connections()
                self._write(batch)
                delay = 0 if self._queue.qsize() >= BATCH_SIZE else INTERVAL_SECONDS
            except Exception:
                logger.exception("Writing %d usage events failed; will retry", len(batch))
                # Put the batch back (or write it synchronously if the queue filled meanwhile).
                for item in batch:
                    try:
                        self._queue.put_nowait(item)
                    except queue.Full:
                        time.sleep(1)
                        self._queue.put(item)
                delay = min(max(delay * 2, 0.5), 10.0)


recorder = Recorder()


def record(event: UsageEvent, capture: CapturedContent | None = None) -> None:
    recorder.record(event, capture)


def flush() -> int:
    return recorder.flush()


def _flush_at_exit() -> None:
    if recorder.pending():
        try:
            recorder.flush()
        except Exception:
            logger.exception("Could not flush %d usage events at exit", recorder.pending())


def _finalize_in_this_process(_recorder: Recorder | None = None) -> None:
    # granian's workers are forked multiprocessing children: they leave through os._exit, which
    # skips atexit but runs multiprocessing's finalizers. A forked child starts with the
    # parent's finalizers cleared, then runs its after-fork hooks: register again there.
    # Flushing twice (atexit too) is harmless: the second has nothing pending.
    multiprocessing.util.Finalize(None, _flush_at_exit, exitpriority=10)


atexit.register(_flush_at_exit)
_finalize_in_this_process()
multiprocessing.util.register_after_fork(recorder, _finalize_in_this_process)
