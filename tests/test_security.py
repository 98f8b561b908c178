"""Security basics: hashed keys with a constant-time check, secrets only from the environment,
secure cookies in production, CSRF on pages, per-IP login limits (product and admin), request
size limits, the metrics scrape token, the audit log for budget edits, and shared-cache outages
failing open where documented."""

from __future__ import annotations

import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from django.apps import apps
from django.core.cache import cache
from django.test import Client

from chargeback import pricing
from chargeback.keys import create_api_key
from chargeback.models import ApiKey, AuditLog, Role
from tests.factories import make_budget

ROOT = Path(__file__).resolve().parent.parent


def test_api_keys_are_stored_hashed_and_checked_in_constant_time(acme):
    key, raw = create_api_key(tenant=acme, name="svc")
    assert raw not in key.key_hash and key.key_hash == ApiKey.hash_token(raw)
    with mock.patch("chargeback.models.hmac.compare_digest", wraps=hmac.compare_digest) as compare:
        assert ApiKey.objects.for_token(raw) == key
        assert ApiKey.objects.for_token(raw[:-1] + ("x" if raw[-1] != "x" else "y")) is None
    assert compare.call_count >= 2


def test_ingest_key_lookup_compares_in_constant_time(acme, research_dept):
    _, raw = create_api_key(tenant=acme, name="svc", department=research_dept)
    with mock.patch("telemetry.ingest.hmac.compare_digest", wraps=hmac.compare_digest) as compare:
        response = Client().post("/api/v1/usage-events", data="[]", content_type="application/json",
                                 HTTP_AUTHORIZATION=f"Bearer {raw}")  # fmt: skip
    assert response.status_code == 400  # authenticated, then refused as empty
    assert compare.called


SECRET_WORDS = ("secret", "password", "apikey", "token", "credential", "passwd")


def test_no_model_stores_a_provider_secret():
    """Provider credentials come from the environment (Route.credential_env names a variable);
    the only secret-looking columns are the key hash, Django's password hash, the env-var name
    and the key prefix."""
    allowed = {("chargeback.ApiKey", "key_hash"), ("chargeback.ApiKey", "prefix"), ("auth.User", "password"),
               ("chargeback.Route", "credential_env"), ("telemetry.UsageEvent", "api_key_prefix")}  # fmt: skip
    found = []
    for model in apps.get_models():
        for field in model._meta.get_fields():
            name = getattr(field, "name", "")
            label = model._meta.label
            words = set(name.lower().split("_"))
            if (
                (words & set(SECRET_WORDS) or "api_key" in name.lower())
                and (label, name) not in allowed
                and not field.is_relation
            ):
                found.append(f"{label}.{name}")
    assert not found, f"secret-looking columns: {found}"


def test_production_settings_use_secure_cookies():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    env.update(DATABASE_URL="postgres://postgres@127.0.0.1:5432/test", REDIS_URL="redis://127.0.0.1:6379/0",
               DJANGO_SETTINGS_MODULE="llmobs.settings")  # fmt: skip
    code = ("import django, json; django.setup(); from django.conf import settings as s; print(json.dumps("
            "[s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.DEBUG]))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, True, True, False]


def test_page_post_without_csrf_token_is_refused(acme, employee_user, other_tenant):
    client = Client(enforce_csrf_checks=True)
    client.force_login(employee_user)
    response = client.post("/tenant/", {"tenant": str(acme.pk)})
    assert response.status_code == 403


def test_chat_post_without_csrf_token_is_refused(acme, employee_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(employee_user)
    response = client.post(
        "/api/chat",
        data='{"route": "x", "messages": [{"role": "user", "content": "hi"}]}',
        content_type="application/json",
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_login_failures_are_limited_per_ip(db, path):
    cache.clear()
    client = Client()
    statuses = [client.post(path, {"username": "nobody", "password": "wrong"}).status_code for _ in range(11)]
    assert statuses[:10] == [200] * 10
    assert statuses[10] == 429
    # Another address is not affected.
    assert Client(REMOTE_ADDR="10.9.9.9").post(path, {"username": "nobody", "password": "x"}).status_code == 200
    cache.clear()


def test_login_limiter_fails_open_when_the_cache_is_down(db):
    with mock.patch("web.views.cache") as broken:
        broken.get.side_effect = ConnectionError("redis down")
        broken.add.side_effect = ConnectionError("redis down")
        assert Client().post("/login/", {"username": "nobody", "password": "wrong"}).status_code == 200


def test_gateway_body_over_the_upload_limit_is_a_4xx(acme, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    _, raw = create_api_key(tenant=acme, name="gw")
    body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "a" * 5000}]})
    response = Client().post("/v1/chat/completions", data=body, content_type="application/json",
                             HTTP_AUTHORIZATION=f"Bearer {raw}")  # fmt: skip
    assert 400 <= response.status_code < 500


def test_metrics_need_the_scrape_token_when_configured(db, settings):
    settings.LLMOBS_METRICS_TOKEN = "scrape-secret"
    assert Client().get("/metrics").status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200


def test_admin_budget_edit_is_audited(acme, research_dept):
    from django.contrib.auth import get_user_model

    superuser = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    budget = make_budget(tenant=acme, department=research_dept)
    client = Client()
    client.force_login(superuser)
    page = client.get(f"/admin/chargeback/budget/{budget.pk}/change/")
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields}
    data = {k: ("" if v is None else v) for k, v in data.items()}
    data.update(amount="1234.00", thresholds=json.dumps(budget.thresholds), tenant=acme.pk, department=research_dept.pk)
    response = client.post(f"/admin/chargeback/budget/{budget.pk}/change/", data)
    assert response.status_code == 302, response.content[:2000]
    budget.refresh_from_db()
    entry = AuditLog.objects.get(object_type="chargeback.Budget")
    assert entry.action == "update" and "amount" in entry.changes


def test_price_book_survives_a_shared_cache_outage(gpt4o_price):
    with mock.patch.object(pricing, "cache") as broken:
        broken.get.side_effect = ConnectionError("redis down")
        broken.incr.side_effect = ConnectionError("redis down")
        book = pricing.get_price_book(None)
        pricing.bump_price_version()  # logged, not raised
    assert book is not None


def test_matrix_roles_exist():
    assert {Role.EMPLOYEE, Role.MANAGER, Role.FINANCE, Role.ADMIN} <= set(Role.values)


def test_slow_tasks_are_routed_off_the_default_queue():
    from llmobs.celery import app

    def queue(name: str) -> str:
        route = app.amqp.router.route({}, name, args=(), kwargs={})
        return route["queue"].name

    assert queue("chargeback.generate_invoices") == "slow"
    assert queue("evals.run_suite") == "slow"
    assert queue("reports.send_stakeholder_report") == "slow"
    assert queue("telemetry.roll_up") == "default"
    assert queue("chargeback.evaluate_budgets") == "default"
