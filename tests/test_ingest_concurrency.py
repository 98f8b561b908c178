"""Concurrent submissions of the same event ids through a live server: every id is stored once
and the accepted counts of all answers add up to exactly the ids stored."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
from django.db import connection

from chargeback.keys import create_api_key
from telemetry import ingest
from telemetry.models import UsageEvent

URL = "/api/v1/usage-events"

# On SQLite the live server shares the test's single in-memory connection between its threads,
# so concurrent requests would collide on that one connection, not in the database; the race
# is exercised on PostgreSQL (CI runs both).
pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="concurrent live-server requests need PostgreSQL"
)


@pytest.fixture(autouse=True)
def fresh_department_cache():
    ingest.clear_department_cache()
    yield
    ingest.clear_department_cache()


def event(n: int) -> dict:
    return {
        "event_id": f"evt-{n}",
        "timestamp": "2025-03-01T12:00:00Z",
        "department": "research",
        "provider": "openai",
        "model": "gpt-4o",
        "usage": {"input_tokens": n, "output_tokens": 1},
    }


def post_all(url: str, token: str, bodies: list[bytes], threads: int) -> list[httpx.Response]:
    barrier = threading.Barrier(threads)

    def send(body: bytes) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait(timeout=30)
            return client.post(
                url, content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            )

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(send, bodies))


@pytest.fixture
def token(acme, research_dept):
    return create_api_key(tenant=acme, name="concurrent")[1]


def test_overlapping_batches_sent_concurrently_store_each_id_once(live_server, token, acme):
    # Two overlapping 300-event batches (ids 0-299 and 150-449), each sent by four threads at once,
    # in both orders: duplicates across and within concurrent transactions.
    first = orjson.dumps([event(n) for n in range(300)])
    second = orjson.dumps([event(n) for n in range(150, 450)])
    bodies = [first, second] * 4
    responses = post_all(live_server.url + URL, token, bodies, threads=len(bodies))

    assert [r.status_code for r in responses] == [202] * len(bodies)
    answers = [r.json() for r in responses]
    assert sum(a["accepted"] for a in answers) == 450
    assert sum(a["accepted"] + a["duplicates"] for a in answers) == 300 * len(bodies)
    assert UsageEvent.objects.filter(tenant=acme).count() == 450
    assert sorted(UsageEvent.objects.filter(tenant=acme).values_list("input_tokens", flat=True)) == list(range(450))


def test_the_same_single_event_sent_concurrently_is_accepted_once(live_server, token, acme):
    threads = 8
    bodies = [orjson.dumps(event(7))] * threads
    responses = post_all(live_server.url + URL, token, bodies, threads=threads)
    assert [r.status_code for r in responses] == [202] * threads
    assert sorted(r.json()["accepted"] for r in responses) == [0] * (threads - 1) + [1]
    assert UsageEvent.objects.filter(tenant=acme).count() == 1


def test_concurrent_batches_of_different_tenants_stay_apart(live_server, acme, research_dept, other_tenant):
    from chargeback.models import Department

    Department.objects.create(tenant=other_tenant, code="research", name="Research")
    _, token_a = create_api_key(tenant=acme, name="a")
    _, token_b = create_api_key(tenant=other_tenant, name="b")
    body = orjson.dumps([event(n) for n in range(100)])
    barrier = threading.Barrier(2)

    def send(token: str) -> httpx.Response:
        barrier.wait(timeout=30)
        return httpx.post(
            live_server.url + URL,
            content=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=60,
        )

    with ThreadPoolExecutor(2) as pool:
        answers = [r.json() for r in pool.map(send, [token_a, token_b])]
    # The same ids in two tenants are two sets of events, never duplicates of each other.
    assert answers == [{"accepted": 100, "duplicates": 0, "rejected": []}] * 2
    assert UsageEvent.objects.filter(tenant=acme).count() == 100
    assert UsageEvent.objects.filter(tenant=other_tenant).count() == 100
