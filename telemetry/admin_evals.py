"""Admin for quality: evaluation configs (audited like the other settings), their scores and
alerts (read-only), golden datasets with their items, dataset runs and user feedback."""

from __future__ import annotations

from django.contrib import admin

from chargeback.admin import AuditedAdmin
from telemetry.models import (
    Dataset,
    DatasetItem,
    DatasetRun,
    DatasetRunItem,
    EvalAlert,
    EvalConfig,
    EvalScore,
    Feedback,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the evaluation task or the API: inspected here, never edited."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(EvalConfig)
class EvalConfigAdmin(AuditedAdmin):
    list_display = (
        "name",
        "tenant",
        "kind",
        "judge_route",
        "sample_rate",
        "max_per_run",
        "slo_min_pass_rate",
        "enabled",
    )
    list_filter = ("enabled", "kind", "tenant")
    search_fields = ("name",)
    list_select_related = ("tenant", "judge_route")
    raw_id_fields = ("judge_route", "filter_department")
    autocomplete_fields = ("tenant",)
    fieldsets = (
        (None, {"fields": ("tenant", "name", "kind", "enabled", "judge_route")}),
        (
            "Rubric",
            {
                "fields": ("criteria", "score_min", "score_max", "pass_threshold"),
                "description": "The judge must answer JSON with a score on this scale; a score at or above the threshold passes.",
            },
        ),
        ("Sampling", {"fields": ("sample_rate", "max_per_run", "lookback_hours")}),
        (
            "Filters",
            {
                "fields": ("filter_department", "filter_feature", "filter_model", "filter_status"),
                "description": "Empty = all.",
            },
        ),
        (
            "Quality SLO",
            {
                "fields": ("slo_min_pass_rate", "baseline_pass_rate", "baseline_margin", "window_hours", "min_samples"),
                "description": "Rates are shares (0.9 = 90%). An alert goes to the tenant's notification channels once per day.",
            },
        ),
    )


@admin.register(EvalScore)
class EvalScoreAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "config", "event_id", "department_code", "model", "kind", "status", "score", "passed")
    list_filter = ("status", "kind", "passed", "config")
    search_fields = ("=event_id", "=judge_event_id")
    list_select_related = ("config",)


@admin.register(EvalAlert)
class EvalAlertAdmin(ReadOnlyAdmin):
    list_display = ("day", "config", "reason", "pass_rate", "threshold", "samples")
    list_filter = ("reason", "tenant")


class DatasetItemInline(admin.TabularInline):
    model = DatasetItem
    fields = ("position", "key", "messages", "expected", "criteria")
    extra = 0


@admin.register(Dataset)
class DatasetAdmin(AuditedAdmin):
    list_display = ("name", "tenant", "created_at")
    list_filter = ("tenant",)
    search_fields = ("name",)
    autocomplete_fields = ("tenant",)
    inlines = [DatasetItemInline]


class DatasetRunItemInline(admin.TabularInline):
    model = DatasetRunItem
    fields = ("item", "status", "score", "passed", "output", "reasoning", "event_id", "judge_event_id")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DatasetRun)
class DatasetRunAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "dataset",
        "route_alias",
        "judge_alias",
        "items_passed",
        "items_total",
        "pass_rate",
        "started_at",
    )
    list_filter = ("tenant",)
    list_select_related = ("dataset",)
    inlines = [DatasetRunItemInline]


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin):
    list_display = ("updated_at", "tenant", "event_id", "author", "department_code", "model", "thumbs", "rating")
    list_filter = ("thumbs", "rating", "tenant")
    search_fields = ("=event_id",)
