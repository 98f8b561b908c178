"""Pages. Each view checks who may look (web.access), reads through one web.data function and
renders; scoping to the tenant and department happens before any query."""

from __future__ import annotations

import logging

from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from chargeback.models import Budget, Department, Role
from web import data
from web.access import (
    EVERYONE,
    FINANCE_ADMIN,
    can_see_department,
    choose_tenant,
    current_membership,
    department_scope,
    no_tenant_response,
    require_roles,
)
from web.navigation import home_url_for

# --- Sign-in ----------------------------------------------------------------------------------------

log = logging.getLogger(__name__)

LOGIN_ATTEMPTS = 10  # failed sign-ins allowed per client IP per window
LOGIN_WINDOW_SECONDS = 300


def _login_key(request: HttpRequest) -> str:
    # REMOTE_ADDR: behind a reverse proxy, the proxy must pass the client address through
    # (e.g. gunicorn --forwarded-allow-ips), otherwise every client shares one counter.
    return f"web:login-failures:{request.META.get('REMOTE_ADDR', 'unknown')}"


def login_blocked(request: HttpRequest) -> bool:
    """Too many failed sign-ins from this IP in the window. The shared cache being down fails
    open (logged): a Redis outage must not lock everybody out of the product."""
    try:
        return (cache.get(_login_key(request)) or 0) >= LOGIN_ATTEMPTS
    except Exception:
        log.warning("login limiter unavailable (shared cache down); allowing the attempt", exc_info=True)
        return False


def note_login_failure(request: HttpRequest) -> None:
    key = _login_key(request)
    try:
        # add() starts the window on the first failure; incr() keeps its expiry.
        if not cache.add(key, 1, LOGIN_WINDOW_SECONDS):
            try:
                cache.incr(key)
            except ValueError:  # expired between add() and incr()
                cache.add(key, 1, LOGIN_WINDOW_SECONDS)
    except Exception:
        log.warning("login limiter unavailable (shared cache down); failure not counted", exc_info=True)


class LoginView(auth_views.LoginView):
    """Django's login view with a per-IP limit on failed attempts (cache counter, fixed window)."""

    template_name = "web/login.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if login_blocked(request):
            context = self.get_context_data(form=self.get_form(), rate_limited=True)
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        note_login_failure(self.request)
        return super().form_invalid(form)


def admin_login(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
    """The admin's login with the same per-IP failure limit as the product's login page (the
    admin is the more valuable target). A failed admin sign-in re-renders the form (200)."""
    from django.contrib import admin

    if request.method == "POST" and login_blocked(request):
        return HttpResponse("Too many failed sign-ins from your address; try again in a few minutes.", status=429)
    response = admin.site.login(request, extra_context)
    if request.method == "POST" and response.status_code == 200:
        note_login_failure(request)
    return response

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.setdefault("rate_limited", False)
        context["window_minutes"] = LOGIN_WINDOW_SECONDS // 60
        return context


class LogoutView(auth_views.LogoutView):
    next_page = "web:login"


# --- Home and tenant ---------------------------------------------------------------------------------


def home(request: HttpRequest) -> HttpResponse:
    """`/`: finance and admin land on the overview, everyone else on the chat (the first of
    the role's pages that exists, see web.navigation.HOME_BY_ROLE)."""
    if not request.user.is_authenticated:
        return redirect("web:login")
    membership = current_membership(request)
    if membership is None:
        return no_tenant_response(request)
    url = home_url_for(membership)
    if url is None:  # every role has My usage; this only happens if the URLconf lost it
        raise Http404("No page for your role.")
    return redirect(url)


@require_POST
@require_roles(*EVERYONE)
def switch_tenant(request: HttpRequest) -> HttpResponse:
    try:
        tenant_id = int(request.POST.get("tenant", ""))
    except ValueError:
        return HttpResponseBadRequest("tenant: expected a tenant id.")
    if choose_tenant(request, tenant_id=tenant_id) is None:
        raise PermissionDenied("You are not a member of that tenant.")
    # The page being shown may not be open to the user's role in the other tenant: start over
    # from that tenant's home page.
    return redirect("web:home")


# --- My usage --------------------------------------------------------------------------------------


@require_roles(*EVERYONE)
def my_usage(request: HttpRequest) -> HttpResponse:
    tenant = request.membership.tenant
    user_ref = request.user.get_username()
    usage = data.get_user_usage(tenant=tenant, user_ref=user_ref, now=timezone.now(), days=30)
    calls = data.page_user_calls(
        tenant=tenant, user_ref=user_ref, start=usage.start, end=usage.end, page=request.GET.get("page")
    )
    chart = {
        "type": "bar",
        "labels": [d.day.strftime("%d %b") for d in usage.days],
        "datasets": [
            {"label": f"Spend ({usage.currency})", "data": [str(d.cost) for d in usage.days]},
        ],
        "money": usage.currency,
    }
    return render(
        request,
        "web/my_usage.html",
        {"usage": usage, "calls": calls, "chart": chart, "user_ref": user_ref},
    )


# --- Budgets ---------------------------------------------------------------------------------------


@require_roles(*FINANCE_ADMIN, Role.MANAGER)
def budgets(request: HttpRequest) -> HttpResponse:
    membership = request.membership
    try:
        department = department_scope(membership, code=request.GET.get("department"))
    except Department.DoesNotExist as exc:
        raise Http404("No such department.") from exc
    now = timezone.now()
    page = Paginator(data.list_budgets(tenant=membership.tenant, department=department), 25).get_page(
        request.GET.get("page")
    )
    statuses = [data.get_budget_status(budget=b, at=now) for b in page]
    departments = list(Department.objects.filter(tenant=membership.tenant, active=True).order_by("name"))
    return render(
        request,
        "web/budgets.html",
        {
            "statuses": statuses,
            "page": page,
            "department": department,
            "departments": departments if membership.sees_all_departments else [],
            "can_edit": membership.role == Role.ADMIN and request.user.is_staff,
        },
    )


@require_roles(*FINANCE_ADMIN, Role.MANAGER)
def budget_detail(request: HttpRequest, pk: int) -> HttpResponse:
    membership = request.membership
    budget = get_object_or_404(Budget.objects.select_related("tenant", "department"), pk=pk, tenant=membership.tenant)
    # Managers see their department's budgets only; tenant-, model- and tag-wide budgets are
    # finance/admin material.
    if not can_see_department(membership, budget.department_id):
        if budget.department_id is None:
            raise PermissionDenied("Budgets that are not a department's are for finance and admin.")
        raise PermissionDenied("This budget belongs to another department.")
    status = data.get_budget_status(budget=budget, at=timezone.now())
    daily = data.budget_daily_spend(budget=budget, bounds=status.bounds)
    # Days still to come in the period are drawn empty, not as zero spend.
    today = timezone.localdate(timezone.now(), timezone=budget.tenant.tz)
    running, per_day, cumulative = data.ZERO, [], []
    for day, spent in daily:
        if day > today:
            per_day.append(None)
            cumulative.append(None)
            continue
        running += spent
        per_day.append(str(spent))
        cumulative.append(str(running))
    chart = {
        "type": "bar",
        "labels": [d.strftime("%d %b") for d, _s in daily],
        "datasets": [
            {"label": f"Spend per day ({budget.currency})", "data": per_day},
            {"label": "Cumulative", "data": cumulative, "type": "line"},
            {"label": "Limit", "data": [str(budget.amount)] * len(daily), "type": "line", "dashed": True},
        ],
        "money": budget.currency,
    }
    return render(
        request,
        "web/budget_detail.html",
        {
            "status": status,
            "daily": daily,
            "chart": chart,
            "can_edit": membership.role == Role.ADMIN and request.user.is_staff,
        },
    )
