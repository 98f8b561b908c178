"""Shared fixtures: a tenant `acme` with departments and people of every role, and a second
tenant `globex` for isolation tests."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal

import pytest

# Schemathesis's pytest plugin imports its HTML report writer only when the session finishes.
# On CPython 3.11.7, compiling a module that late (after Hypothesis has raised and restored the
# recursion limit many times, and with live-server threads around) can abort the whole run with
# "SystemError: AST constructor recursion depth mismatch" after every test passed (seen in CI).
# Importing it here, at collection, compiles it while the interpreter state is clean.
import schemathesis.reporting.html.writer  # noqa: F401

# llmobs.wsgi freezes the objects of a starting server out of the cyclic collector's reach; in
# the test process that would be whatever the tests made before its first import.
# tests/test_wsgi_lanes.py checks the freeze in a process of its own.
os.environ.setdefault("LLMOBS_GC_FREEZE", "false")
from django.contrib.auth import get_user_model

from chargeback.models import Department, Membership, ModelPrice, Role, Tenant


@pytest.fixture
def acme(db) -> Tenant:
    return Tenant.objects.create(name="Acme", slug="acme", timezone="Europe/Paris")


@pytest.fixture
def research_dept(acme) -> Department:
    return Department.objects.create(tenant=acme, code="research", name="Research", gl_cost_centre="CC-100")


@pytest.fixture
def sales_dept(acme) -> Department:
    return Department.objects.create(tenant=acme, code="sales", name="Sales", gl_cost_centre="CC-200")


@pytest.fixture
def other_tenant(db) -> Tenant:
    return Tenant.objects.create(name="Globex", slug="globex")


@pytest.fixture
def other_dept(other_tenant) -> Department:
    return Department.objects.create(tenant=other_tenant, code="research", name="Globex Research")


def _member(tenant: Tenant, username: str, role: str, department: Department | None = None):
    user = get_user_model().objects.create_user(username=username, password="pw-" + username)
    Membership.objects.create(user=user, tenant=tenant, role=role, department=department)
    return user


@pytest.fixture
def finance_user(acme):
    return _member(acme, "fiona", Role.FINANCE)


@pytest.fixture
def admin_user_acme(acme):
    return _member(acme, "ada", Role.ADMIN)


@pytest.fixture
def manager_user(acme, research_dept):
    return _member(acme, "morgan", Role.MANAGER, research_dept)


@pytest.fixture
def employee_user(acme, research_dept):
    return _member(acme, "emil", Role.EMPLOYEE, research_dept)


@pytest.fixture
def gpt4o_price(db) -> ModelPrice:
    """A catalogue price with every bucket set, effective from 2024."""
    return ModelPrice.objects.create(
        provider="openai",
        model_pattern="gpt-4o",
        effective_from=datetime(2024, 1, 1, tzinfo=UTC),
        input_per_mtok=Decimal("2.50"),
        cache_read_per_mtok=Decimal("1.25"),
        output_per_mtok=Decimal("10.00"),
        source=ModelPrice.Source.CATALOGUE,
    )


@pytest.fixture(autouse=True)
def fresh_price_books():
    """Price books are cached per process and invalidated on commit; tests roll back instead of
    committing (and SQLite reuses rolled-back ids), so start every test with no cached book."""
    from chargeback import pricing

    pricing._books.clear()
    yield
    pricing._books.clear()


@pytest.fixture(autouse=True)
def eager_celery(request):
    """Tasks run in-process in tests, whatever the broker; the real-worker flow tests (marked
    `slow` + `redis`) opt out and go through Redis and a `celery worker` process."""
    from llmobs.celery import app

    if request.node.get_closest_marker("slow") and request.node.get_closest_marker("redis"):
        yield
        return
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture(autouse=True)
def _keep_raw_events_forever(settings):
    """Tests use fixed dates that age past LLMOBS_RAW_RETENTION_DAYS; the retention tests
    (tests/test_retention.py) set it explicitly."""
    settings.LLMOBS_RAW_RETENTION_DAYS = 0


@pytest.fixture(autouse=True)
def _stop_ingest_writer():
    """Transactional tests on PostgreSQL write single events through the group-commit writer
    thread (telemetry/groupcommit.py); stop it after each test so its database session does not
    outlive the test (and the test database)."""
    yield
    from telemetry import ingest

    ingest.group_committer().stop()


@pytest.fixture(autouse=True)
def _forget_ingest_senders():
    """Ingest remembers authenticated keys for a second; tests change keys within that time."""
    from telemetry import ingest

    ingest.forget_senders()
    yield
    ingest.forget_senders()
