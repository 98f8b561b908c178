"""Who is looking at a page: the user's membership in the current tenant, the roles a page
allows, and which departments they may see. Enforced on the server (403), never only by
hiding links.

A user with several memberships picks the tenant with the switcher; the choice lives in the
session under `tenant_id`. Without a valid choice the first tenant by name is used.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from chargeback.models import Department, Membership, Role

SESSION_TENANT_KEY = "tenant_id"
EVERYONE = (Role.EMPLOYEE, Role.MANAGER, Role.FINANCE, Role.ADMIN)
FINANCE_ADMIN = (Role.FINANCE, Role.ADMIN)

_UNSET = object()


def list_memberships(request: HttpRequest) -> list[Membership]:
    """The user's memberships, tenant and department loaded, cached on the request."""
    cached = getattr(request, "_web_memberships", None)
    if cached is None:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            cached = []
        else:
            cached = list(
                Membership.objects.filter(user=user).select_related("tenant", "department").order_by("tenant__name")
            )
        request._web_memberships = cached
    return cached


def current_membership(request: HttpRequest) -> Membership | None:
    """The membership for the tenant chosen in the session, else the first one, else None."""
    cached = getattr(request, "_web_membership", _UNSET)
    if cached is not _UNSET:
        return cached
    memberships = list_memberships(request)
    chosen = None
    if memberships:
        wanted = request.session.get(SESSION_TENANT_KEY) if hasattr(request, "session") else None
        chosen = next((m for m in memberships if m.tenant_id == wanted), memberships[0])
    request._web_membership = chosen
    return chosen


def choose_tenant(request: HttpRequest, *, tenant_id: int) -> Membership | None:
    """Switch the session to `tenant_id` if the user is a member there; None (and no change)
    otherwise, so nobody can select a tenant by guessing its id."""
    membership = next((m for m in list_memberships(request) if m.tenant_id == tenant_id), None)
    if membership is not None:
        request.session[SESSION_TENANT_KEY] = tenant_id
        request._web_membership = membership
    return membership


def no_tenant_response(request: HttpRequest) -> HttpResponse:
    return render(request, "web/no_tenant.html", status=403)


def require_roles(*roles: str) -> Callable:
    """View decorator: a signed-in user with a membership in the current tenant whose role is
    one of `roles`. Anonymous → login page; no membership → the "no tenant" page; wrong role →
    403. Sets `request.membership` for the view."""
    allowed = frozenset(roles or EVERYONE)

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            membership = current_membership(request)
            if membership is None:
                return no_tenant_response(request)
            if membership.role not in allowed:
                raise PermissionDenied("Your role cannot open this page.")
            request.membership = membership
            return view(request, *args, **kwargs)

        wrapped.allowed_roles = allowed  # read by tests and the navigation
        return wrapped

    return decorator


def visible_departments(membership: Membership) -> QuerySet[Department]:
    """Departments this membership may look at: all of the tenant's for finance and admin,
    only their own for managers and employees."""
    departments = Department.objects.filter(tenant_id=membership.tenant_id)
    if membership.sees_all_departments:
        return departments
    return departments.filter(pk=membership.department_id)


def department_scope(membership: Membership, *, code: str | None) -> Department | None:
    """Resolve a requested department code within the membership's reach.

    Finance/admin: `code` empty → None (all departments); a code of their tenant → that
    department; an unknown code → 404-worthy `Department.DoesNotExist`.
    Managers/employees: always their own department; asking for another one → 403.
    """
    if membership.sees_all_departments:
        if not code:
            return None
        return Department.objects.get(tenant_id=membership.tenant_id, code=code)
    own = membership.department
    if own is None:
        raise PermissionDenied("You are not attached to a department.")
    if code and code != own.code:
        raise PermissionDenied("You can only see your own department.")
    return own


def can_see_department(membership: Membership, department_id: int | None) -> bool:
    if membership.sees_all_departments:
        return True
    return department_id is not None and department_id == membership.department_id
