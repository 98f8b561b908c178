"""The gateway's usage recorder flushes its queue when a worker process exits cleanly, also
when the worker is a forked multiprocessing child (granian's are), which leaves through
`os._exit`: atexit handlers do not run there, multiprocessing's finalizers do."""

from __future__ import annotations

import multiprocessing

import pytest
from django.db import connection, connections

from telemetry import recorder
from telemetry.models import UsageEvent
from tests.fakes.exiting_worker import queue_one_event_and_exit

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the child writes to the test database itself"),
    pytest.mark.django_db(transaction=True),
]


def test_a_forked_worker_that_exits_cleanly_writes_what_it_queued(acme, research_dept):
    # The recorder is imported (its exit hooks registered) here, before the fork, as in a server
    # that loads the app first; a forked child starts with multiprocessing's finalizers cleared.
    assert recorder.recorder.pending() == 0
    connections.close_all()  # the child opens its own session, never the parent's
    child = multiprocessing.get_context("fork").Process(
        target=queue_one_event_and_exit, args=(acme.pk, research_dept.pk, "exit-flush-1")
    )
    child.start()
    child.join(60)

    assert child.exitcode == 0
    assert list(UsageEvent.objects.filter(tenant=acme).values_list("event_id", "input_tokens")) == [
        ("exit-flush-1", 10)
    ]
