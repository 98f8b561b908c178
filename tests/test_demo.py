"""seed_demo: a tenant with everything later pages need, all usage priced but the planted rows."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command

from chargeback.models import Budget, Department, Membership, Role, Route, Tenant
from telemetry.models import UsageEvent


@pytest.mark.django_db
def test_seed_demo_creates_a_priced_month_and_is_safe_to_run_twice(capsys):
    call_command("seed_demo", "--days", "7", "--events-per-day", "200")
    tenant = Tenant.objects.get(slug="acme")
    assert Department.objects.filter(tenant=tenant).count() == 6
    assert set(Membership.objects.filter(tenant=tenant).values_list("role", flat=True)) == set(Role.values)
    assert Budget.objects.filter(tenant=tenant, mode=Budget.Mode.HARD).exists()
    assert Route.objects.filter(tenant=tenant, provider=Route.Provider.DEMO).exists()
    events = UsageEvent.objects.filter(tenant=tenant)
    assert events.count() > 1000
    # Only the fine-tuned model seeded on purpose is unpriced; everything else has a cost.
    unpriced = events.filter(cost_provenance="unpriced")
    assert set(unpriced.values_list("model", flat=True)) == {"ft:gpt-4o-mini:acme:support-v2"}
    assert not events.exclude(cost_provenance="unpriced").filter(cost__isnull=True).exists()
    assert events.filter(cache_read_input_tokens__gt=0).exists()
    assert events.filter(reasoning_tokens__gt=0).exists()
    assert events.exclude(status="ok").exists()
    assert set(events.values_list("provider", flat=True)) == {"openai", "anthropic", "ollama"}
    # The negotiated GPT-4o discount applies to the demo tenant's GPT-4o calls.
    gpt4o = events.filter(model="gpt-4o-2024-08-06", status="ok").first()
    assert gpt4o.price.tenant_id == tenant.id
    assert gpt4o.price.input_per_mtok == Decimal("2.25")

    call_command("seed_demo")
    assert "already exists" in capsys.readouterr().out
    assert UsageEvent.objects.filter(tenant=tenant).count() == events.count()


@pytest.mark.django_db
def test_seed_demo_reset_reseeds_deterministically():
    now = datetime(2026, 3, 31, 12, tzinfo=UTC)
    from telemetry.demo import reset_demo, seed_demo

    first = seed_demo(days=2, events_per_day=100, now=now)
    reset_demo()
    second = seed_demo(days=2, events_per_day=100, now=now)
    assert (first.events, first.cost) == (second.events, second.cost)
