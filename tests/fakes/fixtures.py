"""Fixtures for gateway tests: the fake upstream, routes pointing at it, API keys, and a clean
gateway state (ledger, rate windows, breakers, caches, recorder) per test. Import with
`from tests.fakes.fixtures import *` in a test module."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from chargeback import enforcement
from chargeback.models import ApiKey, ModelPrice, Route
from telemetry import gateway, openai_compat, providers, ratelimit, recorder
from tests.fakes.upstream import FakeUpstream

__all__ = [
    "_close_connections_per_request",
    "_fake_server",
    "fake",
    "gateway_state",
    "make_key",
    "make_prices",
    "make_routes",
    "routes",
]


@pytest.fixture(scope="session")
def _fake_server():
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def fake(_fake_server) -> FakeUpstream:
    _fake_server.reset()
    return _fake_server


@pytest.fixture(scope="session", autouse=True)
def _close_connections_per_request():
    """The live server runs each request in a new thread; with persistent connections every
    thread would leave a PostgreSQL session behind. Close them at the end of each request."""
    from django.db import connections

    previous = connections.databases["default"].get("CONN_MAX_AGE", 0)
    connections.databases["default"]["CONN_MAX_AGE"] = 0
    yield
    connections.databases["default"]["CONN_MAX_AGE"] = previous


@pytest.fixture(autouse=True)
def gateway_state(settings):
    settings.LLMOBS_RECORDER_BACKGROUND = False
    settings.LLMOBS_RETRY_BACKOFF_SECONDS = 0.001
    settings.LLMOBS_BREAKER_FAILURES = 5
    settings.LLMOBS_BREAKER_COOLDOWN_SECONDS = 30
    recorder.recorder._take(10**9)
    enforcement.reset_ledger()
    ratelimit.reset_limits()
    gateway.reset_breakers()
    gateway.forget_routes()
    openai_compat.forget_keys()
    providers.reset_clients()
    yield
    recorder.recorder._take(10**9)
    enforcement.reset_ledger()


def make_key(tenant, *, department=None, user=None, rpm_limit=None, tpm_limit=None) -> tuple[ApiKey, str]:
    raw, prefix = ApiKey.generate()
    key = ApiKey.objects.create(
        tenant=tenant,
        name="test key",
        prefix=prefix,
        key_hash=ApiKey.hash_token(raw),
        department=department,
        user=user,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
    )
    return key, raw


def make_prices() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    ModelPrice.objects.create(
        provider="openai",
        model_pattern="gpt-4o",
        effective_from=start,
        input_per_mtok=Decimal("2.50"),
        cache_read_per_mtok=Decimal("1.25"),
        output_per_mtok=Decimal("10.00"),
        reasoning_per_mtok=Decimal("12.00"),
    )
    ModelPrice.objects.create(
        provider="openai",
        model_pattern="gpt-4o-mini",
        effective_from=start,
        input_per_mtok=Decimal("0.15"),
        output_per_mtok=Decimal("0.60"),
    )
    ModelPrice.objects.create(
        provider="anthropic",
        model_pattern="claude-sonnet-4",
        effective_from=start,
        input_per_mtok=Decimal("3.00"),
        cache_read_per_mtok=Decimal("0.30"),
        cache_write_per_mtok=Decimal("3.75"),
        output_per_mtok=Decimal("15.00"),
    )
    ModelPrice.objects.create(
        provider="ollama",
        model_pattern="llama3.1:8b",
        effective_from=start,
        per_gpu_second=Decimal("0.0005"),
    )


def make_routes(tenant, fake: FakeUpstream, **overrides) -> dict[str, Route]:
    common = {"max_retries": 1, "timeout_seconds": Decimal("5")}
    common.update(overrides)
    return {
        "gpt-4o": Route.objects.create(
            tenant=tenant,
            alias="gpt-4o",
            provider="openai",
            upstream_model="gpt-4o",
            base_url=fake.url + "/v1",
            credential_env="FAKE_OPENAI_KEY",
            **common,
        ),
        "gpt-4o-mini": Route.objects.create(
            tenant=tenant,
            alias="gpt-4o-mini",
            provider="openai",
            upstream_model="gpt-4o-mini",
            base_url=fake.url + "/v1",
            **common,
        ),
        "claude": Route.objects.create(
            tenant=tenant,
            alias="claude",
            provider="anthropic",
            upstream_model="claude-sonnet-4",
            base_url=fake.url,
            credential_env="FAKE_ANTHROPIC_KEY",
            **common,
        ),
        "llama": Route.objects.create(
            tenant=tenant, alias="llama", provider="ollama", upstream_model="llama3.1:8b", base_url=fake.url, **common
        ),
        "demo": Route.objects.create(tenant=tenant, alias="demo", provider="demo", upstream_model="demo-echo"),
    }


@pytest.fixture
def routes(acme, fake):
    make_prices()
    return make_routes(acme, fake)
