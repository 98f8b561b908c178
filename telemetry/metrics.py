"""Prometheus metrics of the gateway, served on `GET /metrics`.

Labels are bounded: tenant slug, department code, provider, and model only when it is a model
some route is configured for (anything else becomes "other"), so a caller cannot blow up the
series count. Under a multi-process server (granian, gunicorn) set `PROMETHEUS_MULTIPROC_DIR` (an empty directory, wiped at
deploy) and every worker's samples are merged at scrape time.
"""

from __future__ import annotations

import hmac
import logging
import os
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

LABELS = ("tenant", "department", "provider", "model")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("llmobs_gateway_requests", "Gateway call attempts by outcome.", [*LABELS, "status"])
TOKENS = Counter("llmobs_gateway_tokens", "Tokens by canonical bucket.", [*LABELS, "type"])
COST = Counter("llmobs_gateway_cost", "Cost of gateway calls, in the price currency.", [*LABELS, "currency"])
DURATION = Histogram(
    "llmobs_gateway_request_duration_seconds", "Upstream call duration.", LABELS, buckets=LATENCY_BUCKETS
)
TTFT = Histogram(
    "llmobs_gateway_ttft_seconds", "Time to first token of streamed calls.", LABELS, buckets=LATENCY_BUCKETS
)
IN_FLIGHT = Gauge("llmobs_gateway_in_flight", "Gateway calls in progress.", ["tenant"], multiprocess_mode="livesum")
BUDGET_REMAINING = Gauge(
    "llmobs_budget_remaining",
    "Smallest remaining amount among the hard budgets a call was checked against.",
    ["tenant", "department"],
    multiprocess_mode="mostrecent",
)
# Quality (telemetry/evals.py): set by the `telemetry.run_evals` task every 15 minutes.
EVAL_PASS_RATE = Gauge(
    "llmobs_eval_pass_rate",
    "Rolling pass rate (0-1) of an evaluation config over its SLO window.",
    ["tenant", "config"],
    multiprocess_mode="mostrecent",
)
FEEDBACK_SATISFACTION = Gauge(
    "llmobs_feedback_satisfaction",
    "User satisfaction (0-1) over the last 7 days, from explicit and implicit feedback.",
    ["tenant", "department"],
    multiprocess_mode="mostrecent",
)
# Trace sampling (telemetry/sampling.py): decision is keep/drop, reason why.
TRACE_SAMPLING = Counter(
    "llmobs_trace_sampling", "Gateway calls by trace sampling decision and reason.", ["tenant", "decision", "reason"]
)
BUDGET_FAIL_OPEN = Counter("llmobs_budget_fail_open", "Calls admitted without budget checks (ledger down).")
RECORDER_DROPPED = Counter(
    "llmobs_recorder_dropped_events", "Gateway usage events the database refused to store (logged with their id)."
)
# Ingest API and OTLP (telemetry/ingest.py record_batch): source is ingest/otlp, outcome is
# accepted/duplicate/rejected. No tenant label: the alert is on the whole intake.
INGEST_EVENTS = Counter(
    "llmobs_ingest_events", "Events received by the ingest API and OTLP, by outcome.", ["source", "outcome"]
)

TOKEN_TYPES = (
    ("input", "input_tokens"),
    ("cache_read", "cache_read_input_tokens"),
    ("cache_write", "cache_creation_input_tokens"),
    ("output", "output_tokens"),
    ("reasoning", "reasoning_tokens"),
)


def observe_attempt(
    *,
    labels: tuple[str, str, str, str],
    status: str,
    usage_fields: dict | None,
    cost,
    currency: str,
    duration_s: float | None,
    ttft_s: float | None,
) -> None:
    REQUESTS.labels(*labels, status).inc()
    if usage_fields:
        for name, field in TOKEN_TYPES:
            value = usage_fields.get(field) or 0
            if value:
                TOKENS.labels(*labels, name).inc(value)
    if cost:
        COST.labels(*labels, currency).inc(float(cost))
    if duration_s is not None:
        DURATION.labels(*labels).observe(duration_s)
    if ttft_s is not None:
        TTFT.labels(*labels).observe(ttft_s)


class DatabaseCollector:
    """Gauges read from the database at scrape time, so they are right whichever process (web,
    worker, beat) did the work: how far behind `now` each rollup watermark is (the ingest lag the
    dashboards and budgets see), and unpriced events per tenant over the last 24 rolled-up hours.
    Every web machine reports the same values: aggregate them with max(), not sum()."""

    def collect(self):
        from chargeback.models import Tenant
        from telemetry.models import HourlyRollup, RollupWatermark

        up = GaugeMetricFamily("llmobs_metrics_database_up", "1 when the scrape could read the database gauges.")
        lag = GaugeMetricFamily(
            "llmobs_rollup_lag_seconds", "Seconds between now and a rollup stream's watermark.", labels=["stream"]
        )
        unpriced = GaugeMetricFamily(
            "llmobs_unpriced_events_24h",
            "Events with no matching price in the last 24 hours of hourly rollups.",
            labels=["tenant"],
        )
        now = timezone.now()
        try:
            for name, position in RollupWatermark.objects.values_list("name", "position"):
                lag.add_metric([name], max(0.0, (now - position).total_seconds()))
            rows = (
                HourlyRollup.objects.filter(hour__gte=now - timedelta(hours=24), unpriced__gt=0)
                .values("tenant_id")
                .annotate(n=Sum("unpriced"))
            )
            counts = {r["tenant_id"]: r["n"] for r in rows}
            slugs = dict(Tenant.objects.filter(pk__in=counts).values_list("pk", "slug"))
            for tenant_id, n in sorted(counts.items()):
                unpriced.add_metric([slugs.get(tenant_id, str(tenant_id))], float(n))
        except DatabaseError:
            # A scrape must answer even when the database does not; the alert is on `up`.
            log.warning("metrics: database gauges unavailable", exc_info=True)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield from (up, lag, unpriced)


def _scrape_allowed(request: HttpRequest) -> bool:
    """Labels carry tenant slugs and department codes, so the scrape is an operator credential,
    not a tenant one: with LLMOBS_METRICS_TOKEN set, only `Authorization: Bearer <token>` opens
    it (constant-time compare). Unset = open, for development only (docs/RELIABILITY.md)."""
    token = getattr(settings, "LLMOBS_METRICS_TOKEN", "")
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _scrape_allowed(request):
        return JsonResponse(
            {"error": {"code": "forbidden", "message": "Metrics need the scrape token.", "errors": {}}}, status=403
        )
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    database = CollectorRegistry(auto_describe=False)
    database.register(DatabaseCollector())
    body = generate_latest(registry) + generate_latest(database)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
