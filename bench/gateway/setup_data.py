"""Create the benchmark tenant: a route to the fake upstream, a price, a hard budget and a key
with rate limits, so every gateway call takes the full path (auth, rate limit, budget reserve
and settle, pricing, recording). Prints the raw API key."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")

import django

django.setup()

from chargeback.models import ApiKey, Budget, Department, ModelPrice, Route, Tenant  # noqa: E402


def main(upstream: str) -> None:
    tenant, _ = Tenant.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    dept, _ = Department.objects.get_or_create(tenant=tenant, code="perf", defaults={"name": "Perf"})
    Route.objects.update_or_create(
        tenant=tenant,
        alias="gpt-4o",
        defaults={
            "provider": "openai",
            "upstream_model": "gpt-4o",
            "base_url": upstream + "/v1",
            "credential_env": "",
            "max_retries": 0,
            "timeout_seconds": Decimal("30"),
        },
    )
    ModelPrice.objects.get_or_create(
        tenant=None,
        provider="openai",
        model_pattern="gpt-4o",
        match_type="exact",
        effective_from=datetime(2024, 1, 1, tzinfo=UTC),
        defaults={
            "input_per_mtok": Decimal("2.50"),
            "cache_read_per_mtok": Decimal("1.25"),
            "output_per_mtok": Decimal("10"),
        },
    )
    Budget.objects.get_or_create(
        tenant=tenant,
        name="Perf hard cap",
        defaults={
            "scope": Budget.Scope.DEPARTMENT,
            "department": dept,
            "amount": Decimal("1000000000"),
            "mode": Budget.Mode.HARD,
        },
    )
    ApiKey.objects.filter(tenant=tenant).delete()
    raw, prefix = ApiKey.generate()
    ApiKey.objects.create(
        tenant=tenant,
        name="bench",
        prefix=prefix,
        key_hash=ApiKey.hash_token(raw),
        department=dept,
        rpm_limit=10_000_000,
        tpm_limit=2_000_000_000,
    )
    print(raw)


if __name__ == "__main__":
    main(sys.argv[1])
