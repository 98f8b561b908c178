"""Back-office pages for chargeback invoicing: invoices (read-only; status changes only through
actions that call the domain functions), shared-cost pools with their splits, and the tenant's
discount/markup policy. Imported from `ChargebackConfig.ready()`."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from chargeback import invoicing
from chargeback.models import ChargebackPolicy, Invoice, InvoiceLine, SharedCostPool, SharedCostSplit


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = (
        "position",
        "kind",
        "description",
        "requests",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "list_cost",
        "amount_unrounded",
        "amount",
        "currency",
        "basis",
        "adjusts_period",
    )
    readonly_fields = fields
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


def _run(modeladmin, request, queryset: QuerySet[Invoice], verb: str, action) -> None:
    done = same = 0
    for invoice in queryset.select_related("tenant", "department"):
        try:
            changed = action(invoice=invoice, by=request.user)
        except (invoicing.InvoicingError, PermissionDenied) as exc:
            modeladmin.message_user(request, f"{invoice}: {exc}", messages.ERROR)
            continue
        done += changed
        same += not changed
    modeladmin.message_user(request, f"{done} invoice(s) {verb}; {same} already were.", messages.SUCCESS)


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = ("__str__", "tenant", "department", "period", "status", "total", "currency", "issued_at")
    list_filter = ("status", "tenant", "period", "department")
    list_select_related = ("tenant", "department")
    search_fields = ("number", "department__code", "department__name")
    date_hierarchy = "period"
    inlines = [InvoiceLineInline]
    actions = ["issue_selected", "approve_selected"]
    readonly_fields = [f.name for f in Invoice._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # invoices are drafted by `issue_invoices` / the monthly task

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return obj is not None and obj.status == Invoice.Status.DRAFT and super().has_delete_permission(request, obj)

    @admin.action(description="Issue selected draft invoices")
    def issue_selected(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        _run(self, request, queryset, "issued", invoicing.issue_invoice)

    @admin.action(description="Approve selected issued invoices")
    def approve_selected(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        _run(self, request, queryset, "approved", invoicing.approve_invoice)


class SplitFormSet(forms.BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        if self.instance.allocation_key != SharedCostPool.AllocationKey.FIXED_PERCENT:
            return
        total = Decimal(0)
        for form in self.forms:
            if not form.cleaned_data or form.cleaned_data.get("DELETE"):
                continue
            department = form.cleaned_data.get("department")
            if department is not None and department.tenant_id != self.instance.tenant_id:
                raise ValidationError(f"{department.code} belongs to another tenant.")
            total += form.cleaned_data.get("percent") or 0
        if total != 100:
            raise ValidationError(f"Fixed-percent splits must sum to exactly 100% (they sum to {total}%).")


class SharedCostSplitInline(admin.TabularInline):
    model = SharedCostSplit
    formset = SplitFormSet
    extra = 1
    autocomplete_fields = ()


@admin.register(SharedCostPool)
class SharedCostPoolAdmin(admin.ModelAdmin):
    list_display = ("name", "tenant", "kind", "amount", "currency", "allocation_key", "active")
    list_filter = ("tenant", "kind", "allocation_key", "active")
    inlines = [SharedCostSplitInline]


@admin.register(ChargebackPolicy)
class ChargebackPolicyAdmin(admin.ModelAdmin):
    list_display = ("tenant", "discount_percent", "markup_percent", "updated_at")
