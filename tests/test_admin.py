"""The back office through the admin client: every page renders, keys are shown once, edits to
money-relevant rows are audited with their diff, and the usage list never counts the table."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from chargeback.models import ApiKey, AuditLog, Budget, Department, Membership, ModelPrice, Role
from telemetry.admin import CappedCountPaginator
from telemetry.models import UsageEvent
from tests.factories import make_budget, make_channel, make_member, make_price, make_route, make_usage_event

pytestmark = pytest.mark.django_db

TOKEN = re.compile(r"llmo_[0-9a-f]{8}_[A-Za-z0-9]+")


def url(model: type, view: str, *args: object) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def everything(acme, research_dept, employee_user, gpt4o_price):
    """One row of every model the admin shows."""
    key = ApiKey.objects.create(tenant=acme, name="bot", prefix="abcd1234", key_hash="0" * 64)
    budget = make_budget(tenant=acme, department=research_dept)
    return {
        "tenant": acme,
        "department": research_dept,
        "membership": Membership.objects.get(user=employee_user),
        "apikey": key,
        "modelprice": gpt4o_price,
        "route": make_route(tenant=acme),
        "budget": budget,
        "notificationchannel": make_channel(tenant=acme),
        "auditlog": AuditLog.objects.create(
            tenant=acme, actor_label="seed", action="create", object_type="chargeback.Budget", object_id=str(budget.pk)
        ),
        "usageevent": make_usage_event(tenant=acme, department=research_dept, price=gpt4o_price),
    }


# --- Every page renders ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "tenant",
        "department",
        "membership",
        "apikey",
        "modelprice",
        "route",
        "budget",
        "notificationchannel",
        "auditlog",
        "usageevent",
    ],
)
def test_changelist_and_change_page_render_for_a_superuser(admin_client, everything, name):
    obj = everything[name]
    changelist = admin_client.get(url(type(obj), "changelist"))
    assert changelist.status_code == 200
    assert changelist.context["cl"].result_count == 1
    assert admin_client.get(url(type(obj), "change", obj.pk)).status_code == 200


@pytest.mark.parametrize(
    "name", ["tenant", "department", "membership", "apikey", "modelprice", "route", "budget", "notificationchannel"]
)
def test_add_page_renders_for_a_superuser(admin_client, everything, name):
    assert admin_client.get(url(type(everything[name]), "add")).status_code == 200


def test_filters_and_search_render_on_every_changelist(admin_client, everything, acme):
    queries = {
        "tenant": "?q=acme&capture_mode__exact=off",
        "department": f"?q=research&tenant__id__exact={acme.pk}&active__exact=1",
        "membership": f"?tenant__id__exact={acme.pk}&role__exact=employee",
        "apikey": "?status=active&q=abcd1234",
        "modelprice": "?scope=catalogue&provider=openai&q=gpt-4o&currency=USD",
        "route": f"?provider__exact=openai&tenant__id__exact={acme.pk}&enabled__exact=1&q=gpt-4o",
        "budget": f"?scope__exact=department&period__exact=month&mode__exact=soft&tenant__id__exact={acme.pk}",
        "notificationchannel": "?kind__exact=email&q=finance",
        "auditlog": "?action=create&object_type=chargeback.Budget&created_at__year="
        + str(everything["auditlog"].created_at.year),
        "usageevent": f"?status__exact=ok&cost_provenance__exact=computed&provider=openai&source__exact=ingest&tenant__id__exact={acme.pk}",
    }
    for name, query in queries.items():
        response = admin_client.get(url(type(everything[name]), "changelist") + query)
        assert response.status_code == 200, name
        assert response.context["cl"].result_count == 1, name


# --- API keys ---------------------------------------------------------------------------------------


def test_adding_a_key_shows_the_token_once_and_stores_only_its_hash(admin_client, acme, research_dept, employee_user):
    response = admin_client.post(
        url(ApiKey, "add"),
        {
            "tenant": acme.pk,
            "name": "support-bot",
            "department": research_dept.pk,
            "user": employee_user.pk,
            "rpm_limit": "60",
            "tpm_limit": "",
        },
        follow=True,
    )
    assert response.status_code == 200
    texts = [str(m) for m in response.context["messages"]]
    tokens = [t for text in texts for t in TOKEN.findall(text)]
    assert len(tokens) == 1
    raw = tokens[0]
    assert texts[0] == f"API key “support-bot” created. Copy this token now, it will not be shown again: {raw}"

    key = ApiKey.objects.get()
    assert ApiKey.objects.for_token(raw) == key
    assert key.key_hash == ApiKey.hash_token(raw)
    assert (key.tenant, key.department, key.user, key.rpm_limit, key.tpm_limit) == (
        acme,
        research_dept,
        employee_user,
        60,
        None,
    )
    assert AuditLog.objects.get().action == "create"

    for page in (url(ApiKey, "change", key.pk), url(ApiKey, "changelist")):
        content = admin_client.get(page).content.decode()
        assert raw not in content
        assert key.key_hash not in content
        assert key.prefix in content


def test_a_key_bound_to_another_tenants_department_is_refused_on_the_form(admin_client, acme, other_dept):
    response = admin_client.post(url(ApiKey, "add"), {"tenant": acme.pk, "name": "bot", "department": other_dept.pk})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "department": ["The department 'research' belongs to another tenant."]
    }
    assert ApiKey.objects.count() == 0
    assert AuditLog.objects.count() == 0


def test_revoke_action_revokes_the_key_and_the_token_stops_working(admin_client, admin_user, acme):
    from chargeback import keys

    key, raw = keys.create_api_key(tenant=acme, name="bot")
    response = admin_client.post(
        url(ApiKey, "changelist"), {"action": "revoke_selected", "_selected_action": [key.pk]}, follow=True
    )
    assert [str(m) for m in response.context["messages"]] == ["1 key(s) revoked."]
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert ApiKey.objects.for_token(raw) is None
    entry = AuditLog.objects.get(action="revoke")
    assert (entry.actor, entry.object_id) == (admin_user, str(key.pk))

    again = admin_client.post(
        url(ApiKey, "changelist"), {"action": "revoke_selected", "_selected_action": [key.pk]}, follow=True
    )
    assert [str(m) for m in again.context["messages"]] == ["0 key(s) revoked. 1 already revoked."]
    assert AuditLog.objects.filter(action="revoke").count() == 1


def test_keys_cannot_be_deleted_only_revoked(admin_client, acme):
    key = ApiKey.objects.create(tenant=acme, name="bot", prefix="abcd1234", key_hash="0" * 64)
    assert admin_client.get(url(ApiKey, "delete", key.pk)).status_code == 403


# --- Prices ------------------------------------------------------------------------------------------


def price_form(**overrides: str) -> dict[str, str]:
    data = {
        "tenant": "",
        "provider": "openai",
        "model_pattern": "gpt-4o",
        "match_type": "exact",
        "priority": "0",
        "source": "catalogue",
        "notes": "",
        "effective_from_0": "2024-01-01",
        "effective_from_1": "00:00:00",
        "effective_to_0": "",
        "effective_to_1": "",
        "currency": "USD",
        "input_per_mtok": "2.50",
        "output_per_mtok": "10",
        "reasoning_per_mtok": "",
        "per_request_fee": "0",
        "cache_read_per_mtok": "1.25",
        "cache_write_per_mtok": "",
        "cache_write_1h_per_mtok": "",
        "long_context_threshold_tokens": "",
        "long_context_input_per_mtok": "",
        "long_context_output_per_mtok": "",
        "long_context_cache_read_per_mtok": "",
        "long_context_cache_write_per_mtok": "",
        "per_gpu_second": "",
    }
    data.update(overrides)
    return data


def test_price_change_form_shows_prices_without_trailing_zeros(admin_client, gpt4o_price):
    content = admin_client.get(url(ModelPrice, "change", gpt4o_price.pk)).content.decode()
    assert 'name="input_per_mtok" value="2.5"' in content
    assert "2.5000000000" not in content


def test_editing_a_price_writes_an_audit_entry_with_the_diff(admin_client, admin_user, gpt4o_price):
    response = admin_client.post(
        url(ModelPrice, "change", gpt4o_price.pk),
        price_form(input_per_mtok="2.00", notes="negotiated", effective_to_0="2025-07-01", effective_to_1="00:00:00"),
    )
    assert response.status_code == 302
    gpt4o_price.refresh_from_db()
    assert gpt4o_price.input_per_mtok == Decimal("2")
    entry = AuditLog.objects.get()
    assert (entry.tenant, entry.actor, entry.actor_label, entry.action) == (None, admin_user, "admin", "update")
    assert (entry.object_type, entry.object_id) == ("chargeback.ModelPrice", str(gpt4o_price.pk))
    assert entry.changes == {
        "effective_to": {"before": None, "after": "2025-07-01T00:00:00+00:00"},
        "input_per_mtok": {"before": "2.5", "after": "2"},
        "notes": {"before": "", "after": "negotiated"},
    }


def test_saving_a_price_unchanged_writes_no_audit_entry(admin_client, gpt4o_price):
    assert admin_client.post(url(ModelPrice, "change", gpt4o_price.pk), price_form()).status_code == 302
    assert AuditLog.objects.count() == 0


def test_adding_a_tenant_override_price_is_audited_under_that_tenant(admin_client, acme):
    response = admin_client.post(
        url(ModelPrice, "add"),
        price_form(tenant=str(acme.pk), model_pattern="gpt-4o", input_per_mtok="2.00", cache_read_per_mtok=""),
    )
    assert response.status_code == 302
    price = ModelPrice.objects.get()
    entry = AuditLog.objects.get()
    assert (entry.tenant, entry.action, entry.object_id) == (acme, "create", str(price.pk))
    assert entry.changes == {
        "currency": {"before": None, "after": "USD"},
        "effective_from": {"before": None, "after": "2024-01-01T00:00:00+00:00"},
        "input_per_mtok": {"before": None, "after": "2"},
        "match_type": {"before": None, "after": "exact"},
        "model_pattern": {"before": None, "after": "gpt-4o"},
        "notes": {"before": None, "after": ""},
        "output_per_mtok": {"before": None, "after": "10"},
        "per_request_fee": {"before": None, "after": "0"},
        "priority": {"before": None, "after": "0"},
        "provider": {"before": None, "after": "openai"},
        "source": {"before": None, "after": "catalogue"},
        "tenant": {"before": None, "after": "Acme"},
    }


def test_an_invalid_regex_is_shown_on_the_form_and_nothing_is_saved(admin_client):
    response = admin_client.post(url(ModelPrice, "add"), price_form(match_type="regex", model_pattern="gpt-(4"))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "model_pattern": ["Not a valid regular expression: missing ), unterminated subpattern at position 4."]
    }
    assert ModelPrice.objects.count() == 0
    assert AuditLog.objects.count() == 0


def test_a_price_window_that_ends_before_it_starts_is_refused_on_the_field(admin_client):
    response = admin_client.post(
        url(ModelPrice, "add"), price_form(effective_to_0="2023-12-31", effective_to_1="00:00:00")
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "effective_to": ["The end must be after the start (the end is exclusive)."]
    }
    assert ModelPrice.objects.count() == 0


def test_a_second_price_with_the_same_start_is_refused(admin_client, gpt4o_price):
    response = admin_client.post(url(ModelPrice, "add"), price_form())
    assert response.status_code == 200
    assert response.context["adminform"].form.non_field_errors() == [
        "Model price with this Tenant, Provider, Model pattern, Match type and Effective from already exists."
    ]
    assert ModelPrice.objects.count() == 1


def test_deleting_a_price_is_audited_with_its_last_values(admin_client, admin_user):
    price = make_price(model_pattern="old-model", input_per_mtok=Decimal("1.10"))
    response = admin_client.post(url(ModelPrice, "delete", price.pk), {"post": "yes"})
    assert response.status_code == 302
    assert ModelPrice.objects.count() == 0
    entry = AuditLog.objects.get()
    assert (entry.action, entry.object_id, entry.object_repr) == (
        "delete",
        str(price.pk),
        "openai/old-model from 2024-01-01 [catalogue]",
    )
    assert entry.changes["input_per_mtok"] == {"before": "1.1", "after": None}
    assert entry.changes["model_pattern"] == {"before": "old-model", "after": None}


def test_a_price_that_priced_usage_cannot_be_deleted(admin_client, acme, gpt4o_price):
    make_usage_event(tenant=acme, price=gpt4o_price)
    page = admin_client.get(url(ModelPrice, "delete", gpt4o_price.pk))
    assert page.status_code == 200
    assert page.context["protected"] == [f"{gpt4o_price}: referenced by usage events (price)"]
    admin_client.post(url(ModelPrice, "delete", gpt4o_price.pk), {"post": "yes"})
    assert ModelPrice.objects.filter(pk=gpt4o_price.pk).exists()
    assert AuditLog.objects.count() == 0


def test_bulk_deleting_prices_audits_each_one(admin_client):
    prices = [make_price(model_pattern=f"m-{i}") for i in range(2)]
    admin_client.post(
        url(ModelPrice, "changelist"),
        {"action": "delete_selected", "_selected_action": [p.pk for p in prices], "post": "yes"},
    )
    assert ModelPrice.objects.count() == 0
    assert sorted(AuditLog.objects.filter(action="delete").values_list("object_id", flat=True)) == sorted(
        str(p.pk) for p in prices
    )


# --- Budgets -----------------------------------------------------------------------------------------


def budget_form(budget: Budget, **overrides: str) -> dict[str, str]:
    data = {
        "tenant": str(budget.tenant_id),
        "name": budget.name,
        "active": "on",
        "scope": budget.scope,
        "department": str(budget.department_id or ""),
        "user_ref": "",
        "model": "",
        "tag_key": "",
        "tag_value": "",
        "period": budget.period,
        "amount": "1000.00",
        "currency": "USD",
        "thresholds": "[50, 80, 100]",
        "mode": budget.mode,
    }
    data.update(overrides)
    return data


def test_editing_a_budget_writes_an_audit_entry_with_the_diff(admin_client, acme, research_dept):
    budget = make_budget(tenant=acme, department=research_dept)
    response = admin_client.post(
        url(Budget, "change", budget.pk),
        budget_form(budget, amount="1500.50", thresholds="[80, 100]", mode="hard"),
    )
    assert response.status_code == 302
    entry = AuditLog.objects.get()
    assert (entry.tenant, entry.action, entry.object_type) == (acme, "update", "chargeback.Budget")
    assert entry.changes == {
        "amount": {"before": "1000", "after": "1500.5"},
        "mode": {"before": "soft", "after": "hard"},
        "thresholds": {"before": "[50, 80, 100]", "after": "[80, 100]"},
    }


def test_a_budget_for_another_tenants_department_is_refused(admin_client, acme, research_dept, other_dept):
    budget = make_budget(tenant=acme, department=research_dept)
    response = admin_client.post(url(Budget, "change", budget.pk), budget_form(budget, department=str(other_dept.pk)))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"department": ["The department belongs to another tenant."]}
    assert AuditLog.objects.count() == 0


def test_budgets_added_and_deleted_under_a_department_are_audited(admin_client, acme, research_dept):
    existing = make_budget(tenant=acme, department=research_dept, name="old")
    data = {
        "tenant": acme.pk,
        "code": "research",
        "name": "Research",
        "gl_cost_centre": "CC-100",
        "parent": "",
        "manager": "",
        "active": "on",
        "budgets-TOTAL_FORMS": "2",
        "budgets-INITIAL_FORMS": "1",
        "budgets-MIN_NUM_FORMS": "0",
        "budgets-MAX_NUM_FORMS": "1000",
        "budgets-0-id": existing.pk,
        "budgets-0-department": research_dept.pk,
        "budgets-0-name": "old",
        "budgets-0-scope": "department",
        "budgets-0-period": "month",
        "budgets-0-amount": "1000",
        "budgets-0-currency": "USD",
        "budgets-0-thresholds": "[50, 80, 100]",
        "budgets-0-mode": "soft",
        "budgets-0-active": "on",
        "budgets-0-DELETE": "on",
        "budgets-1-department": research_dept.pk,
        "budgets-1-name": "research weekly",
        "budgets-1-scope": "department",
        "budgets-1-period": "week",
        "budgets-1-amount": "250",
        "budgets-1-currency": "EUR",
        "budgets-1-thresholds": "[100]",
        "budgets-1-mode": "hard",
        "budgets-1-active": "on",
    }
    response = admin_client.post(url(Department, "change", research_dept.pk), data)
    assert response.status_code == 302, response.context["inline_admin_formsets"][0].formset.errors
    new = Budget.objects.get()
    assert (new.tenant, new.name, new.amount, new.currency, new.thresholds) == (
        acme,
        "research weekly",
        Decimal("250"),
        "EUR",
        [100],
    )
    entries = {e.action: e for e in AuditLog.objects.filter(object_type="chargeback.Budget")}
    assert set(entries) == {"create", "delete"}
    assert entries["delete"].object_id == str(existing.pk)
    assert entries["create"].tenant == acme
    assert entries["create"].changes["amount"] == {"before": None, "after": "250"}
    # Saving the department unchanged adds no department entry.
    assert not AuditLog.objects.filter(object_type="chargeback.Department").exists()


# --- Tenants, departments, memberships --------------------------------------------------------


def test_tenants_and_departments_cannot_be_deleted_from_the_admin(admin_client, acme, research_dept):
    assert admin_client.get(url(type(acme), "delete", acme.pk)).status_code == 403
    assert admin_client.get(url(Department, "delete", research_dept.pk)).status_code == 403


def test_deactivating_departments_is_an_audited_action(admin_client, acme, research_dept, sales_dept):
    response = admin_client.post(
        url(Department, "changelist"),
        {"action": "deactivate_selected", "_selected_action": [research_dept.pk, sales_dept.pk]},
        follow=True,
    )
    assert [str(m) for m in response.context["messages"]] == ["2 department(s) deactivated."]
    assert list(Department.objects.filter(active=True)) == []
    assert AuditLog.objects.filter(action="update", object_type="chargeback.Department").count() == 2
    assert AuditLog.objects.first().changes == {"active": {"before": "true", "after": "false"}}


def test_tenant_page_offers_only_its_own_departments_for_memberships(admin_client, acme, research_dept, other_dept):
    make_member(tenant=acme, username="ada", role=Role.ADMIN)
    response = admin_client.get(url(type(acme), "change", acme.pk))
    membership_formset = next(
        f.formset for f in response.context["inline_admin_formsets"] if f.formset.model is Membership
    )
    choices = list(membership_formset.forms[0].fields["department"].queryset)
    assert choices == [research_dept]


# --- Audit log ------------------------------------------------------------------------------------


def test_audit_log_is_read_only(admin_client, acme):
    entry = AuditLog.objects.create(
        tenant=acme,
        actor_label="fiona",
        action="update",
        object_type="chargeback.Budget",
        object_id="7",
        changes={"amount": {"before": "1000", "after": "1500.5"}},
    )
    assert admin_client.get(url(AuditLog, "add")).status_code == 403
    assert admin_client.get(url(AuditLog, "delete", entry.pk)).status_code == 403
    page = admin_client.get(url(AuditLog, "change", entry.pk))
    assert page.status_code == 200
    assert "<tr><th>amount</th><td>1000</td><td>1500.5</td></tr>" in page.content.decode()
    assert admin_client.post(url(AuditLog, "change", entry.pk), {"action": "delete"}).status_code == 403
    entry.refresh_from_db()
    assert entry.action == "update"


# --- Usage events ---------------------------------------------------------------------------------


def test_usage_events_cannot_be_added_changed_or_deleted(admin_client, acme):
    event = make_usage_event(tenant=acme)
    assert admin_client.get(url(UsageEvent, "add")).status_code == 403
    assert admin_client.get(url(UsageEvent, "delete", event.pk)).status_code == 403
    assert admin_client.post(url(UsageEvent, "change", event.pk), {"model": "x"}).status_code == 403
    page = admin_client.get(url(UsageEvent, "changelist"))
    assert "delete_selected" not in page.content.decode()
    assert UsageEvent.objects.get().model == "gpt-4o-mini"


def test_usage_changelist_never_counts_or_scans_the_whole_table(admin_client, acme):
    for _ in range(3):
        make_usage_event(tenant=acme)
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(url(UsageEvent, "changelist"))
    assert response.status_code == 200
    usage_queries = [q["sql"].upper() for q in captured.captured_queries if "TELEMETRY_USAGEEVENT" in q["sql"].upper()]
    counts = [sql for sql in usage_queries if "COUNT(" in sql]
    assert len(counts) == 1
    assert "LIMIT 10001" in counts[0]
    assert not [sql for sql in usage_queries if "DISTINCT" in sql]
    assert response.context["cl"].result_count == 3
    assert "3 usage events" in response.content.decode()


def test_usage_changelist_says_more_than_the_cap_instead_of_counting(admin_client, acme, monkeypatch):
    monkeypatch.setattr(CappedCountPaginator, "count_cap", 3)
    for _ in range(5):
        make_usage_event(tenant=acme)
    response = admin_client.get(url(UsageEvent, "changelist") + "?status__exact=ok")
    assert response.context["cl"].paginator.count == 4
    content = response.content.decode()
    assert "more than 3 usage events" in content
    assert "4 usage events" not in content
    assert "results (" not in content  # no search, so no "N results (Show all)" line

    searched = admin_client.get(url(UsageEvent, "changelist"), {"q": "emil"}).content.decode()
    assert "more than 3 results" in searched


def test_usage_search_matches_exact_identifiers_only(admin_client, acme):
    target = make_usage_event(tenant=acme, event_id="evt-target", trace_id="ab" * 16)
    make_usage_event(tenant=acme, event_id="evt-target-2")
    for term in ("evt-target", "ab" * 16):
        response = admin_client.get(url(UsageEvent, "changelist"), {"q": term})
        assert list(response.context["cl"].result_list) == [target], term
    assert admin_client.get(url(UsageEvent, "changelist"), {"q": "EVT-TARGET"}).context["cl"].result_count == 0


def test_capped_paginator_counts_exactly_below_the_cap(acme):
    for _ in range(2):
        make_usage_event(tenant=acme)
    paginator = CappedCountPaginator(UsageEvent.objects.order_by("-pk"), 100)
    assert (paginator.count, paginator.count_label, paginator.num_pages) == (2, "2", 1)


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql", reason="pg_class is PostgreSQL's"
)
def test_unfiltered_usage_list_on_postgres_shows_the_planner_estimate(acme, monkeypatch):
    monkeypatch.setattr(CappedCountPaginator, "count_cap", 3)
    for _ in range(5):
        make_usage_event(tenant=acme)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE telemetry_usageevent")
    unfiltered = CappedCountPaginator(UsageEvent.objects.order_by("-pk"), 100)
    assert (unfiltered.count, unfiltered.count_label) == (4, "about 5")
    filtered = CappedCountPaginator(UsageEvent.objects.filter(status="ok").order_by("-pk"), 100)
    assert (filtered.count, filtered.count_label) == (4, "more than 3")
