"""Demo data: a tenant with departments, people of every role, budgets, routes, prices and a
month of realistic, priced usage, so every page has something true to show.

Deterministic (seeded RNG). The usage has daily and weekly seasonality, several providers and
models, prompt caching, reasoning tokens, errors and timeouts, a cost spike in Research three
days ago, and a handful of events for an unknown fine-tuned model that stay `unpriced` on
purpose (so the unpriced alert has something to find).
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from chargeback.budgets import evaluate_budgets
from chargeback.catalogue import load_catalogue
from chargeback.models import (
    ApiKey,
    AuditLog,
    Budget,
    Department,
    Invoice,
    Membership,
    ModelPrice,
    NotificationChannel,
    PendingCredit,
    Role,
    Route,
    Tenant,
)
from chargeback.pricing import get_price_book, price_usage
from chargeback.usage import Usage
from telemetry import alert_checks, anomalies, partitions, rollups
from telemetry.models import (
    DailyRollup,
    DimensionRollup,
    EvalConfig,
    EvalScore,
    Feedback,
    HourlyRollup,
    MonthlyDimensionRollup,
    UsageEvent,
)

DEMO_SLUG = "acme"
DEMO_PASSWORD = "llmobs-demo"  # noqa: S105 - printed to the person who ran seed_demo, demo only

DEPARTMENTS = [
    # code, name, GL cost centre, relative traffic, monthly budget (USD), mode
    ("research", "Research & Development", "CC-4100", 5.0, "120", Budget.Mode.HARD),
    ("support", "Customer Support", "CC-5200", 4.0, "60", Budget.Mode.HARD),
    ("engineering", "Engineering", "CC-4200", 3.0, "40", Budget.Mode.SOFT),
    ("marketing", "Marketing", "CC-6100", 1.5, "15", Budget.Mode.SOFT),
    ("legal", "Legal", "CC-7100", 0.6, "12", Budget.Mode.SOFT),
    ("finance", "Finance", "CC-8100", 0.4, "8", Budget.Mode.SOFT),
]

# provider, served model, route alias, weight, typical input, typical output, cache share, reasoning share
MODELS = [
    ("openai", "gpt-4o-2024-08-06", "gpt-4o", 3.0, 1800, 350, 0.45, 0.0),
    ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini", 6.0, 1200, 250, 0.30, 0.0),
    ("openai", "o3-mini", "o3-mini", 1.0, 2500, 1800, 0.20, 0.65),
    ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet", 3.0, 3000, 500, 0.60, 0.0),
    ("anthropic", "claude-3-5-haiku-20241022", "claude-haiku", 2.5, 900, 200, 0.40, 0.0),
    ("ollama", "llama3.1:8b", "llama-local", 2.0, 700, 300, 0.0, 0.0),
]
FEATURES = {
    "research": ["literature-review", "code-assist", "data-analysis"],
    "support": ["ticket-triage", "reply-draft", "kb-search"],
    "engineering": ["code-assist", "pr-review", "incident-summary"],
    "marketing": ["copywriting", "seo-brief"],
    "legal": ["contract-review", "clause-search"],
    "finance": ["report-summary"],
}
PEOPLE = [
    # username, role, department code, first name
    ("admin", Role.ADMIN, None, "Ada"),
    ("finance", Role.FINANCE, None, "Fiona"),
    ("manager", Role.MANAGER, "research", "Morgan"),
    ("employee", Role.EMPLOYEE, "research", "Emil"),
    ("support-lead", Role.MANAGER, "support", "Sam"),
]


@dataclass
class SeedResult:
    tenant: Tenant
    events: int
    unpriced: int
    cost: Decimal


def _hour_weight(local: datetime) -> float:
    """Office-hours traffic: low at night, peaks late morning and mid-afternoon, quiet weekends."""
    hour = local.hour + local.minute / 60
    daytime = math.exp(-((hour - 11) ** 2) / 8) + 0.8 * math.exp(-((hour - 15) ** 2) / 6) + 0.05
    return daytime * (0.25 if local.weekday() >= 5 else 1.0)


def reset_demo() -> None:
    tenant = Tenant.objects.filter(slug=DEMO_SLUG).first()
    if tenant is None:
        return
    UsageEvent.objects.filter(tenant=tenant).delete()
    EvalConfig.objects.filter(tenant=tenant).delete()  # before the routes its judge is PROTECTed by
    Feedback.objects.filter(tenant=tenant).delete()
    for rollup in (HourlyRollup, DailyRollup, DimensionRollup, MonthlyDimensionRollup):  # no FK cascade on rollups
        rollup.objects.filter(tenant=tenant).delete()
    # The demo's invoices and their audit trail go with it (a queryset delete: issued invoices
    # refuse Invoice.delete() one by one, which is the point outside a demo reset).
    PendingCredit.objects.filter(tenant=tenant).delete()
    Invoice.objects.filter(tenant=tenant).delete()
    AuditLog.objects.filter(tenant=tenant).delete()
    ApiKey.objects.filter(tenant=tenant).delete()
    Budget.objects.filter(tenant=tenant).delete()
    Membership.objects.filter(tenant=tenant).delete()
    Department.objects.filter(tenant=tenant).update(parent=None)
    Department.objects.filter(tenant=tenant).delete()
    ModelPrice.objects.filter(tenant=tenant).delete()
    tenant.delete()


@transaction.atomic
def seed_demo(
    *,
    days: int = 30,
    events_per_day: int = 900,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> SeedResult:
    say = progress or (lambda _message: None)
    rng = random.Random(42)  # noqa: S311 - demo data, not security
    now = (now or timezone.now()).replace(minute=0, second=0, microsecond=0)

    say("Loading the price catalogue from genai-prices…")
    load_catalogue()

    tenant = Tenant.objects.create(
        name="Acme Corp",
        slug=DEMO_SLUG,
        timezone="Europe/London",
        currency="USD",
        capture_mode=Tenant.CaptureMode.SAMPLED,
    )
    departments = {}
    for code, name, gl, _weight, _budget, _mode in DEPARTMENTS:
        departments[code] = Department.objects.create(tenant=tenant, code=code, name=name, gl_cost_centre=gl)

    say("Creating people, budgets, routes and channels…")
    User = get_user_model()
    for username, role, dept_code, first_name in PEOPLE:
        user = User.objects.filter(username=username).first() or User(username=username)
        user.first_name = first_name
        user.email = f"{username}@acme.example"
        user.is_staff = user.is_superuser = role == Role.ADMIN
        user.set_password(DEMO_PASSWORD)
        user.save()
        department = departments[dept_code] if dept_code else None
        Membership.objects.create(user=user, tenant=tenant, role=role, department=department)
        if role == Role.MANAGER:
            department.manager = user
            department.save(update_fields=["manager"])

    for code, _name, _gl, _weight, amount, mode in DEPARTMENTS:
        Budget.objects.create(
            tenant=tenant,
            name=f"{departments[code].name} monthly",
            scope=Budget.Scope.DEPARTMENT,
            department=departments[code],
            period=Budget.Period.MONTH,
            amount=Decimal(amount),
            mode=mode,
            thresholds=[50, 80, 100],
        )
    Budget.objects.create(
        tenant=tenant,
        name="Company-wide monthly",
        scope=Budget.Scope.TENANT,
        period=Budget.Period.MONTH,
        amount=Decimal("300"),
        mode=Budget.Mode.SOFT,
        thresholds=[80, 100],
    )
    Budget.objects.create(
        tenant=tenant,
        name="Claude Sonnet daily cap",
        scope=Budget.Scope.MODEL,
        model="claude-sonnet-4-20250514",
        period=Budget.Period.DAY,
        amount=Decimal("8"),
        mode=Budget.Mode.SOFT,
        thresholds=[100],
    )

    for provider, served, alias, *_rest in MODELS:
        Route.objects.create(
            tenant=tenant,
            alias=alias,
            provider=provider,
            upstream_model=served,
            credential_env={"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}.get(provider, ""),
            base_url="http://127.0.0.1:11434" if provider == "ollama" else "",
            fallbacks=["gpt-4o-mini"] if alias == "claude-haiku" else [],
        )
    Route.objects.create(tenant=tenant, alias="demo", provider=Route.Provider.DEMO, upstream_model="demo-echo")
    # A negotiated discount: Acme pays 10 % under list for GPT-4o from the start of the data.
    ModelPrice.objects.create(
        tenant=tenant,
        provider="openai",
        model_pattern=r"gpt-4o-20\d\d-\d\d-\d\d",
        match_type=ModelPrice.MatchType.REGEX,
        effective_from=now - timedelta(days=days + 1),
        input_per_mtok=Decimal("2.25"),
        cache_read_per_mtok=Decimal("1.125"),
        output_per_mtok=Decimal("9.00"),
        source=ModelPrice.Source.MANUAL,
        priority=10,
        notes="Enterprise agreement: 10% off list.",
    )

    say(f"Generating {days} days of usage…")
    book = get_price_book(tenant.id)
    users = {code: [f"{code}-user{n:02d}@acme.example" for n in range(1, 9)] for code in departments}
    users["research"].append("employee")
    dept_weights = [d[3] for d in DEPARTMENTS]
    model_weights = [m[3] for m in MODELS]
    spike_start = now - timedelta(days=3, hours=-10)
    spike_end = spike_start + timedelta(hours=5)
    tz = tenant.tz
    rows: list[UsageEvent] = []
    hour_count = days * 24
    mean_weight = sum(_hour_weight((now - timedelta(hours=h)).astimezone(tz)) for h in range(168)) / 168
    for h in range(hour_count, 0, -1):
        hour_start = now - timedelta(hours=h)
        expected = events_per_day / 24 * _hour_weight(hour_start.astimezone(tz)) / mean_weight
        count = max(0, int(rng.gauss(expected, math.sqrt(expected + 1))))
        in_spike = spike_start <= hour_start < spike_end
        for _ in range(count + (60 if in_spike else 0)):
            spike_call = in_spike and rng.random() < 0.7
            code = "research" if spike_call else rng.choices(list(departments), weights=dept_weights)[0]
            if spike_call:
                provider, served, alias, _w, mean_in, mean_out, cache_share, reasoning_share = MODELS[3]
                mean_in, mean_out = 60_000, 2_500  # a batch job stuffing long documents into Sonnet
            else:
                provider, served, alias, _w, mean_in, mean_out, cache_share, reasoning_share = rng.choices(
                    MODELS, weights=model_weights
                )[0]
            rows.append(
                _event(
                    rng,
                    tenant,
                    departments[code],
                    users[code],
                    code,
                    provider,
                    served,
                    alias,
                    mean_in,
                    mean_out,
                    cache_share,
                    reasoning_share,
                    hour_start + timedelta(seconds=rng.randrange(3600)),
                    book,
                )
            )
    # On purpose: a fine-tuned model nobody priced yet.
    for n in range(6):
        rows.append(
            _event(
                rng,
                tenant,
                departments["engineering"],
                users["engineering"],
                "engineering",
                "openai",
                "ft:gpt-4o-mini:acme:support-v2",
                "ft-support",
                800,
                150,
                0.0,
                0.0,
                now - timedelta(hours=2 + n * 5),
                book,
            )
        )
    say(f"Writing {len(rows):,} priced usage events…")
    with transaction.atomic():
        partitions.insert_new_events(rows)
    # bulk_create bypasses nothing the rollups watch (they key on received_at), but the pages
    # should show numbers as soon as seeding ends, without waiting for the beat schedule.
    say("Building the rollups (hourly, daily, per user/feature/tag)…")
    rollups.rebuild(
        start=now - timedelta(hours=hour_count),
        end=now + timedelta(hours=1),
        tenant_id=tenant.pk,
        chunk=timedelta(days=7),
    )
    # Score the planted Research spike like the hourly task would have (scoring every hour of
    # the month would take minutes); later hours are scored by the beat schedule when it runs.
    say("Scoring the Research spike for anomalies…")
    found = []
    for k in range(int((spike_end - spike_start) / timedelta(hours=1))):
        found += anomalies.score_tenant(tenant=tenant, hour=spike_start + timedelta(hours=k))
    # The alerts the hourly scoring, the budget evaluation and the 5-minute checks would raise,
    # for the Alerts page. The notification channel is added afterwards, so seeding sends no
    # e-mail (the demo has no mail server); new alerts go to it from then on.
    say("Raising the alerts the scheduled tasks would (Alerts page)…")
    anomalies.notify_anomalies(tenant=tenant, anomalies=found, now=now)
    evaluate_budgets(tenant_id=tenant.pk, at=now)
    alert_checks.check_tenant(tenant=tenant, now=now)
    NotificationChannel.objects.create(
        tenant=tenant, name="Finance team", kind=NotificationChannel.Kind.EMAIL, target="finance@acme.example"
    )
    say("Adding quality verdicts and feedback for the last two weeks…")
    _seed_quality(rng, tenant, rows, now)
    unpriced = sum(1 for r in rows if r.cost_provenance == UsageEvent.Provenance.UNPRICED)
    total = sum((r.cost for r in rows if r.cost is not None), Decimal(0))
    return SeedResult(tenant=tenant, events=len(rows), unpriced=unpriced, cost=total)


# How often the demo's judge passes each served model (1-5 rubric, pass at 4): the small local
# model is visibly worse, which is the story the Quality page tells next to its low cost.
PASS_BY_MODEL = {
    "gpt-4o-2024-08-06": 0.9,
    "gpt-4o-mini-2024-07-18": 0.83,
    "o3-mini": 0.88,
    "claude-sonnet-4-20250514": 0.93,
    "claude-3-5-haiku-20241022": 0.84,
    "llama3.1:8b": 0.64,
}
FAILED_REASONS = [
    "Answers a different question than the one asked.",
    "Leaves out the second half of the request.",
    "States a figure that the conversation does not support.",
    "Correct but so terse that the user has to ask again.",
]
PASSED_REASONS = ["Complete and accurate.", "Addresses every part of the request.", "Clear and correct."]


def _seed_quality(rng: random.Random, tenant: Tenant, rows: list[UsageEvent], now: datetime) -> None:
    """Demo verdicts as a sampling judge would have left them (no judge is called: the demo has
    no provider keys), plus thumbs from the chat page. Labelled demo data, like the events."""
    judge = Route.objects.get(tenant=tenant, alias="gpt-4o-mini")
    helpful = EvalConfig.objects.create(
        tenant=tenant, name="Helpfulness", judge_route=judge, sample_rate=Decimal("0.04"),
        criteria="Answers the user's actual question completely and correctly, without padding.",
        slo_min_pass_rate=Decimal("0.80"), baseline_margin=Decimal("0.10"),
    )  # fmt: skip
    grounded = EvalConfig.objects.create(
        tenant=tenant, name="Support answers grounded", kind=EvalConfig.Kind.FAITHFULNESS, judge_route=judge,
        criteria="Every claim in the answer is supported by the retrieved knowledge-base articles.",
        sample_rate=Decimal("0.1"), filter_department=Department.objects.get(tenant=tenant, code="support"),
        filter_feature="kb-search", slo_min_pass_rate=Decimal("0.85"),
    )  # fmt: skip
    since = now - timedelta(days=14)
    scores, feedback = [], []
    for event in rows:
        if event.occurred_at < since or event.status != UsageEvent.Status.OK or event.cost is None:
            continue
        for config, kind, share in (
            (helpful, EvalScore.Kind.RUBRIC, helpful.sample_rate),
            (grounded, EvalScore.Kind.FAITHFULNESS, grounded.sample_rate if event.feature == "kb-search" else 0),
        ):
            if rng.random() >= share:
                continue
            passed = rng.random() < PASS_BY_MODEL.get(event.model, 0.8)
            score = rng.choice([4, 5, 5]) if passed else rng.choice([1, 2, 2, 3, 3])
            scores.append(
                EvalScore(
                    tenant=tenant,
                    config=config,
                    event_id=event.event_id,
                    event_at=event.occurred_at,
                    department=event.department,
                    department_code=event.department_code,
                    model=event.model,
                    feature=event.feature,
                    kind=kind,
                    status=EvalScore.Status.OK,
                    score=Decimal(score),
                    normalized=(score - 1) / 4,
                    passed=passed,
                    judge_model="gpt-4o-mini-2024-07-18",
                    reasoning=rng.choice(PASSED_REASONS if passed else FAILED_REASONS),
                )
            )
        if event.feature in ("code-assist", "reply-draft") and rng.random() < 0.05:
            good = rng.random() < PASS_BY_MODEL.get(event.model, 0.8) + 0.04
            feedback.append(
                Feedback(
                    tenant=tenant,
                    event_id=event.event_id,
                    author=f"user:{event.user_ref}",
                    event_at=event.occurred_at,
                    department=event.department,
                    department_code=event.department_code,
                    model=event.model,
                    feature=event.feature,
                    thumbs=Feedback.Thumbs.UP if good else Feedback.Thumbs.DOWN,
                    regenerated=not good and rng.random() < 0.5,
                )
            )
    EvalScore.objects.bulk_create(scores, batch_size=2000)
    Feedback.objects.bulk_create(feedback, batch_size=2000)


def _event(
    rng,
    tenant,
    department,
    users,
    code,
    provider,
    served,
    alias,
    mean_in,
    mean_out,
    cache_share,
    reasoning_share,
    at,
    book,
) -> UsageEvent:
    roll = rng.random()
    status = (
        UsageEvent.Status.ERROR
        if roll < 0.015
        else UsageEvent.Status.TIMEOUT
        if roll < 0.02
        else UsageEvent.Status.RATE_LIMITED
        if roll < 0.025
        else UsageEvent.Status.OK
    )
    input_tokens = max(20, int(rng.lognormvariate(math.log(mean_in), 0.6)))
    output_tokens = max(1, int(rng.lognormvariate(math.log(mean_out), 0.7)))
    cache_read = cache_write = 0
    if cache_share and input_tokens > 1024 and rng.random() < 0.7:
        cached = int(input_tokens * cache_share) // 128 * 128
        if provider == "anthropic" and rng.random() < 0.25:
            cache_write = cached
        else:
            cache_read = cached
    reasoning = int(output_tokens * reasoning_share)
    compute_ms = None
    if status != UsageEvent.Status.OK:
        output_tokens = reasoning = 0
        if status != UsageEvent.Status.ERROR:
            input_tokens = cache_read = cache_write = 0
    if provider == "ollama":
        compute_ms = int(input_tokens * 0.4 + output_tokens * 22)
    usage = Usage(
        input_tokens=input_tokens,
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning,
        compute_ms=compute_ms,
    )
    latency = int(150 + output_tokens * rng.uniform(8, 25) + input_tokens * 0.02)
    if status == UsageEvent.Status.TIMEOUT:
        latency = 60_000
    priced = price_usage(book=book, provider=provider, model=served, at=at, usage=usage)
    return UsageEvent(
        tenant=tenant,
        event_id=f"demo-{uuid.UUID(int=rng.getrandbits(128)).hex}",
        operation_id=uuid.UUID(int=rng.getrandbits(128)).hex,
        source=UsageEvent.Source.DEMO,
        department=department,
        department_code=code,
        user_ref=rng.choice(users),
        provider=provider,
        requested_model=alias,
        model=served,
        operation="chat",
        occurred_at=at,
        latency_ms=latency,
        ttft_ms=int(latency * rng.uniform(0.08, 0.2)) if status == UsageEvent.Status.OK else None,
        status=status,
        error_type={"error": "server_error", "timeout": "timeout", "rate_limited": "rate_limit"}.get(status, ""),
        feature=rng.choice(FEATURES[code]),
        tags={"env": "prod", "team": code},
        **usage.to_fields(),
        **priced.to_fields(),
    )
