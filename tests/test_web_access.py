"""Who may open which page, enforced on the server: every role against every page, department
scope, tenant isolation and switching, the "no tenant" page, sign-in and its rate limit, and
error pages that stay JSON for API clients."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from chargeback.models import Membership, Role
from tests.factories import make_budget, make_member
from web import errors, navigation
from web.access import current_membership

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    # PBKDF2 costs ~0.5 s per user on a loaded 2-core box; these tests are about access, not hashing.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def clear_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def people(finance_user, admin_user_acme, manager_user, employee_user):
    return {
        Role.FINANCE: finance_user,
        Role.ADMIN: admin_user_acme,
        Role.MANAGER: manager_user,
        Role.EMPLOYEE: employee_user,
    }


@pytest.fixture
def budgets(acme, research_dept, sales_dept, other_tenant, other_dept):
    return {
        "research": make_budget(tenant=acme, department=research_dept, name="Research monthly"),
        "sales": make_budget(tenant=acme, department=sales_dept, name="Sales monthly"),
        "tenant": make_budget(tenant=acme, name="Acme-wide monthly"),
        "globex": make_budget(tenant=other_tenant, department=other_dept, name="Globex research"),
    }


def get_as(client, user, url):
    client.force_login(user)
    return client.get(url)


# --- Role boundaries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "url_name", "status"),
    [
        (Role.EMPLOYEE, "web:my-usage", 200),
        (Role.MANAGER, "web:my-usage", 200),
        (Role.FINANCE, "web:my-usage", 200),
        (Role.ADMIN, "web:my-usage", 200),
        (Role.EMPLOYEE, "web:budgets", 403),
        (Role.MANAGER, "web:budgets", 200),
        (Role.FINANCE, "web:budgets", 200),
        (Role.ADMIN, "web:budgets", 200),
    ],
)
def test_each_role_opens_only_its_pages(client, people, budgets, role, url_name, status):
    response = get_as(client, people[role], reverse(url_name))
    assert response.status_code == status
    if status == 403:
        assert b"You don't have access to this page" in response.content
        assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("role", "budget", "status"),
    [
        (Role.MANAGER, "research", 200),
        (Role.MANAGER, "sales", 403),
        (Role.MANAGER, "tenant", 403),
        (Role.EMPLOYEE, "research", 403),
        (Role.FINANCE, "sales", 200),
        (Role.FINANCE, "tenant", 200),
        (Role.ADMIN, "research", 200),
        # Another tenant's budget does not exist as far as Acme people are concerned.
        (Role.FINANCE, "globex", 404),
        (Role.ADMIN, "globex", 404),
        (Role.MANAGER, "globex", 404),
    ],
)
def test_budget_detail_is_scoped_to_department_and_tenant(client, people, budgets, role, budget, status):
    response = get_as(client, people[role], reverse("web:budget-detail", args=[budgets[budget].pk]))
    assert response.status_code == status


def test_manager_sees_only_own_department_budgets(client, people, budgets):
    response = get_as(client, people[Role.MANAGER], reverse("web:budgets"))
    names = [s.budget.name for s in response.context["statuses"]]
    assert names == ["Research monthly"]


def test_manager_asking_for_another_department_is_refused(client, people, budgets):
    response = get_as(client, people[Role.MANAGER], reverse("web:budgets") + "?department=sales")
    assert response.status_code == 403
    response = get_as(client, people[Role.MANAGER], reverse("web:budgets") + "?department=research")
    assert response.status_code == 200


def test_finance_sees_every_budget_of_its_tenant_only(client, people, budgets):
    response = get_as(client, people[Role.FINANCE], reverse("web:budgets"))
    names = [s.budget.name for s in response.context["statuses"]]
    assert names == ["Acme-wide monthly", "Research monthly", "Sales monthly"]  # widest scope first


def test_finance_filters_by_department_and_unknown_codes_are_404(client, people, budgets):
    response = get_as(client, people[Role.FINANCE], reverse("web:budgets") + "?department=sales")
    assert [s.budget.name for s in response.context["statuses"]] == ["Sales monthly"]
    assert get_as(client, people[Role.FINANCE], reverse("web:budgets") + "?department=nope").status_code == 404


def test_anonymous_visitors_are_sent_to_sign_in(client):
    for name in ("web:my-usage", "web:budgets"):
        response = client.get(reverse(name))
        assert response.status_code == 302
        assert response["Location"] == f"/login/?next={reverse(name)}"
    assert client.get("/")["Location"] == "/login/"


def test_superuser_without_membership_sees_the_no_tenant_page(client, db):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root")
    client.force_login(root)
    for url in ("/", reverse("web:my-usage"), reverse("web:budgets")):
        response = client.get(url)
        assert response.status_code == 403
        assert b"You are not a member of any tenant" in response.content
        assert b"Open the back office" in response.content


# --- Menu and home ------------------------------------------------------------------------------------


def menu_labels(response) -> list[str]:
    return [item.label for item in response.context["menu"]]


@pytest.mark.parametrize(
    ("role", "labels"),
    [
        (Role.EMPLOYEE, ["Chat", "My usage"]),
        (Role.MANAGER, ["My department", "Invoices", "Budgets", "Anomalies", "Reports", "Chat", "My usage"]),
        (Role.FINANCE, ["Overview", "Departments", "Invoices", "Budgets", "Anomalies", "Reports", "Quality", "Alerts", "Chat", "My usage"]),
        (Role.ADMIN, ["Overview", "Departments", "Invoices", "Budgets", "Anomalies", "Reports", "Quality", "Alerts", "Chat", "My usage"]),
    ],
)
def test_menu_lists_the_pages_of_the_role_that_exist(client, people, role, labels):
    response = get_as(client, people[role], reverse("web:my-usage"))
    assert menu_labels(response) == labels
    current = [item.label for item in response.context["menu"] if item.current]
    assert current == ["My usage"]
    assert b'aria-current="page"' in response.content


def test_back_office_link_only_for_staff(client, people):
    assert b"Back office" not in get_as(client, people[Role.ADMIN], reverse("web:my-usage")).content
    people[Role.ADMIN].is_staff = True
    people[Role.ADMIN].save()
    assert b"Back office" in get_as(client, people[Role.ADMIN], reverse("web:my-usage")).content


def test_navigation_skips_entries_whose_page_does_not_exist(rf, people, monkeypatch):
    monkeypatch.setattr(
        navigation,
        "NAVIGATION",
        [
            navigation.NavEntry("Ghost", "web:not-built-yet", (Role.FINANCE,)),
            navigation.NavEntry("Budgets", "web:budgets", (Role.FINANCE,)),
        ],
    )
    membership = Membership.objects.get(user=people[Role.FINANCE])
    request = rf.get("/budgets/")
    assert navigation.menu_for(request, membership) == [navigation.MenuItem("Budgets", "/budgets/", True)]


@pytest.mark.parametrize(
    ("role", "home"),
    [
        (Role.FINANCE, "/overview/"),
        (Role.ADMIN, "/overview/"),
        (Role.MANAGER, "/chat/"),
        (Role.EMPLOYEE, "/chat/"),
    ],
)
def test_home_redirects_by_role_to_the_first_page_that_exists(client, people, role, home):
    response = get_as(client, people[role], "/")
    assert response.status_code == 302
    assert response["Location"] == home


# --- Tenants ------------------------------------------------------------------------------------------


@pytest.fixture
def two_tenant_user(acme, other_tenant, other_dept):
    user = make_member(tenant=acme, username="tess", role=Role.FINANCE)
    Membership.objects.create(user=user, tenant=other_tenant, role=Role.MANAGER, department=other_dept)
    return user


def test_tenant_switcher_changes_the_tenant_in_the_session(client, two_tenant_user, budgets):
    client.force_login(two_tenant_user)
    response = client.get(reverse("web:budgets"))
    assert response.context["membership"].tenant.slug == "acme"  # first by name
    assert b'id="tenant-switch"' in response.content

    response = client.post(reverse("web:switch-tenant"), {"tenant": budgets["globex"].tenant_id})
    assert response.status_code == 302
    response = client.get(reverse("web:budgets"))
    assert response.context["membership"].tenant.slug == "globex"
    assert response.context["membership"].role == Role.MANAGER
    assert [s.budget.name for s in response.context["statuses"]] == ["Globex research"]


def test_switching_to_a_tenant_without_membership_is_refused(client, finance_user, other_tenant):
    client.force_login(finance_user)
    assert client.post(reverse("web:switch-tenant"), {"tenant": other_tenant.pk}).status_code == 403
    assert client.post(reverse("web:switch-tenant"), {"tenant": "x"}).status_code == 400
    assert client.get(reverse("web:switch-tenant")).status_code == 405
    assert client.session.get("tenant_id") is None


def test_a_stale_session_tenant_falls_back_to_a_real_membership(rf, finance_user, other_tenant):
    request = rf.get("/")
    request.user = finance_user
    request.session = {"tenant_id": other_tenant.pk}
    assert current_membership(request).tenant.slug == "acme"


# --- Sign in and out ----------------------------------------------------------------------------------


def test_sign_in_with_the_form_lands_on_the_home_of_the_role(client, employee_user):
    response = client.post(reverse("web:login"), {"username": "emil", "password": "pw-emil"})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/")["Location"] == "/chat/"


def test_wrong_password_says_so(client, employee_user):
    response = client.post(reverse("web:login"), {"username": "emil", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


def test_sign_in_is_rate_limited_per_ip_after_ten_failures(client, employee_user):
    for _ in range(10):
        assert client.post(reverse("web:login"), {"username": "emil", "password": "nope"}).status_code == 200
    response = client.post(reverse("web:login"), {"username": "emil", "password": "pw-emil"})
    assert response.status_code == 429
    assert b"Too many failed sign-in attempts" in response.content
    assert "_auth_user_id" not in client.session
    # Another address is not affected.
    response = client.post(reverse("web:login"), {"username": "emil", "password": "pw-emil"}, REMOTE_ADDR="10.0.0.9")
    assert response.status_code == 302


def test_sign_out_is_a_post_and_ends_the_session(client, employee_user):
    client.force_login(employee_user)
    assert client.get(reverse("web:logout")).status_code == 405
    response = client.post(reverse("web:logout"))
    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert client.get(reverse("web:my-usage")).status_code == 302


# --- Error pages --------------------------------------------------------------------------------------


def test_unknown_page_is_html_but_unknown_api_path_is_json(client, employee_user):
    client.force_login(employee_user)
    page = client.get("/no-such-page/")
    assert page.status_code == 404
    assert b"This page does not exist" in page.content
    assert b'aria-label="Main"' in page.content  # in the layout, with the menu
    for path in ("/api/v1/nope", "/v1/nope"):
        api = client.get(path)
        assert api.status_code == 404
        assert api.json() == {"error": {"code": "not_found", "message": "No such URL."}}


def test_403_and_500_handlers_answer_json_on_api_paths():
    rf = RequestFactory()
    assert errors.handler403(rf.get("/api/v1/x"), PermissionDenied("nope")).status_code == 403
    body = errors.handler500(rf.get("/v1/chat/completions"))
    assert body.status_code == 500
    assert body["Content-Type"] == "application/json"
    page = errors.handler500(rf.get("/budgets/"))
    assert page.status_code == 500
    assert b"Something went wrong on our side" in page.content


# --- Time zone ---------------------------------------------------------------------------------------


def test_times_are_shown_in_the_tenant_time_zone(client, acme, research_dept, employee_user):
    from tests.factories import make_usage_event

    at = timezone.now().replace(hour=10, minute=5, second=0, microsecond=0) - timedelta(days=1)
    make_usage_event(tenant=acme, department=research_dept, user_ref="emil", occurred_at=at)
    response = get_as(client, employee_user, reverse("web:my-usage"))
    local = at.astimezone(acme.tz)
    assert f"{local:%H:%M}".encode() in response.content
    assert local.strftime("%H:%M") != at.strftime("%H:%M")  # Paris is never UTC
    assert b"Times in Europe/Paris" in response.content
    # The zone does not leak into the next request of the thread.
    assert timezone.get_current_timezone_name() == "UTC"
