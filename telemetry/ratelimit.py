"""Per-key rate limits: requests per minute (`ApiKey.rpm_limit`) and tokens per minute
(`ApiKey.tpm_limit`), in fixed one-minute windows.

API: `check_rate(*, key, tokens=0)` counts one request and `tokens`
tokens against the key's current window and raises `RateLimited` (with `retry_after` seconds
until the window resets) when either limit would be exceeded; a refused request is not counted.
Keys without limits cost nothing. The gateway passes its token estimate (prompt estimate +
max_tokens), so tpm limits what callers may *ask for*. Ingest uses the same counters through
the DRF throttle `ApiKeyRateThrottle`, so a key's rpm is one budget across ingest and gateway.
The gateway builds the check with `admission()` and hands it to `enforcement.reserve`, which
runs it inside the budget reservation's Lua call when hard budgets are in scope (one Redis round
trip for both) and on its own otherwise.

Large request limits are leased: when a check counts requests only (no tpm limit, no tokens:
every ingest request) and the key allows at least 200 requests a minute, a process takes its
allowance from Redis `rpm // 100` requests at a time (at most 64) and admits from that lease
locally, so a busy key costs one Redis call per lease instead of one per request. Leases are
counted in the same Redis window as exact checks, so a key is never admitted over its limit;
what a process leased but did not use when the window ends is lost, so near the limit a key may
be refused up to (processes - 1) leases early: at most 1 % of its limit per other process.
Smaller limits are checked exactly on every request.

Backends: Redis (one Lua script, atomic across workers) when `REDIS_URL` is set; otherwise a
process-local counter table under a lock, correct for the single-process embedded default. Redis
outage: fail open with a logged warning (rate limits protect upstream quotas; budgets, which
protect money, have their own ledger).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from chargeback.enforcement import get_redis
from chargeback.models import ApiKey

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


class RateLimited(Exception):
    def __init__(self, *, kind: str, limit: int, retry_after: int) -> None:
        unit = "requests" if kind == "rpm" else "tokens"
        super().__init__(f"Rate limit exceeded: this API key allows {limit} {unit} per minute.")
        self.kind = kind
        self.limit = limit
        self.retry_after = retry_after


# Returns 0 when admitted (and counted), 1 when over rpm, 2 when over tpm.
CHECK_LUA = """
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
if rpm > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') + 1 > rpm then return 1 end
if tpm > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') + tokens > tpm then return 2 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
if tokens > 0 then
  redis.call('INCRBY', KEYS[2], tokens)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
end
return 0
"""

# Takes up to ARGV[2] requests of the window's ARGV[1] at once; returns how many (0: none left).
LEASE_LUA = """
local limit = tonumber(ARGV[1])
local grant = math.min(tonumber(ARGV[2]), limit - tonumber(redis.call('GET', KEYS[1]) or '0'))
if grant <= 0 then return 0 end
redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return grant
"""
LEASE_SHARE = 100  # a lease is at most this fraction of the limit …
LEASE_MAX = 64  # … and at most this many requests

_script = None
_lease_script = None
_local_lock = threading.Lock()
_local_counts: dict[str, int] = {}
_leases: dict[str, int] = {}  # window key → requests still leased to this process


@dataclass(frozen=True)
class Admission:
    """One request's rate-limit check, built without touching Redis. The gateway hands it to
    `enforcement.reserve`, which runs it in the same Lua call as the budget reservation (one
    Redis round trip instead of two); `check()` runs it on its own."""

    req_key: str
    tok_key: str
    rpm: int
    tpm: int
    tokens: int
    retry_after: int

    @property
    def redis_keys(self) -> list[str]:
        return [self.req_key, self.tok_key]

    @property
    def redis_args(self) -> list[int]:
        return [self.rpm, self.tpm, self.tokens, WINDOW_SECONDS + 5]

    @property
    def lease_size(self) -> int:
        """Requests a process may take at once for this check (1: check exactly)."""
        if self.tpm or self.tokens:
            return 1
        return min(LEASE_MAX, self.rpm // LEASE_SHARE) or 1

    def check(self) -> None:
        client = get_redis()
        if client is None:
            self.refuse(_check_local(self.req_key, self.tok_key, self.rpm, self.tpm, self.tokens))
            return
        if self.lease_size > 1:
            self._check_leased(client)
            return
        import redis

        global _script
        try:
            if _script is None:
                _script = client.register_script(CHECK_LUA)
            verdict = int(_script(keys=self.redis_keys, args=self.redis_args))
        except redis.RedisError as exc:
            logger.warning("Rate-limit store unavailable, failing open: %s", exc)
            return
        self.refuse(verdict)

    def _check_leased(self, client) -> None:
        with _local_lock:
            left = _leases.get(self.req_key, 0)
            if left:
                _leases[self.req_key] = left - 1
                return
        import redis

        global _lease_script
        try:
            if _lease_script is None:
                _lease_script = client.register_script(LEASE_LUA)
            grant = int(_lease_script(keys=[self.req_key], args=[self.rpm, self.lease_size, WINDOW_SECONDS + 5]))
        except redis.RedisError as exc:
            logger.warning("Rate-limit store unavailable, failing open: %s", exc)
            return
        if not grant:
            self.refuse(1)
        with _local_lock:
            if self.req_key not in _leases:
                # A new window: what is left of the others is never used again.
                _drop_other_windows(_leases, self.req_key)
            _leases[self.req_key] = _leases.get(self.req_key, 0) + grant - 1

    def refuse(self, verdict: int) -> None:
        """Raise RateLimited for a script's verdict (1: rpm, 2: tpm); 0 admits."""
        if verdict == 1:
            raise RateLimited(kind="rpm", limit=self.rpm, retry_after=self.retry_after)
        if verdict == 2:
            raise RateLimited(kind="tpm", limit=self.tpm, retry_after=self.retry_after)


def admission(*, key: ApiKey, tokens: int = 0, now: float | None = None) -> Admission | None:
    """The check for one request of `key` now; None when the key has no limits (nothing to count)."""
    rpm, tpm = key.rpm_limit or 0, getattr(key, "tpm_limit", None) or 0
    if not rpm and not tpm:
        return None
    now = time.time() if now is None else now
    window = int(now // WINDOW_SECONDS)
    return Admission(
        req_key=f"llmobs:rl:{key.pk}:{window}:r",
        tok_key=f"llmobs:rl:{key.pk}:{window}:t",
        rpm=rpm,
        tpm=tpm,
        tokens=tokens,
        retry_after=max(1, int(WINDOW_SECONDS - now % WINDOW_SECONDS + 0.999)),
    )


def check_rate(*, key: ApiKey, tokens: int = 0, now: float | None = None) -> None:
    """`key` is an ApiKey or anything with `pk`, `rpm_limit` and optionally `tpm_limit`."""
    check = admission(key=key, tokens=tokens, now=now)
    if check is not None:
        check.check()


def _drop_other_windows(table: dict[str, int], key: str) -> None:
    """Forget `table`'s entries of every window but `key`'s (keys are `llmobs:rl:<pk>:<window>:<kind>`).
    The caller holds `_local_lock`."""
    window = key.rsplit(":", 2)[1]
    for stale in [k for k in table if k.rsplit(":", 2)[1] != window]:
        del table[stale]


def _check_local(req_key: str, tok_key: str, rpm: int, tpm: int, tokens: int) -> int:
    with _local_lock:
        if len(_local_counts) > 10_000:
            # Old windows are never read again; drop them all rather than track expiry.
            _drop_other_windows(_local_counts, req_key)
        requests, used = _local_counts.get(req_key, 0), _local_counts.get(tok_key, 0)
        if rpm and requests + 1 > rpm:
            return 1
        if tpm and used + tokens > tpm:
            return 2
        _local_counts[req_key] = requests + 1
        _local_counts[tok_key] = used + tokens
    return 0


def reset_limits() -> None:
    """Forget all windows (tests)."""
    with _local_lock:
        _local_counts.clear()
        _leases.clear()
    client = get_redis()
    if client is not None:
        for k in client.scan_iter(match="llmobs:rl:*", count=1000):
            client.delete(k)


class ApiKeyRateThrottle:
    """DRF throttle enforcing the authenticated key's limits through `check_rate` (keys without
    limits are not counted). A denied request gets 429 with `Retry-After`."""

    def __init__(self) -> None:
        self.retry_after: int | None = None

    def allow_request(self, request, view) -> bool:
        key = getattr(request, "auth", None)
        if key is None or not hasattr(key, "rpm_limit"):
            return True
        try:
            check_rate(key=key)
        except RateLimited as exc:
            self.retry_after = exc.retry_after
            return False
        return True

    def wait(self) -> float | None:
        return self.retry_after
