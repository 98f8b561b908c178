"""What the drills share: a fresh tenant with an ingest key, and a runserver subprocess on a
port of the caller's range, waited for until it answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def setup_tenant(*, with_gateway: bool = False) -> tuple[str, str]:
    """(slug, API key) of a new tenant with one department the key is bound to; with_gateway
    adds the `demo` route and a hard tenant budget. Created without Redis (embedded cache)."""
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from chargeback.keys import create_api_key
    from chargeback.models import Budget, Department, Route, Tenant

    slug = f"drill-{uuid.uuid4().hex[:8]}"
    tenant = Tenant.objects.create(name=slug, slug=slug)
    dept = Department.objects.create(tenant=tenant, code="ops", name="Operations")
    if with_gateway:
        Route.objects.create(tenant=tenant, alias="demo", provider=Route.Provider.DEMO, upstream_model="demo-1")
        Budget.objects.create(
            tenant=tenant, name="hard cap", scope=Budget.Scope.TENANT, amount=100, mode=Budget.Mode.HARD
        )
    _, token = create_api_key(tenant=tenant, name="drill", department=dept)
    return slug, token


def start_server(port: int, *, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`manage.py runserver` on 127.0.0.1:port, returned once /healthz answers (≤ 20 s)."""
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", *extra],
        cwd=ROOT, env=env or dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    return server
