"""Small row factories for tests: each builds one valid row with overridable defaults."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from chargeback.models import Budget, Department, Membership, ModelPrice, NotificationChannel, Role, Route, Tenant
from telemetry import partitions
from telemetry.models import UsageEvent

_sequence = itertools.count(1)


def make_member(*, tenant: Tenant, username: str, role: str = Role.ADMIN, department: Department | None = None) -> Any:
    user = get_user_model().objects.create_user(username=username, password=f"pw-{username}")
    Membership.objects.create(user=user, tenant=tenant, role=role, department=department)
    return user


def make_price(**overrides: Any) -> ModelPrice:
    fields: dict[str, Any] = {
        "provider": "openai",
        "model_pattern": "gpt-4o-mini",
        "effective_from": datetime(2024, 1, 1, tzinfo=UTC),
        "input_per_mtok": Decimal("0.15"),
        "output_per_mtok": Decimal("0.60"),
        "source": ModelPrice.Source.MANUAL,
    }
    fields.update(overrides)
    return ModelPrice.objects.create(**fields)


def make_budget(*, tenant: Tenant, department: Department | None = None, **overrides: Any) -> Budget:
    fields: dict[str, Any] = {
        "name": f"{department.code if department else tenant.slug} monthly",
        "scope": Budget.Scope.DEPARTMENT if department else Budget.Scope.TENANT,
        "department": department,
        "period": Budget.Period.MONTH,
        "amount": Decimal("1000.00"),
        "thresholds": [50, 80, 100],
    }
    fields.update(overrides)
    return Budget.objects.create(tenant=tenant, **fields)


def make_route(*, tenant: Tenant, **overrides: Any) -> Route:
    fields: dict[str, Any] = {
        "alias": "gpt-4o",
        "provider": Route.Provider.OPENAI,
        "upstream_model": "gpt-4o-2024-08-06",
        "credential_env": "OPENAI_API_KEY",
    }
    fields.update(overrides)
    return Route.objects.create(tenant=tenant, **fields)


def make_channel(*, tenant: Tenant, **overrides: Any) -> NotificationChannel:
    fields: dict[str, Any] = {
        "name": "finance mail",
        "kind": NotificationChannel.Kind.EMAIL,
        "target": "finance@acme.example",
    }
    fields.update(overrides)
    return NotificationChannel.objects.create(tenant=tenant, **fields)


def ingest_event(event_id: str, *, tokens: int = 10, **overrides: Any) -> dict:
    """One event as a client posts it to `POST /api/v1/usage-events` (department `research`)."""
    return {
        "event_id": event_id,
        "timestamp": "2025-03-01T12:00:00Z",
        "department": "research",
        "provider": "openai",
        "model": "gpt-4o",
        "usage": {"input_tokens": tokens, "output_tokens": 1},
        **overrides,
    }


def make_usage_event(*, tenant: Tenant, department: Department | None = None, **overrides: Any) -> UsageEvent:
    n = next(_sequence)
    fields: dict[str, Any] = {
        "event_id": f"evt-{n:06d}",
        "source": UsageEvent.Source.INGEST,
        "department": department,
        "department_code": department.code if department else "",
        "user_ref": "emil",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "occurred_at": datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        "input_tokens": 1200,
        "output_tokens": 300,
        "cost": Decimal("0.000360"),
        "cost_provenance": UsageEvent.Provenance.COMPUTED,
        "trace_id": f"{n:032x}",
    }
    fields.update(overrides)
    event = UsageEvent(tenant=tenant, **fields)
    if not partitions.is_postgresql():
        event.save()  # the unique constraint guards it; save() also sets the pk
        return event
    # Through the idempotency ledger, as every writer does (telemetry/partitions.py).
    with transaction.atomic():
        assert partitions.insert_new_events([event]) == 1, f"event_id {event.event_id} already stored"
    return event


def roll_up_everything() -> None:
    """Build every rollup from the raw events in the database, as the rollup tasks would: the
    pages read rollups, so tests that write events directly roll them up before looking."""
    from datetime import timedelta

    from django.db.models import Max, Min

    from telemetry import rollups

    bounds = UsageEvent.objects.aggregate(first=Min("occurred_at"), last=Max("occurred_at"))
    if bounds["first"] is None:
        return
    start, end = bounds["first"], bounds["last"] + timedelta(hours=1)
    rollups.rebuild(start=start, end=end, chunk=end - start + timedelta(hours=1))
