"""Admin for trace sampling policies (audited like the other settings), with the share of the
tenant's gateway calls whose trace was kept over the last 24 hours."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from chargeback.admin import AuditedAdmin
from telemetry import sampling
from telemetry.models import SamplingPolicy, SamplingReason


@admin.register(SamplingPolicy)
class SamplingPolicyAdmin(AuditedAdmin):
    list_display = ("tenant", "enabled", "keep_errors", "slow_ms", "costly_amount", "base_rate", "kept_last_24h")
    list_filter = ("enabled",)
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    readonly_fields = ("kept_last_24h", "updated_at")
    fieldsets = (
        (None, {"fields": ("tenant", "enabled")}),
        (
            "Always kept",
            {
                "fields": ("keep_errors", "slow_ms", "costly_amount"),
                "description": "Decided when the call ends: errors, calls at least this slow, calls costing at "
                "least this much (tenant currency). Empty = no such rule.",
            },
        ),
        ("The rest", {"fields": ("base_rate",), "description": "Share kept, chosen by a hash of the event id."}),
        ("Last 24 hours", {"fields": ("kept_last_24h", "updated_at")}),
    )

    @admin.display(description="kept (24 h)")
    def kept_last_24h(self, obj: SamplingPolicy) -> str:
        if obj.tenant_id is None:
            return "-"
        kept = sampling.get_kept_fraction(tenant=obj.tenant_id)
        if not kept.total:
            return "no gateway calls"
        reasons = ", ".join(f"{r} {kept.by_reason[r]:,}" for r in SamplingReason.values if r in kept.by_reason)
        return f"{kept.fraction:.1%} of {kept.total:,} ({reasons})"

    def save_model(self, request: HttpRequest, obj: SamplingPolicy, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # This process sees the change at once; other workers within POLICY_CACHE_SECONDS.
        sampling.forget_policies()
