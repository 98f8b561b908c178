"""Raw telemetry: one append-only row per LLM call attempt (UsageEvent).

Dimensions (department code, user, key prefix) are copied onto the row so that deleting or
renaming a key or user never orphans history. Token buckets follow DESIGN.md §4:
`input_tokens` is the *total* input including cache reads and writes (OpenTelemetry
semantics); `output_tokens` is the total output including reasoning.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import models

from chargeback.models import MONEY, ApiKey, Department, ModelPrice, Route, Tenant


class SamplingReason(models.TextChoices):
    """Why a gateway call's trace (span and captured text) was kept, or that it was not."""

    ERROR = "error", "Kept: error"
    SLOW = "slow", "Kept: slow"
    COSTLY = "costly", "Kept: costly"
    SAMPLED = "sampled", "Kept: base rate"
    OFF = "off", "Kept: sampling off"
    DROPPED = "dropped", "Dropped"


class UsageEventQuerySet(models.QuerySet):
    def for_tenant(self, tenant: Tenant | int) -> UsageEventQuerySet:
        return self.filter(tenant=tenant)

    def between(self, start: datetime, end: datetime) -> UsageEventQuerySet:
        return self.filter(occurred_at__gte=start, occurred_at__lt=end)


class UsageEvent(models.Model):
    class Source(models.TextChoices):
        GATEWAY = "gateway", "Gateway"
        INGEST = "ingest", "Ingest API"
        OTLP = "otlp", "OpenTelemetry"
        EVAL = "eval", "Evaluation"
        CHAT = "chat", "Internal chat"
        DEMO = "demo", "Demo data"

    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"
        TIMEOUT = "timeout", "Timeout"
        RATE_LIMITED = "rate_limited", "Rate limited"
        CANCELLED = "cancelled", "Cancelled"
        BLOCKED = "blocked", "Blocked"

    class Provenance(models.TextChoices):
        COMPUTED = "computed", "Computed from our price"
        REPORTED = "reported", "Reported by the caller"
        ESTIMATED = "estimated", "Estimated (usage incomplete)"
        UNPRICED = "unpriced", "Unpriced (no matching price)"

    # The usage table is the one hot, huge table: foreign keys are kept in the ORM (PROTECT
    # stops deleting a referenced tenant/department/price) but not as database constraints,
    # which would cost an index probe per row on the COPY ingest path. For the same reason the
    # tenant, department and key columns get no single-column index of their own: every query
    # is tenant-scoped and served by the composite indexes below (tenant is their first
    # column), and each extra index costs every ingested row a B-tree insert.
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, db_constraint=False, db_index=False, related_name="+")
    event_id = models.CharField(max_length=128, help_text="Idempotency key, unique per tenant.")
    operation_id = models.CharField(max_length=64, blank=True, help_text="Links retries and fallback attempts.")
    source = models.CharField(max_length=16, choices=Source.choices)

    department = models.ForeignKey(
        Department,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    department_code = models.CharField(max_length=64, blank=True)
    user_ref = models.CharField("user", max_length=255, blank=True)
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    api_key_prefix = models.CharField(max_length=16, blank=True)

    provider = models.CharField(max_length=64)
    requested_model = models.CharField(max_length=255, blank=True)
    model = models.CharField("served model", max_length=255)
    operation = models.CharField(max_length=32, default="chat")

    occurred_at = models.DateTimeField(help_text="When the call started.")
    received_at = models.DateTimeField(auto_now_add=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField("time to first token (ms)", null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OK)
    error_type = models.CharField(max_length=128, blank=True)

    # Canonical token buckets (DESIGN.md §4).
    input_tokens = models.BigIntegerField(default=0, help_text="Total input, including cache reads and writes.")
    cache_read_input_tokens = models.BigIntegerField(default=0)
    cache_creation_input_tokens = models.BigIntegerField(default=0, help_text="All cache writes (5 min + 1 h).")
    cache_creation_1h_input_tokens = models.BigIntegerField(default=0, help_text="Of which 1-hour cache writes.")
    output_tokens = models.BigIntegerField(default=0, help_text="Total output, including reasoning.")
    reasoning_tokens = models.BigIntegerField(default=0)
    compute_ms = models.BigIntegerField(null=True, blank=True, help_text="Reported compute time (Ollama), ms.")

    # Cost: full precision; NULL when unpriced (never a silent zero).
    cost = models.DecimalField(**MONEY, null=True, blank=True)
    currency = models.CharField(max_length=3, default="USD")
    cost_provenance = models.CharField(max_length=16, choices=Provenance.choices)
    price = models.ForeignKey(
        ModelPrice, null=True, blank=True, on_delete=models.PROTECT, db_constraint=False, related_name="+"
    )
    reported_cost = models.DecimalField(**MONEY, null=True, blank=True)
    reported_currency = models.CharField(max_length=3, blank=True)

    trace_id = models.CharField(max_length=32, blank=True)
    span_id = models.CharField(max_length=16, blank=True)
    parent_span_id = models.CharField(max_length=16, blank=True)
    session_id = models.CharField(max_length=128, blank=True)
    feature = models.CharField(max_length=128, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    prompt_version = models.CharField(max_length=64, blank=True)
    # Gateway calls only (telemetry/sampling.py): why the call's span and captured text were
    # kept, or "dropped". The event itself is always stored. The database default keeps the
    # ingest and OTLP paths, which write explicit column lists, unchanged.
    sampling = models.CharField(
        "trace sampling",
        max_length=8,
        choices=SamplingReason.choices,
        blank=True,
        default="",
        db_default="",
        help_text="Why the trace and captured text were kept; empty when not a gateway call.",
    )

    objects = UsageEventQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "event_id"], name="usage_event_id_unique_per_tenant")]
        indexes = [
            # Tenant-wide time ranges (drill-down, re-pricing, reconciliation).
            models.Index(fields=["tenant", "occurred_at"], name="usage_tenant_time"),
            # Department pages: latest events of one department.
            models.Index(fields=["tenant", "department", "occurred_at"], name="usage_tenant_dept_time"),
            # Rollup watermark scans rows that arrived since the last run.
            models.Index(fields=["received_at"], name="usage_received"),
            # My usage: one person's latest calls (and the page count) without reading the whole
            # tenant's window; user_ref alone is far too selective a filter to scan for.
            models.Index(fields=["tenant", "user_ref", "occurred_at"], name="usage_tenant_user_time"),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} {self.provider}/{self.model} {self.status}"

    @property
    def uncached_input_tokens(self) -> int:
        return max(self.input_tokens - self.cache_read_input_tokens - self.cache_creation_input_tokens, 0)


class UsageEventKey(models.Model):
    """The idempotency ledger on PostgreSQL: one row per (tenant, event_id) ever stored.

    There the usage table is range-partitioned by month on `occurred_at`
    (telemetry/partitions.py), and a partitioned table can only enforce uniqueness on keys that
    contain the partition column: (tenant, event_id) alone, the contract, would be unique per
    month only. Every writer inserts the event's key here first (`ON CONFLICT DO NOTHING`) and
    the event only if its key was new, in one transaction, so a resent event is a duplicate
    whatever its timestamp. Retention deletes the keys of the events it drops. SQLite keeps the
    plain unique constraint on the usage table and leaves this table empty.
    """

    pk = models.CompositePrimaryKey("tenant_id", "event_id")
    tenant_id = models.BigIntegerField()
    event_id = models.CharField(max_length=128)

    class Meta:
        verbose_name = "usage event key"

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.event_id}"


# --- Rollups ------------------------------------------------------------------------------------
# Sums over many events can outgrow an event's 20 digits; keep the same 10 decimal places.
ROLLUP_MONEY = {"max_digits": 28, "decimal_places": 10}


def _histogram_edges_ms(ratio: float = 1.2, top_ms: int = 700_000) -> tuple[int, ...]:
    # Log-spaced integer edges 1, 2, 3, …, 602881 ms (ratio 1.2). Latencies are whole
    # milliseconds, so edges are rounded up and de-duplicated: every bucket holds at least one
    # integer. Bucket 0 is [0, 1) ms, bucket i is [EDGES[i-1], EDGES[i]), the last bucket is
    # everything from ~10 min up.
    edges: set[int] = set()
    k = 0
    while ratio**k <= top_ms:
        edges.add(int(-(-(ratio**k - 1e-9) // 1)))
        k += 1
    return tuple(sorted(edges))


HISTOGRAM_EDGES_MS: tuple[int, ...] = _histogram_edges_ms()
HISTOGRAM_BUCKETS = len(HISTOGRAM_EDGES_MS) + 1  # 71
LATENCY_FIELDS = tuple(f"lat_{i:02d}" for i in range(HISTOGRAM_BUCKETS))
TTFT_FIELDS = tuple(f"ttft_{i:02d}" for i in range(HISTOGRAM_BUCKETS))

# Additive measures every rollup carries (request counts, the five token buckets, exact cost).
COUNT_FIELDS = (
    "requests",
    "errors",
    "unpriced",
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "reasoning_tokens",
)


class RollupMeasures(models.Model):
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0, help_text="Events whose status is not ok.")
    unpriced = models.BigIntegerField(default=0, help_text="Events with no cost (NULL), never counted as 0.")
    input_tokens = models.BigIntegerField(default=0)
    cache_read_input_tokens = models.BigIntegerField(default=0)
    cache_creation_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(**ROLLUP_MONEY, default=0, help_text="Exact sum of priced event costs, in `currency`.")

    class Meta:
        abstract = True


class LatencyMeasures(models.Model):
    latency_count = models.BigIntegerField(default=0)
    latency_sum_ms = models.BigIntegerField(default=0)
    ttft_count = models.BigIntegerField(default=0)
    ttft_sum_ms = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


for _name in LATENCY_FIELDS + TTFT_FIELDS:
    LatencyMeasures.add_to_class(_name, models.IntegerField(default=0))


class HourlyRollup(RollupMeasures, LatencyMeasures):
    """One row per tenant × UTC hour × department × provider × model × currency × eval flag.

    `department_id` is 0 for unattributed events (a sentinel instead of NULL so the unique key
    works as an ON CONFLICT target on both databases). Rebuilt whole per (tenant, hour)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    hour = models.DateTimeField(help_text="Start of the UTC hour.")
    department_id = models.BigIntegerField(default=0)
    provider = models.CharField(max_length=64)
    model = models.CharField(max_length=255)
    currency = models.CharField(max_length=3)
    is_eval = models.BooleanField(default=False, help_text="Evaluation traffic (feature or source 'eval').")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "hour", "department_id", "provider", "model", "currency", "is_eval"],
                name="hourly_rollup_key",
            )
        ]
        indexes = [models.Index(fields=["tenant", "department_id", "hour"], name="hourly_rollup_dept_hour")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.provider}/{self.model} {self.requests} req"


class DailyRollup(RollupMeasures, LatencyMeasures):
    """HourlyRollup summed per local calendar day of the tenant (the hour's start decides the day)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    day = models.DateField(help_text="Calendar day in the tenant's time zone.")
    department_id = models.BigIntegerField(default=0)
    provider = models.CharField(max_length=64)
    model = models.CharField(max_length=255)
    currency = models.CharField(max_length=3)
    is_eval = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "day", "department_id", "provider", "model", "currency", "is_eval"],
                name="daily_rollup_key",
            )
        ]
        indexes = [models.Index(fields=["tenant", "department_id", "day"], name="daily_rollup_dept_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.provider}/{self.model} {self.requests} req"


class DimensionKey(RollupMeasures):
    """The key of a per-dimension rollup besides its period: `dimension` is 'user', 'feature' or
    'tag:<key>', `value` that user, feature or tag value."""

    tenant = models.ForeignKey(Tenant, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    department_id = models.BigIntegerField(default=0)
    dimension = models.CharField(max_length=72)
    value = models.CharField(max_length=255)
    currency = models.CharField(max_length=3)

    class Meta:
        abstract = True


class DimensionRollup(DimensionKey):
    """Daily spend per high-cardinality dimension: user, feature, or one configured tag key.

    Kept apart from the hourly table so per-user cardinality never multiplies the hourly rows
    (and their histograms)."""

    day = models.DateField(help_text="Calendar day in the tenant's time zone.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "day", "department_id", "dimension", "value", "currency"],
                name="dimension_rollup_key",
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "dimension", "day"], name="dimension_rollup_dim_day"),
            # One user's (or tag value's) days: My usage and user/tag budgets read a handful of
            # rows instead of every user's rows of the period.
            models.Index(fields=["tenant", "dimension", "value", "day"], name="dimension_rollup_value_day"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.dimension}={self.value} {self.requests} req"


class MonthlyDimensionRollup(DimensionKey):
    """The per-dimension daily rows summed over a calendar month of the tenant's time zone.

    A month-wide "spend by user" reads one row per user and department instead of one per user,
    department and day (5,000 users: ~5k rows instead of ~155k). Recomputed from
    `DimensionRollup` whenever one of its days is; never read for per-day intervals."""

    month = models.DateField(help_text="First day of the month in the tenant's time zone.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "month", "department_id", "dimension", "value", "currency"],
                name="monthly_dimension_rollup_key",
            )
        ]
        indexes = [models.Index(fields=["tenant", "dimension", "month"], name="monthly_dim_rollup_dim_month")]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.dimension}={self.value} {self.requests} req"


class RollupWatermark(models.Model):
    """How far (by `received_at`) a rollup stream has consumed raw events."""

    name = models.CharField(max_length=32, unique=True)
    position = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} @ {self.position:%Y-%m-%d %H:%M:%S}"


# --- Anomalies ----------------------------------------------------------------------------------
class Anomaly(models.Model):
    class Metric(models.TextChoices):
        COST = "cost", "Cost"
        TOKENS = "tokens", "Tokens"
        REQUESTS = "requests", "Requests"
        ERROR_RATE = "error_rate", "Error rate"
        P95_LATENCY = "p95_latency", "p95 latency (ms)"

    class Severity(models.TextChoices):
        LOW = "low", "Low"
        MEDIUM = "medium", "Medium"
        HIGH = "high", "High"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        RESOLVED = "resolved", "Resolved"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    department = models.ForeignKey(Department, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    metric = models.CharField(max_length=16, choices=Metric.choices)
    hour = models.DateTimeField(help_text="Start of the scored UTC hour.")
    observed = models.DecimalField(max_digits=28, decimal_places=10)
    expected = models.DecimalField(max_digits=28, decimal_places=10)
    score = models.FloatField(help_text="Robust z-score: (observed - median) / (1.4826 × MAD).")
    severity = models.CharField(max_length=8, choices=Severity.choices)
    explanation = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-hour", "-score"]
        verbose_name_plural = "anomalies"
        constraints = [
            # Scoring an hour twice updates the same row instead of alerting twice.
            models.UniqueConstraint(
                fields=["tenant", "department", "metric", "hour"],
                name="anomaly_once_per_metric_hour",
                nulls_distinct=False,
            )
        ]
        indexes = [models.Index(fields=["tenant", "status", "-hour"], name="anomaly_tenant_status")]

    def __str__(self) -> str:
        return f"{self.metric} {self.severity} @ {self.hour:%Y-%m-%d %H:00}"


class CapturedContent(models.Model):
    """Prompt and completion text of one captured call, kept apart from the usage table.

    Written only when the tenant's capture policy says so (`Tenant.capture_mode`, sampled at
    `capture_sample_rate`), redacted before it is stored, and deleted after
    `Tenant.capture_retention_days` by `telemetry.purge_captures`. Linked to its usage event by
    (tenant, event_id) like every other reference to the hot table.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    event_id = models.CharField(max_length=128)
    operation_id = models.CharField(max_length=64, blank=True)
    department_code = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=255, blank=True)
    messages = models.JSONField(default=list, help_text="The request messages, redacted.")
    completion = models.TextField(blank=True, help_text="The answer, redacted.")
    metadata = models.JSONField(
        default=dict,
        blank=True,
        help_text="Optional call metadata, e.g. RAG `context` (text or [{id, text}]) and `cited_ids`.",
    )
    redactions = models.PositiveIntegerField(default=0, help_text="How many secrets or addresses were masked.")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "event_id"], name="capture_event_unique_per_tenant")]
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="capture_tenant_time"),
            models.Index(fields=["expires_at"], name="capture_expiry"),
        ]

    def __str__(self) -> str:
        return f"capture {self.event_id}"


# --- Stakeholder reports ------------------------------------------------------------------------
class ReportDelivery(models.Model):
    """One scheduled report (tenant-wide or one department's, weekly or monthly) and whether it
    was e-mailed. The unique key is what makes a re-run of the schedule send nothing twice.

    `scope_key` is "tenant" or "department:<id>": a plain string so the key is unique on both
    databases (a NULL department would be distinct from itself on SQLite)."""

    class Kind(models.TextChoices):
        WEEK = "week", "Weekly"
        MONTH = "month", "Monthly"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        NO_RECIPIENTS = "no_recipients", "No recipients"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    department = models.ForeignKey(Department, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    scope_key = models.CharField(max_length=40)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    period_start = models.DateField(help_text="First local day of the period (tenant time zone).")
    period_end = models.DateField(help_text="Local day after the period (exclusive).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    subject = models.CharField(max_length=255, blank=True)
    recipients = models.JSONField(default=list, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-period_start", "scope_key"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "scope_key", "kind", "period_start"], name="report_once_per_scope_and_period"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} report {self.scope_key} from {self.period_start} ({self.status})"


# --- Quality: evaluations, golden datasets, feedback (docs/EVALS.md) ---------------------------------


class EvalConfig(models.Model):
    """An LLM-as-judge evaluation of production traffic: which captured calls, which judge, which
    rubric, and the quality SLO its rolling pass rate is held to."""

    class Kind(models.TextChoices):
        RUBRIC = "rubric", "Rubric (quality against criteria)"
        FAITHFULNESS = "faithfulness", "Faithfulness (RAG answer supported by its context)"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=128)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.RUBRIC)
    judge_route = models.ForeignKey(
        Route, on_delete=models.PROTECT, related_name="+", help_text="The route the judge is called through."
    )
    criteria = models.TextField(help_text="What a good answer does; the judge scores against this text.")
    score_min = models.IntegerField(default=1)
    score_max = models.IntegerField(default=5)
    pass_threshold = models.DecimalField(
        max_digits=8, decimal_places=3, default=4, help_text="A score at or above this passes (in scale units)."
    )
    sample_rate = models.DecimalField(
        max_digits=5, decimal_places=4, default=Decimal("0.1"), help_text="Share of matching calls judged (0-1)."
    )
    max_per_run = models.PositiveIntegerField(default=50, help_text="At most this many judge calls per 15-minute run.")
    filter_department = models.ForeignKey(
        Department, null=True, blank=True, on_delete=models.CASCADE, related_name="+", help_text="Empty = all."
    )
    filter_feature = models.CharField(max_length=128, blank=True, help_text="Empty = all features.")
    filter_model = models.CharField(max_length=255, blank=True, help_text="Served model; empty = all.")
    filter_status = models.CharField(max_length=16, blank=True, default="ok", help_text="Event status; empty = all.")
    lookback_hours = models.PositiveIntegerField(default=24, help_text="Only calls this recent are sampled.")
    enabled = models.BooleanField(default=True)
    slo_min_pass_rate = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Alert when the rolling pass rate is below (0-1).",
    )
    baseline_pass_rate = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Empty = the pass rate of the 7 days before the rolling window.",
    )
    baseline_margin = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Alert when the rate is this far below baseline.",
    )
    window_hours = models.PositiveIntegerField(default=24, help_text="Rolling window of the SLO.")
    min_samples = models.PositiveIntegerField(default=10, help_text="No alert on fewer scored calls in the window.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "name"]
        verbose_name = "evaluation config"
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="eval_config_name_unique_per_tenant")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        errors = {}
        if self.score_max <= self.score_min:
            errors["score_max"] = "The scale maximum must be above its minimum."
        elif not (self.score_min <= (self.pass_threshold or 0) <= self.score_max):
            errors["pass_threshold"] = "The pass threshold must lie on the score scale."  # noqa: S105 - not a secret
        if self.sample_rate is not None and not (0 <= self.sample_rate <= 1):
            errors["sample_rate"] = "The sampling rate is a share between 0 and 1."
        for name in ("slo_min_pass_rate", "baseline_pass_rate", "baseline_margin"):
            value = getattr(self, name)
            if value is not None and not (0 <= value <= 1):
                errors[name] = "A pass rate is a share between 0 and 1."
        if self.judge_route_id and self.tenant_id and self.judge_route.tenant_id != self.tenant_id:
            errors["judge_route"] = "The judge route must belong to the same tenant."
        if self.filter_department_id and self.tenant_id and self.filter_department.tenant_id != self.tenant_id:
            errors["filter_department"] = "The department must belong to the same tenant."
        if errors:
            raise ValidationError(errors)


class EvalScore(models.Model):
    """One judged (or checked) production call. Linked to its event by (tenant, event_id)."""

    class Kind(models.TextChoices):
        RUBRIC = "rubric", "Rubric"
        FAITHFULNESS = "faithfulness", "Faithfulness"
        CITATION_CHECK = "citation_check", "Citation check (no judge call)"

    class Status(models.TextChoices):
        OK = "ok", "Scored"
        PARSE_ERROR = "parse_error", "Judge answer unreadable"
        JUDGE_ERROR = "judge_error", "Judge call failed"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    config = models.ForeignKey(EvalConfig, on_delete=models.CASCADE, related_name="scores")
    event_id = models.CharField(max_length=128)
    event_at = models.DateTimeField(help_text="When the evaluated call happened.")
    department = models.ForeignKey(
        Department, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    department_code = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=255, blank=True)
    feature = models.CharField(max_length=128, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices)
    score = models.DecimalField(max_digits=8, decimal_places=3, null=True, blank=True)
    normalized = models.FloatField(null=True, blank=True, help_text="Score mapped to 0-1 on the config's scale.")
    passed = models.BooleanField(null=True, blank=True)
    reasoning = models.TextField(blank=True)
    raw = models.TextField(blank=True, help_text="The judge's answer as received.")
    judge_model = models.CharField(max_length=255, blank=True)
    judge_event_id = models.CharField(max_length=128, blank=True)
    cost = models.DecimalField(**MONEY, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["config", "event_id"], name="eval_score_once_per_config")]
        indexes = [
            models.Index(fields=["tenant", "event_at"], name="eval_score_tenant_time"),
            models.Index(fields=["config", "created_at"], name="eval_score_config_time"),
        ]

    def __str__(self) -> str:
        return f"{self.config} {self.event_id}: {self.status} {self.score}"


class EvalAlert(models.Model):
    """A quality SLO breach, notified once per config per day and reason."""

    class Reason(models.TextChoices):
        SLO = "slo", "Below the SLO"
        BASELINE = "baseline", "Dropped from the baseline"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    config = models.ForeignKey(EvalConfig, on_delete=models.CASCADE, related_name="alerts")
    day = models.DateField(help_text="UTC day of the breach; one alert per config, reason and day.")
    reason = models.CharField(max_length=16, choices=Reason.choices)
    pass_rate = models.DecimalField(max_digits=5, decimal_places=4)
    threshold = models.DecimalField(max_digits=5, decimal_places=4)
    samples = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["config", "reason", "day"], name="eval_alert_once_per_day")]

    def __str__(self) -> str:
        return f"{self.config} {self.reason} {self.day}"


class Dataset(models.Model):
    """A golden dataset: inputs with the expected answer or the criteria a good answer meets."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=128)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="dataset_name_unique_per_tenant")]

    def __str__(self) -> str:
        return self.name


class DatasetItem(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField()
    key = models.CharField(max_length=128, blank=True, help_text="Stable id from the JSONL (for comparisons).")
    messages = models.JSONField(help_text="Input messages, OpenAI shape.")
    expected = models.TextField(blank=True, help_text="The expected answer.")
    criteria = models.TextField(blank=True, help_text="Or: what a good answer does.")

    class Meta:
        ordering = ["dataset", "position"]
        constraints = [models.UniqueConstraint(fields=["dataset", "position"], name="dataset_item_position_unique")]

    def __str__(self) -> str:
        return self.key or f"#{self.position}"


class DatasetRun(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="runs")
    route_alias = models.CharField(max_length=128)
    judge_alias = models.CharField(max_length=128, blank=True, help_text="Empty = compared to the expected answer.")
    threshold = models.DecimalField(max_digits=5, decimal_places=4)
    items_total = models.PositiveIntegerField(default=0)
    items_passed = models.PositiveIntegerField(default=0)
    pass_rate = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    mean_score = models.FloatField(null=True, blank=True, help_text="Mean normalised score (0-1).")
    cost = models.DecimalField(**MONEY, default=0)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.dataset} on {self.route_alias}"


class DatasetRunItem(models.Model):
    class Status(models.TextChoices):
        OK = "ok", "Scored"
        PARSE_ERROR = "parse_error", "Judge answer unreadable"
        CALL_ERROR = "call_error", "Route or judge call failed"

    run = models.ForeignKey(DatasetRun, on_delete=models.CASCADE, related_name="results")
    item = models.ForeignKey(DatasetItem, on_delete=models.CASCADE, related_name="+")
    output = models.TextField(blank=True)
    event_id = models.CharField(max_length=128, blank=True)
    judge_event_id = models.CharField(max_length=128, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    score = models.DecimalField(max_digits=8, decimal_places=3, null=True, blank=True)
    normalized = models.FloatField(null=True, blank=True)
    passed = models.BooleanField(default=False)
    reasoning = models.TextField(blank=True)
    raw = models.TextField(blank=True)

    class Meta:
        ordering = ["run", "item__position"]
        constraints = [models.UniqueConstraint(fields=["run", "item"], name="dataset_run_item_unique")]

    def __str__(self) -> str:
        return f"{self.item}: {self.status} {self.score}"


class Feedback(models.Model):
    """One person's (or one key's) feedback on one call; re-sending updates it."""

    class Thumbs(models.TextChoices):
        UP = "up", "Thumbs up"
        DOWN = "down", "Thumbs down"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    event_id = models.CharField(max_length=128)
    author = models.CharField(max_length=160, help_text="user:<id> or key:<prefix>: one feedback per author per event.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    event_at = models.DateTimeField()
    department = models.ForeignKey(
        Department, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    department_code = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=255, blank=True)
    feature = models.CharField(max_length=128, blank=True)
    thumbs = models.CharField(max_length=4, choices=Thumbs.choices, blank=True)
    rating = models.PositiveSmallIntegerField(null=True, blank=True)
    regenerated = models.BooleanField(default=False)
    copied = models.BooleanField(default=False)
    abandoned = models.BooleanField(default=False)
    reason = models.CharField(max_length=200, blank=True)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        verbose_name_plural = "feedback"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "event_id", "author"], name="feedback_once_per_author")
        ]
        indexes = [models.Index(fields=["tenant", "event_at"], name="feedback_tenant_time")]

    def __str__(self) -> str:
        return f"{self.author} on {self.event_id}"


# --- Trace sampling (docs/SAMPLING.md) ----------------------------------------------------------


class SamplingPolicy(models.Model):
    """Which gateway calls keep their span and captured text: every error, every call at or
    above `slow_ms`, every call costing at least `costly_amount`, and `base_rate` of the rest.
    Decided at the end of the call by `telemetry.sampling.decide`; usage events are never
    sampled. A tenant without a row uses these defaults with `enabled` from
    `LLMOBS_SAMPLING_DEFAULT_ENABLED` (off unless set: keep everything)."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="sampling_policy")
    enabled = models.BooleanField(default=True, help_text="Off = every trace is kept.")
    keep_errors = models.BooleanField(default=True, help_text="Keep every failed, timed-out, limited or blocked call.")
    slow_ms = models.PositiveIntegerField(
        null=True, blank=True, default=10_000, help_text="Keep calls at least this slow (ms); empty = no latency rule."
    )
    costly_amount = models.DecimalField(
        max_digits=20,
        decimal_places=10,
        null=True,
        blank=True,
        default=Decimal("0.50"),
        help_text="Keep calls costing at least this, in the tenant's currency; empty = no cost rule.",
    )
    base_rate = models.DecimalField(
        max_digits=5, decimal_places=4, default=Decimal("0.1"), help_text="Share of the other calls kept (0-1)."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "sampling policies"

    def __str__(self) -> str:
        return f"{self.tenant}: sampling {'on' if self.enabled else 'off'}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        errors = {}
        if self.base_rate is None or not (0 <= self.base_rate <= 1):
            errors["base_rate"] = "The base rate is a share between 0 and 1."
        if self.slow_ms is not None and self.slow_ms <= 0:
            errors["slow_ms"] = "The slow threshold must be a positive number of milliseconds (empty = no rule)."
        if self.costly_amount is not None and self.costly_amount <= 0:
            errors["costly_amount"] = "The cost threshold must be above zero (empty = no rule)."
        if errors:
            raise ValidationError(errors)
