"""The pages in a real browser: each role's menu, server-side refusals, My usage numbers equal
to the database's, budget gauges, Chart.js rendering from the vendored file, sign-in, its rate
limit, sign-out, and the layout at phone width."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from chargeback.money import format_money
from telemetry.models import UsageEvent
from tests.factories import make_budget, make_usage_event, roll_up_everything

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def menu(page) -> list[str]:
    return [t.strip() for t in page.locator("nav[aria-label=Main] a").all_inner_texts()]


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("employee", ["Chat", "My usage"]),
        ("manager", ["My department", "Invoices", "Budgets", "Anomalies", "Reports", "Chat", "My usage"]),
        ("finance", ["Overview", "Departments", "Invoices", "Budgets", "Anomalies", "Reports", "Quality", "Alerts", "Chat", "My usage"]),
        ("admin", ["Overview", "Departments", "Invoices", "Budgets", "Anomalies", "Reports", "Quality", "Alerts", "Chat", "My usage", "Back office"]),
    ],
)
def test_each_role_sees_its_menu(page, login_as, role, expected):
    user = login_as(role)
    if role == "admin":
        user.is_staff = True
        user.save()
    page.goto("/")
    assert menu(page) == expected
    assert page.locator("nav[aria-label=Main] a[aria-current=page]").count() == 1
    assert page.locator(".who-name").inner_text() == user.get_username()
    assert page.locator(".tenant-name").inner_text() == "Acme"
    assert page.js_errors == []


def test_manager_is_refused_finance_pages_by_the_server(page, login_as, acme, research_dept, sales_dept):
    company = make_budget(tenant=acme, name="Acme-wide")
    sales = make_budget(tenant=acme, department=sales_dept, name="Sales")
    login_as("manager")
    for url in (f"/budgets/{company.pk}/", f"/budgets/{sales.pk}/", "/budgets/?department=sales"):
        response = page.goto(url)
        assert response.status == 403, url
        assert page.get_by_role("heading", level=1).inner_text() == "You don't have access to this page"
    login_as("employee")
    assert page.goto("/budgets/").status == 403


def test_my_usage_shows_the_users_numbers_from_the_database(page, login_as, acme, research_dept):
    now = timezone.now()
    for n, cost in enumerate(["0.0123456789", "1.5", "2.25", "0.3333333333"]):
        make_usage_event(
            tenant=acme,
            department=research_dept,
            user_ref="emil",
            occurred_at=now - timedelta(days=n, minutes=5),
            cost=Decimal(cost),
        )
    make_usage_event(
        tenant=acme,
        department=research_dept,
        user_ref="morgan",
        occurred_at=now - timedelta(hours=1),
        cost=Decimal("50"),
    )
    roll_up_everything()
    mine = UsageEvent.objects.filter(tenant=acme, user_ref="emil")
    expected_cost = sum((e.cost for e in mine), Decimal(0))
    expected_tokens = sum(e.input_tokens + e.output_tokens for e in mine)

    login_as("employee")
    page.goto("/")
    assert page.url.endswith("/chat/")  # an employee's home is the chat
    page.click("nav[aria-label=Main] >> text=My usage")
    assert page.url.endswith("/me/usage/")
    assert page.get_by_test_id("total-cost").inner_text() == format_money(expected_cost, "USD")
    assert page.get_by_test_id("total-tokens").inner_text() == f"{expected_tokens:,}"
    assert page.get_by_test_id("total-calls").inner_text() == "4"
    page.wait_for_selector("canvas[data-rendered=true]")  # the vendored Chart.js drew it
    assert page.locator("section[aria-labelledby=calls-title] tbody tr").count() == 4
    assert page.js_errors == []


def test_budgets_page_shows_gauges(page, login_as, acme, research_dept, sales_dept):
    now = timezone.now()
    make_budget(tenant=acme, department=research_dept, name="Research", amount=Decimal("10"))
    make_budget(tenant=acme, department=sales_dept, name="Sales", amount=Decimal("100"))
    make_usage_event(
        tenant=acme, department=research_dept, occurred_at=now - timedelta(minutes=1), cost=Decimal("12.5")
    )
    roll_up_everything()
    login_as("finance")
    page.goto("/budgets/")
    meters = page.get_by_role("meter")
    assert meters.count() == 2
    research = page.locator("tr", has_text="Research")
    assert research.get_by_role("meter").get_attribute("aria-valuenow") == "125.0"
    assert "over the limit" in research.inner_text()
    assert page.locator("tr", has_text="Sales").get_by_role("meter").get_attribute("aria-valuenow") == "0.0"
    research.get_by_role("link", name="Research").click()
    page.wait_for_selector("canvas[data-rendered=true]")
    assert page.get_by_test_id("budget-spent").inner_text() == "12.50 USD"
    assert page.js_errors == []


def test_sign_in_and_sign_out_through_the_forms(page, employee_user):
    page.goto("/me/usage/")
    assert "/login/" in page.url
    page.get_by_label("Username").fill("emil")
    page.get_by_label("Password").fill("pw-emil")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/me/usage/")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login/")
    page.goto("/me/usage/")
    assert "/login/?next=/me/usage/" in page.url


def test_sign_in_rate_limit_message(page, employee_user):
    page.goto("/login/")
    for _ in range(10):
        page.get_by_label("Username").fill("emil")
        page.get_by_label("Password").fill("wrong")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
    assert page.get_by_role("alert").inner_text().startswith("Please enter a correct username and password")
    page.get_by_label("Username").fill("emil")
    page.get_by_label("Password").fill("pw-emil")
    with page.expect_response("**/login/") as response:
        page.get_by_role("button", name="Sign in").click()
    assert response.value.status == 429
    assert "Too many failed sign-in attempts" in page.get_by_role("alert").inner_text()


def test_layout_fits_a_phone_and_the_skip_link_works(page, login_as, acme, research_dept):
    make_budget(tenant=acme, department=research_dept, name="Research")
    login_as("manager")
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto("/budgets/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.get_by_role("navigation", name="Main").is_visible()
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to main content")
    assert skip.evaluate("el => el === document.activeElement")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"


def test_unknown_page_is_the_styled_404(page, login_as):
    login_as("employee")
    response = page.goto("/nowhere/")
    assert response.status == 404
    assert page.get_by_role("heading", level=1).inner_text() == "This page does not exist"
    assert page.get_by_role("navigation", name="Main").is_visible()
