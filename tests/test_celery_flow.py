"""End to end through a real `celery worker` process and Redis: a usage event is rolled up by
the worker, the budget evaluation it chains fires an alert, and the delivery task posts it to a
local webhook receiver."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from chargeback.models import BudgetAlert, Delivery
from telemetry.models import HourlyRollup
from tests.factories import make_budget, make_channel, make_usage_event
from tests.test_budget_alerts import receiver  # noqa: F401 - the local HTTP receiver fixture

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (a real broker)"),
    pytest.mark.skipif(not settings.IS_POSTGRES, reason="needs PostgreSQL (the worker is another process)"),
]


@pytest.fixture
def worker(transactional_db):
    from llmobs.celery import app

    app.control.purge()
    database = settings.DATABASES["default"]
    # pytest-django points this process at test_<name>; the worker must use the same database.
    url = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{connection.settings_dict['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "DB_CONN_MAX_AGE": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "llmobs", "worker", "--pool=solo", "--loglevel=INFO", "--without-heartbeat",
         "--without-gossip", "--without-mingle", "-n", f"rollups-test-{os.getpid()}@%h"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False


@pytest.mark.django_db(transaction=True)
def test_rollup_budget_alert_and_webhook_run_on_a_real_worker(worker, acme, research_dept, receiver):  # noqa: F811
    from telemetry.tasks import roll_up

    assert not settings.CELERY_TASK_ALWAYS_EAGER
    make_channel(tenant=acme, name="hook", kind="webhook", target=receiver.url)
    make_budget(tenant=acme, department=research_dept, amount=Decimal("10"), thresholds=[50])
    make_usage_event(tenant=acme, department=research_dept, occurred_at=timezone.now(), cost=Decimal("7.5"))
    roll_up.delay()
    try:
        assert wait_for(lambda: HourlyRollup.objects.filter(tenant=acme).exists()), "the worker never rolled up"
        assert wait_for(lambda: Delivery.objects.filter(status=Delivery.Status.SENT).exists()), "no delivery sent"
    except AssertionError:
        worker.terminate()
        print(worker.stdout.read().decode()[-4000:])
        raise
    assert HourlyRollup.objects.get(tenant=acme).cost == Decimal("7.5")
    alert = BudgetAlert.objects.get(kind="threshold")
    assert alert.threshold == 50 and alert.spent == Decimal("7.5")
    assert [b["threshold_percent"] for b in receiver.bodies] == [50]
