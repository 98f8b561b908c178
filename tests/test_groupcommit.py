"""Group commit of small ingest writes (telemetry/groupcommit.py): the requests waiting on one
process's writer share one statement and one commit, and each still learns exactly which of its
events were new; one request's bad row or a lost database never answers for another."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import DataError, OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chargeback.keys import create_api_key
from telemetry import groupcommit, ingest
from telemetry.models import UsageEvent
from tests.factories import ingest_event

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="group commit is PostgreSQL-only"),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture(autouse=True)
def fresh_department_cache():
    ingest.clear_department_cache()
    yield
    ingest.clear_department_cache()


def event(event_id: str, tokens: int = 10, **extra) -> dict:
    return ingest_event(event_id, tokens=tokens, **extra)


def validated(sender, *events: dict) -> list[ingest.EventRow]:
    context = ingest.context_for(sender, ingest.department_codes(events))
    rows, rejected = ingest.validate_events(list(events), context=context)
    assert not rejected
    return rows


def params(key, *events: dict) -> list[tuple]:
    sender = ingest.Sender.of(key)
    return ingest.value_rows(sender.tenant_id, validated(sender, *events))


@pytest.fixture
def keys(acme, research_dept, other_tenant):
    from chargeback.models import Department

    Department.objects.create(tenant=other_tenant, code="research", name="Research")
    key_a, _ = create_api_key(tenant=acme, name="a")
    key_b, _ = create_api_key(tenant=other_tenant, name="b")
    return key_a, key_b


def stored(tenant) -> list[tuple[str, int]]:
    return sorted(UsageEvent.objects.filter(tenant=tenant).values_list("event_id", "input_tokens"))


def test_a_group_is_one_statement_and_each_request_learns_its_own_outcome(keys, acme, other_tenant):
    key_a, key_b = keys
    ingest.write_events(tenant=acme, rows=[])  # nothing: no statement, no thread
    committer = groupcommit.GroupCommitter(ingest._insert_values, key=ingest._group_key)
    ingest._insert_values(params(key_a, event("old", 1)))  # stored before the group

    jobs = [
        groupcommit._Job(params(key_a, event("a1", 2), event("old", 3))),  # new + already stored
        groupcommit._Job(params(key_b, event("a1", 4))),  # same id, other tenant: new
        groupcommit._Job(params(key_a, event("a1", 5), event("a3", 6))),  # repeat within the group + new
    ]
    with CaptureQueriesContext(connection) as queries:
        committer._commit(jobs)

    assert len(queries) == 1
    assert [job.error for job in jobs] == [None] * 3
    assert jobs[0].inserted == {(acme.pk, "a1")}
    assert jobs[1].inserted == {(other_tenant.pk, "a1")}
    assert jobs[2].inserted == {(acme.pk, "a3")}
    # The first occurrence wins: a1 keeps request one's tokens, "old" its original ones.
    assert stored(acme) == [("a1", 2), ("a3", 6), ("old", 1)]
    assert stored(other_tenant) == [("a1", 4)]
    assert (committer.groups, committer.jobs) == (1, 3)


def test_a_bad_row_fails_only_its_own_request(keys, acme):
    key_a, _ = keys
    good = params(key_a, event("good"))
    bad = params(key_a, event("bad"))
    user = ingest.COLUMNS.index("user_ref") + 1
    bad[0] = (*bad[0][:user], "x" * 300, *bad[0][user + 1 :])  # over the column's 255: refused, not cut
    jobs = [groupcommit._Job(good), groupcommit._Job(bad)]
    committer = groupcommit.GroupCommitter(ingest._insert_values, key=ingest._group_key)

    committer._commit(jobs)

    assert jobs[0].error is None and jobs[0].inserted == {(acme.pk, "good")}
    assert isinstance(jobs[1].error, DataError)
    assert all(job.finished for job in jobs)
    assert stored(acme) == [("good", 10)]


def test_requests_waiting_on_a_busy_writer_share_the_next_statement(keys, acme):
    key_a, _ = keys
    entered, gate = threading.Event(), threading.Event()
    calls: list[int] = []

    def write(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            entered.set()
            assert gate.wait(10)
        return ingest._insert_values(rows)

    committer = groupcommit.GroupCommitter(write, key=ingest._group_key)
    results: dict[int, set] = {}
    batches = {n: params(key_a, event(f"e{n}", n), event("shared", 100 + n)) for n in range(12)}

    def submit(n: int) -> None:
        try:
            results[n] = committer.submit(batches[n])
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(12)]
    threads[0].start()
    assert entered.wait(10)  # the writer is inside request 0's statement
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 10
    while committer._queue.qsize() < 11 and time.monotonic() < deadline:
        time.sleep(0.005)
    opened = timezone.now()
    gate.set()
    for thread in threads:
        thread.join(10)
    committer.stop()

    # Request 0 alone, then the eleven that queued behind it in one statement of 22 rows (the
    # "shared" id of the second group is already stored: every one of them is a duplicate).
    assert calls == [2, 12]
    assert results[0] == {(acme.pk, "e0"), (acme.pk, "shared")}
    assert all(results[n] == {(acme.pk, f"e{n}")} for n in range(1, 12))
    assert UsageEvent.objects.filter(tenant=acme).count() == 13
    assert (committer.groups, committer.jobs) == (2, 12)
    # Stamped when written, not when handed over: the rollup's rescan window is measured from it.
    waited = UsageEvent.objects.filter(tenant=acme, event_id__in=[f"e{n}" for n in range(1, 12)])
    assert min(waited.values_list("received_at", flat=True)) >= opened


def test_a_lost_database_fails_every_waiting_request_with_a_retryable_503(keys, acme, client, monkeypatch):
    from django.db.backends.postgresql.base import DatabaseWrapper

    _, token = create_api_key(tenant=acme, name="c")

    def gone(rows):
        raise OperationalError("server closed the connection unexpectedly")

    committer = groupcommit.GroupCommitter(gone, key=ingest._group_key)
    monkeypatch.setattr(ingest, "_group", committer)
    closed = []
    monkeypatch.setattr(DatabaseWrapper, "close", lambda self: closed.append(1))

    response = client.post(
        "/api/v1/usage-events", event("lost"), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    committer.stop()

    assert response.status_code == 503
    assert response["Retry-After"]
    assert response.json()["error"]["code"] == "database_unavailable"
    assert closed  # the writer dropped its session instead of reusing a broken one
    assert UsageEvent.objects.filter(tenant=acme).count() == 0


def test_single_events_through_the_api_use_the_writer_and_answer_exactly(keys, acme, client):
    _, token = create_api_key(tenant=acme, name="c")
    committer = ingest.group_committer()
    before = committer.jobs
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    first = client.post("/api/v1/usage-events", event("one"), content_type="application/json", **headers)
    again = client.post("/api/v1/usage-events", event("one"), content_type="application/json", **headers)

    assert (first.status_code, first.json()) == (202, {"accepted": 1, "duplicates": 0, "rejected": []})
    assert (again.status_code, again.json()) == (202, {"accepted": 0, "duplicates": 1, "rejected": []})
    assert committer.jobs == before + 2
    assert stored(acme) == [("one", 10)]


def test_the_writer_restarts_after_stop_and_inside_a_transaction_is_not_used(keys, acme, settings):
    from django.db import transaction

    key_a, _ = keys
    committer = ingest.group_committer()
    sender = ingest.Sender.of(key_a)
    rows = validated(sender, event("x1"))
    assert ingest.write_events(tenant=acme, rows=rows).accepted == 1
    committer.stop()
    jobs = committer.jobs
    rows = validated(sender, event("x2"))
    with transaction.atomic():
        # The caller's transaction owns the write: the writer's own session could not see it.
        assert ingest.write_events(tenant=acme, rows=rows).accepted == 1
    assert committer.jobs == jobs
    rows = validated(sender, event("x3"))
    assert ingest.write_events(tenant=acme, rows=rows).accepted == 1
    assert committer.jobs == jobs + 1
    assert [e for e, _ in stored(acme)] == ["x1", "x2", "x3"]


def test_a_dead_writer_is_replaced_instead_of_timing_requests_out(keys, acme):
    key_a, _ = keys
    committer = groupcommit.GroupCommitter(ingest._insert_values, key=ingest._group_key)
    assert committer.submit(params(key_a, event("first"))) == {(acme.pk, "first")}
    dead = committer._thread
    committer._queue.put(None)  # the writer exits as if it had died
    dead.join(10)
    assert not dead.is_alive()

    assert committer.submit(params(key_a, event("second"))) == {(acme.pk, "second")}
    assert committer._thread is not dead
    committer.stop()


def awkward_row(key_a, acme, event_id='e "1" \\ ü'):
    """A row of every column type at its edges: decimals no double holds, microseconds, text
    with quotes, backslashes and non-ASCII, NULLs, empty strings, tags needing escapes."""
    sender = ingest.Sender.of(key_a)
    return ingest.EventRow(
        event_id=event_id,
        source="ingest",
        occurred_at=timezone.now().replace(microsecond=123456),
        provider="openai",
        model="gpt-4o",
        department_id=sender.department_id
        or ingest.resolve_departments(tenant_id=acme.pk, codes=["research"])["research"],
        department_code="research",
        user_ref="ana@example.com 🎉",
        api_key_id=key_a.pk,
        latency_ms=None,
        ttft_ms=2_147_483_000,
        input_tokens=9_007_199_254_740_993,  # 2**53 + 1: a JSON number read as a double would lose the 1
        output_tokens=0,
        cost=ingest.Decimal("1234567890.1234567891"),  # 20 digits: no double holds it
        currency="EUR",
        cost_provenance="reported",
        reported_cost=ingest.Decimal("0.0000000001"),
        reported_currency="USD",
        tags={"team": 'a"b\\c', "emoji": "🎉", "empty": ""},
    )


def test_every_column_survives_the_json_statement_exactly(keys, acme):
    """Small writes reach PostgreSQL as one JSON document read by `json_populate_recordset`:
    decimals must stay exact (no float on the way), times keep their microseconds, text keeps
    quotes, backslashes and non-ASCII, NULLs stay NULL and empty strings stay empty."""
    key_a, _ = keys
    row = awkward_row(key_a, acme)
    inserted = ingest._insert_values(ingest.value_rows(acme.pk, [row]))

    assert inserted == {(acme.pk, row.event_id)}
    stored = UsageEvent.objects.get(tenant=acme, event_id=row.event_id)
    for name in ingest.COLUMNS:
        assert getattr(stored, name) == getattr(row, name) or (name == "tags" and stored.tags == row.tags), name
    assert stored.latency_ms is None and stored.requested_model == ""


@pytest.mark.parametrize("resent", [False, True], ids=["binary-copy", "staging-fallback"])
def test_every_column_survives_a_large_write_exactly(keys, acme, resent):
    """Larger writes COPY the rows in binary (each value in its column's own format, tags as
    pre-encoded jsonb); a batch holding an id already stored goes through the text-COPY staging
    table instead. Both must store every column exactly as the small-write statement does."""
    key_a, _ = keys
    rows = [awkward_row(key_a, acme, event_id=f'big "{n}" \\ ü') for n in range(ingest.SMALL_BATCH + 1)]
    if resent:
        assert ingest.write_events(tenant=acme, rows=rows[:1]).accepted == 1
    result = ingest.write_events(tenant=acme, rows=rows)

    assert (result.accepted, result.duplicates) == ((len(rows) - 1, 1) if resent else (len(rows), 0))
    for row in rows:
        stored = UsageEvent.objects.get(tenant=acme, event_id=row.event_id)
        for name in ingest.COLUMNS:
            assert getattr(stored, name) == getattr(row, name) or (name == "tags" and stored.tags == row.tags), name
        assert stored.latency_ms is None and stored.requested_model == ""
