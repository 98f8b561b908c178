"""Invoice drafting, allocations, adjustments and reconciliation, to the cent on hand-computed data."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from chargeback import invoicing
from chargeback.invoicing import (
    GraceWindowOpen,
    InvoicingError,
    draft_invoices,
    reconcile_period,
    split_largest_remainder,
)
from chargeback.models import (
    ChargebackPolicy,
    Department,
    Invoice,
    InvoiceLine,
    SharedCostPool,
    SharedCostSplit,
)
from telemetry.models import UsageEvent
from tests.factories import make_budget, make_member, make_price, make_usage_event

MARCH = date(2026, 3, 1)
APRIL = date(2026, 4, 1)
IN_MARCH = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
IN_APRIL = datetime(2026, 4, 10, 12, 0, tzinfo=UTC)


def event(tenant, dept, cost: str | None, **kw) -> UsageEvent:
    fields = {"occurred_at": IN_MARCH, "model": "gpt-4o", "cost": None if cost is None else Decimal(cost)}
    if cost is None:
        fields["cost_provenance"] = UsageEvent.Provenance.UNPRICED
    fields.update(kw)
    return make_usage_event(tenant=tenant, department=dept, **fields)


def lines_of(invoice: Invoice) -> list[InvoiceLine]:
    return list(invoice.lines.order_by("position"))


@pytest.fixture
def march_usage(acme, research_dept, sales_dept):
    # research: three gpt-4o calls (one just after local midnight on 1 March: still March in
    # Paris), one eval call on Claude; sales: one gpt-4o call. Plus events outside March.
    event(acme, research_dept, "0.0012345678", input_tokens=1000, cache_read_input_tokens=200, output_tokens=100)
    event(acme, research_dept, "0.0023456789", input_tokens=2000, output_tokens=50, reasoning_tokens=20)
    event(
        acme,
        research_dept,
        "1.1111111111",
        occurred_at=datetime(2026, 2, 28, 23, 30, tzinfo=UTC),  # 00:30 on 1 March in Paris
        input_tokens=3000,
        cache_creation_input_tokens=500,
        output_tokens=400,
    )
    event(acme, research_dept, "0.505", provider="anthropic", model="claude-sonnet-4", feature="eval")
    event(acme, research_dept, None, model="mystery-model")
    event(acme, sales_dept, "2.004999")
    # 00:30 on 1 April in Paris (CEST): April, not March.
    event(acme, research_dept, "5.00", occurred_at=datetime(2026, 3, 31, 22, 30, tzinfo=UTC))
    event(acme, research_dept, "7.00", occurred_at=datetime(2026, 2, 28, 22, 30, tzinfo=UTC))  # 23:30 Feb in Paris


def draft(acme, period=MARCH, **kw):
    return draft_invoices(tenant=acme, period=period, force=True, **kw)


def test_lines_and_totals_match_hand_computed_amounts_to_the_cent(acme, research_dept, sales_dept, march_usage):
    summary = draft(acme)
    assert sorted(i.department.code for i in summary.drafted) == ["research", "sales"]
    research = Invoice.objects.get(department=research_dept, period=MARCH)
    lines = lines_of(research)
    assert [(line.kind, line.description) for line in lines] == [
        ("usage", "openai / gpt-4o"),
        ("usage", "openai / mystery-model"),
        ("eval", "Quality assurance (eval): anthropic / claude-sonnet-4"),
    ]
    gpt = lines[0]
    assert gpt.requests == 3
    assert gpt.list_cost_unrounded == Decimal("1.1146913578")
    assert gpt.amount == Decimal("1.11")
    # Buckets are exclusive on the line: uncached input = 6000 − 200 read − 500 written.
    assert (gpt.input_tokens, gpt.cache_read_tokens, gpt.cache_write_tokens) == (5300, 200, 500)
    assert (gpt.output_tokens, gpt.reasoning_tokens) == (550, 20)
    assert lines[1].unpriced_requests == 1 and lines[1].amount == Decimal("0.00")
    assert lines[2].amount_unrounded == Decimal("0.505") and lines[2].amount == Decimal("0.51")
    assert research.usage_total == Decimal("1.11")
    assert research.eval_total == Decimal("0.51")
    assert research.total == Decimal("1.62")
    assert research.total_unrounded == Decimal("1.6196913578")
    assert research.rounding_difference == Decimal("0.0003086422")
    assert research.total == research.total_unrounded + research.rounding_difference
    assert research.unpriced_requests == 1
    assert research.period_start == datetime(2026, 2, 28, 23, 0, tzinfo=UTC)
    assert research.period_end == datetime(2026, 3, 31, 22, 0, tzinfo=UTC)
    sales = Invoice.objects.get(department=sales_dept, period=MARCH)
    assert sales.total == Decimal("2.00") and sales.rounding_difference == Decimal("-0.004999")


def test_unit_prices_come_from_the_price_book_and_a_mid_month_change_is_said(acme, research_dept):
    make_price(model_pattern="gpt-4o", input_per_mtok=Decimal("2.50"), output_per_mtok=Decimal("10"))
    make_price(
        model_pattern="gpt-4o-mini",
        effective_to=datetime(2026, 3, 15, tzinfo=UTC),
    )
    make_price(model_pattern="gpt-4o-mini", effective_from=datetime(2026, 3, 15, tzinfo=UTC), input_per_mtok=1)
    event(acme, research_dept, "0.0025", input_tokens=1000, output_tokens=0)
    event(acme, research_dept, "0.0010", model="gpt-4o-mini", input_tokens=1000, output_tokens=0)
    draft(acme)
    gpt, mini = lines_of(Invoice.objects.get(department=research_dept))
    assert (gpt.input_per_mtok, gpt.cache_read_per_mtok, gpt.output_per_mtok) == (
        Decimal("2.50"),
        Decimal("2.50"),
        Decimal("10"),
    )
    assert gpt.average_per_mtok == Decimal("2.5")
    assert mini.input_per_mtok is None
    assert mini.price_note == "2 price versions this month: average rate shown"
    assert mini.average_per_mtok == Decimal("1")


def test_compute_and_per_request_charges_are_named_beside_the_token_rates(acme, research_dept):
    """An Ollama model priced by GPU-second shows token rates of 0: the note says what it is
    priced by, so a 0 / 0 / 0 / 0 rate beside a non-zero amount never reaches finance unexplained."""
    make_price(
        provider="ollama", model_pattern="llama3.1:8b", input_per_mtok=Decimal(0), output_per_mtok=Decimal(0),
        per_gpu_second=Decimal("0.0005"),
    )  # fmt: skip
    make_price(model_pattern="gpt-4o", input_per_mtok=Decimal("2.50"), per_request_fee=Decimal("0.01"))
    event(acme, research_dept, "0.0100", provider="ollama", model="llama3.1:8b", compute_ms=20_000)
    event(acme, research_dept, "0.0125", input_tokens=1000, output_tokens=0)
    draft(acme)
    llama, gpt = lines_of(Invoice.objects.get(department=research_dept))  # ollama sorts before openai
    assert llama.price_note == "priced by 0.0005 USD per GPU-second of compute"
    assert gpt.price_note == "plus 0.01 USD per request"


def test_discount_policy_lowers_the_charged_amount_but_not_the_list_cost(acme, research_dept):
    ChargebackPolicy.objects.create(tenant=acme, discount_percent=Decimal("10"), notes="Negotiated rebate.")
    event(acme, research_dept, "1.1146913578")
    draft(acme)
    invoice = Invoice.objects.get(department=research_dept)
    (line,) = lines_of(invoice)
    assert line.list_cost == Decimal("1.11")
    assert line.amount_unrounded == Decimal("1.0032222220")  # stored to 10 places
    assert line.amount == Decimal("1.00")
    assert "list cost × 0.9" in invoice.notes and "Negotiated rebate." in invoice.notes


def test_budget_is_shown_beside_the_actual(acme, research_dept, sales_dept):
    make_budget(tenant=acme, department=research_dept, amount=Decimal("500.00"))
    make_budget(tenant=acme, department=research_dept, amount=Decimal("20.00"), period="week")
    draft(acme)
    assert Invoice.objects.get(department=research_dept).budget_amount == Decimal("500.00")
    assert Invoice.objects.get(department=sales_dept).budget_amount is None


def test_drafting_twice_rewrites_the_drafts_without_duplicates(acme, research_dept, sales_dept, march_usage):
    draft(acme)
    first = list(Invoice.objects.values_list("pk", "total"))
    event(acme, research_dept, "0.01")
    draft(acme)
    assert Invoice.objects.count() == 2
    research = Invoice.objects.get(department=research_dept)
    assert research.pk in dict(first) and research.total == Decimal("1.63")
    assert research.lines.count() == 3


def test_grace_window_refuses_an_early_draft_unless_forced(acme, research_dept):
    with pytest.raises(GraceWindowOpen) as err:
        draft_invoices(tenant=acme, period=MARCH, now=datetime(2026, 4, 3, 21, 59, tzinfo=UTC))
    assert err.value.field == "period" and "grace" in err.value.message
    assert not Invoice.objects.exists()
    # Midnight 1 April in Paris (22:00 UTC on 31 March) + 3 grace days.
    assert invoicing.draftable_at(tenant=acme, period=MARCH) == datetime(2026, 4, 3, 22, 0, tzinfo=UTC)
    draft_invoices(tenant=acme, period=MARCH, now=datetime(2026, 4, 3, 22, 0, tzinfo=UTC))
    assert Invoice.objects.filter(period=MARCH).count() == 1


def test_parse_period_names_the_field():
    assert invoicing.parse_period("2026-03") == MARCH
    for bad in ("2026-13", "2026-3", "March", ""):
        with pytest.raises(InvoicingError) as err:
            invoicing.parse_period(bad)
        assert err.value.field == "period"


# --- Shared-cost allocation -------------------------------------------------------------------


def test_largest_remainder_split_sums_exactly_to_the_pool():
    parts = split_largest_remainder(Decimal("100.00"), {"a": 1, "b": 1, "c": 1}, "USD")
    assert parts == {"a": Decimal("33.34"), "b": Decimal("33.33"), "c": Decimal("33.33")}
    rng = random.Random(7)
    for _ in range(200):
        total = Decimal(rng.randint(0, 10_000_000)) / 100
        weights = {i: Decimal(rng.randint(0, 10**9)) / 10**10 for i in range(rng.randint(1, 40))}
        parts = split_largest_remainder(total, weights, "USD")
        if any(weights.values()):
            assert sum(parts.values()) == total
        assert all(p == p.quantize(Decimal("0.01")) and p >= 0 for p in parts.values())
    assert split_largest_remainder(Decimal("10"), {"a": 1, "b": 2}, "JPY") == {"a": Decimal("3"), "b": Decimal("7")}


def test_pools_allocate_by_usage_headcount_and_fixed_percent(acme, research_dept, sales_dept):
    legal = Department.objects.create(tenant=acme, code="legal", name="Legal")
    event(acme, research_dept, "3.00")
    event(acme, sales_dept, "1.00")
    SharedCostPool.objects.create(tenant=acme, name="Platform team", amount=Decimal("1000.00"))
    make_member(tenant=acme, username="r1", role="employee", department=research_dept)
    make_member(tenant=acme, username="s1", role="employee", department=sales_dept)
    make_member(tenant=acme, username="s2", role="employee", department=sales_dept)
    SharedCostPool.objects.create(
        tenant=acme, name="GPU lease", kind="gpu", amount=Decimal("100.00"), allocation_key="headcount"
    )
    fixed = SharedCostPool.objects.create(
        tenant=acme, name="Commitment", kind="commitment", amount=Decimal("0.10"), allocation_key="fixed_percent"
    )
    for dept, pct in ((research_dept, "33.33"), (sales_dept, "33.33"), (legal, "33.34")):
        SharedCostSplit.objects.create(pool=fixed, department=dept, percent=Decimal(pct))
    SharedCostPool.objects.create(tenant=acme, name="Old", amount=Decimal("5.00"), ends_on=date(2026, 2, 1))
    draft(acme)

    def allocations(dept):
        return {
            line.pool.name: (line.amount, line.basis)
            for line in InvoiceLine.objects.filter(invoice__department=dept, kind="allocation")
        }

    research, sales, legal_lines = allocations(research_dept), allocations(sales_dept), allocations(legal)
    assert research["Platform team"] == (
        Decimal("750.00"),
        "usage share: 3.00 of 4.00 USD usage (75.00%) of 1000.00 USD",
    )
    assert sales["Platform team"][0] == Decimal("250.00")
    assert "Platform team" not in legal_lines
    assert research["GPU lease"] == (Decimal("33.33"), "headcount: 1 of 3 members (33.33%) of 100.00 USD")
    assert sales["GPU lease"][0] == Decimal("66.67")
    # 10 cents at 33.33/33.33/33.34 %: 3.333, 3.333, 3.334 → floors 3,3,3, the last cent to legal.
    assert (research["Commitment"][0], sales["Commitment"][0], legal_lines["Commitment"][0]) == (
        Decimal("0.03"),
        Decimal("0.03"),
        Decimal("0.04"),
    )
    for pool in SharedCostPool.objects.exclude(name="Old"):
        assert sum(InvoiceLine.objects.filter(pool=pool).values_list("amount", flat=True)) == pool.amount
    assert not InvoiceLine.objects.filter(pool__name="Old").exists()
    assert Invoice.objects.get(department=research_dept).allocations_total == Decimal("783.36")


def test_fixed_percent_pool_not_summing_to_100_is_refused(acme, research_dept):
    pool = SharedCostPool.objects.create(
        tenant=acme, name="Bad", amount=Decimal("1.00"), allocation_key="fixed_percent"
    )
    SharedCostSplit.objects.create(pool=pool, department=research_dept, percent=Decimal("99.99"))
    with pytest.raises(InvoicingError, match=r"99\.99"):
        draft(acme)
    assert not Invoice.objects.exists()


# --- Adjustments and reconciliation ---------------------------------------------------------------


def test_late_events_for_an_issued_month_become_one_adjustment_on_the_next_open_invoice(
    acme, research_dept, finance_user
):
    event(acme, research_dept, "10.00")
    draft(acme)
    march = Invoice.objects.get(period=MARCH)
    invoicing.issue_invoice(invoice=march, by=finance_user)
    event(acme, research_dept, "0.123456789")
    summary = draft(acme)  # March again: untouched, no duplicate
    assert summary.drafted == [] and [i.pk for i in summary.skipped_closed] == [march.pk]
    march.refresh_from_db()
    assert march.total == Decimal("10.00") and march.lines.count() == 1

    event(acme, research_dept, "2.00", occurred_at=IN_APRIL)
    draft(acme, APRIL)
    draft(acme, APRIL)
    april = Invoice.objects.get(period=APRIL)
    adjustment = april.lines.get(kind="adjustment")
    assert adjustment.adjusts_period == MARCH
    assert adjustment.list_cost_unrounded == Decimal("0.123456789") and adjustment.amount == Decimal("0.12")
    assert april.adjustments_total == Decimal("0.12") and april.total == Decimal("2.12")
    assert reconcile_period(tenant=acme, period=MARCH).ok
    assert reconcile_period(tenant=acme, period=APRIL).ok

    # Once April is issued, a further late March event lands on May's invoice, not April's.
    invoicing.issue_invoice(invoice=april, by=finance_user)
    event(acme, research_dept, "-0.02")
    draft(acme, date(2026, 5, 1))
    may = Invoice.objects.get(period=date(2026, 5, 1))
    assert [(line.adjusts_period, line.list_cost_unrounded) for line in may.lines.filter(kind="adjustment")] == [
        (MARCH, Decimal("-0.02"))
    ]
    assert reconcile_period(tenant=acme, period=MARCH).ok


def test_reconciliation_finds_a_planted_discrepancy(acme, research_dept, sales_dept, march_usage):
    draft(acme)
    result = reconcile_period(tenant=acme, period=MARCH)
    assert result.ok, result.mismatches
    totals = result.totals()["USD"]
    assert totals.raw == Decimal("3.6246903578") == totals.invoiced
    # Plant one: an event lands after the draft was made.
    event(acme, sales_dept, "0.0000001234")
    result = reconcile_period(tenant=acme, period=MARCH)
    assert [(r.department, r.difference) for r in result.mismatches] == [("sales", Decimal("0.0000001234"))]


def test_events_without_a_department_are_reported_unreconciled(acme, research_dept):
    event(acme, None, "0.50")
    draft(acme)
    result = reconcile_period(tenant=acme, period=MARCH)
    assert [(r.department, r.difference) for r in result.mismatches] == [("(no department)", Decimal("0.50"))]


def test_many_tiny_fractional_costs_reconcile_exactly(acme, research_dept, sales_dept):
    rng = random.Random(42)
    depts = [research_dept, sales_dept] + [
        Department.objects.create(tenant=acme, code=f"d{i}", name=f"D{i}") for i in range(8)
    ]
    tiny = Decimal("0.0000001234")
    events = []
    for n in range(4000):
        dept = rng.choice(depts)
        cost = tiny * rng.randint(1, 9) if n % 3 else tiny
        events.append(
            UsageEvent(
                tenant=acme,
                event_id=f"tiny-{n}",
                source="ingest",
                department=dept,
                department_code=dept.code,
                provider=rng.choice(["openai", "anthropic"]),
                model=rng.choice(["m1", "m2", "m3"]),
                feature=rng.choice(["", "", "eval"]),
                occurred_at=datetime(2026, 3, rng.randint(1, 30), rng.randint(0, 23), tzinfo=UTC),
                input_tokens=rng.randint(0, 50),
                output_tokens=rng.randint(0, 50),
                cost=cost,
                cost_provenance="computed",
            )
        )
    UsageEvent.objects.bulk_create(events)
    expected = sum((e.cost for e in events if e.occurred_at >= datetime(2026, 2, 28, 23, tzinfo=UTC)), Decimal(0))
    draft(acme)
    result = reconcile_period(tenant=acme, period=MARCH)
    assert result.ok
    assert result.totals()["USD"].raw == expected == result.totals()["USD"].invoiced
    invoices = Invoice.objects.filter(period=MARCH)
    assert sum(i.total_unrounded for i in invoices) == expected
    assert sum(i.total for i in invoices) - sum(i.rounding_difference for i in invoices) == expected
    for invoice in invoices:
        assert invoice.total == sum(line.amount for line in invoice.lines.all())
