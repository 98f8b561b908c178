"""The chat page in a real browser: an answer streamed from the demo provider with its tokens
and cost, the conversation kept in the session list, thumbs and regenerate recorded as feedback,
and a hard budget's refusal shown."""

from __future__ import annotations

from decimal import Decimal

import pytest

from chargeback.models import Budget, ModelPrice, Route
from telemetry import recorder
from telemetry.models import UsageEvent
from tests.fakes.fixtures import gateway_state  # noqa: F401 - fresh ledger, route and key caches

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def demo_route(acme):
    return Route.objects.create(tenant=acme, alias="demo", provider=Route.Provider.DEMO, upstream_model="demo-echo")


def test_an_employee_chats_with_a_streamed_answer(page, login_as, demo_route):
    login_as("employee")
    page.goto("/chat/")
    page.fill("#chat-input", "What is our travel policy?")
    page.click("#chat-send")
    meta = page.locator(".msg-assistant .msg-meta").last
    meta.filter(has_text="tokens").wait_for()
    answer = page.locator(".msg-assistant .msg-text").last.inner_text()
    assert answer.strip()
    recorder.flush()
    event = UsageEvent.objects.get(source=UsageEvent.Source.CHAT)
    assert event.user_ref == "emil" and event.department_code == "research"
    assert f"{event.input_tokens} in / {event.output_tokens} out tokens" in meta.inner_text()
    assert page.locator("#chat-history li").count() == 1
    assert page.js_errors == []


def test_a_hard_budget_refusal_is_shown_plainly(page, login_as, acme, research_dept, demo_route):
    # A price makes the call's reservation non-zero, so a zero budget cannot admit it.
    ModelPrice.objects.create(
        tenant=acme,
        provider="demo",
        model_pattern="demo-echo",
        input_per_mtok=Decimal("1"),
        output_per_mtok=Decimal("2"),
    )
    Budget.objects.create(
        tenant=acme, name="Research hard cap", scope=Budget.Scope.DEPARTMENT, department=research_dept,
        amount=Decimal("0"), mode=Budget.Mode.HARD,
    )  # fmt: skip
    login_as("employee")
    page.goto("/chat/")
    page.fill("#chat-input", "Hello?")
    page.click("#chat-send")
    error = page.locator("#chat-error")
    error.wait_for(state="visible")
    assert "Research hard cap" in error.inner_text()


def test_thumbs_and_regenerate_are_recorded_as_feedback(page, login_as, demo_route):
    from telemetry.models import Feedback

    login_as("employee")
    page.goto("/chat/")
    page.fill("#chat-input", "Which laptop may I expense?")
    page.click("#chat-send")
    page.locator(".msg-assistant .msg-meta").last.filter(has_text="tokens").wait_for()
    recorder.flush()  # the page's feedback names an event that must exist
    helpful = page.get_by_role("button", name="Helpful", exact=True)
    helpful.click()
    page.wait_for_selector('.msg-actions button[aria-label="Helpful"][aria-pressed="true"]')
    first = UsageEvent.objects.get(source=UsageEvent.Source.CHAT)
    assert Feedback.objects.get(event_id=first.event_id).thumbs == "up"
    page.get_by_role("button", name="↻ Regenerate").click()
    page.locator(".msg-assistant .msg-meta").last.filter(has_text="tokens").wait_for()
    # The "regenerated" signal is posted alongside the new request: wait for it to land.
    for _ in range(50):
        if Feedback.objects.filter(event_id=first.event_id, regenerated=True).exists():
            break
        page.wait_for_timeout(100)
    feedback = Feedback.objects.get(event_id=first.event_id)
    assert feedback.regenerated is True and feedback.thumbs == "up"  # one row per user and event, updated
    assert page.js_errors == []
