"""The employee chat page: pick an allowed route, stream the answer, see each reply's tokens
and cost and the budget left, give feedback. The page only renders; the conversation runs
through `POST /api/chat` (telemetry/chat.py), the same pipeline and budget checks as the gateway.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from chargeback.models import Budget, Route
from web import data
from web.access import EVERYONE, require_roles


def applicable_budgets(*, membership, user_ref: str) -> list[Budget]:
    """The active budgets a chat call of this person counts against: the whole tenant, their
    department and their own user budget (model and tag budgets depend on the call)."""
    budgets = data.list_budgets(tenant=membership.tenant, department=None)
    return [
        b
        for b in budgets
        if b.scope == Budget.Scope.TENANT
        or (b.scope == Budget.Scope.DEPARTMENT and b.department_id == membership.department_id)
        or (b.scope == Budget.Scope.USER and b.user_ref == user_ref)
    ]


def _feedback_url() -> str:
    # The feedback API arrives with the quality (evals) area; without it the buttons stay hidden.
    try:
        return reverse("api-feedback")
    except NoReverseMatch:
        return ""


@require_roles(*EVERYONE)
def chat(request: HttpRequest) -> HttpResponse:
    membership = request.membership
    routes = list(Route.objects.filter(tenant=membership.tenant, enabled=True, chat_enabled=True).order_by("alias"))
    now = timezone.now()
    statuses = [
        data.get_budget_status(budget=b, at=now)
        for b in applicable_budgets(membership=membership, user_ref=request.user.get_username())
    ]
    return render(
        request,
        "web/chat.html",
        {
            "routes": routes,
            "statuses": statuses,
            "chat_api": reverse("chat"),
            "feedback_api": _feedback_url(),
        },
    )
