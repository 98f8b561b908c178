"""URLs of the telemetry app. Each area adds its own block."""

from django.urls import path

from telemetry import chat, metrics, openai_compat
from telemetry.api import anomalies as anomaly_api
from telemetry.api import quality, reporting
from telemetry.api.ingest import OtlpTracesView, UsageEventsView

urlpatterns: list = [
    # Ingest (docs/INGEST.md)
    path("api/v1/usage-events", UsageEventsView.as_view(), name="usage-events"),
    path("v1/traces", OtlpTracesView.as_view(), name="otlp-traces"),
]

# Reporting (rollups) and anomalies.
urlpatterns += [
    path("api/v1/spend", reporting.SpendView.as_view(), name="api-spend"),
    path("api/v1/latency", reporting.LatencyView.as_view(), name="api-latency"),
    path("api/v1/budgets", reporting.BudgetsView.as_view(), name="api-budgets"),
    path("api/v1/anomalies", anomaly_api.AnomalyListView.as_view(), name="api-anomalies"),
    path("api/v1/anomalies/<int:anomaly_id>/ack", anomaly_api.AnomalyAckView.as_view(), name="api-anomaly-ack"),
    path(
        "api/v1/anomalies/<int:anomaly_id>/resolve",
        anomaly_api.AnomalyResolveView.as_view(),
        name="api-anomaly-resolve",
    ),
]

# Gateway and chat (docs/GATEWAY.md)
urlpatterns += [
    path("v1/chat/completions", openai_compat.chat_completions, name="gateway-chat-completions"),
    path("api/chat", chat.chat, name="chat"),
    path("metrics", metrics.metrics_view, name="metrics"),
]

# Quality: feedback and evaluation summary (docs/EVALS.md)
urlpatterns += [
    path("api/v1/feedback", quality.FeedbackView.as_view(), name="api-feedback"),
    path("api/v1/evals/summary", quality.EvalSummaryView.as_view(), name="api-evals-summary"),
]
