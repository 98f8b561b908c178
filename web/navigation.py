"""The menu: one list of (label, URL name, roles). A page joins the menu by adding one line
here; entries whose URL name does not resolve (the page is not built or not merged yet) are
skipped, so the list can name pages before they exist without showing dead links.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from chargeback.models import Membership, Role
from web.access import EVERYONE, FINANCE_ADMIN


@dataclass(frozen=True)
class NavEntry:
    label: str
    url_name: str
    roles: tuple[str, ...]


NAVIGATION: list[NavEntry] = [
    NavEntry("Overview", "web:overview", FINANCE_ADMIN),
    NavEntry("Departments", "web:departments", FINANCE_ADMIN),
    NavEntry("My department", "web:my-department", (Role.MANAGER,)),
    NavEntry("Invoices", "web:invoices", (*FINANCE_ADMIN, Role.MANAGER)),
    NavEntry("Budgets", "web:budgets", (*FINANCE_ADMIN, Role.MANAGER)),
    NavEntry("Anomalies", "web:anomalies", (*FINANCE_ADMIN, Role.MANAGER)),
    NavEntry("Reports", "web:reports", (*FINANCE_ADMIN, Role.MANAGER)),
    NavEntry("Quality", "web:quality", FINANCE_ADMIN),
    NavEntry("Alerts", "web:alerts", FINANCE_ADMIN),
    NavEntry("Chat", "web:chat", EVERYONE),
    NavEntry("My usage", "web:my-usage", EVERYONE),
]

# Where `/` sends each role: the first of these pages that exists.
HOME_BY_ROLE: dict[str, tuple[str, ...]] = {
    Role.ADMIN: ("web:overview", "web:budgets", "web:my-usage"),
    Role.FINANCE: ("web:overview", "web:budgets", "web:my-usage"),
    Role.MANAGER: ("web:chat", "web:my-usage"),
    Role.EMPLOYEE: ("web:chat", "web:my-usage"),
}


@dataclass(frozen=True)
class MenuItem:
    label: str
    url: str
    current: bool


def _url(name: str) -> str | None:
    try:
        return reverse(name)
    except NoReverseMatch:
        return None


def menu_for(request: HttpRequest, membership: Membership | None) -> list[MenuItem]:
    """The entries this membership's role may open, the page being shown marked current (the
    longest URL that prefixes the path, so a detail page keeps its list highlighted)."""
    if membership is None:
        return []
    entries = [(e.label, url) for e in NAVIGATION if membership.role in e.roles and (url := _url(e.url_name))]
    matching = [url for _label, url in entries if request.path.startswith(url)]
    current = max(matching, key=len, default=None)
    return [MenuItem(label, url, url == current) for label, url in entries]


def home_url_for(membership: Membership) -> str | None:
    for name in HOME_BY_ROLE.get(membership.role, ()):
        url = _url(name)
        if url is not None:
            return url
    return None
