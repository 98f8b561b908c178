"""Leased request allowances (telemetry/ratelimit.py): a key with a large rpm limit takes its
requests from Redis a lease at a time, so most requests cost no Redis call; leases and exact
checks share one window counter, so no key is ever admitted over its limit."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest

from chargeback.enforcement import get_redis
from telemetry import ratelimit

pytestmark = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="leases are a Redis backend feature")

NOW = 1_800_000_000.0  # the start of a window (a multiple of 60)


class Key:
    def __init__(self, pk: int, rpm: int, tpm: int | None = None) -> None:
        self.pk = pk
        self.rpm_limit = rpm
        self.tpm_limit = tpm


@pytest.fixture(autouse=True)
def clean_windows():
    ratelimit.reset_limits()
    yield
    ratelimit.reset_limits()


def counted(key: Key, now: float = NOW) -> int:
    """Requests the key's window holds in Redis (leased or checked exactly)."""
    return int(get_redis().get(f"llmobs:rl:{key.pk}:{int(now // 60)}:r") or 0)


def admitted(key: Key, tries: int, now: float = NOW) -> int:
    n = 0
    for _ in range(tries):
        try:
            ratelimit.check_rate(key=key, now=now)
        except ratelimit.RateLimited:
            continue
        n += 1
    return n


@contextmanager
def process(leases: dict[str, int]):
    """Run checks as another worker process would: with its own leases."""
    saved = ratelimit._leases
    ratelimit._leases = leases
    try:
        yield
    finally:
        ratelimit._leases = saved


def test_a_busy_key_pays_one_redis_call_per_lease():
    key = Key(910_001, rpm=10_000)  # lease: min(64, 10_000 // 100) = 64
    assert admitted(key, 1) == 1
    assert counted(key) == 64  # the first request leased 64
    assert admitted(key, 63) == 63
    assert counted(key) == 64  # … and the next 63 used them without Redis
    assert admitted(key, 1) == 1
    assert counted(key) == 128


def test_leases_never_admit_over_the_limit_across_processes():
    key = Key(910_002, rpm=250)  # lease: 2
    one, two = {}, {}
    total = 0
    for i in range(400):
        with process(one if i % 3 else two):
            total += admitted(key, 1)
    assert counted(key) == 250
    # What the other process leased and did not use is lost for this window: at most one lease.
    assert 250 - 2 <= total <= 250


def test_the_last_lease_of_a_window_is_partial():
    key = Key(910_003, rpm=6_400)  # lease: 64
    get_redis().set(f"llmobs:rl:{key.pk}:{int(NOW // 60)}:r", 6_390)
    assert admitted(key, 20) == 10
    assert counted(key) == 6_400


def test_a_refusal_names_the_limit_and_the_wait():
    key = Key(910_004, rpm=200)
    get_redis().set(f"llmobs:rl:{key.pk}:{int(NOW // 60)}:r", 200)
    with pytest.raises(ratelimit.RateLimited) as refused:
        ratelimit.check_rate(key=key, now=NOW + 15)
    assert (refused.value.kind, refused.value.limit, refused.value.retry_after) == ("rpm", 200, 45)


@pytest.mark.parametrize(
    ("key", "tokens"),
    [(Key(910_005, rpm=199), 0), (Key(910_006, rpm=10_000, tpm=1_000_000), 0), (Key(910_007, rpm=10_000), 50)],
    ids=["small limit", "tpm limit", "tokens counted"],
)
def test_small_limits_token_limits_and_token_counts_are_checked_exactly(key, tokens):
    for n in range(1, 4):
        ratelimit.check_rate(key=key, tokens=tokens, now=NOW)
        assert counted(key) == n


def test_a_new_window_starts_a_new_lease_and_forgets_the_old_one():
    key = Key(910_008, rpm=10_000)
    assert admitted(key, 10) == 10
    later = NOW + 60
    assert admitted(key, 1, now=later) == 1
    assert counted(key, later) == 64
    assert list(ratelimit._leases) == [f"llmobs:rl:{key.pk}:{int(later // 60)}:r"]


def test_redis_down_fails_open():
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    broken = redis.Redis(host="127.0.0.1", port=8449, socket_connect_timeout=0.05, retry=Retry(NoBackoff(), 0))
    saved = ratelimit.get_redis, ratelimit._lease_script
    # A registered script keeps its client: start without one so it is registered on `broken`.
    ratelimit.get_redis, ratelimit._lease_script = (lambda: broken), None
    try:
        assert admitted(Key(910_009, rpm=10_000), 3) == 3
        assert ratelimit._leases == {}  # nothing was leased
    finally:
        ratelimit.get_redis, ratelimit._lease_script = saved
