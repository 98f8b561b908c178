"""Hard budgets at the gateway: refusal with the exact error, soft budgets never block, seeding
from recorded spend, atomic reservations under concurrency, and the ledger-outage policy."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import openai
import pytest
from django.utils import timezone

from chargeback import enforcement
from chargeback.models import Budget, ModelPrice
from telemetry import gateway, recorder
from telemetry.models import UsageEvent
from tests.factories import make_usage_event
from tests.fakes.fixtures import *  # noqa: F403

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def client(live_server, acme, research_dept, routes):
    _key, raw = make_key(acme, department=research_dept)  # noqa: F405
    return openai.OpenAI(api_key=raw, base_url=live_server.url + "/v1", max_retries=0)


def hard_budget(acme, research_dept, amount: str, **overrides) -> Budget:
    fields = {
        "tenant": acme,
        "name": "Research hard cap",
        "scope": Budget.Scope.DEPARTMENT,
        "department": research_dept,
        "period": Budget.Period.MONTH,
        "amount": Decimal(amount),
        "mode": Budget.Mode.HARD,
    }
    fields.update(overrides)
    return Budget.objects.create(**fields)


def test_over_a_hard_budget_the_call_is_refused_with_402_naming_the_budget(client, acme, research_dept, fake):
    budget = hard_budget(acme, research_dept, "5.00")
    make_usage_event(tenant=acme, department=research_dept, occurred_at=timezone.now(), cost=Decimal("4.999"))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000)
    assert caught.value.status_code == 402
    bounds = budget.period_bounds(timezone.now())
    assert caught.value.body == {
        "message": (
            "The hard budget 'Research hard cap' is exhausted: 5.00 of 5.00 USD spent this period. "
            f"It resets at {bounds.end.isoformat()}."
        ),
        "type": "budget_exceeded",
        "code": "budget_exceeded",
        "param": None,
        "budget": {
            "id": budget.pk,
            "name": "Research hard cap",
            "spent": "5.00",
            "limit": "5.00",
            "currency": "USD",
            "resets_at": bounds.end.isoformat(),
        },
    }
    assert fake.requests == []
    recorder.flush()
    blocked = UsageEvent.objects.get(status="blocked")
    assert blocked.error_type == "budget_exceeded" and blocked.department_code == "research"
    assert blocked.cost == Decimal(0) and blocked.input_tokens == 0


def test_soft_budgets_never_block(client, acme, research_dept):
    hard_budget(acme, research_dept, "0.01", mode=Budget.Mode.SOFT)
    make_usage_event(tenant=acme, department=research_dept, occurred_at=timezone.now(), cost=Decimal("1"))
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices[0].message.content


def test_budgets_of_other_departments_and_models_do_not_apply(client, acme, research_dept, sales_dept):
    hard_budget(acme, sales_dept, "0", name="Sales cap", department=sales_dept)
    hard_budget(
        acme, research_dept, "0", name="Claude cap", scope=Budget.Scope.MODEL, department=None, model="claude-sonnet-4"
    )
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices[0].message.content
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="claude", messages=MESSAGES)
    assert caught.value.body["budget"]["name"] == "Claude cap"


def test_user_tenant_and_tag_budgets_apply(client, acme, research_dept):
    hard_budget(
        acme,
        research_dept,
        "0",
        name="Project cap",
        scope=Budget.Scope.TAG,
        department=None,
        tag_key="project",
        tag_value="apollo",
    )
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices[0].message.content
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_headers={"X-LLMObs-Tags": "project=apollo"}
        )
    assert caught.value.body["budget"]["name"] == "Project cap"
    hard_budget(acme, research_dept, "0", name="Bob cap", scope=Budget.Scope.USER, department=None, user_ref="bob")
    enforcement.forget_budgets()  # budgets are cached for a few seconds per process
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, user="bob")
    assert caught.value.body["budget"]["name"] == "Bob cap"


def test_settling_books_the_real_cost_and_releases_the_rest(acme, research_dept, routes):
    budget = hard_budget(acme, research_dept, "1.00")
    scope = enforcement.BudgetScope(tenant_id=acme.pk, department_id=research_dept.pk)
    now = timezone.now()
    reservation = enforcement.reserve(scope=scope, amount=Decimal("0.40"), at=now)
    assert enforcement.remaining(reservation) == Decimal("0.60")
    enforcement.settle(reservation, actual=Decimal("0.10"))
    enforcement.settle(reservation, actual=Decimal("0.10"))  # idempotent
    probe = enforcement.reserve(scope=scope, amount=Decimal("0.90"), at=now)
    assert enforcement.remaining(probe) == Decimal("0")
    with pytest.raises(enforcement.BudgetExceeded) as caught:
        enforcement.reserve(scope=scope, amount=Decimal("0.000001"), at=now)
    assert caught.value.budget == budget and caught.value.spent == Decimal("1.00")


def test_fifty_concurrent_calls_never_overshoot_a_budget_that_allows_ten(
    live_server, acme, research_dept, routes, fake
):
    # The fake reports exactly what the gateway reserves (prompt estimate + max_tokens), so a
    # budget of ten reservations admits at most ten calls, however they interleave.
    prompt = gateway.estimate_prompt_tokens(MESSAGES)
    fake.script.prompt_tokens, fake.script.cached_tokens = prompt, 0
    fake.script.completion_tokens, fake.script.reasoning_tokens = 100, 0
    fake.script.latency = 0.05
    ModelPrice.objects.filter(model_pattern="gpt-4o-mini").update(
        input_per_mtok=Decimal("1000"), output_per_mtok=Decimal("1000")
    )
    one_call = (prompt + 100) * Decimal("1000") / 1_000_000
    hard_budget(acme, research_dept, str(one_call * 10))
    _key, raw = make_key(acme, department=research_dept)  # noqa: F405
    barrier = threading.Barrier(50)

    def call(_: int) -> int:
        # The test server's listen backlog is small: connection resets (before the request reaches
        # the gateway) are retried by the SDK; 402s are not.
        client = openai.OpenAI(api_key=raw, base_url=live_server.url + "/v1", max_retries=5)
        barrier.wait()
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(call, range(50)))
    assert set(statuses) <= {200, 402}
    assert statuses.count(200) == 10
    recorder.flush()
    spent = sum((e.cost for e in UsageEvent.objects.filter(status="ok")), Decimal(0))
    assert spent <= one_call * 10
    assert UsageEvent.objects.filter(status="blocked").count() == 40


def test_ledger_outage_fails_open(client, acme, research_dept, settings, monkeypatch, caplog):
    hard_budget(acme, research_dept, "0")
    original = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:8449/0"  # nothing listens there
    monkeypatch.setattr(enforcement, "_redis", None)
    monkeypatch.setattr(enforcement, "_scripts", {})
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices[0].message.content
    assert "failing open" in caplog.text
    settings.REDIS_URL = original
    monkeypatch.setattr(enforcement, "_redis", None)
    monkeypatch.setattr(enforcement, "_scripts", {})


def test_spend_is_seeded_from_recorded_events_in_the_period_only(acme, research_dept):
    budget = hard_budget(acme, research_dept, "100")
    bounds = budget.period_bounds(timezone.now())
    make_usage_event(tenant=acme, department=research_dept, occurred_at=bounds.start, cost=Decimal("1.25"))
    make_usage_event(
        tenant=acme, department=research_dept, occurred_at=datetime(2020, 1, 1, tzinfo=UTC), cost=Decimal("50")
    )
    make_usage_event(tenant=acme, department=None, occurred_at=bounds.start, cost=Decimal("7"))
    assert enforcement.period_spend(budget, bounds) == Decimal("1.25")


# --- the rate limit shares the reservation's Redis call -----------------------------------------


def keyed_client(live_server, acme, research_dept, **limits) -> openai.OpenAI:
    _key, raw = make_key(acme, department=research_dept, **limits)  # noqa: F405
    return openai.OpenAI(api_key=raw, base_url=live_server.url + "/v1", max_retries=0)


def test_with_a_hard_budget_in_scope_the_rate_limit_still_refuses_and_holds_nothing(
    live_server, acme, research_dept, routes, fake
):
    """With budgets on Redis the rpm check runs in the reservation's Lua call: the refused call
    reaches no upstream and leaves no hold on the budget."""
    budget = hard_budget(acme, research_dept, "100.00")
    client = keyed_client(live_server, acme, research_dept, rpm_limit=2)
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.body["message"] == "Rate limit exceeded: this API key allows 2 requests per minute."
    assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 60
    assert len(fake.requests) == 2
    # Nothing is still held: a reservation of the whole budget is admitted.
    scope = enforcement.BudgetScope(tenant_id=acme.pk, department_id=research_dept.pk, user_ref="", models=(), tags={})
    held = enforcement.reserve(scope=scope, amount=Decimal("99.99"), at=timezone.now())
    assert held.budgets == [budget]
    enforcement.settle(held, actual=Decimal(0))


def test_a_call_refused_by_its_budget_still_counts_against_the_rate_limit(
    live_server, acme, research_dept, routes, fake
):
    hard_budget(acme, research_dept, "0.000001")
    client = keyed_client(live_server, acme, research_dept, rpm_limit=2)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert caught.value.status_code == 402
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert fake.requests == []
