"""Browser tests: Playwright (sync API) driving Debian's Chromium against pytest-django's
live server. Never downloads a browser: without /usr/bin/chromium (`apt-get install -y
chromium`; CI installs it) every test here is skipped with that reason.

Playwright's sync API runs an asyncio loop in the test thread, and Django refuses ORM calls
from a thread with a running loop unless DJANGO_ALLOW_ASYNC_UNSAFE is set; the tests only
touch the database between browser steps, never concurrently, so that is safe here. The live
server runs in another thread and needs committed data: tests use `transaction=True`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = Path(os.environ.get("LLMOBS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def pytest_collection_modifyitems(config, items) -> None:
    reason = None
    if not CHROMIUM.exists():
        reason = f"Chromium not found at {CHROMIUM}: `apt-get install -y chromium` (CI installs it)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed: `pip install -r requirements-dev.txt`"
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture(autouse=True)
def browser_settings(settings):
    # The live server speaks plain HTTP: cookies marked Secure (the production default when
    # REDIS_URL is set) would never come back. Fast hashing: these tests are about pages.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def page(chromium, live_server) -> Iterator:
    context = chromium.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.js_errors = errors
    yield page
    context.close()


@pytest.fixture
def login_as(page, live_server, finance_user, admin_user_acme, manager_user, employee_user) -> Callable:
    """`login_as("manager")` signs the browser in as that role's fixture user by handing it a
    real session cookie (the sign-in form itself is tested separately)."""
    from django.conf import settings
    from django.test import Client

    users = {"finance": finance_user, "admin": admin_user_acme, "manager": manager_user, "employee": employee_user}

    def login(role: str):
        client = Client()
        client.force_login(users[role])
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        page.context.clear_cookies()
        page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
        return users[role]

    return login
