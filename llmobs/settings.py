"""Settings for llmobs, driven entirely by the environment (django-environ).

With no environment set, llmobs runs the *embedded default*: SQLite, an in-memory cache and
eager Celery, so a newcomer can try it with nothing installed. Setting DATABASE_URL
(PostgreSQL) and REDIS_URL switches to the production configuration.
"""

from pathlib import Path

import environ
from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
# The embedded default gets a fixed, clearly-labelled development key; production must set one
# (`manage.py check --deploy` flags the default).
SECRET_KEY = env.str("SECRET_KEY", default="insecure-embedded-default-key-change-me-in-production")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "chargeback",
    "telemetry",
    "web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # A NUL in a query parameter is a 400 here, not a PostgreSQL error deep in a view.
    "web.middleware.RejectNulMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # After authentication: shows times in the signed-in user's tenant time zone.
    "web.middleware.TenantTimezoneMiddleware",
]

ROOT_URLCONF = "llmobs.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "web.context_processors.layout",
            ],
        },
    },
]

WSGI_APPLICATION = "llmobs.wsgi.application"

# --- Database ---------------------------------------------------------------------------------
# An empty DATABASE_URL (e.g. `DATABASE_URL= ./dev up`) means the embedded default too.
DATABASES = {
    "default": env.db_url_config(env.str("DATABASE_URL", default="") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the dev server read while a seed or a test writes.
    DATABASES["default"].setdefault("OPTIONS", {})["init_command"] = "PRAGMA journal_mode=WAL;"
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # PostgreSQL's default random_page_cost (4.0) prices a random read as on a spinning disk: with
    # fresh statistics the planner then seq-scans the whole 160-column hourly rollup table for a
    # week of hours instead of walking its key index (measured on the 10M-event benchmark: 101 ms
    # against 64 ms). 1.1 is the usual value for SSD storage; set the variable empty to keep the
    # server's own setting.
    _page_cost = env.str("LLMOBS_PG_RANDOM_PAGE_COST", default="1.1")
    if _page_cost:
        _options = DATABASES["default"].setdefault("OPTIONS", {})
        _options["options"] = f"{_options.get('options', '')} -c random_page_cost={float(_page_cost)}".strip()
# SQLite cannot enforce "NULLS NOT DISTINCT" on the catalogue's unique key; there the
# load_prices upsert is what keeps catalogue rows unique.
SILENCED_SYSTEM_CHECKS = ["models.W047"]
IS_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and Celery ---------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "llmobs",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = None
# Embedded default: no broker, so tasks run in-process at the call site.
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Queue split: slow, bulky work (evals, reports, exports, invoices) on `slow` so it never delays
# the minute rollups and budget checks on `default`. Run `celery -A llmobs worker -Q default`
# and `celery -A llmobs worker -Q slow` (Procfile; docs/OPERATIONS.md).
CELERY_TASK_DEFAULT_QUEUE = "default"
# Explicit names first (tests/test_task_routes.py lists every registered task and its queue);
# the patterns catch future tasks named after the same work.
CELERY_TASK_ROUTES = {
    "telemetry.run_evals": {"queue": "slow"},
    "telemetry.send_reports": {"queue": "slow"},
    "telemetry.export_warehouse": {"queue": "slow"},
    "telemetry.roll_up_range": {"queue": "slow"},
    "telemetry.purge_usage": {"queue": "slow"},
    "telemetry.ensure_partitions": {"queue": "slow"},
    "chargeback.generate_invoices": {"queue": "slow"},
    "evals.*": {"queue": "slow"},
    "*.evals.*": {"queue": "slow"},
    "reports.*": {"queue": "slow"},
    "*.report*": {"queue": "slow"},
    "*.export*": {"queue": "slow"},
    "*invoice*": {"queue": "slow"},
}
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
# Rollups every minute (budgets are evaluated after each), the per-user/feature/tag daily rollup
# every 10 minutes, anomalies a few minutes after each hour so the hour's late events are in.
CELERY_BEAT_SCHEDULE: dict = {
    "roll-up": {"task": "telemetry.roll_up", "schedule": 60.0, "options": {"expires": 55}},
    "roll-up-dimensions": {"task": "telemetry.roll_up_dimensions", "schedule": 600.0, "options": {"expires": 590}},
    "score-anomalies": {
        "task": "telemetry.score_anomalies",
        "schedule": crontab(minute=5),
        "options": {"expires": 3000},
    },
}
# Monthly invoice drafts: on the two days after the grace window ends (two, because a tenant's
# month ends up to 14 hours before or after UTC's); the second run only refreshes drafts.
CELERY_BEAT_SCHEDULE["chargeback.generate_invoices"] = {
    "task": "chargeback.generate_invoices",
    "schedule": crontab(
        minute=0,
        hour=6,
        day_of_month=f"{env.int('LLMOBS_INVOICE_GRACE_DAYS', default=3) + 1},"
        f"{env.int('LLMOBS_INVOICE_GRACE_DAYS', default=3) + 2}",
    ),
}
# Captured prompt/completion text expires on schedule (Tenant.capture_retention_days).
CELERY_BEAT_SCHEDULE["purge-captures"] = {"task": "telemetry.purge_captures", "schedule": 3600.0}
# Raw usage events older than this many days are deleted daily at 03:15 UTC (telemetry/retention.py;
# rollups and invoices are kept). 0 = keep forever; otherwise at least 7.
LLMOBS_RAW_RETENTION_DAYS = env.int("LLMOBS_RAW_RETENTION_DAYS", default=400)
CELERY_BEAT_SCHEDULE["purge-usage"] = {"task": "telemetry.purge_usage", "schedule": crontab(minute=15, hour=3)}
# PostgreSQL: the usage table is partitioned by month (telemetry/partitions.py); partitions are
# kept three months ahead. A no-op on SQLite.
CELERY_BEAT_SCHEDULE["ensure-partitions"] = {
    "task": "telemetry.ensure_partitions",
    "schedule": crontab(minute=45, hour=2),
}
# LLM-as-judge evaluations of sampled production calls (docs/EVALS.md).
CELERY_BEAT_SCHEDULE["run-evals"] = {"task": "telemetry.run_evals", "schedule": 900.0, "options": {"expires": 840}}

# Stakeholder reports (docs/REPORTS.md): the week's report on Monday, the month's on the 1st, at
# this UTC hour. Each tenant gets its last *complete* local period, so a tenant west of UTC-7
# receives its weekly report a week later (its Sunday is not over at 07:00 UTC).
LLMOBS_REPORT_HOUR_UTC = env.int("LLMOBS_REPORT_HOUR_UTC", default=7)
CELERY_BEAT_SCHEDULE["telemetry.send_weekly_reports"] = {
    "task": "telemetry.send_reports",
    "schedule": crontab(minute=0, hour=LLMOBS_REPORT_HOUR_UTC, day_of_week="mon"),
    "args": ("week",),
}
CELERY_BEAT_SCHEDULE["telemetry.send_monthly_reports"] = {
    "task": "telemetry.send_reports",
    "schedule": crontab(minute=0, hour=LLMOBS_REPORT_HOUR_UTC, day_of_month="1"),
    "args": ("month",),
}
# Warehouse export (docs/WAREHOUSE.md): yesterday and the day before (UTC), daily at 02:30 UTC.
CELERY_BEAT_SCHEDULE["telemetry.export_warehouse"] = {
    "task": "telemetry.export_warehouse",
    "schedule": crontab(minute=30, hour=2),
}

# --- Auth, i18n, static ---------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "web:login"
LOGIN_REDIRECT_URL = "web:home"
LOGOUT_REDIRECT_URL = "web:login"
# Messages carry one-time secrets (a new API key's token): keep them server-side, not in a cookie.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- Security (production defaults; the embedded default runs over plain HTTP) ------------------
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG and bool(REDIS_URL))
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=SECURE_HSTS_SECONDS > 0)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=SECURE_HSTS_SECONDS > 0)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=10 * 1024 * 1024)

# --- REST framework and OpenAPI --------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "chargeback.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "llmobs.errors.exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "llmobs.jsontext.StrictJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "llmobs API",
    "DESCRIPTION": "LLM observability and internal chargeback.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several models have a `status`; name each choice set after its owner in the schema.
    "ENUM_NAME_OVERRIDES": {
        "InvoiceStatusEnum": "chargeback.models.Invoice.Status",
        "UsageEventStatusEnum": "telemetry.models.UsageEvent.Status",
    },
}

# --- Product settings ---------------------------------------------------------------------------
# Tag keys rolled up per day (spend by `group_by=tag:NAME`); other keys stay on raw events only.
LLMOBS_ROLLUP_TAG_KEYS = tuple(env.list("LLMOBS_ROLLUP_TAG_KEYS", default=["env", "team", "project", "app"]))

# --- Alerts (docs/ALERTS.md) ----------------------------------------------------------------------
# A still-firing alert is sent again at most once per this many minutes (budget alerts: once per
# period); its occurrences keep counting in between.
LLMOBS_ALERT_RENOTIFY_MINUTES = env.int("LLMOBS_ALERT_RENOTIFY_MINUTES", default=60)
# Where messages link to: docs/RUNBOOK.md as served to your operators (e.g. your Git host's URL).
LLMOBS_ALERT_RUNBOOK_URL = env.str("LLMOBS_ALERT_RUNBOOK_URL", default="docs/RUNBOOK.md")
# The 5-minute checks over the last 15 minutes, per tenant and department.
LLMOBS_ALERT_MIN_CALLS = env.int("LLMOBS_ALERT_MIN_CALLS", default=20)
LLMOBS_ALERT_ERROR_RATE = env.float("LLMOBS_ALERT_ERROR_RATE", default=0.10)
LLMOBS_ALERT_ERROR_RATE_CRITICAL = env.float("LLMOBS_ALERT_ERROR_RATE_CRITICAL", default=0.50)
LLMOBS_ALERT_LATENCY_P95_MS = env.int("LLMOBS_ALERT_LATENCY_P95_MS", default=30_000)
CELERY_BEAT_SCHEDULE["check-alerts"] = {
    "task": "telemetry.check_alerts",
    "schedule": 300.0,
    "options": {"expires": 290},
}

# --- E-mail (budget alerts and anomaly notifications) --------------------------------------------
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="llmobs@localhost")

# Internal rate for local (Ollama) models when `load_prices` seeds them: USD per GPU-second.
LLMOBS_DEFAULT_GPU_SECOND_RATE = env.str("LLMOBS_DEFAULT_GPU_SECOND_RATE", default="0.0005")
# Largest ingest request body (JSON batch or OTLP export, after gzip), bytes; bounded by
# DATA_UPLOAD_MAX_MEMORY_SIZE. Larger requests get 413.
LLMOBS_INGEST_MAX_BODY_BYTES = env.int("LLMOBS_INGEST_MAX_BODY_BYTES", default=10 * 1024 * 1024)
# Small ingest writes (single events) of concurrent requests share one statement and one commit
# through a per-process writer thread (telemetry/groupcommit.py); a request is answered after
# its commit. Pays off under a threaded server (the Procfile's gthread); PostgreSQL only.
LLMOBS_INGEST_GROUP_COMMIT = IS_POSTGRES and env.bool("LLMOBS_INGEST_GROUP_COMMIT", default=True)

# Chargeback invoicing (docs/INVOICING.md). A month is drafted only once its last local midnight
# is this many days past, so late events land on the right invoice rather than as adjustments.
LLMOBS_INVOICE_GRACE_DAYS = env.int("LLMOBS_INVOICE_GRACE_DAYS", default=3)
# How far back drafting looks for issued months whose raw cost changed (late events, re-pricing).
LLMOBS_INVOICE_ADJUSTMENT_MONTHS = env.int("LLMOBS_INVOICE_ADJUSTMENT_MONTHS", default=12)
# GL journal export: departments' expense is debited, the platform's recharge account credited.
LLMOBS_GL_EXPENSE_ACCOUNT = env.str("LLMOBS_GL_EXPENSE_ACCOUNT", default="6450")
LLMOBS_GL_RECHARGE_ACCOUNT = env.str("LLMOBS_GL_RECHARGE_ACCOUNT", default="7950")
# Name printed as the invoice issuer (FOCUS InvoiceIssuerName, PDF header); default: the tenant name.
LLMOBS_INVOICE_ISSUER = env.str("LLMOBS_INVOICE_ISSUER", default="")

# Warehouse export destination: an S3-compatible bucket (s3://bucket/prefix; credentials and region
# from the standard AWS_* variables, LLMOBS_EXPORT_S3_ENDPOINT for MinIO/R2/…) or else a directory.
LLMOBS_EXPORT_DIR = env.str("LLMOBS_EXPORT_DIR", default=str(BASE_DIR / "var" / "exports"))
LLMOBS_EXPORT_S3_URL = env.str("LLMOBS_EXPORT_S3_URL", default="")
LLMOBS_EXPORT_S3_ENDPOINT = env.str("LLMOBS_EXPORT_S3_ENDPOINT", default="")
# How many days each nightly export covers, ending yesterday: re-exporting the day before catches
# late events and tenants west of UTC whose local day (daily rollups) ended after the last run.
LLMOBS_EXPORT_DAYS = env.int("LLMOBS_EXPORT_DAYS", default=2)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # The provider SDKs' HTTP clients log every request at INFO: noise at gateway volumes.
    "loggers": {
        **{name: {"level": "WARNING"} for name in ("httpx", "httpx2", "httpcore")},
        # xhtml2pdf warns on every render about CSS it ignores (border-collapse): not actionable.
        "xhtml2pdf": {"level": "ERROR"},
    },
}

# --- Gateway (docs/GATEWAY.md) ------------------------------------------------------------------
LLMOBS_RECORDER_BACKGROUND = env.bool("LLMOBS_RECORDER_BACKGROUND", default=True)
LLMOBS_RETRY_BACKOFF_SECONDS = env.float("LLMOBS_RETRY_BACKOFF_SECONDS", default=0.25)
# Bearer token Prometheus sends to scrape /metrics (labels name tenants and departments).
LLMOBS_METRICS_TOKEN = env.str("LLMOBS_METRICS_TOKEN", default="")
LLMOBS_BREAKER_FAILURES = env.int("LLMOBS_BREAKER_FAILURES", default=5)
LLMOBS_BREAKER_COOLDOWN_SECONDS = env.float("LLMOBS_BREAKER_COOLDOWN_SECONDS", default=30)
LLMOBS_BUDGET_RESEED_SECONDS = env.int("LLMOBS_BUDGET_RESEED_SECONDS", default=300)
# Trace sampling for tenants without a sampling policy row (docs/SAMPLING.md): off = keep all.
LLMOBS_SAMPLING_DEFAULT_ENABLED = env.bool("LLMOBS_SAMPLING_DEFAULT_ENABLED", default=False)
