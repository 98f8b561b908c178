"""Admin for budget alerts and notification deliveries: read-only records of what fired and
whether it reached its channel (attempts and the last error), plus a retry action."""

from __future__ import annotations

from django.contrib import admin, messages

from chargeback.models import BudgetAlert, Delivery


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = ("budget", "kind", "threshold", "channel", "state", "period_start", "spent", "fired_at", "resolved_at")
    list_filter = ("state", "kind", "tenant")
    list_select_related = ("budget", "channel")
    raw_id_fields = ("budget", "channel", "tenant")
    readonly_fields = [f.name for f in BudgetAlert._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("subject", "channel", "status", "attempts", "last_error", "created_at", "sent_at")
    list_filter = ("status", "tenant")
    list_select_related = ("channel",)
    search_fields = ("subject", "reference")
    readonly_fields = [f.name for f in Delivery._meta.fields]
    actions = ["retry"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Retry failed deliveries")
    def retry(self, request, queryset) -> None:
        from chargeback.tasks import deliver

        ids = list(queryset.filter(status=Delivery.Status.FAILED).values_list("pk", flat=True))
        Delivery.objects.filter(pk__in=ids, status=Delivery.Status.FAILED).update(status=Delivery.Status.PENDING)
        for pk in ids:
            deliver.delay(pk)
        self.message_user(request, f"{len(ids)} deliveries queued again.", messages.SUCCESS)
