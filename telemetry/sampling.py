"""Adaptive trace sampling: whether a finished gateway call keeps its span (OTLP, Langfuse) and
its captured text. Every error, every slow call and every costly call is kept, plus a fixed
share of the rest chosen by a hash of the event id. Usage events are never sampled.

The decision is made once, at the end of the call (when status, latency and cost are known),
stored on the event (`UsageEvent.sampling`), set on the span (`llmobs.sampling.*`, which the
exporting span processors obey) and counted in `llmobs_trace_sampling_total`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from chargeback.models import Tenant
from telemetry.models import SamplingPolicy, SamplingReason, UsageEvent

POLICY_CACHE_SECONDS = 5.0
# Statuses that are not failures of the call: a client that went away mid-stream is ordinary.
NOT_ERRORS = frozenset({UsageEvent.Status.OK, UsageEvent.Status.CANCELLED})
_HASH_SPACE = 2**64


@dataclass(frozen=True, slots=True)
class Decision:
    keep: bool
    reason: str  # a SamplingReason value


@dataclass(frozen=True, slots=True)
class Policy:
    """A tenant's policy as the gateway reads it: immutable, cached, no database access."""

    enabled: bool = False
    keep_errors: bool = True
    slow_ms: int | None = 10_000
    costly_amount: Decimal | None = Decimal("0.50")
    base_rate: Decimal = Decimal("0.1")

    @classmethod
    def of(cls, row: SamplingPolicy) -> Policy:
        return cls(
            enabled=row.enabled,
            keep_errors=row.keep_errors,
            slow_ms=row.slow_ms,
            costly_amount=row.costly_amount,
            base_rate=row.base_rate,
        )

    @property
    def base_threshold(self) -> int:
        # The base rate as a point in the 64-bit hash space: an exact integer comparison, so a
        # rate of 0 keeps nothing and 1 keeps everything.
        return int(self.base_rate * _HASH_SPACE)


KEPT = Decision(True, SamplingReason.OFF.value)
ERROR = Decision(True, SamplingReason.ERROR.value)
SLOW = Decision(True, SamplingReason.SLOW.value)
COSTLY = Decision(True, SamplingReason.COSTLY.value)
SAMPLED = Decision(True, SamplingReason.SAMPLED.value)
DROPPED = Decision(False, SamplingReason.DROPPED.value)


def event_hash(event_id: str) -> int:
    """A uniform 64-bit number from the event id: the same id always gets the same decision
    (a replayed or re-recorded event, its span and its capture all agree)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")


def decide(
    policy: Policy | SamplingPolicy,
    *,
    status: str,
    latency_ms: int | None,
    cost: Decimal | None,
    event_id: str,
) -> Decision:
    """Keep or drop one finished call's trace, and why. Rules in order: error, slow, costly,
    base rate; the first that matches is the reason. `cost` is in the tenant's currency (None
    when unpriced or priced in another currency: no cost rule applies)."""
    if not policy.enabled:
        return KEPT
    if policy.keep_errors and status not in NOT_ERRORS:
        return ERROR
    if policy.slow_ms is not None and latency_ms is not None and latency_ms >= policy.slow_ms:
        return SLOW
    if policy.costly_amount is not None and cost is not None and cost >= policy.costly_amount:
        return COSTLY
    threshold = policy.base_threshold if isinstance(policy, Policy) else int(policy.base_rate * _HASH_SPACE)
    return SAMPLED if event_hash(event_id) < threshold else DROPPED


# --- the tenant's policy, cached per process ------------------------------------------------------

_policies: dict[int, tuple[float, Policy]] = {}
_policies_lock = threading.Lock()


def default_policy() -> Policy:
    return Policy(enabled=bool(getattr(settings, "LLMOBS_SAMPLING_DEFAULT_ENABLED", False)))


def policy_for(tenant_id: int) -> Policy:
    """The tenant's sampling policy, read at most every few seconds per process (it is
    configuration, needed on every call). No row: the defaults, enabled per settings."""
    now = time.monotonic()
    entry = _policies.get(tenant_id)
    if entry is not None and now - entry[0] < POLICY_CACHE_SECONDS:
        return entry[1]
    row = SamplingPolicy.objects.filter(tenant_id=tenant_id).first()
    policy = Policy.of(row) if row is not None else default_policy()
    with _policies_lock:
        _policies[tenant_id] = (now, policy)
    return policy


def forget_policies() -> None:
    with _policies_lock:
        _policies.clear()


# --- visibility -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeptFraction:
    total: int
    kept: int
    by_reason: dict[str, int]

    @property
    def fraction(self) -> float | None:
        return self.kept / self.total if self.total else None


def get_kept_fraction(*, tenant: Tenant | int, hours: int = 24, now: datetime | None = None) -> KeptFraction:
    """How many of the tenant's gateway calls of the last `hours` kept their trace, by reason.
    Reads the tenant's recent events through the (tenant, occurred_at) index: meant for one
    tenant's admin page, not dashboards (Prometheus has the same numbers as a counter)."""
    now = now or timezone.now()
    rows = (
        UsageEvent.objects.for_tenant(tenant)
        .between(now - timedelta(hours=hours), now)
        .exclude(sampling="")
        .order_by()
        .values("sampling")
        .annotate(n=Count("pk"))
    )
    by_reason = {row["sampling"]: row["n"] for row in rows}
    total = sum(by_reason.values())
    kept = total - by_reason.get(SamplingReason.DROPPED, 0)
    return KeptFraction(total=total, kept=kept, by_reason=by_reason)
