"""Stakeholder reports: numbers equal the rollups exactly, the written summary follows the
numbers, sending is once per period (locmem e-mail), and the reports page is role-scoped."""

from __future__ import annotations

import smtplib
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.core.management import call_command
from django.test import Client

from chargeback.models import Role
from telemetry import reports, rollups
from telemetry.models import Anomaly, DailyRollup, DimensionRollup, ReportDelivery
from tests.factories import make_budget, make_channel, make_member, make_usage_event

WEEK = reports.Period.starting(kind="week", start=date(2026, 11, 16))  # Mon 16 → Sun 22 Nov
BEFORE = WEEK.previous()  # 9 → 15 Nov
AS_OF = date(2026, 11, 23)  # the Monday after: WEEK is the last complete week


def at(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def roll() -> None:
    rollups.roll_up_pending()
    rollups.roll_up_dimensions_pending()


@pytest.fixture
def rising(acme, research_dept, sales_dept, other_tenant, other_dept):
    """Previous week 150.00 USD; this week 450.0000000003 USD, the rise driven by Research on
    claude-sonnet (+310)."""
    ev = make_usage_event
    ev(
        tenant=acme,
        department=research_dept,
        occurred_at=at(BEFORE.start),
        model="gpt-4o",
        cost=Decimal("100"),
        user_ref="ann",
        feature="search",
    )
    ev(
        tenant=acme,
        department=sales_dept,
        occurred_at=at(BEFORE.start + timedelta(days=2)),
        model="claude-sonnet",
        provider="anthropic",
        cost=Decimal("50"),
        user_ref="cy",
        feature="chat",
    )
    ev(
        tenant=acme,
        department=research_dept,
        occurred_at=at(WEEK.start),
        model="gpt-4o",
        cost=Decimal("100.0000000001"),
        user_ref="ann",
        feature="search",
    )
    ev(
        tenant=acme,
        department=research_dept,
        occurred_at=at(WEEK.start + timedelta(days=3)),
        model="claude-sonnet",
        provider="anthropic",
        cost=Decimal("310.0000000001"),
        user_ref="bob",
        feature="chat",
    )
    ev(
        tenant=acme,
        department=sales_dept,
        occurred_at=at(WEEK.start + timedelta(days=6), 20),
        model="claude-sonnet",
        provider="anthropic",
        cost=Decimal("40.0000000001"),
        user_ref="cy",
        feature="chat",
    )
    ev(
        tenant=acme,
        department=sales_dept,
        occurred_at=at(WEEK.start + timedelta(days=1)),
        model="claude-sonnet",
        provider="anthropic",
        cost=None,
        cost_provenance="unpriced",
        user_ref="",
        feature="chat",
    )
    # Outside the week in Paris time (Mon 23 Nov 00:30 local) and another tenant: never counted.
    ev(
        tenant=acme,
        department=sales_dept,
        occurred_at=datetime(2026, 11, 22, 23, 30, tzinfo=UTC),
        model="gpt-4o",
        cost=Decimal("999"),
    )
    ev(tenant=other_tenant, department=other_dept, occurred_at=at(WEEK.start), cost=Decimal("5000"), user_ref="zed")
    roll()


def test_report_numbers_equal_the_rollups_exactly(rising, acme):
    report = reports.build_report(tenant=acme, department=None, period=WEEK)
    daily = DailyRollup.objects.filter(tenant=acme, day__gte=WEEK.start, day__lt=WEEK.end)
    expected = sum((r.cost for r in daily), Decimal(0))
    assert report.spend == expected == Decimal("450.0000000003")
    assert report.previous_spend == Decimal("150")
    assert report.requests == sum(r.requests for r in daily) == 4
    assert report.unpriced == 1
    users = DimensionRollup.objects.filter(tenant=acme, dimension="user", day__gte=WEEK.start, day__lt=WEEK.end)
    assert report.active_users == len({u.value for u in users if u.value}) == 3  # ann, bob, cy
    assert report.cost_per_active_user == Decimal("450.0000000003") / 3
    assert report.change_percent == Decimal("200.0")
    assert [(m.label, m.cost, m.change) for m in report.top_models] == [
        ("claude-sonnet", Decimal("350.0000000002"), Decimal("300.0000000002")),
        ("gpt-4o", Decimal("100.0000000001"), Decimal("0.0000000001")),
    ]
    assert [(d.label, d.cost) for d in report.top_departments] == [
        ("Research", Decimal("410.0000000002")),
        ("Sales", Decimal("40.0000000001")),
    ]
    assert [(u.label, u.cost) for u in report.top_users] == [
        ("bob", Decimal("310.0000000001")),
        ("ann", Decimal("100.0000000001")),
        ("cy", Decimal("40.0000000001")),
    ]
    assert [(f.label, f.cost) for f in report.top_features] == [
        ("chat", Decimal("350.0000000002")),
        ("search", Decimal("100.0000000001")),
    ]
    assert report.quality is None


def test_department_report_only_counts_its_department(rising, acme, research_dept):
    report = reports.build_report(tenant=acme, department=research_dept, period=WEEK)
    assert report.spend == Decimal("410.0000000002")
    assert report.previous_spend == Decimal("100")
    assert report.top_departments == []
    assert report.summary[0] == (
        "Spend rose 310% to 410.00 USD (from 100.00 USD), driven by claude-sonnet (+310.00 USD)."
    )


def test_summary_for_rising_spend_names_the_driver(rising, acme):
    report = reports.build_report(tenant=acme, department=None, period=WEEK)
    assert report.summary[0] == (
        "Spend rose 200% to 450.00 USD (from 150.00 USD), driven by Research (+310.00 USD on claude-sonnet)."
    )
    assert report.summary[1] == (
        "3 people made 4 LLM calls (2 the week before); cost per active user was 150.00 USD (was 75.00 USD)."
    )
    assert "Satisfaction and answer quality are not measured yet." in report.summary
    assert "1 call had no price and is not included in spend." in report.summary
    assert "No unusual activity was detected this week." in report.summary


def test_summary_for_falling_spend_names_the_biggest_drop(acme, research_dept, sales_dept):
    ev = make_usage_event
    ev(
        tenant=acme,
        department=research_dept,
        occurred_at=at(BEFORE.start),
        model="gpt-4o",
        cost=Decimal("800"),
        user_ref="ann",
    )
    ev(
        tenant=acme,
        department=sales_dept,
        occurred_at=at(BEFORE.start),
        model="claude-sonnet",
        cost=Decimal("200"),
        user_ref="cy",
    )
    ev(
        tenant=acme,
        department=research_dept,
        occurred_at=at(WEEK.start),
        model="gpt-4o",
        cost=Decimal("500"),
        user_ref="ann",
    )
    ev(
        tenant=acme,
        department=sales_dept,
        occurred_at=at(WEEK.start),
        model="claude-sonnet",
        cost=Decimal("270"),
        user_ref="cy",
    )
    roll()
    report = reports.build_report(tenant=acme, department=None, period=WEEK)
    assert report.summary[0] == (
        "Spend fell 23% to 770.00 USD (from 1,000.00 USD), mostly Research (−300.00 USD on gpt-4o)."
    )


def test_summary_for_flat_and_empty_periods(acme, research_dept):
    assert reports.build_report(tenant=acme, department=None, period=WEEK).summary[0] == (
        "No LLM spend this week or the week before."
    )
    make_usage_event(tenant=acme, department=research_dept, occurred_at=at(BEFORE.start), cost=Decimal("100"))
    make_usage_event(tenant=acme, department=research_dept, occurred_at=at(WEEK.start), cost=Decimal("100.2"))
    roll()
    assert reports.build_report(tenant=acme, department=None, period=WEEK).summary[0] == (
        "Spend was flat at 100.20 USD (+0.20 USD on the previous week)."
    )


def test_budget_projection_uses_the_month_so_far(rising, acme):
    make_budget(tenant=acme, name="Acme AI", amount=Decimal("500"))
    report = reports.build_report(tenant=acme, department=None, period=WEEK)
    [outlook] = report.budgets
    # 1 → 22 Nov (22 of 30 days): both weeks' spend, projected at that rate to the month's end.
    assert outlook.spent_to_date == Decimal("600.0000000003")
    assert outlook.projected == Decimal("600.0000000003") * Decimal(30 * 86400) / Decimal(22 * 86400)
    assert (
        "Acme AI is on course to end the month at 818.18 USD, 164% of its 500.00 USD limit (318.18 USD over)."
        in report.summary
    )


def test_monthly_report_closes_the_month(rising, acme):
    make_budget(tenant=acme, name="Acme AI", amount=Decimal("1000"))
    month = reports.Period.last_complete(kind="month", as_of=date(2026, 12, 3))
    assert (month.start, month.end) == (date(2026, 11, 1), date(2026, 12, 1))
    report = reports.build_report(tenant=acme, department=None, period=month)
    assert report.spend == Decimal("1599.0000000003")  # with the 999 of Monday 23 Nov (local)
    assert (
        "Acme AI closed November at 1,599.00 USD, 160% of its 1,000.00 USD limit (599.00 USD over)." in report.summary
    )


def test_anomalies_of_the_period_are_listed(rising, acme, research_dept):
    Anomaly.objects.create(
        tenant=acme, department=research_dept, metric="cost", hour=at(WEEK.start + timedelta(days=3)),
        observed=Decimal("310"), expected=Decimal("10"), score=9.5, severity="high",
        explanation="Cost was 31× the usual for this hour, driven by claude-sonnet.",
    )  # fmt: skip
    Anomaly.objects.create(
        tenant=acme, department=research_dept, metric="cost", hour=at(BEFORE.start),
        observed=Decimal("1"), expected=Decimal("1"), score=5, severity="low", explanation="Earlier.",
    )  # fmt: skip
    report = reports.build_report(tenant=acme, department=None, period=WEEK)
    assert report.anomaly_count == 1
    local = at(WEEK.start + timedelta(days=3)).astimezone(acme.tz)
    assert report.summary[-3] == (
        "1 unusual pattern was detected, 1 of them high severity; the largest: cost in Research on "
        f"Thu 19 Nov at {local:%H}:00 was 310.00 USD, against a usual 10.00 USD."
    )
    assert report.anomalies[0].explanation.startswith("Cost was 31×")  # the full text stays in the PDF table


def test_quality_and_satisfaction_are_summarised_when_measured(rising, acme, research_dept):
    from telemetry.models import EvalConfig, EvalScore, Feedback
    from tests.factories import make_route

    config = EvalConfig.objects.create(
        tenant=acme, name="helpful", judge_route=make_route(tenant=acme, alias="j"), criteria="c"
    )
    for i, passed in enumerate([True, True, True, False]):
        EvalScore.objects.create(
            tenant=acme, config=config, event_id=f"q{i}", event_at=at(WEEK.start), department=research_dept,
            department_code="research", kind="rubric", status="ok", passed=passed, normalized=1.0 if passed else 0.0,
        )  # fmt: skip
    for i, thumbs in enumerate(["up", "down"]):
        Feedback.objects.create(
            tenant=acme, event_id=f"f{i}", author=f"user:{i}", event_at=at(WEEK.start), department=research_dept,
            department_code="research", thumbs=thumbs,
        )  # fmt: skip
    report = reports.build_report(tenant=acme, department=None, period=WEEK)
    assert (
        "75% of the 4 answers checked by the quality judge passed; users were satisfied with 50% of answers (2 ratings)."
        in report.summary
    )
    assert "Satisfaction and answer quality are not measured yet." not in report.summary


def test_periods_are_local_weeks_and_months():
    assert reports.Period.last_complete(kind="week", as_of=date(2026, 11, 23)) == WEEK
    assert reports.Period.last_complete(kind="week", as_of=date(2026, 11, 29)) == WEEK
    assert reports.Period.last_complete(kind="month", as_of=date(2026, 1, 1)).start == date(2025, 12, 1)
    with pytest.raises(reports.ReportError) as exc:
        reports.Period.starting(kind="week", start=date(2026, 11, 17))
    assert exc.value.field == "start"


# --- Sending -------------------------------------------------------------------------------------
@pytest.fixture
def people(acme, research_dept):
    make_member(tenant=acme, username="fin", role=Role.FINANCE).__class__.objects.filter(username="fin").update(
        email="fin@acme.example"
    )
    make_member(tenant=acme, username="boss", role=Role.ADMIN).__class__.objects.filter(username="boss").update(
        email="Boss@Acme.example"
    )
    manager = make_member(tenant=acme, username="mgr", role=Role.MANAGER, department=research_dept)
    manager.__class__.objects.filter(pk=manager.pk).update(email="mgr@acme.example")
    make_member(tenant=acme, username="emp", role=Role.EMPLOYEE, department=research_dept)
    make_channel(tenant=acme, target="ai-reports@acme.example, fin@acme.example")
    make_channel(tenant=acme, name="hook", kind="webhook", target="https://hooks.example/x")


def test_reports_are_sent_once_with_a_pdf(rising, people, acme, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    results = reports.send_reports(kind="week", as_of=AS_OF, tenant_slug="acme")
    assert [(r.scope, r.outcome) for r in results] == [("tenant", "sent"), ("research", "sent"), ("sales", "sent")]
    assert len(mail.outbox) == 3
    tenant_mail = mail.outbox[0]
    assert tenant_mail.subject == "Weekly AI spend report · Acme · week of 16 Nov to 22 Nov 2026"
    assert tenant_mail.to == ["ai-reports@acme.example", "boss@acme.example", "fin@acme.example"]
    assert "Spend rose 200% to 450.00 USD" in tenant_mail.body
    html, mimetype = tenant_mail.alternatives[0]
    assert mimetype == "text/html" and "Research (+310.00 USD on claude-sonnet)" in html
    [(filename, pdf, content_type)] = tenant_mail.attachments
    assert (filename, content_type) == ("llmobs-acme-all-week-2026-11-16.pdf", "application/pdf")
    assert pdf.startswith(b"%PDF")
    assert "mgr@acme.example" in mail.outbox[1].to  # the research manager gets research's report
    assert "mgr@acme.example" not in mail.outbox[2].to

    again = reports.send_reports(kind="week", as_of=AS_OF, tenant_slug="acme")
    assert {r.outcome for r in again} == {"already_sent"}
    assert len(mail.outbox) == 3
    assert ReportDelivery.objects.filter(tenant=acme, status="sent").count() == 3


def test_pdf_text_carries_the_summary(rising, acme):
    import io

    from pypdf import PdfReader

    report = reports.build_report(tenant=acme, department=None, period=WEEK)
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(reports.render_pdf(report))).pages)
    assert "Spend rose 200% to 450.00 USD" in text
    assert "Not measured yet" in text


class FailingBackend(BaseEmailBackend):
    def send_messages(self, messages):
        raise smtplib.SMTPServerDisconnected("connection lost")


def test_a_failed_send_is_retried_on_the_next_run(rising, people, acme, settings):
    settings.EMAIL_BACKEND = "tests.test_reports.FailingBackend"
    results = reports.send_reports(kind="week", as_of=AS_OF, tenant_slug="acme")
    assert {r.outcome for r in results} == {"failed"}
    row = ReportDelivery.objects.get(tenant=acme, scope_key="tenant")
    assert row.status == "failed" and "connection lost" in row.last_error
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert {r.outcome for r in reports.send_reports(kind="week", as_of=AS_OF, tenant_slug="acme")} == {"sent"}
    assert len(mail.outbox) == 3
    assert ReportDelivery.objects.get(tenant=acme, scope_key="tenant").attempts == 2


def test_idle_departments_get_no_report_and_no_recipients_is_recorded(acme, research_dept, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    results = reports.send_reports(kind="week", as_of=AS_OF, tenant_slug="acme")
    assert [(r.scope, r.outcome) for r in results] == [("tenant", "no_recipients"), ("research", "skipped_idle")]
    assert mail.outbox == []
    assert reports.send_reports(kind="week", as_of=AS_OF, tenant_slug="acme")[0].outcome == "already_sent"


def test_send_reports_task_and_command(rising, people, acme, settings, tmp_path, capsys):
    from telemetry.tasks import send_reports

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    call_command(
        "send_reports",
        "--period",
        "week",
        "--date",
        "2026-11-23",
        "--tenant",
        "acme",
        "--preview",
        "--out",
        str(tmp_path),
    )
    out = capsys.readouterr().out
    assert "Spend rose 200% to 450.00 USD" in out
    assert f"PDF: {tmp_path}/llmobs-acme-all-week-2026-11-16.pdf" in out
    assert (tmp_path / "llmobs-acme-all-week-2026-11-16.pdf").read_bytes().startswith(b"%PDF")
    assert mail.outbox == [] and not ReportDelivery.objects.exists()

    assert send_reports.delay("week", "2026-11-23", "acme").get() == 3
    call_command("send_reports", "--period", "week", "--date", "2026-11-23")
    assert "acme tenant week 2026-11-16: already_sent" in capsys.readouterr().out
    assert len(mail.outbox) == 3


# --- The reports page ------------------------------------------------------------------------------
def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_finance_sees_tenant_and_every_department(rising, finance_user, research_dept, sales_dept):
    client = login(finance_user)
    page = client.get("/reports/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "/reports/week/2026-11-16/?department=research" in body or "Acme (all departments)" in body
    assert "?department=sales" in body and "Acme (all departments)" in body
    detail = client.get("/reports/week/2026-11-16/")
    assert detail.status_code == 200
    assert "Research (+310.00 USD on claude-sonnet)" in detail.content.decode()
    pdf = client.get("/reports/week/2026-11-16/pdf/", {"department": "sales"})
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF")


def test_manager_sees_only_their_department(rising, manager_user):
    client = login(manager_user)
    body = client.get("/reports/?kind=month").content.decode()
    assert "?department=research" in body
    assert "sales" not in body and "all departments" not in body
    assert client.get("/reports/week/2026-11-16/", {"department": "research"}).status_code == 200
    assert client.get("/reports/week/2026-11-16/").status_code == 403  # the tenant-wide report
    assert client.get("/reports/week/2026-11-16/", {"department": "sales"}).status_code == 403
    assert client.get("/reports/week/2026-11-16/pdf/", {"department": "sales"}).status_code == 403


def test_employees_and_other_tenants_are_refused(rising, employee_user, finance_user, other_tenant):
    assert login(employee_user).get("/reports/").status_code == 403
    assert login(employee_user).get("/reports/week/2026-11-16/pdf/").status_code == 403
    globex_finance = make_member(tenant=other_tenant, username="gf", role=Role.FINANCE)
    client = login(globex_finance)
    assert client.get("/reports/week/2026-11-16/", {"department": "sales"}).status_code == 404
    body = client.get("/reports/week/2026-11-16/").content.decode()
    assert "Globex Research" in body and "5,000.00 USD" in body
    assert "claude-sonnet" not in body and "450.00" not in body


def test_bad_or_future_periods_are_404(rising, finance_user):
    client = login(finance_user)
    assert client.get("/reports/week/2026-11-17/").status_code == 404  # not a Monday
    assert client.get("/reports/year/2026-01-01/").status_code == 404
    assert client.get("/reports/week/2999-01-06/").status_code == 404  # not over yet
    assert client.get("/reports/month/nonsense/").status_code == 404
