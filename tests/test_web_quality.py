"""The Quality page: finance/admin only, numbers equal to telemetry.evals, department filter,
SLO state per config, failed verdicts with the judge's reasoning, empty and invalid states,
and nothing of another tenant."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.urls import reverse

from telemetry.models import DatasetRun, EvalAlert, EvalConfig, EvalScore, Feedback
from tests.factories import make_route

pytestmark = pytest.mark.django_db

AT = datetime(2026, 3, 10, 12, tzinfo=UTC)
RANGE = {"start": "2026-03-01", "end": "2026-03-31"}


def _score(config, i, dept, model, passed, score, status=EvalScore.Status.OK, reasoning="ok"):
    return EvalScore.objects.create(
        tenant=config.tenant, config=config, event_id=f"{config.name}-{i}", event_at=AT, department=dept,
        department_code=dept.code, model=model, feature="chat", kind="rubric", status=status, passed=passed,
        score=None if score is None else Decimal(score), normalized=None if score is None else (score - 1) / 4,
        reasoning=reasoning,
    )  # fmt: skip


@pytest.fixture
def quality(acme, research_dept, sales_dept, other_tenant, other_dept):
    judge = make_route(tenant=acme, alias="judge")
    config = EvalConfig.objects.create(
        tenant=acme, name="Helpfulness", judge_route=judge, criteria="c", slo_min_pass_rate=Decimal("0.9")
    )
    _score(config, 0, research_dept, "gpt-4o", True, 5)
    _score(config, 1, research_dept, "gpt-4o", False, 2, reasoning="Answers a different question entirely.")
    _score(config, 2, sales_dept, "claude", True, 4)
    _score(config, 3, sales_dept, "claude", None, None, status=EvalScore.Status.PARSE_ERROR)
    for i, thumbs in enumerate(["up", "up", "down", "up"]):
        Feedback.objects.create(
            tenant=acme, event_id=f"f{i}", author=f"user:{i}", event_at=AT, department=research_dept,
            department_code="research", model="gpt-4o", feature="chat", thumbs=thumbs,
        )  # fmt: skip
    EvalAlert.objects.create(
        tenant=acme, config=config, day=date(2026, 3, 10), reason=EvalAlert.Reason.SLO,
        pass_rate=Decimal("0.6667"), threshold=Decimal("0.9"), samples=3,
    )  # fmt: skip
    # Another tenant's evaluation, with names that must never show on Acme's page.
    other_judge = make_route(tenant=other_tenant, alias="globex-judge")
    other = EvalConfig.objects.create(
        tenant=other_tenant, name="Globex secret rubric", judge_route=other_judge, criteria="c"
    )
    _score(other, 0, other_dept, "globex-private-model", False, 1, reasoning="Globex confidential reasoning")
    return config


def test_finance_sees_pass_rate_satisfaction_and_breakdowns(client, finance_user, quality):
    client.force_login(finance_user)
    response = client.get(reverse("web:quality"), RANGE)
    assert response.status_code == 200
    html = response.content.decode()
    total = response.context["summary"]["total"]
    assert (total["judged"], total["pass_rate"], total["parse_errors"]) == (3, 0.6667, 1)
    assert 'data-testid="quality-pass-rate">66.7%<' in html
    assert 'data-testid="quality-satisfaction">75.0%<' in html
    assert 'data-testid="quality-unscored">1<' in html
    assert "Answers a different question entirely." in html  # the failed verdict's reasoning
    by_dept = {row["department"]: row for row in response.context["summary"]["by_department"]}
    assert by_dept["research"]["pass_rate"] == 0.5 and by_dept["sales"]["pass_rate"] == 1.0
    assert "Globex" not in html and "globex" not in html


def test_department_filter_scopes_every_number(client, finance_user, quality, sales_dept):
    client.force_login(finance_user)
    response = client.get(reverse("web:quality"), {**RANGE, "department": sales_dept.code})
    assert response.status_code == 200
    total = response.context["summary"]["total"]
    assert (total["judged"], total["pass_rate"], total["feedback"]) == (1, 1.0, 0)
    assert response.context["failures"] == []


def test_config_below_its_slo_is_flagged(client, admin_user_acme, quality):
    # The rolling window is by when the verdict was stored (now), so all three OK verdicts count.
    client.force_login(admin_user_acme)
    response = client.get(reverse("web:quality"), RANGE)
    (row,) = response.context["configs"]
    assert row["config"].name == "Helpfulness" and row["samples"] == 3
    assert row["rolling"] == Decimal("0.6667")
    assert row["state"] == "ok"  # 3 samples < min_samples (10): too few to call it a breach
    quality.min_samples = 3
    quality.save()
    response = client.get(reverse("web:quality"), RANGE)
    assert response.context["configs"][0]["state"] == "below"
    assert "Below SLO" in response.content.decode()
    assert "Below the SLO" in response.content.decode()  # the alert list


def test_dataset_runs_are_listed(client, finance_user, quality, acme):
    from telemetry.models import Dataset

    dataset = Dataset.objects.create(tenant=acme, name="Support golden set")
    DatasetRun.objects.create(
        tenant=acme, dataset=dataset, route_alias="gpt-4o-mini", threshold=Decimal("0.75"), items_total=20,
        items_passed=17, pass_rate=Decimal("0.85"), started_at=AT, finished_at=AT,
    )  # fmt: skip
    client.force_login(finance_user)
    html = client.get(reverse("web:quality"), RANGE).content.decode()
    assert "Support golden set" in html and "85.0%" in html and "(17/20)" in html


def test_empty_state_shows_no_numbers(client, finance_user, acme):
    client.force_login(finance_user)
    response = client.get(reverse("web:quality"), RANGE)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-testid="quality-empty"' in html
    assert 'data-testid="quality-pass-rate"' not in html


def test_bad_dates_are_a_400_naming_the_field(client, finance_user, quality):
    client.force_login(finance_user)
    response = client.get(reverse("web:quality"), {"start": "March"})
    assert response.status_code == 400
    assert "From: &#x27;March&#x27; is not a date" in response.content.decode()


@pytest.mark.parametrize("who", ["employee_user", "manager_user"])
def test_employees_and_managers_are_refused(client, request, who, quality):
    client.force_login(request.getfixturevalue(who))
    assert client.get(reverse("web:quality")).status_code == 403


def test_anonymous_goes_to_login(client):
    response = client.get(reverse("web:quality"))
    assert response.status_code == 302 and "/login/" in response["Location"]
