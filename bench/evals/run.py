"""Cost of the evaluation task's database work and of the quality summary.

    DATABASE_URL=postgres://... /work/main/.venv/bin/python bench/evals/run.py [--events 200000]

Creates a throw-away tenant `bench-evals` with `--events` usage events in the last 24 hours (a
third captured), an EvalConfig sampling 10 % of them (max 50 per run), `--scores` EvalScore rows
and as many Feedback rows, then times:
- `candidates()` (the sampling query: lookback window, filters, EXISTS capture, NOT EXISTS score),
  cold and after 5,000 events are already scored;
- `quality_summary()` over the month for the whole tenant and one department.
Judge calls themselves are network-bound (one gateway call each) and not measured here.
The tenant is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")

import django

django.setup()

from django.utils import timezone  # noqa: E402

from chargeback.models import Department, Route, Tenant  # noqa: E402
from telemetry import evals  # noqa: E402
from telemetry.models import CapturedContent, EvalConfig, EvalScore, Feedback, UsageEvent  # noqa: E402


def timed(fn, repeat: int = 5) -> tuple[float, object]:
    samples, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--scores", type=int, default=20_000)
    args = parser.parse_args()
    for old in Tenant.objects.filter(slug="bench-evals"):
        cleanup(old)
    tenant = Tenant.objects.create(name="Bench evals", slug="bench-evals")
    depts = [Department.objects.create(tenant=tenant, code=f"d{i}", name=f"D{i}") for i in range(6)]
    route = Route.objects.create(tenant=tenant, alias="judge", provider="demo", upstream_model="demo")
    now = timezone.now()
    print(f"loading {args.events} events…", flush=True)
    batch, captures = [], []
    for i in range(args.events):
        dept = depts[i % len(depts)]
        at = now - timedelta(seconds=(i * 86_000) // args.events + 60)
        batch.append(
            UsageEvent(
                tenant=tenant,
                event_id=f"b{i}",
                source="gateway",
                department=dept,
                department_code=dept.code,
                provider="openai",
                model="gpt-4o" if i % 2 else "claude",
                occurred_at=at,
                status="ok",
                cost_provenance="computed",
                feature="support" if i % 3 else "search",
            )
        )
        if i % 3 == 1:  # a third captured, all of them `support` calls
            captures.append(
                CapturedContent(
                    tenant=tenant,
                    event_id=f"b{i}",
                    messages=[{"role": "user", "content": "q"}],
                    completion="a",
                    created_at=at,
                    expires_at=at + timedelta(days=30),
                )
            )
        if len(batch) == 5000:
            UsageEvent.objects.bulk_create(batch)
            CapturedContent.objects.bulk_create(captures)
            batch, captures = [], []
    UsageEvent.objects.bulk_create(batch)
    CapturedContent.objects.bulk_create(captures)
    config = EvalConfig.objects.create(
        tenant=tenant,
        name="bench",
        judge_route=route,
        criteria="c",
        sample_rate=Decimal("0.1"),
        max_per_run=50,
        filter_feature="support",
    )
    cold, picked = timed(lambda: evals.candidates(config))
    print(f"candidates(): {cold:.1f} ms median of 5 ({len(picked)} picked)")
    scored = [
        EvalScore(
            tenant=tenant,
            config=config,
            event_id=f"b{i}",
            event_at=now - timedelta(hours=1),
            department=depts[i % 6],
            department_code=depts[i % 6].code,
            model="gpt-4o",
            feature="support",
            kind="rubric",
            status="ok",
            passed=i % 4 != 0,
            normalized=0.75,
        )
        for i in range(1, min(args.events, args.scores * 3), 3)
    ][: args.scores]
    EvalScore.objects.bulk_create(scored, batch_size=5000)
    Feedback.objects.bulk_create(
        [
            Feedback(
                tenant=tenant,
                event_id=f"b{i}",
                author="user:1",
                event_at=now - timedelta(hours=1),
                department=depts[i % 6],
                department_code=depts[i % 6].code,
                model="gpt-4o",
                thumbs="up" if i % 5 else "down",
            )
            for i in range(args.scores)
        ],
        batch_size=5000,
    )
    warm, picked = timed(lambda: evals.candidates(config))
    print(f"candidates() with {len(scored)} already scored: {warm:.1f} ms ({len(picked)} picked)")
    start = now - timedelta(days=30)
    full, _ = timed(lambda: evals.quality_summary(tenant=tenant, start=start, end=now), repeat=3)
    one, _ = timed(
        lambda: evals.quality_summary(tenant=tenant, start=start, end=now, department_ids=[depts[0].pk]), repeat=3
    )
    print(
        f"quality_summary(): tenant {full:.0f} ms, one department {one:.0f} ms ({len(scored)} scores + {args.scores} feedback)"
    )
    cleanup(tenant)


def cleanup(tenant: Tenant) -> None:
    UsageEvent.objects.filter(tenant=tenant).delete()
    EvalConfig.objects.filter(tenant=tenant).delete()  # protects its judge route
    tenant.delete()


if __name__ == "__main__":
    main()
