"""Re-pricing a closed period after a price correction: every event in the window is priced
again with the current price book, in one transaction, with one audit entry giving the totals
before and after. Issued invoices are never edited: the difference reaches departments as
adjustment lines on their next open invoice (see `invoicing._closed_month_deltas`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import transaction

from chargeback import audit
from chargeback.models import Tenant
from chargeback.pricing import Provenance, get_price_book, load_price_book, price_usage
from chargeback.usage import Usage
from telemetry.models import UsageEvent

BATCH = 2000
_FIELDS = (
    "id",
    "provider",
    "model",
    "occurred_at",
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "compute_ms",
    "reported_cost",
    "reported_currency",
    "cost_provenance",
    "cost",
    "currency",
    "price_id",
)


@dataclass
class RepriceResult:
    events: int = 0
    changed: int = 0
    before: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    after: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    unpriced_before: int = 0
    unpriced_after: int = 0


def reprice_events(*, tenant: Tenant, start: datetime, end: datetime, actor: audit.Actor = None) -> RepriceResult:
    """Recompute the cost of the tenant's events in [start, end) with the current prices."""
    if end <= start:
        raise ValueError("end must be after start")
    # Read prices straight from the database: a stale per-process book would re-price with the
    # very prices being corrected.
    book = load_price_book(tenant.pk)
    result = RepriceResult()
    with transaction.atomic():
        events = UsageEvent.objects.for_tenant(tenant).between(start, end).order_by("id")
        last_id = 0
        while True:
            rows = list(events.filter(id__gt=last_id).values_list(*_FIELDS)[:BATCH])
            if not rows:
                break
            last_id = rows[-1][0]
            updates = []
            for row in rows:
                values = dict(zip(_FIELDS, row, strict=True))
                result.events += 1
                _count(result.before, values["cost"], values["currency"])
                result.unpriced_before += values["cost"] is None
                priced = price_usage(
                    book=book,
                    provider=values["provider"],
                    model=values["model"],
                    at=values["occurred_at"],
                    usage=Usage(
                        input_tokens=values["input_tokens"],
                        cache_read_input_tokens=values["cache_read_input_tokens"],
                        cache_creation_input_tokens=values["cache_creation_input_tokens"],
                        cache_creation_1h_input_tokens=values["cache_creation_1h_input_tokens"],
                        output_tokens=values["output_tokens"],
                        reasoning_tokens=values["reasoning_tokens"],
                        compute_ms=values["compute_ms"],
                    ),
                    reported_cost=values["reported_cost"],
                    reported_currency=values["reported_currency"],
                    estimated=values["cost_provenance"] == Provenance.ESTIMATED,
                )
                _count(result.after, priced.cost, priced.currency)
                result.unpriced_after += priced.cost is None
                new = priced.to_fields()
                if (new["cost"], new["currency"], new["cost_provenance"], new["price_id"]) != (
                    values["cost"],
                    values["currency"],
                    values["cost_provenance"],
                    values["price_id"],
                ):
                    updates.append(UsageEvent(id=values["id"], **new))
            UsageEvent.objects.bulk_update(updates, ["cost", "currency", "cost_provenance", "price_id"], batch_size=500)
            result.changed += len(updates)
        audit.record(
            tenant=tenant,
            actor=actor,
            action="reprice",
            obj=tenant,
            changes={
                "start": start.isoformat(),
                "end": end.isoformat(),
                "events": result.events,
                "changed": result.changed,
                "total_before": {c: str(v) for c, v in sorted(result.before.items())},
                "total_after": {c: str(v) for c, v in sorted(result.after.items())},
                "unpriced_before": result.unpriced_before,
                "unpriced_after": result.unpriced_after,
            },
        )
    get_price_book(tenant.pk)  # warm this process's book with the current prices
    return result


def _count(totals: dict[str, Decimal], cost: Decimal | None, currency: str) -> None:
    if cost is not None:
        totals[currency] += cost
