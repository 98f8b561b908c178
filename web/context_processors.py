"""Layout context for every template: the current membership, its tenant, the role's menu and
the tenants the user can switch to. Lazy, so pages that never show the layout pay nothing."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from web.access import current_membership, list_memberships
from web.navigation import menu_for


def layout(request: HttpRequest) -> dict[str, Any]:
    return {
        "membership": SimpleLazyObject(lambda: current_membership(request)),
        "menu": SimpleLazyObject(lambda: menu_for(request, current_membership(request))),
        "tenant_choices": SimpleLazyObject(lambda: list_memberships(request)),
    }
