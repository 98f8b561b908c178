"""Admin for alerting: the alert routes (which kinds and severities reach which channel), the
read-only list of alerts, budget alert records, and notification deliveries (attempts and the
last error) with a retry action."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from chargeback import alerting
from chargeback.admin import AuditedAdmin
from chargeback.models import Alert, AlertKind, AlertRoute, BudgetAlert, Delivery, NotificationChannel, Severity


class AlertRouteForm(forms.ModelForm):
    # Tick boxes instead of raw JSON; AlertRoute.clean() still validates whatever is stored.
    kinds = forms.MultipleChoiceField(
        choices=AlertKind.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked = every kind.",
    )
    severities = forms.MultipleChoiceField(
        choices=Severity.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked = every severity.",
    )

    class Meta:
        model = AlertRoute
        fields = ("tenant", "name", "kinds", "severities", "channel", "enabled")


@admin.register(AlertRoute)
class AlertRouteAdmin(AuditedAdmin):
    form = AlertRouteForm
    list_display = ("name", "tenant", "kinds_label", "severities_label", "channel_label", "enabled")
    list_filter = ("enabled", "tenant")
    search_fields = ("name", "channel__name")
    list_select_related = ("tenant", "channel")
    autocomplete_fields = ("tenant",)

    def get_form(self, request: HttpRequest, obj: AlertRoute | None = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        field = form.base_fields.get("channel")
        if field is not None and obj is not None:
            # Offer only the route's tenant's channels; clean() refuses the others either way.
            field.queryset = NotificationChannel.objects.filter(tenant_id=obj.tenant_id)
        return form

    @admin.display(description="kinds")
    def kinds_label(self, obj: AlertRoute) -> str:
        return ", ".join(obj.kinds) or "all"

    @admin.display(description="severities")
    def severities_label(self, obj: AlertRoute) -> str:
        return ", ".join(obj.severities) or "all"

    @admin.display(description="channel", ordering="channel__name")
    def channel_label(self, obj: AlertRoute) -> str:
        return str(obj.channel) if obj.channel_id else "dashboard only"


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    """Read-only: alerts are fired and resolved by their sources, never edited by hand."""

    list_display = (
        "title",
        "tenant",
        "kind",
        "severity",
        "state",
        "occurrences",
        "first_fired_at",
        "last_notified_at",
        "resolved_at",
    )
    list_filter = ("state", "severity", "kind", "tenant")
    search_fields = ("title", "key")
    list_select_related = ("tenant",)
    date_hierarchy = "first_fired_at"
    readonly_fields = [f.name for f in Alert._meta.fields] + ["runbook_link"]

    @admin.display(description="runbook")
    def runbook_link(self, obj: Alert) -> str:
        return alerting.runbook_url(obj.kind)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Alert | None = None) -> bool:
        return False


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = (
        "budget",
        "kind",
        "threshold",
        "channel",
        "state",
        "period_start",
        "spent",
        "fired_at",
        "resolved_at",
    )
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
