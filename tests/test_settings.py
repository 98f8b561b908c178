"""Both runtime configurations: the embedded default and production (PostgreSQL + Redis)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import django, json; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'db': s.DATABASES['default']['ENGINE'], 'cache': s.CACHES['default']['BACKEND'], "
    "'eager': s.CELERY_TASK_ALWAYS_EAGER, 'broker': s.CELERY_BROKER_URL}))"
)


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    clean.update(env, DJANGO_SETTINGS_MODULE="llmobs.settings")
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_environment_gives_the_embedded_default():
    assert probe() == {
        "db": "django.db.backends.sqlite3",
        "cache": "django.core.cache.backends.locmem.LocMemCache",
        "eager": True,
        "broker": "memory://",
    }


def test_database_and_redis_urls_give_the_production_configuration():
    assert probe(DATABASE_URL="postgres://postgres@127.0.0.1:5432/test", REDIS_URL="redis://127.0.0.1:6379/0") == {
        "db": "django.db.backends.postgresql",
        "cache": "django.core.cache.backends.redis.RedisCache",
        "eager": False,
        "broker": "redis://127.0.0.1:6379/0",
    }


@pytest.mark.skipif(not settings.REDIS_URL, reason="REDIS_URL is not set (embedded default)")
def test_the_cache_really_round_trips_through_redis():
    import redis

    cache.set("settings-probe", "hello", timeout=30)
    raw = redis.Redis.from_url(settings.REDIS_URL)
    assert any(b"settings-probe" in key for key in raw.keys("*settings-probe*"))
    assert cache.get("settings-probe") == "hello"


@pytest.mark.django_db
def test_the_suite_runs_on_the_configured_database():
    expected = "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
    assert connection.vendor == expected


@pytest.mark.django_db
def test_health_and_readiness_probes(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"


def test_openapi_schema_and_offline_docs_are_served(client, db):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    # The Swagger UI assets come from the vendored sidecar package, never a CDN.
    assert b"cdn" not in docs.content.lower()
    assert b"/static/drf_spectacular_sidecar/" in docs.content


def test_the_documented_production_environment_passes_check_deploy():
    """The production lines of .env.example, filled in, give a clean `manage.py check --deploy`."""
    # DJANGO_ALLOW_ASYNC_UNSAFE is the browser tests' (tests/browser/conftest.py sets it for
    # Playwright when collected); a deployment never has it.
    leave_out = ("DATABASE_URL", "REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")
    env = {k: v for k, v in os.environ.items() if k not in leave_out}
    env.update(
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/test",
        REDIS_URL="redis://127.0.0.1:6379/0",
        SECRET_KEY="a-production-secret-key-with-plenty-of-entropy-0123456789abcdefXYZ",
        ALLOWED_HOSTS="llmobs.example.com",
        SESSION_COOKIE_SECURE="true",
        SECURE_SSL_REDIRECT="true",
        SECURE_HSTS_SECONDS="31536000",
        DJANGO_SETTINGS_MODULE="llmobs.settings",
    )
    documented = (ROOT / ".env.example").read_text()
    for name in ("SECRET_KEY", "ALLOWED_HOSTS", "SESSION_COOKIE_SECURE", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS"):
        assert f"# {name}=" in documented
    out = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no issues" in out.stdout
