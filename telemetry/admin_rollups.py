"""Admin for anomalies (acknowledge from the back office) and the rollup watermarks."""

from __future__ import annotations

from django.contrib import admin

from telemetry import anomalies
from telemetry.models import Anomaly, RollupWatermark


@admin.register(Anomaly)
class AnomalyAdmin(admin.ModelAdmin):
    list_display = ("hour", "tenant", "department", "metric", "severity", "score", "status")
    list_filter = ("status", "severity", "metric", "tenant")
    list_select_related = ("tenant", "department")
    raw_id_fields = ("tenant", "department", "acknowledged_by")
    readonly_fields = [f.name for f in Anomaly._meta.fields]
    actions = ["acknowledge"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Acknowledge")
    def acknowledge(self, request, queryset) -> None:
        for anomaly in queryset.filter(status=Anomaly.Status.OPEN):
            anomalies.acknowledge(anomaly=anomaly, user=request.user)


@admin.register(RollupWatermark)
class RollupWatermarkAdmin(admin.ModelAdmin):
    list_display = ("name", "position", "updated_at")
    readonly_fields = ("name", "position", "updated_at")
