"""Group commit for small ingest writes on PostgreSQL.

A single usage event costs PostgreSQL one transaction: parse, plan, two index inserts and a
WAL flush on commit, about 0.9 ms of CPU on the 2-core box, more than everything else the
request does but Django itself (docs/PERFORMANCE.md "Ingest"). Under a threaded server
(`gunicorn --worker-class gthread`, the Procfile's) the requests of one process hand their rows
to this process's writer thread, which stores everything that is waiting in **one** statement
and one commit, then wakes each request with its own outcome. A request is still answered only
after its rows are committed: a `202` keeps meaning "stored", unlike a buffered acknowledgement.

The statement is the small-batch one `ingest` uses on its own (`ingest.values_sql`): the ledger
claims `(tenant, event_id)` with `ON CONFLICT DO NOTHING … RETURNING`, and only the rows it
claimed are inserted and returned, so each request learns exactly which of its events were new
(duplicates across requests in one group and across concurrent groups are exact, and ids of
different tenants never collide). A group that fails for a reason other than the database going
away is retried one request at a time, so one request's bad row cannot fail its neighbours'.

When nothing is waiting the writer is idle on a queue; a lone request pays one thread hand-off
(tens of microseconds). Under a sync server (one request per process) nothing ever groups, so
`ingest.write_events` only comes here for writes outside any transaction, of at most
`MAX_GROUP_ROWS` rows, when `LLMOBS_INGEST_GROUP_COMMIT` is on (the default on PostgreSQL).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from django.db import OperationalError, connection

logger = logging.getLogger(__name__)

# Rows per statement: bounded so a request never waits behind an unbounded group.
MAX_GROUP_ROWS = 64
# A request waits at most this long for its group; then it is answered 503 (retry) even if the
# writer commits it later, which is safe: the resend is a duplicate, never a double count.
WAIT_SECONDS = 30.0
# The writer closes its database session after this long without work.
IDLE_CLOSE_SECONDS = 60.0


class _Job:
    """One request's rows and, once the writer is done with them, their outcome. `_pending` is
    a lock held until then: releasing a lock wakes its one waiter in C, where a
    `threading.Event` goes through a Python-level Condition (a few percent of the web process's
    CPU at a thousand requests a second)."""

    __slots__ = ("_pending", "error", "inserted", "rows")

    def __init__(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.rows = rows
        self._pending = threading.Lock()
        self._pending.acquire()
        self.inserted: set[tuple[int, str]] | None = None
        self.error: BaseException | None = None

    def finish(self) -> None:
        self._pending.release()

    def wait(self, timeout: float) -> bool:
        return self._pending.acquire(timeout=timeout)

    @property
    def finished(self) -> bool:
        return not self._pending.locked()


Writer = Callable[[list[tuple[Any, ...]]], set[tuple[int, str]]]


class GroupCommitter:
    """One writer thread per process (recreated after a fork). `write` stores a list of rows in
    one statement and returns the `(tenant_id, event_id)` pairs it inserted; `key` gives a row's
    pair; `submit` returns the subset of a request's pairs that were new."""

    def __init__(self, write: Writer, *, key: Callable[[tuple[Any, ...]], tuple[int, str]]) -> None:
        self._write = write
        self._key = key
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self.groups = 0  # statements written (for tests and the benchmark's log)
        self.jobs = 0

    # --- request side ----------------------------------------------------------------------

    def submit(self, rows: Sequence[tuple[Any, ...]]) -> set[tuple[int, str]]:
        job = _Job(rows)
        self._ensure_started()
        self._queue.put(job)
        if not job.wait(WAIT_SECONDS):
            raise OperationalError(f"The ingest writer did not answer within {WAIT_SECONDS:.0f} s.")
        if job.error is not None:
            raise job.error
        assert job.inserted is not None
        return job.inserted

    def stop(self) -> None:
        """Let the writer finish what is queued, close its database session and exit."""
        with self._lock:
            thread, self._thread = self._thread, None
            jobs_queue = self._queue  # a submit racing this one starts a new thread on a new queue
        if thread is not None and self._pid == os.getpid():
            jobs_queue.put(None)
            thread.join(timeout=WAIT_SECONDS)

    def _running(self) -> bool:
        return self._thread is not None and self._pid == os.getpid() and self._thread.is_alive()

    def _ensure_started(self) -> None:
        if self._running():
            return
        with self._lock:
            if not self._running():
                # After a fork the parent's thread does not exist here, and neither do its jobs;
                # a writer that died (it should not: every failure is handed to its requests)
                # is replaced rather than left to time every request out.
                self._queue = queue.SimpleQueue()
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="llmobs-ingest-writer", daemon=True)
                self._thread.start()

    # --- writer side -----------------------------------------------------------------------

    def _run(self) -> None:
        jobs_queue = self._queue
        try:
            while True:
                try:
                    first = jobs_queue.get(timeout=IDLE_CLOSE_SECONDS)
                except queue.Empty:
                    connection.close()
                    continue
                if first is None:
                    return
                jobs, stop = self._gather(jobs_queue, first)
                self._commit(jobs)
                if stop:
                    return
        finally:
            connection.close()

    @staticmethod
    def _gather(jobs_queue: queue.SimpleQueue[_Job | None], first: _Job) -> tuple[list[_Job], bool]:
        """`first` and whatever else is already waiting, up to MAX_GROUP_ROWS rows."""
        jobs = [first]
        count = len(first.rows)
        while count < MAX_GROUP_ROWS:
            try:
                job = jobs_queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if count + len(job.rows) > MAX_GROUP_ROWS:
                jobs_queue.put(job)  # next group; order between requests does not matter
                break
            jobs.append(job)
            count += len(job.rows)
        return jobs, False

    def _commit(self, jobs: list[_Job]) -> None:
        try:
            self._write_group(jobs)
        except BaseException as exc:  # every waiting request must be woken, whatever happened
            if len(jobs) > 1 and not _database_gone(exc):
                # Which request's rows failed it? Each one alone finds out; the others succeed.
                for job in jobs:
                    self._commit([job])
                return
            if _database_gone(exc):
                connection.close()  # a broken session must not be reused by the next group
            for job in jobs:
                job.error = exc
                job.finish()
            if not isinstance(exc, Exception):
                raise
            return
        for job in jobs:
            job.finish()
        self.groups += 1
        self.jobs += len(jobs)

    def _write_group(self, jobs: list[_Job]) -> None:
        # The first occurrence of a (tenant, event_id) in the group wins, as inside one request.
        seen: set[tuple[int, str]] = set()
        rows = []
        key = self._key
        for job in jobs:
            for row in job.rows:
                pair = key(row)
                if pair not in seen:
                    seen.add(pair)
                    rows.append(row)
        inserted = self._write(rows) if rows else set()
        for job in jobs:
            mine = set()
            for row in job.rows:
                pair = key(row)
                if pair in inserted:
                    mine.add(pair)
                    inserted.discard(pair)  # a repeat later in the group is a duplicate
            job.inserted = mine


def _database_gone(exc: BaseException) -> bool:
    from llmobs.errors import database_gone_errors

    return isinstance(exc, database_gone_errors())
