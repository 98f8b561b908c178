"""Hard-budget enforcement at the gateway: reserve a call's estimated cost against every hard
budget in scope before the call, settle with the real cost after it.

The ledger, per budget and period, has two counters in micro-units of the budget currency:
`spent` (seeded from the database by `period_spend`, then advanced by every settled gateway
call) and `held` (reservations of calls in flight). A call is admitted only if
`spent + held + estimate <= limit` holds for *every* budget in scope, checked and reserved in
one step, so concurrent calls cannot overshoot: the worst case is the estimation error of the
calls in flight, never a whole extra call's worth per racing request.

Backends:
- Redis (production, `REDIS_URL` set): one Lua script checks and reserves across several
  budgets atomically for all gunicorn workers. `spent` expires after
  `LLMOBS_BUDGET_RESEED_SECONDS` (default 300) and is re-seeded from the database, which folds
  in spend recorded by other paths (ingest, OTLP). Redis outage policy: **fail open** — the call
  proceeds, a warning is logged and `llmobs_budget_fail_open_total` counts it; gateway calls
  never fail because the ledger is down.
- In-process (embedded default, no Redis): the same counters in a dict under a process lock.
  Correct for the single-process embedded default; with several processes and no Redis each
  process would enforce on its own, so production must set `REDIS_URL`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Protocol

from django.conf import settings
from django.db.models import Sum

from chargeback.models import Budget, PeriodBounds
from chargeback.money import quantize

logger = logging.getLogger(__name__)

MICRO = Decimal("0.000001")
UNITS_PER_MONEY = Decimal(1_000_000)
BUDGET_CACHE_SECONDS = 5.0


def _units(amount: Decimal, *, up: bool = False) -> int:
    return int((amount * UNITS_PER_MONEY).to_integral_value(ROUND_CEILING if up else ROUND_HALF_UP))


def _money(units: int) -> Decimal:
    return Decimal(units) / UNITS_PER_MONEY


@dataclass(frozen=True, slots=True)
class BudgetScope:
    """Who and what a call is attributed to, for matching budgets."""

    tenant_id: int
    department_id: int | None = None
    user_ref: str = ""
    models: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    def matches(self, budget: Budget) -> bool:
        scope = budget.scope
        if scope == Budget.Scope.TENANT:
            return True
        if scope == Budget.Scope.DEPARTMENT:
            return self.department_id is not None and budget.department_id == self.department_id
        if scope == Budget.Scope.USER:
            return bool(self.user_ref) and budget.user_ref == self.user_ref
        if scope == Budget.Scope.MODEL:
            return budget.model in self.models
        if scope == Budget.Scope.TAG:
            return self.tags.get(budget.tag_key) == budget.tag_value
        return False


class BudgetExceeded(Exception):
    def __init__(self, *, budget: Budget, spent: Decimal, bounds: PeriodBounds) -> None:
        super().__init__(f"Budget {budget.name!r} is exhausted.")
        self.budget = budget
        self.spent = spent
        self.bounds = bounds

    def to_dict(self) -> dict[str, object]:
        currency = self.budget.currency
        return {
            "id": self.budget.pk,
            "name": self.budget.name,
            "spent": str(quantize(self.spent, currency)),
            "limit": str(quantize(self.budget.amount, currency)),
            "currency": currency,
            "resets_at": self.bounds.end.isoformat(),
        }

    @property
    def message(self) -> str:
        info = self.to_dict()
        return (
            f"The hard budget '{info['name']}' is exhausted: {info['spent']} of {info['limit']} {info['currency']} "
            f"spent this period. It resets at {info['resets_at']}."
        )


@dataclass(slots=True)
class Reservation:
    """What a call holds; `settle` releases it exactly once."""

    entries: list[tuple[str, str]]  # (spent key, held key) per budget
    units: int
    backend: str  # redis | local | none
    budgets: list[Budget] = field(default_factory=list)
    settled: bool = False
    totals: list[int] = field(default_factory=list)  # spent + held after reserve/settle, micro-units

    @classmethod
    def empty(cls) -> Reservation:
        return cls(entries=[], units=0, backend="none")


# --- which budgets apply ----------------------------------------------------------------------

_budget_cache: dict[int, tuple[float, list[Budget]]] = {}
_budget_cache_lock = threading.Lock()


def hard_budgets(tenant_id: int) -> list[Budget]:
    """The tenant's active hard budgets, cached for a few seconds per process: budgets change
    rarely and this runs on every gateway call. Call `forget_budgets()` after editing them."""
    now = time.monotonic()
    entry = _budget_cache.get(tenant_id)
    if entry is not None and now - entry[0] < BUDGET_CACHE_SECONDS:
        return entry[1]
    budgets = list(
        Budget.objects.filter(tenant_id=tenant_id, active=True, mode=Budget.Mode.HARD).select_related("tenant")
    )
    with _budget_cache_lock:
        _budget_cache[tenant_id] = (now, budgets)
    return budgets


def forget_budgets() -> None:
    with _budget_cache_lock:
        _budget_cache.clear()


def budgets_in_scope(scope: BudgetScope) -> list[Budget]:
    return [b for b in hard_budgets(scope.tenant_id) if scope.matches(b)]


def period_spend(budget: Budget, bounds: PeriodBounds) -> Decimal:
    """Spend recorded in the database for the budget's scope and period (the ledger's seed).

    The one place that reads spend for enforcement, so it can move to rollups later. Sums raw
    events: exact on PostgreSQL (NUMERIC); SQLite sums in floating point, which is within a
    micro-unit for the embedded default's volumes.
    """
    from telemetry.models import UsageEvent

    events = UsageEvent.objects.for_tenant(budget.tenant_id).between(bounds.start, bounds.end)
    events = events.filter(currency=budget.currency, cost__isnull=False)
    if budget.scope == Budget.Scope.DEPARTMENT:
        events = events.filter(department_id=budget.department_id)
    elif budget.scope == Budget.Scope.USER:
        events = events.filter(user_ref=budget.user_ref)
    elif budget.scope == Budget.Scope.MODEL:
        events = events.filter(model=budget.model)
    elif budget.scope == Budget.Scope.TAG:
        events = events.filter(**{f"tags__{budget.tag_key}": budget.tag_value})
    total = events.aggregate(total=Sum("cost"))["total"]
    return Decimal(str(total)) if total is not None else Decimal(0)


def _keys(budget: Budget, bounds: PeriodBounds) -> tuple[str, str]:
    stamp = int(bounds.start.timestamp())
    return f"llmobs:ledger:{budget.pk}:{stamp}:spent", f"llmobs:ledger:{budget.pk}:{stamp}:held"


def _reseed_seconds() -> int:
    return int(getattr(settings, "LLMOBS_BUDGET_RESEED_SECONDS", 300))


# --- Redis backend ------------------------------------------------------------------------------

_redis = None
_redis_lock = threading.Lock()


def get_redis():
    """The shared Redis client (pooled), or None in the embedded default. Short socket timeouts
    so an outage costs milliseconds, not the request."""
    global _redis
    if not settings.REDIS_URL:
        return None
    if _redis is None:
        import redis

        with _redis_lock:
            if _redis is None:
                _redis = redis.Redis.from_url(
                    settings.REDIS_URL, socket_timeout=0.25, socket_connect_timeout=0.25, health_check_interval=30
                )
    return _redis


# Returns {0, spent+held per budget} when reserved, {-1, i} when budget i has no seeded `spent` yet, or {i, spent+held}
# when budget i would go over. Check all, then reserve all: atomic in Redis.
# With a rate-limit admission appended (KEYS: its request and token windows after the budgets';
# ARGV: rpm, tpm, tokens, window ttl after the limits), it is checked first in the same call,
# {-2, 1 | 2} when over rpm | tpm (nothing counted, nothing held); an admitted request is counted
# even when a budget then refuses it, as a separate rate check before the reservation would.
RESERVE_LUA = """
local amount = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local r = 3 + n
local rated = #ARGV > r
local function count()
  if not rated then return end
  local window = tonumber(ARGV[r + 4])
  redis.call('INCR', KEYS[2 * n + 1])
  redis.call('EXPIRE', KEYS[2 * n + 1], window)
  local tokens = tonumber(ARGV[r + 3])
  if tokens > 0 then
    redis.call('INCRBY', KEYS[2 * n + 2], tokens)
    redis.call('EXPIRE', KEYS[2 * n + 2], window)
  end
end
if rated then
  local rpm = tonumber(ARGV[r + 1])
  local tpm = tonumber(ARGV[r + 2])
  if rpm > 0 and tonumber(redis.call('GET', KEYS[2 * n + 1]) or '0') + 1 > rpm then return {-2, 1} end
  if tpm > 0 and tonumber(redis.call('GET', KEYS[2 * n + 2]) or '0') + tonumber(ARGV[r + 3]) > tpm then
    return {-2, 2}
  end
end
for i = 1, n do
  local spent = redis.call('GET', KEYS[2 * i - 1])
  if not spent then return {-1, i} end
  local held = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local total = tonumber(spent) + held
  if total + amount > tonumber(ARGV[3 + i]) then
    count()
    return {i, total}
  end
end
count()
local totals = {0}
for i = 1, n do
  local held = redis.call('INCRBY', KEYS[2 * i], amount)
  redis.call('EXPIRE', KEYS[2 * i], ttl)
  totals[i + 1] = tonumber(redis.call('GET', KEYS[2 * i - 1])) + held
end
return totals
"""

# Release the hold; add the real cost to `spent` only where it is seeded (an expired `spent`
# is re-seeded from the database, which will include this call once it is recorded).
SETTLE_LUA = """
local held = tonumber(ARGV[1])
local actual = tonumber(ARGV[2])
local totals = {}
for i = 1, #KEYS / 2 do
  local h = redis.call('DECRBY', KEYS[2 * i], held)
  if h < 0 then redis.call('SET', KEYS[2 * i], 0); h = 0 end
  local spent = 0
  if redis.call('EXISTS', KEYS[2 * i - 1]) == 1 then spent = redis.call('INCRBY', KEYS[2 * i - 1], actual) end
  totals[i] = spent + h
end
return totals
"""

_scripts: dict[str, object] = {}


def _script(client, name: str, source: str):
    script = _scripts.get(name)
    if script is None:
        script = _scripts[name] = client.register_script(source)
    return script


def _reserve_redis(
    client, budgets: list[Budget], bounds: list[PeriodBounds], units: int, admission: Admission | None
) -> Reservation:
    entries = [_keys(b, p) for b, p in zip(budgets, bounds, strict=True)]
    keys = [k for pair in entries for k in pair]
    hold_ttl = max(int((p.end - p.start).total_seconds()) + 86400 for p in bounds)
    args = [units, len(budgets), hold_ttl] + [_units(b.amount) for b in budgets]
    if admission is not None:
        keys += admission.redis_keys
        args += admission.redis_args
    reserve = _script(client, "reserve", RESERVE_LUA)
    for _ in range(len(budgets) + 1):
        result = reserve(keys=keys, args=args)
        status = int(result[0])
        if status == -2:
            admission.refuse(int(result[1]))
        if status == 0:
            totals = [int(t) for t in result[1:]]
            return Reservation(entries=entries, units=units, backend="redis", budgets=budgets, totals=totals)
        value = int(result[1])
        if status == -1:
            budget, period = budgets[value - 1], bounds[value - 1]
            seed = _units(period_spend(budget, period))
            client.set(entries[value - 1][0], seed, ex=_reseed_seconds(), nx=True)
            continue
        raise BudgetExceeded(budget=budgets[status - 1], spent=_money(value), bounds=bounds[status - 1])
    raise RuntimeError("The budget ledger could not be seeded.")  # unreachable: each pass seeds one key


# --- in-process backend (embedded default) -------------------------------------------------------

_local_lock = threading.Lock()
_local_spent: dict[str, tuple[float, int]] = {}  # key -> (expires at, units)
_local_held: dict[str, int] = {}


def _reserve_local(budgets: list[Budget], bounds: list[PeriodBounds], units: int) -> Reservation:
    entries = [_keys(b, p) for b, p in zip(budgets, bounds, strict=True)]
    with _local_lock:
        now = time.monotonic()
        for budget, period, (spent_key, held_key) in zip(budgets, bounds, entries, strict=True):
            entry = _local_spent.get(spent_key)
            if entry is None or entry[0] < now:
                entry = (now + _reseed_seconds(), _units(period_spend(budget, period)))
                _local_spent[spent_key] = entry
            total = entry[1] + _local_held.get(held_key, 0)
            if total + units > _units(budget.amount):
                raise BudgetExceeded(budget=budget, spent=_money(total), bounds=period)
        for _spent_key, held_key in entries:
            _local_held[held_key] = _local_held.get(held_key, 0) + units
    return Reservation(entries=entries, units=units, backend="local", budgets=budgets)


def _settle_local(reservation: Reservation, actual_units: int) -> None:
    with _local_lock:
        for spent_key, held_key in reservation.entries:
            _local_held[held_key] = max(_local_held.get(held_key, 0) - reservation.units, 0)
            entry = _local_spent.get(spent_key)
            if entry is not None:
                _local_spent[spent_key] = (entry[0], entry[1] + actual_units)


# --- public API ----------------------------------------------------------------------------------


class Admission(Protocol):
    """A rate-limit check to run with the reservation (telemetry/ratelimit.py builds it)."""

    redis_keys: list[str]
    redis_args: list[int]

    def check(self) -> None: ...  # on its own; raises when over the limit

    def refuse(self, verdict: int) -> None: ...  # raises for the script's verdict


def reserve(*, scope: BudgetScope, amount: Decimal, at: datetime, admission: Admission | None = None) -> Reservation:
    """Hold `amount` against every hard budget matching `scope`, or raise BudgetExceeded naming
    the first budget that would go over. Soft budgets are never consulted here.

    `admission`, when given, is the call's rate-limit check: it runs first and raises its own
    error when over the limit. With hard budgets on Redis it shares the reservation's Lua call
    (one round trip for both); otherwise it runs on its own before the reservation."""
    budgets = budgets_in_scope(scope)
    client = get_redis() if budgets else None
    if admission is not None and client is None:
        admission.check()
        admission = None
    if not budgets:
        return Reservation.empty()
    bounds = [b.period_bounds(at) for b in budgets]
    units = max(_units(amount, up=True), 0)
    if client is None:
        return _reserve_local(budgets, bounds, units)
    import redis

    try:
        return _reserve_redis(client, budgets, bounds, units, admission)
    except redis.RedisError as exc:
        logger.warning("Budget ledger unavailable, failing open for this call: %s", exc)
        from telemetry import metrics

        metrics.BUDGET_FAIL_OPEN.inc()
        return Reservation.empty()


def settle(reservation: Reservation, *, actual: Decimal | None) -> None:
    """Release the hold and book the real cost (None = unpriced, books nothing). Idempotent."""
    if reservation.settled or not reservation.entries:
        reservation.settled = True
        return
    reservation.settled = True
    actual_units = _units(actual) if actual is not None and actual > 0 else 0
    if reservation.backend == "local":
        _settle_local(reservation, actual_units)
        return
    client = get_redis()
    if client is None:
        return
    import redis

    keys = [k for pair in reservation.entries for k in pair]
    try:
        totals = _script(client, "settle", SETTLE_LUA)(keys=keys, args=[reservation.units, actual_units])
        reservation.totals = [int(t) for t in totals]
    except redis.RedisError as exc:
        logger.warning("Budget ledger unavailable while settling (the hold expires with the period): %s", exc)


def remaining(reservation: Reservation) -> Decimal | None:
    """Smallest remaining amount among the reservation's budgets (for the metrics gauge): from
    the counters the last reserve/settle script returned (Redis), or the local ledger."""
    if not reservation.budgets:
        return None
    if reservation.backend == "local":
        with _local_lock:
            totals = [
                _local_spent.get(spent_key, (0, 0))[1] + _local_held.get(held_key, 0)
                for spent_key, held_key in reservation.entries
            ]
    else:
        totals = reservation.totals
    if len(totals) != len(reservation.budgets):
        return None
    return min(budget.amount - _money(total) for budget, total in zip(reservation.budgets, totals, strict=True))


def reset_ledger() -> None:
    """Drop every ledger counter (tests, and an operator after editing past spend)."""
    forget_budgets()
    with _local_lock:
        _local_spent.clear()
        _local_held.clear()
    client = get_redis()
    if client is not None:
        for key in client.scan_iter(match="llmobs:ledger:*", count=1000):
            client.delete(key)
