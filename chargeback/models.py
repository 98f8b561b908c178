"""The chargeback domain: tenants and their departments, people, API keys, prices, gateway
routes, budgets, notification channels and the audit log.

Every row belongs to exactly one tenant (catalogue prices excepted: `tenant=None` is the shared
catalogue that tenant overrides sit on top of).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.utils import timezone

# Money and unit prices: 20 digits with 10 after the point is enough for $10^9 totals at
# 1e-10 precision (DESIGN.md §4: event costs keep at least 10 decimal places).
MONEY = {"max_digits": 20, "decimal_places": 10}


def validate_timezone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris).") from exc


def validate_currency(value: str) -> None:
    if not re.fullmatch(r"[A-Z]{3}", value or ""):
        raise ValidationError(f"{value!r} is not an ISO 4217 currency code (e.g. USD).")


class Tenant(models.Model):
    class CaptureMode(models.TextChoices):
        OFF = "off", "Off"
        SAMPLED = "sampled", "Sampled"
        ON = "on", "On"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    currency = models.CharField(max_length=3, default="USD", validators=[validate_currency])
    # Prompt/completion capture policy (stored apart from usage events, redacted, expiring).
    capture_mode = models.CharField(max_length=8, choices=CaptureMode.choices, default=CaptureMode.OFF)
    capture_sample_rate = models.DecimalField(
        max_digits=4, decimal_places=3, default=Decimal("0.1"), help_text="Fraction kept when sampled (0-1)."
    )
    capture_retention_days = models.PositiveIntegerField(default=30)
    # Latency SLO alert (docs/ALERTS.md): p95 over the last 15 minutes, per department.
    alert_latency_p95_ms = models.PositiveIntegerField(
        "latency SLO (p95, ms)", null=True, blank=True, help_text="Empty = LLMOBS_ALERT_LATENCY_P95_MS."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


class Department(models.Model):
    """A cost centre. Departments are deactivated, not deleted, so history keeps its owner."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="departments")
    code = models.SlugField(max_length=64, help_text="Stable short code used by integrations, e.g. 'research'.")
    name = models.CharField(max_length=200)
    gl_cost_centre = models.CharField("GL cost-centre code", max_length=64, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    manager = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="managed_departments"
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "code"]
        constraints = [models.UniqueConstraint(fields=["tenant", "code"], name="department_code_unique_per_tenant")]

    def __str__(self) -> str:
        return f"{self.code} ({self.name})"

    def clean(self) -> None:
        if self.parent_id and self.parent.tenant_id != self.tenant_id:
            raise ValidationError({"parent": "The parent department belongs to another tenant."})
        node, seen = self.parent, {self.pk}
        while node is not None:
            if node.pk in seen:
                raise ValidationError({"parent": "This parent would create a cycle."})
            seen.add(node.pk)
            node = node.parent


class Role(models.TextChoices):
    EMPLOYEE = "employee", "Employee"
    MANAGER = "manager", "Department manager"
    FINANCE = "finance", "Finance"
    ADMIN = "admin", "Admin"


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    department = models.ForeignKey(Department, null=True, blank=True, on_delete=models.PROTECT)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.EMPLOYEE)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "tenant"], name="one_membership_per_user_and_tenant")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role})"

    def clean(self) -> None:
        if self.department_id and self.department.tenant_id != self.tenant_id:
            raise ValidationError({"department": "The department belongs to another tenant."})
        if self.role in (Role.EMPLOYEE, Role.MANAGER) and not self.department_id:
            raise ValidationError({"department": "Employees and managers must belong to a department."})

    @property
    def sees_all_departments(self) -> bool:
        return self.role in (Role.FINANCE, Role.ADMIN)


class ApiKeyQuerySet(models.QuerySet):
    def for_token(self, raw: str) -> ApiKey | None:
        """The active key for a raw token, or None. The hash comparison is constant-time."""
        prefix = ApiKey.prefix_of(raw)
        if prefix is None:
            return None
        digest = ApiKey.hash_token(raw)
        for key in self.filter(prefix=prefix, revoked_at__isnull=True).select_related("tenant", "department", "user"):
            if hmac.compare_digest(key.key_hash, digest):
                return key
        return None


class ApiKey(models.Model):
    """An integration's credential. Only a SHA-256 of the token is stored; the token is shown once.

    Tokens carry 256 bits of randomness, so a fast hash is safe here (no password stretching
    needed); the visible prefix narrows the lookup to one row before the constant-time compare.
    """

    TOKEN_PREFIX = "llmo_"  # noqa: S105 - a public marker, not a secret

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    department = models.ForeignKey(
        Department, null=True, blank=True, on_delete=models.PROTECT, help_text="Bind every call to this department."
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        help_text="Default user attributed to calls that name none.",
    )
    rpm_limit = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm_limit = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def clean(self) -> None:
        if self.department_id and self.department.tenant_id != self.tenant_id:
            raise ValidationError({"department": "The department belongs to another tenant."})

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @staticmethod
    def hash_token(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def prefix_of(cls, raw: str) -> str | None:
        # llmo_<8-char prefix>_<secret>
        if not raw.startswith(cls.TOKEN_PREFIX):
            return None
        parts = raw[len(cls.TOKEN_PREFIX) :].split("_", 1)
        if len(parts) != 2 or len(parts[0]) != 8:
            return None
        return parts[0]

    @classmethod
    def generate(cls) -> tuple[str, str]:
        """A new (raw token, prefix). Prefix and secret are URL-safe with no underscores."""
        prefix = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32).replace("_", "").replace("-", "")
        return f"{cls.TOKEN_PREFIX}{prefix}_{secret}", prefix


class ModelPriceQuerySet(models.QuerySet):
    def for_tenant(self, tenant_id: int | None) -> ModelPriceQuerySet:
        """Catalogue rows plus the tenant's own overrides."""
        return self.filter(models.Q(tenant__isnull=True) | models.Q(tenant_id=tenant_id))


class ModelPrice(models.Model):
    """An effective-dated price for a provider's model. All token prices are per 1M tokens.

    Rows with `tenant=None` are the catalogue (seeded from `genai-prices` by `load_prices`);
    rows with a tenant override the catalogue for that tenant (negotiated discounts, on-prem
    rates). Prices are never deleted once used: events reference the row that priced them.
    """

    class MatchType(models.TextChoices):
        EXACT = "exact", "Exact"
        REGEX = "regex", "Regular expression"

    class Source(models.TextChoices):
        CATALOGUE = "catalogue", "genai-prices catalogue"
        INTERNAL = "internal", "Internal rate (on-prem)"
        MANUAL = "manual", "Manual"

    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="prices", help_text="Empty = catalogue."
    )
    provider = models.CharField(max_length=64, db_index=True)
    # Catalogue patterns translated from genai-prices alternations can be long.
    model_pattern = models.CharField(max_length=2000)
    match_type = models.CharField(max_length=8, choices=MatchType.choices, default=MatchType.EXACT)
    effective_from = models.DateTimeField(default=datetime(2000, 1, 1, tzinfo=UTC))
    effective_to = models.DateTimeField(null=True, blank=True, help_text="Exclusive. Empty = open-ended.")
    currency = models.CharField(max_length=3, default="USD", validators=[validate_currency])
    # Per 1M tokens. Cache/reasoning prices left empty fall back to the input/output price.
    input_per_mtok = models.DecimalField(**MONEY, default=Decimal(0), validators=[MinValueValidator(0)])
    cache_read_per_mtok = models.DecimalField(**MONEY, null=True, blank=True, validators=[MinValueValidator(0)])
    cache_write_per_mtok = models.DecimalField(
        "cache write (5 min) per MTok", **MONEY, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    cache_write_1h_per_mtok = models.DecimalField(
        "cache write (1 h) per MTok", **MONEY, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    output_per_mtok = models.DecimalField(**MONEY, default=Decimal(0), validators=[MinValueValidator(0)])
    reasoning_per_mtok = models.DecimalField(
        **MONEY, null=True, blank=True, validators=[MinValueValidator(0)], help_text="Empty = billed as output."
    )
    per_request_fee = models.DecimalField(**MONEY, default=Decimal(0), validators=[MinValueValidator(0)])
    # Long-context tier: when a request's total input exceeds the threshold, the whole request
    # is priced at the tier rates (Anthropic and Gemini bill this way). Empty tier prices fall
    # back to the base prices.
    long_context_threshold_tokens = models.PositiveIntegerField(null=True, blank=True)
    long_context_input_per_mtok = models.DecimalField(**MONEY, null=True, blank=True, validators=[MinValueValidator(0)])
    long_context_cache_read_per_mtok = models.DecimalField(
        **MONEY, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    long_context_cache_write_per_mtok = models.DecimalField(
        **MONEY, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    long_context_output_per_mtok = models.DecimalField(
        **MONEY, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    # On-prem compute rate (e.g. Ollama): currency per GPU-second of reported compute time.
    per_gpu_second = models.DecimalField(**MONEY, null=True, blank=True, validators=[MinValueValidator(0)])
    priority = models.IntegerField(default=0, help_text="Higher wins among regex rows that match the same model.")
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.MANUAL)
    notes = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ModelPriceQuerySet.as_manager()

    class Meta:
        ordering = ["provider", "model_pattern", "-effective_from"]
        indexes = [models.Index(fields=["provider", "model_pattern"])]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "provider", "model_pattern", "match_type", "effective_from"],
                name="one_price_per_model_and_start",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=models.Q(effective_to__isnull=True) | models.Q(effective_to__gt=models.F("effective_from")),
                name="price_window_is_positive",
            ),
        ]

    def __str__(self) -> str:
        scope = self.tenant.slug if self.tenant_id else "catalogue"
        return f"{self.provider}/{self.model_pattern} from {self.effective_from:%Y-%m-%d} [{scope}]"

    # Every process caches price books; any change to a price must invalidate them, after the
    # transaction commits so no process reloads the old rows.
    def save(self, *args, **kwargs) -> None:
        super().save(*args, **kwargs)
        transaction.on_commit(pricing_version_bump)

    def delete(self, *args, **kwargs):
        result = super().delete(*args, **kwargs)
        transaction.on_commit(pricing_version_bump)
        return result

    def clean(self) -> None:
        if self.match_type == self.MatchType.REGEX:
            try:
                re.compile(self.model_pattern)
            except re.error as exc:
                raise ValidationError({"model_pattern": f"Not a valid regular expression: {exc}."}) from exc
        if self.long_context_threshold_tokens is None and any(
            getattr(self, f) is not None
            for f in (
                "long_context_input_per_mtok",
                "long_context_output_per_mtok",
                "long_context_cache_read_per_mtok",
                "long_context_cache_write_per_mtok",
            )
        ):
            raise ValidationError({"long_context_threshold_tokens": "Long-context prices need a threshold."})

    def is_effective_at(self, at: datetime) -> bool:
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)


def pricing_version_bump() -> None:
    from chargeback.pricing import bump_price_version

    bump_price_version()


class Route(models.Model):
    """What the gateway may call: a model alias mapped to a provider's upstream model.

    The credential is the *name* of an environment variable; secrets never live in the DB.
    """

    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        OLLAMA = "ollama", "Ollama"
        DEMO = "demo", "Demo (canned answers, no network)"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="routes")
    alias = models.CharField(max_length=128, help_text="The model name clients send, e.g. 'gpt-4o' or 'fast'.")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    upstream_model = models.CharField(max_length=255)
    base_url = models.URLField(max_length=500, blank=True, help_text="Empty = the provider's default.")
    credential_env = models.CharField(
        max_length=128, blank=True, help_text="Name of the environment variable holding the API key."
    )
    fallbacks = models.JSONField(default=list, blank=True, help_text="Aliases tried in order when this route fails.")
    timeout_seconds = models.DecimalField(max_digits=6, decimal_places=2, default=Decimal("60"))
    max_retries = models.PositiveSmallIntegerField(default=2)
    default_max_tokens = models.PositiveIntegerField(default=1024)
    chat_enabled = models.BooleanField(default=True, help_text="Offered to employees in the internal chat.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "alias"]
        constraints = [models.UniqueConstraint(fields=["tenant", "alias"], name="route_alias_unique_per_tenant")]

    def __str__(self) -> str:
        return f"{self.alias} → {self.provider}/{self.upstream_model}"

    def clean(self) -> None:
        if not isinstance(self.fallbacks, list) or not all(isinstance(a, str) for a in self.fallbacks):
            raise ValidationError({"fallbacks": "Fallbacks must be a list of route aliases."})
        if self.alias in self.fallbacks:
            raise ValidationError({"fallbacks": "A route cannot fall back to itself."})
        if self.credential_env and not re.fullmatch(r"[A-Z_][A-Z0-9_]*", self.credential_env):
            raise ValidationError({"credential_env": "Use an environment variable name like OPENAI_API_KEY."})


@dataclass(frozen=True)
class PeriodBounds:
    start: datetime
    end: datetime  # exclusive

    @property
    def length(self) -> timedelta:
        # In UTC: subtracting two datetimes of the same ZoneInfo ignores a DST change between
        # them (a 23-hour day would come out as 24 hours).
        return self.end.astimezone(UTC) - self.start.astimezone(UTC)


class Budget(models.Model):
    class Scope(models.TextChoices):
        TENANT = "tenant", "Whole tenant"
        DEPARTMENT = "department", "Department"
        USER = "user", "User"
        MODEL = "model", "Model"
        TAG = "tag", "Tag"

    class Period(models.TextChoices):
        DAY = "day", "Day"
        WEEK = "week", "Week (Monday start)"
        MONTH = "month", "Calendar month"

    class Mode(models.TextChoices):
        SOFT = "soft", "Soft (alert only)"
        HARD = "hard", "Hard (block at the gateway)"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="budgets")
    name = models.CharField(max_length=200)
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.DEPARTMENT)
    department = models.ForeignKey(Department, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets")
    user_ref = models.CharField("user", max_length=255, blank=True, help_text="User id, for user budgets.")
    model = models.CharField(max_length=255, blank=True, help_text="Served model name, for model budgets.")
    tag_key = models.CharField(max_length=64, blank=True)
    tag_value = models.CharField(max_length=255, blank=True)
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    amount = models.DecimalField(**MONEY, validators=[MinValueValidator(0)])
    currency = models.CharField(max_length=3, default="USD", validators=[validate_currency])
    thresholds = models.JSONField(
        default=list, blank=True, help_text="Alert thresholds in percent, e.g. [50, 80, 100]."
    )
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.SOFT)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.amount} {self.currency}/{self.period}, {self.mode})"

    def save(self, *args, **kwargs) -> None:
        if not self.thresholds:
            self.thresholds = [50, 80, 100]
        super().save(*args, **kwargs)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.scope == self.Scope.DEPARTMENT and not self.department_id:
            errors["department"] = "A department budget needs a department."
        if self.department_id and self.department.tenant_id != self.tenant_id:
            errors["department"] = "The department belongs to another tenant."
        if self.scope == self.Scope.USER and not self.user_ref:
            errors["user_ref"] = "A user budget needs a user."
        if self.scope == self.Scope.MODEL and not self.model:
            errors["model"] = "A model budget needs a model."
        if self.scope == self.Scope.TAG and not (self.tag_key and self.tag_value):
            errors["tag_key"] = "A tag budget needs a tag key and value."
        thresholds = self.thresholds or []
        if not isinstance(thresholds, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 1000 for t in thresholds
        ):
            errors["thresholds"] = "Thresholds must be a list of whole percentages between 1 and 1000."
        if errors:
            raise ValidationError(errors)

    def period_bounds(self, at: datetime) -> PeriodBounds:
        """The budget period containing `at`, in the tenant's time zone (DST-safe: bounds are
        built as local midnights and converted, so a period may be 23 or 25 hours long)."""
        tz = self.tenant.tz
        local = at.astimezone(tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        if self.period == self.Period.DAY:
            start, end = midnight, midnight + timedelta(days=1)
        elif self.period == self.Period.WEEK:
            start = midnight - timedelta(days=midnight.weekday())
            end = start + timedelta(days=7)
        else:
            start = midnight.replace(day=1)
            end = (start + timedelta(days=32)).replace(day=1)
        return PeriodBounds(start=start.replace(tzinfo=tz), end=end.replace(tzinfo=tz))


class NotificationChannel(models.Model):
    class Kind(models.TextChoices):
        EMAIL = "email", "Email"
        WEBHOOK = "webhook", "JSON webhook"
        SLACK = "slack", "Slack-compatible webhook"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="channels")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    target = models.CharField(max_length=1000, help_text="Comma-separated e-mail addresses, or the webhook URL.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def clean(self) -> None:
        from django.core.validators import EmailValidator, URLValidator

        if self.kind == self.Kind.EMAIL:
            for address in filter(None, (a.strip() for a in self.target.split(","))):
                try:
                    EmailValidator()(address)
                except ValidationError as exc:
                    raise ValidationError({"target": f"{address!r} is not an e-mail address."}) from exc
        else:
            try:
                URLValidator(schemes=["http", "https"])(self.target)
            except ValidationError as exc:
                raise ValidationError({"target": "Webhook channels need an http(s) URL."}) from exc


class AuditLog(models.Model):
    """Append-only record of every change to money-relevant configuration and of every
    invoice transition: who, what, when, and the before/after values."""

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_entries")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(max_length=255, help_text="Username or system process, kept if the user goes.")
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=255, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["tenant", "-created_at"]), models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_label} {self.action} {self.object_type}#{self.object_id}"


class BudgetAlert(models.Model):
    """One alert of one budget, for one period and threshold: the unique key is what makes each
    threshold fire once per period, however often budgets are evaluated. Which channels hear of
    it is decided by the alert routes (`chargeback.alerting`), not stored here."""

    class Kind(models.TextChoices):
        THRESHOLD = "threshold", "Spend crossed a threshold"
        FORECAST = "forecast", "Forecast to cross a threshold before the period ends"

    class State(models.TextChoices):
        FIRING = "firing", "Firing"
        RESOLVED = "resolved", "Resolved"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    # Before alert routing each threshold was recorded once per channel; kept for those rows.
    channel = models.ForeignKey(
        NotificationChannel, null=True, blank=True, on_delete=models.SET_NULL, related_name="budget_alerts"
    )
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    threshold = models.PositiveIntegerField(help_text="Percent of the budget amount.")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.FIRING)
    spent = models.DecimalField(**MONEY, help_text="Period spend when the alert fired, in the budget currency.")
    forecast = models.DecimalField(**MONEY, null=True, blank=True, help_text="Forecast spend at period end.")
    message = models.TextField()
    fired_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-fired_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "period_start", "threshold", "kind"], name="budget_alert_once_per_period"
            )
        ]

    def __str__(self) -> str:
        return f"{self.budget} {self.kind} {self.threshold}% ({self.state})"


class AlertKind(models.TextChoices):
    BUDGET_THRESHOLD = "budget_threshold", "Budget threshold"
    BUDGET_FORECAST = "budget_forecast", "Budget forecast overspend"
    ANOMALY = "anomaly", "Anomaly"
    ERROR_RATE = "error_rate", "Error-rate spike"
    LATENCY_SLO = "latency_slo", "Latency SLO breach"
    QUALITY_DROP = "quality_drop", "Quality drop"
    UNPRICED_EVENTS = "unpriced_events", "Unpriced events"


class Severity(models.TextChoices):
    CRITICAL = "critical", "Critical"
    WARNING = "warning", "Warning"
    INFO = "info", "Info"


class Alert(models.Model):
    """One episode of one problem: fired by a source (budgets, anomalies, evals, the 5-minute
    checks), re-fired while it lasts (occurrences), resolved when the source sees the metric
    recover. At most one firing row per (tenant, kind, key): that constraint is what lets
    concurrent evaluations fire the same problem without notifying it twice."""

    class State(models.TextChoices):
        FIRING = "firing", "Firing"
        RESOLVED = "resolved", "Resolved"

    class Notice(models.TextChoices):
        """What is owed to the channels, sent grouped by `alerting.send_pending`."""

        NONE = "", "Nothing"
        FIRING = "firing", "Firing message"
        RESOLVED = "resolved", "Resolved message"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=32, choices=AlertKind.choices)
    severity = models.CharField(max_length=16, choices=Severity.choices)
    key = models.CharField(max_length=200, help_text="What it is about, e.g. budget:12:20250301:80.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.FIRING)
    title = models.CharField(max_length=255)
    text = models.TextField()
    runbook = models.CharField(max_length=64, help_text="Anchor of its section in docs/RUNBOOK.md.")
    payload = models.JSONField(default=dict, blank=True)
    occurrences = models.PositiveIntegerField(default=1, help_text="Evaluations that found it firing.")
    pending_notice = models.CharField(max_length=16, choices=Notice.choices, blank=True, default=Notice.NONE)
    notified_severity = models.CharField(max_length=16, choices=Severity.choices, blank=True)
    first_fired_at = models.DateTimeField()
    last_fired_at = models.DateTimeField()
    last_notified_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolve_text = models.TextField(blank=True)

    class Meta:
        ordering = ["-last_fired_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "kind", "key"], condition=models.Q(state="firing"), name="alert_one_firing_per_key"
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "kind", "key", "-first_fired_at"], name="alert_lookup"),
            models.Index(fields=["tenant", "pending_notice"], name="alert_pending"),
        ]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.title} ({self.state})"


class AlertRoute(models.Model):
    """Which alerts go to which channel: matching kinds and severities (empty = all). A route
    without a channel keeps its alerts on the dashboard only. A tenant with no enabled route
    at all gets every alert on every enabled channel (the behaviour before routing existed)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alert_routes")
    name = models.CharField(max_length=200)
    kinds = models.JSONField(default=list, blank=True, help_text="Alert kinds; empty = every kind.")
    severities = models.JSONField(default=list, blank=True, help_text="Severities; empty = every severity.")
    channel = models.ForeignKey(
        NotificationChannel,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alert_routes",
        help_text="Empty = dashboard only (no message).",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "name"]

    def __str__(self) -> str:
        return self.name

    def matches(self, *, kind: str, severity: str) -> bool:
        return (not self.kinds or kind in self.kinds) and (not self.severities or severity in self.severities)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        for field, choices in (("kinds", AlertKind), ("severities", Severity)):
            value = getattr(self, field)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                errors[field] = 'A list of names, e.g. ["budget_threshold"]; empty = all.'
                continue
            unknown = sorted(set(value) - set(choices.values))
            if unknown:
                errors[field] = f"Unknown {field}: {', '.join(unknown)} (choose from {', '.join(choices.values)})."
        if self.channel_id and self.tenant_id and self.channel.tenant_id != self.tenant_id:
            errors["channel"] = "This channel belongs to another tenant."
        if errors:
            raise ValidationError(errors)


class Delivery(models.Model):
    """One outbound notification to one channel, with its delivery attempts recorded."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed (gave up)"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    channel = models.ForeignKey(NotificationChannel, on_delete=models.CASCADE, related_name="deliveries")
    subject = models.CharField(max_length=255)
    text = models.TextField()
    payload = models.JSONField(default=dict, blank=True)
    reference = models.CharField(max_length=64, blank=True, help_text="What it is about, e.g. budget_alert:12.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["status", "created_at"], name="delivery_status")]

    def __str__(self) -> str:
        return f"{self.subject} → {self.channel} ({self.status})"


# --- Chargeback invoicing (docs/INVOICING.md) ---------------------------------------------------


def first_of_month(value: date) -> date:
    return value.replace(day=1)


class ChargebackPolicy(models.Model):
    """How a tenant turns list cost into what departments are charged.

    effective = list × (1 − discount_percent/100) × (1 + markup_percent/100). A discount passes on
    a negotiated provider rebate that the price book does not carry; a markup recovers the
    platform team's overhead. Shared-cost pools are charged as entered (never marked up).
    """

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="chargeback_policy")
    discount_percent = models.DecimalField(
        max_digits=7, decimal_places=4, default=Decimal(0), validators=[MinValueValidator(0), MaxValueValidator(100)]
    )
    markup_percent = models.DecimalField(
        max_digits=7, decimal_places=4, default=Decimal(0), validators=[MinValueValidator(0), MaxValueValidator(1000)]
    )
    notes = models.CharField(max_length=500, blank=True, help_text="Printed on every invoice of the tenant.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "chargeback policies"

    def __str__(self) -> str:
        return f"{self.tenant}: −{self.discount_percent}% / +{self.markup_percent}%"

    @property
    def factor(self) -> Decimal:
        return (1 - self.discount_percent / 100) * (1 + self.markup_percent / 100)


class SharedCostPool(models.Model):
    """A fixed monthly cost (platform team, GPU lease, a commitment, untagged spend) spread over
    departments on every invoice month in which the pool is active."""

    class Kind(models.TextChoices):
        PLATFORM = "platform", "Platform"
        GPU = "gpu", "GPU"
        COMMITMENT = "commitment", "Commitment"
        UNTAGGED = "untagged", "Untagged spend"

    class AllocationKey(models.TextChoices):
        USAGE_SHARE = "usage_share", "Share of the month's usage cost"
        HEADCOUNT = "headcount", "Headcount (members per department)"
        FIXED_PERCENT = "fixed_percent", "Fixed percentages"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="shared_cost_pools")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PLATFORM)
    amount = models.DecimalField(
        **MONEY, validators=[MinValueValidator(0)], help_text="Per month, in the currency's minor unit (e.g. cents)."
    )
    currency = models.CharField(max_length=3, default="USD", validators=[validate_currency])
    allocation_key = models.CharField(max_length=16, choices=AllocationKey.choices, default=AllocationKey.USAGE_SHARE)
    starts_on = models.DateField(null=True, blank=True, help_text="First month charged. Empty = always.")
    ends_on = models.DateField(null=True, blank=True, help_text="Last month charged. Empty = open-ended.")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="shared_pool_name_unique_per_tenant")]

    def __str__(self) -> str:
        return f"{self.name} ({self.amount} {self.currency}/month, {self.allocation_key})"

    def clean(self) -> None:
        from chargeback.money import quantize

        if self.amount is not None and quantize(self.amount, self.currency or "USD") != self.amount:
            raise ValidationError({"amount": "Use the currency's minor unit (e.g. 1234.56 for USD)."})
        if self.starts_on and self.ends_on and self.ends_on < self.starts_on:
            raise ValidationError({"ends_on": "The last month is before the first month."})

    def applies_to(self, period: date) -> bool:
        return (
            self.active
            and (self.starts_on is None or first_of_month(self.starts_on) <= period)
            and (self.ends_on is None or period <= first_of_month(self.ends_on))
        )


class SharedCostSplit(models.Model):
    """One department's fixed share of a `fixed_percent` pool; a pool's splits sum to 100."""

    pool = models.ForeignKey(SharedCostPool, on_delete=models.CASCADE, related_name="splits")
    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="+")
    percent = models.DecimalField(
        max_digits=7, decimal_places=4, validators=[MinValueValidator(0), MaxValueValidator(100)]
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["pool", "department"], name="one_split_per_pool_department")]

    def __str__(self) -> str:
        return f"{self.department.code}: {self.percent}%"

    def clean(self) -> None:
        if self.department_id and self.pool_id and self.department.tenant_id != self.pool.tenant_id:
            raise ValidationError({"department": "The department belongs to another tenant."})


class InvoiceCounter(models.Model):
    """The last invoice number used per tenant and year. Numbers are taken under a row lock in
    the issuing transaction, so a rolled-back issue gives its number back: the series has no gaps."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    year = models.PositiveSmallIntegerField()
    last_number = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "year"], name="one_invoice_counter_per_tenant_year")]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.year}: {self.last_number}"


class InvoiceImmutable(Exception):
    """Raised on any attempt to change the amounts or lines of an issued invoice."""


class Invoice(models.Model):
    """One department's chargeback for one calendar month of the tenant's time zone.

    Amounts are in `currency` (the tenant's). `*_unrounded` fields keep full precision; the
    rounded totals are sums of lines rounded once each, and `rounding_difference` is exactly
    `total - total_unrounded`, so no fraction of a cent is lost silently.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ISSUED = "issued", "Issued"
        APPROVED = "approved", "Approved"
        DISPUTED = "disputed", "Disputed"
        RESOLVED = "resolved", "Resolved"

    class Resolution(models.TextChoices):
        CREDIT = "credit", "Credit on the next invoice"
        NO_CHANGE = "no_change", "No change"

    # Fields that a lifecycle transition may change after issue; everything else is frozen.
    LIFECYCLE_FIELDS = frozenset(
        {
            "status",
            "number",
            "issued_at",
            "issued_by",
            "approved_at",
            "approved_by",
            "disputed_at",
            "disputed_by",
            "dispute_reason",
            "resolved_at",
            "resolved_by",
            "resolution",
            "resolution_note",
        }
    )

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="invoices")
    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="invoices")
    period = models.DateField(help_text="First day of the invoiced month (tenant time zone).")
    period_start = models.DateTimeField(help_text="Local midnight of the 1st, inclusive.")
    period_end = models.DateTimeField(help_text="Local midnight of the next 1st, exclusive.")
    currency = models.CharField(max_length=3, validators=[validate_currency])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT, db_index=True)
    number = models.CharField(max_length=64, blank=True, help_text="Given at issue, e.g. ACME-2026-0007.")

    # Totals in `currency` (lines in another currency are listed, not converted: see notes).
    list_total_unrounded = models.DecimalField(**MONEY, default=Decimal(0))
    total_unrounded = models.DecimalField(**MONEY, default=Decimal(0))
    usage_total = models.DecimalField(**MONEY, default=Decimal(0), help_text="Production usage lines, rounded.")
    eval_total = models.DecimalField(**MONEY, default=Decimal(0))
    allocations_total = models.DecimalField(**MONEY, default=Decimal(0))
    adjustments_total = models.DecimalField(**MONEY, default=Decimal(0), help_text="Adjustments and credits.")
    total = models.DecimalField(**MONEY, default=Decimal(0), help_text="Amount charged: sum of rounded lines.")
    rounding_difference = models.DecimalField(**MONEY, default=Decimal(0), help_text="total − total_unrounded.")
    unpriced_requests = models.PositiveIntegerField(default=0)
    budget_amount = models.DecimalField(**MONEY, null=True, blank=True)
    notes = models.TextField(blank=True)

    generated_at = models.DateTimeField(default=timezone.now)
    issued_at = models.DateTimeField(null=True, blank=True)
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    disputed_at = models.DateTimeField(null=True, blank=True)
    disputed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    dispute_reason = models.TextField(blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolution = models.CharField(max_length=16, choices=Resolution.choices, blank=True)
    resolution_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-period", "department__code"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "department", "period"], name="one_invoice_per_department_month"),
            models.UniqueConstraint(
                fields=["tenant", "number"], condition=~models.Q(number=""), name="invoice_number_unique_per_tenant"
            ),
        ]
        indexes = [models.Index(fields=["tenant", "period", "status"], name="invoice_tenant_period_status")]

    def __str__(self) -> str:
        label = self.number or f"draft #{self.pk}"
        return f"{label} {self.department.code} {self.period:%Y-%m}"

    def save(self, *args, **kwargs) -> None:
        # Issued invoices are immutable: only lifecycle fields may be written, and only when the
        # caller says so with update_fields (a plain save() could carry a changed amount).
        if self.pk is not None:
            stored = type(self).objects.filter(pk=self.pk).values_list("status", flat=True).first()
            if stored is not None and stored != self.Status.DRAFT:
                update_fields = kwargs.get("update_fields")
                if update_fields is None or not set(update_fields) <= self.LIFECYCLE_FIELDS:
                    raise InvoiceImmutable(f"Invoice {self} is {stored}: its amounts and lines cannot change.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if type(self).objects.filter(pk=self.pk).exclude(status=self.Status.DRAFT).exists():
            raise InvoiceImmutable(f"Invoice {self} is issued and cannot be deleted.")
        return super().delete(*args, **kwargs)

    def is_editable(self) -> bool:
        return self.status == self.Status.DRAFT


class InvoiceLineQuerySet(models.QuerySet):
    def _check_editable(self) -> None:
        if self.exclude(invoice__status=Invoice.Status.DRAFT).exists():
            raise InvoiceImmutable("Lines of an issued invoice cannot change.")

    def update(self, **kwargs):
        self._check_editable()
        return super().update(**kwargs)

    def delete(self):
        self._check_editable()
        return super().delete()


class InvoiceLine(models.Model):
    """One line of an invoice. `list_cost*` is what the events cost at the price book;
    `amount*` is what is charged (after the tenant's discount or markup; allocations and
    credits are charged as they are). `amount` is `amount_unrounded` rounded once, half-up."""

    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        EVAL = "eval", "Quality assurance (eval)"
        ALLOCATION = "allocation", "Shared-cost allocation"
        ADJUSTMENT = "adjustment", "Adjustment for a closed month"
        CREDIT = "credit", "Credit (dispute resolution)"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=500)
    currency = models.CharField(max_length=3)
    provider = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=255, blank=True)

    # Token quantities; input_tokens is *uncached* input here (the buckets are exclusive on a line).
    requests = models.BigIntegerField(default=0)
    unpriced_requests = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0, help_text="Included in output_tokens.")

    # Unit prices per 1M tokens (informational: the amount is the exact sum of event costs).
    input_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    cache_read_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    cache_write_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    output_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    average_per_mtok = models.DecimalField(**MONEY, null=True, blank=True, help_text="list cost / all tokens × 1M.")
    price_note = models.CharField(max_length=255, blank=True)

    list_cost_unrounded = models.DecimalField(**MONEY, default=Decimal(0))
    list_cost = models.DecimalField(**MONEY, default=Decimal(0))
    amount_unrounded = models.DecimalField(**MONEY, default=Decimal(0))
    amount = models.DecimalField(**MONEY, default=Decimal(0))

    # Allocation and adjustment context.
    pool = models.ForeignKey(SharedCostPool, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    basis = models.CharField(max_length=500, blank=True, help_text="How an allocation was split.")
    adjusts_period = models.DateField(null=True, blank=True, help_text="The closed month an adjustment corrects.")

    objects = InvoiceLineQuerySet.as_manager()

    class Meta:
        ordering = ["invoice", "position", "id"]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount} {self.currency}"

    def save(self, *args, **kwargs) -> None:
        if Invoice.objects.filter(pk=self.invoice_id).exclude(status=Invoice.Status.DRAFT).exists():
            raise InvoiceImmutable("Lines of an issued invoice cannot change.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if Invoice.objects.filter(pk=self.invoice_id).exclude(status=Invoice.Status.DRAFT).exists():
            raise InvoiceImmutable("Lines of an issued invoice cannot change.")
        return super().delete(*args, **kwargs)

    @property
    def rounding(self) -> Decimal:
        return self.amount - self.amount_unrounded


class PendingCredit(models.Model):
    """A credit granted when a dispute is resolved, waiting for the department's next invoice.

    `applied_to` is set when a draft takes it; regenerating that draft takes it again, and no
    other invoice can, so a credit is charged back exactly once.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="+")
    source_invoice = models.OneToOneField(Invoice, on_delete=models.PROTECT, related_name="credit")
    amount = models.DecimalField(**MONEY, validators=[MinValueValidator(0)], help_text="Positive; charged negated.")
    currency = models.CharField(max_length=3, validators=[validate_currency])
    reason = models.CharField(max_length=500)
    applied_to = models.ForeignKey(Invoice, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"credit {self.amount} {self.currency} for {self.source_invoice}"
