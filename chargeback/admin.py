"""The back office: tenants, departments, people, API keys, prices, routes, budgets, alert
channels and the (read-only) audit trail.

Every create, change and delete made here writes an AuditLog entry with the field diff, in the
same transaction as the change. API keys are issued and revoked only through `chargeback.keys`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Count, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from chargeback import audit, keys
from chargeback.models import (
    ApiKey,
    AuditLog,
    Budget,
    Department,
    Membership,
    ModelPrice,
    NotificationChannel,
    Route,
    Tenant,
)


def plain_decimal(value: Decimal | None) -> str | None:
    """3.5 rather than 3.5000000000: prices are stored with 10 places but read by people."""
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text


class PlainDecimalInput(forms.NumberInput):
    """A number input that shows stored DECIMAL(20,10) values without the trailing zeros."""

    def format_value(self, value: Any) -> str | None:
        if isinstance(value, Decimal):
            return plain_decimal(value)
        return super().format_value(value)


def audit_tenant(obj: models.Model) -> Tenant | None:
    if isinstance(obj, Tenant):
        return obj
    return getattr(obj, "tenant", None) if getattr(obj, "tenant_id", None) else None


class AuditedAdmin(admin.ModelAdmin):
    """Writes an audit entry with the field diff for every create, change and delete, including
    rows edited through inlines and the bulk "delete selected" action."""

    formfield_overrides = {models.DecimalField: {"widget": PlainDecimalInput}}

    def save_model(self, request: HttpRequest, obj: models.Model, form: forms.ModelForm, change: bool) -> None:
        # The form has already copied its values onto `obj`, so "before" is read from the database.
        before = audit.snapshot(type(obj)._default_manager.get(pk=obj.pk)) if change else {}
        super().save_model(request, obj, form, change)
        record_save(request=request, obj=obj, before=before, created=not change)

    def delete_model(self, request: HttpRequest, obj: models.Model) -> None:
        with transaction.atomic():
            record_delete(request=request, obj=obj)
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        # The changelist action is not wrapped in a transaction by Django; the audit entries and
        # the deletes must land together. Rows are deleted one by one so each model's delete()
        # runs (ModelPrice.delete() invalidates the cached price books).
        with transaction.atomic():
            for obj in queryset:
                record_delete(request=request, obj=obj)
                obj.delete()

    def save_formset(self, request: HttpRequest, form: forms.ModelForm, formset: Any, change: bool) -> None:
        model = formset.model
        pks = [f.instance.pk for f in formset.initial_forms if f.instance.pk is not None]
        before = {obj.pk: audit.snapshot(obj) for obj in model._default_manager.filter(pk__in=pks)}
        formset.save(commit=False)
        for obj in formset.deleted_objects:
            record_delete(request=request, obj=obj)
            obj.delete()
        for obj in formset.new_objects:
            obj.save()
            record_save(request=request, obj=obj, before={}, created=True)
        for obj, _changed in formset.changed_objects:
            obj.save()
            record_save(request=request, obj=obj, before=before.get(obj.pk, {}), created=False)
        formset.save_m2m()

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[list, dict, set, list]:
        # Django's collector loads every protecting row to list it; for a price or a department
        # referenced by millions of usage events that is the whole usage table. Ask the database
        # whether any reference exists first and name the relation instead.
        protected = [text for obj in objs for text in protected_references(obj)]
        if protected:
            return [], {}, set(), protected
        return super().get_deleted_objects(objs, request)


def record_save(*, request: HttpRequest, obj: models.Model, before: dict[str, Any], created: bool) -> None:
    changes = audit.diff(before, audit.snapshot(obj))
    if not created and not changes:
        return  # a save without edits is not an event worth an audit row
    audit.record(
        tenant=audit_tenant(obj), actor=request.user, action="create" if created else "update", obj=obj, changes=changes
    )


def record_delete(*, request: HttpRequest, obj: models.Model) -> None:
    audit.record(
        tenant=audit_tenant(obj),
        actor=request.user,
        action="delete",
        obj=obj,
        changes=audit.diff(audit.snapshot(obj), {}),
    )


def protected_references(obj: models.Model) -> list[str]:
    """One line per PROTECT relation that still references `obj`, found with EXISTS queries."""
    found = []
    # include_hidden: the usage table's foreign keys have related_name="+" and would be missed.
    for rel in obj._meta.get_fields(include_hidden=True):
        if not (rel.auto_created and not rel.concrete and (rel.one_to_many or rel.one_to_one)):
            continue
        if rel.on_delete is not models.PROTECT:
            continue
        if rel.related_model._base_manager.filter(**{rel.field.name: obj}).exists():
            found.append(f"{obj}: referenced by {rel.related_model._meta.verbose_name_plural} ({rel.field.name})")
    return found


# --- Tenants, departments, memberships --------------------------------------------------------


class DepartmentInline(admin.TabularInline):
    model = Department
    fields = ("code", "name", "gl_cost_centre", "parent", "manager", "active")
    autocomplete_fields = ("parent", "manager")
    extra = 0
    show_change_link = True
    # Departments are deactivated, not deleted: usage history and invoices keep pointing at them.
    can_delete = False


class MembershipInline(admin.TabularInline):
    model = Membership
    fields = ("user", "department", "role", "created_at")
    readonly_fields = ("created_at",)
    autocomplete_fields = ("user",)
    extra = 0

    def get_formset(self, request: HttpRequest, obj: Tenant | None = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)
        # Offer only this tenant's departments; the model's clean() would reject the others.
        field = formset.form.base_fields.get("department")
        if field is not None:
            field.queryset = Department.objects.filter(tenant=obj) if obj else Department.objects.none()
        return formset

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("user", "department")


@admin.register(Tenant)
class TenantAdmin(AuditedAdmin):
    list_display = ("name", "slug", "timezone", "currency", "capture_mode", "department_count", "created_at")
    list_filter = ("currency", "capture_mode", "timezone")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    fieldsets = (
        (None, {"fields": ("name", "slug", "timezone", "currency")}),
        (
            "Prompt capture",
            {
                "fields": ("capture_mode", "capture_sample_rate", "capture_retention_days"),
                "description": "Prompt and completion text is stored apart from usage, redacted, and expires.",
            },
        ),
        (
            "Alerts",
            {
                "fields": ("alert_latency_p95_ms",),
                "description": "Routes, channels and the other thresholds: see Alert routes and docs/ALERTS.md.",
            },
        ),
    )
    inlines = (DepartmentInline, MembershipInline)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(department_count=Count("departments", distinct=True))

    @admin.display(description="departments", ordering="department_count")
    def department_count(self, obj: Tenant) -> int:
        return obj.department_count

    def has_delete_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        # Deleting a tenant would cascade through its whole history; it is an operation for a
        # reviewed script, not a button.
        return False


class BudgetInlineFormSet(BaseInlineFormSet):
    def _construct_form(self, i: int, **kwargs: Any) -> forms.Form:
        form = super()._construct_form(i, **kwargs)
        # A budget's tenant is its department's; set it before validation so Budget.clean()
        # compares the right tenants.
        form.instance.tenant_id = self.instance.tenant_id
        return form


class BudgetInline(admin.TabularInline):
    model = Budget
    formset = BudgetInlineFormSet
    fk_name = "department"
    fields = ("name", "scope", "period", "amount", "currency", "thresholds", "mode", "active")
    formfield_overrides = {models.DecimalField: {"widget": PlainDecimalInput}}
    extra = 0
    show_change_link = True


@admin.register(Department)
class DepartmentAdmin(AuditedAdmin):
    list_display = ("code", "name", "tenant", "gl_cost_centre", "parent", "manager", "active")
    list_filter = ("tenant", "active")
    search_fields = ("code", "name", "gl_cost_centre", "tenant__slug")
    list_select_related = ("tenant", "parent", "manager")
    autocomplete_fields = ("tenant", "parent", "manager")
    fields = ("tenant", "code", "name", "gl_cost_centre", "parent", "manager", "active")
    inlines = (BudgetInline,)
    actions = ("deactivate_selected", "activate_selected")

    def has_delete_permission(self, request: HttpRequest, obj: Department | None = None) -> bool:
        # Deactivate instead: usage events, invoices and memberships keep pointing at departments.
        return False

    @admin.action(description="Deactivate selected departments", permissions=["change"])
    def deactivate_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_active(request, queryset, active=False)

    @admin.action(description="Activate selected departments", permissions=["change"])
    def activate_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_active(request, queryset, active=True)

    def _set_active(self, request: HttpRequest, queryset: QuerySet, *, active: bool) -> None:
        changed = 0
        with transaction.atomic():
            # of=("self",): the changelist joins parent and manager, which PostgreSQL will not lock.
            for department in queryset.select_for_update(of=("self",)).exclude(active=active):
                before = audit.snapshot(department)
                department.active = active
                department.save(update_fields=["active"])
                record_save(request=request, obj=department, before=before, created=False)
                changed += 1
        state = "activated" if active else "deactivated"
        self.message_user(request, f"{changed} department(s) {state}.", messages.SUCCESS)


@admin.register(Membership)
class MembershipAdmin(AuditedAdmin):
    list_display = ("user", "tenant", "department", "role", "created_at")
    list_filter = ("tenant", "role")
    search_fields = ("user__username", "user__email", "department__code", "tenant__slug")
    list_select_related = ("user", "tenant", "department")
    autocomplete_fields = ("user", "tenant", "department")


# --- API keys -----------------------------------------------------------------------------------


class ApiKeyForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ("tenant", "name", "department", "user", "rpm_limit", "tpm_limit")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        tenant = cleaned.get("tenant") or (self.instance.tenant if self.instance.tenant_id else None)
        if tenant is not None:
            try:
                keys.check_key_binding(tenant=tenant, department=cleaned.get("department"), user=cleaned.get("user"))
            except ValidationError as exc:
                self.add_error(None, exc)
        return cleaned


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin):
    form = ApiKeyForm
    list_display = (
        "name",
        "prefix",
        "tenant",
        "department",
        "user",
        "rpm_limit",
        "tpm_limit",
        "created_at",
        "last_used_at",
        "is_active",
    )
    list_filter = (KeyStatusFilter, "tenant")
    search_fields = ("name", "=prefix", "department__code", "user__username")
    list_select_related = ("tenant", "department", "user")
    autocomplete_fields = ("tenant", "department", "user")
    actions = ("revoke_selected",)
    # The hash is never displayed: it is not in any fieldset, list or search field.
    add_fieldsets = (
        (
            None,
            {
                "fields": ("tenant", "name", "department", "user"),
                "description": "The token is shown once, right after saving. Only its hash is stored.",
            },
        ),
        ("Limits", {"fields": ("rpm_limit", "tpm_limit")}),
    )
    change_fieldsets = (
        (None, {"fields": ("tenant", "name", "prefix", "department", "user")}),
        ("Limits", {"fields": ("rpm_limit", "tpm_limit")}),
        ("Lifecycle", {"fields": ("created_at", "last_used_at", "revoked_at")}),
    )

    @admin.display(description="active", boolean=True)
    def is_active(self, obj: ApiKey) -> bool:
        return obj.is_active

    def get_fieldsets(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return self.change_fieldsets if obj is not None else self.add_fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # Moving a key to another tenant would re-home its history; revocation is an action.
        return ("tenant", "prefix", "created_at", "last_used_at", "revoked_at")

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # Keys are revoked, never deleted, so usage rows and the audit trail keep their prefix.
        return False

    def save_form(self, request: HttpRequest, form: forms.ModelForm, change: bool) -> ApiKey:
        if change:
            return super().save_form(request, form, change)
        # Adding: the key is issued by the domain function, which generates the token, stores
        # its hash and audits the creation. The admin then continues with the saved row.
        data = form.cleaned_data
        key, raw = keys.create_api_key(
            tenant=data["tenant"],
            name=data["name"],
            department=data.get("department"),
            user=data.get("user"),
            rpm_limit=data.get("rpm_limit"),
            tpm_limit=data.get("tpm_limit"),
            actor=request.user,
        )
        messages.success(
            request,
            f"API key “{key.name}” created. Copy this token now, it will not be shown again: {raw}",
        )
        return key

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
        # A new key was already saved (and audited) by keys.create_api_key in save_form.

    def save_related(self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool) -> None:
        if change:
            super().save_related(request, form, formsets, change)
        # ApiKey has no many-to-many fields or inlines; the add form was never form.save()d.

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        revoked = sum(keys.revoke_api_key(key=key, actor=request.user) for key in queryset.select_related("tenant"))
        already = queryset.count() - revoked
        text = f"{revoked} key(s) revoked."
        if already:
            text += f" {already} already revoked."
        self.message_user(request, text, messages.SUCCESS)


# --- Prices and routes --------------------------------------------------------------------------


class PriceScopeFilter(admin.SimpleListFilter):
    title = "scope"
    parameter_name = "scope"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("catalogue", "Catalogue"), ("override", "Tenant overrides")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "catalogue":
            return queryset.filter(tenant__isnull=True)
        if self.value() == "override":
            return queryset.filter(tenant__isnull=False)
        return queryset


def price_column(field: str, description: str) -> Any:
    @admin.display(description=description, ordering=field, empty_value="—")
    def column(obj: ModelPrice) -> str | None:
        return plain_decimal(getattr(obj, field))

    column.__name__ = f"{field}_display"
    return column


PRICE_FIELDSETS = (
    (
        None,
        {
            "fields": ("tenant", "provider", "model_pattern", "match_type", "priority", "source", "notes"),
            "description": "Leave the tenant empty for a catalogue price; set it to override the catalogue.",
        },
    ),
    ("Validity", {"fields": ("effective_from", "effective_to", "currency")}),
    (
        "Base prices (per 1M tokens)",
        {"fields": ("input_per_mtok", "output_per_mtok", "reasoning_per_mtok", "per_request_fee")},
    ),
    (
        "Cache prices (per 1M tokens)",
        {
            "fields": ("cache_read_per_mtok", "cache_write_per_mtok", "cache_write_1h_per_mtok"),
            "description": "Empty cache prices fall back to the input price.",
        },
    ),
    (
        "Long-context tier",
        {
            "classes": ("collapse",),
            "fields": (
                "long_context_threshold_tokens",
                "long_context_input_per_mtok",
                "long_context_output_per_mtok",
                "long_context_cache_read_per_mtok",
                "long_context_cache_write_per_mtok",
            ),
            "description": "Above the threshold, the whole request is priced at these rates.",
        },
    ),
    (
        "On-prem rate",
        {"classes": ("collapse",), "fields": ("per_gpu_second",), "description": "Per GPU-second of compute."},
    ),
)


class ModelPriceForm(forms.ModelForm):
    """The model form runs ModelPrice.full_clean(), so a bad regex, a long-context price without
    a threshold or a duplicate start date comes back as a form error; this adds a readable
    message for the window check the database constraint would otherwise report by name."""

    class Meta:
        model = ModelPrice
        fields = flatten_fieldsets(PRICE_FIELDSETS)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        start, end = cleaned.get("effective_from"), cleaned.get("effective_to")
        if start is not None and end is not None and end <= start:
            self.add_error("effective_to", "The end must be after the start (the end is exclusive).")
        return cleaned


@admin.register(ModelPrice)
class ModelPriceAdmin(AuditedAdmin):
    form = ModelPriceForm
    list_display = (
        "provider",
        "model_pattern",
        "match_type",
        "scope",
        "effective_from",
        "effective_to",
        price_column("input_per_mtok", "input /MTok"),
        price_column("output_per_mtok", "output /MTok"),
        price_column("cache_read_per_mtok", "cache read /MTok"),
        price_column("cache_write_per_mtok", "cache write /MTok"),
        "currency",
        "source",
    )
    list_filter = ("provider", "source", PriceScopeFilter, "currency", "match_type")
    search_fields = ("model_pattern", "provider")
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    fieldsets = PRICE_FIELDSETS

    @admin.display(description="tenant", ordering="tenant__slug")
    def scope(self, obj: ModelPrice) -> str:
        return obj.tenant.slug if obj.tenant_id else "catalogue"


@admin.register(Route)
class RouteAdmin(AuditedAdmin):
    formfield_overrides = {
        **AuditedAdmin.formfield_overrides,
        # Provider endpoints are HTTPS; a bare host typed in the form should not become http://.
        models.URLField: {"assume_scheme": "https"},
    }
    list_display = ("alias", "tenant", "provider", "upstream_model", "fallbacks", "chat_enabled", "enabled")
    list_filter = ("provider", "tenant", "enabled", "chat_enabled")
    search_fields = ("alias", "upstream_model")
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)
    fieldsets = (
        (None, {"fields": ("tenant", "alias", "provider", "upstream_model", "enabled", "chat_enabled")}),
        (
            "Connection",
            {
                "fields": ("base_url", "credential_env", "timeout_seconds", "max_retries", "default_max_tokens"),
                "description": "The credential is the name of an environment variable; the secret never enters the database.",
            },
        ),
        ("Fallbacks", {"fields": ("fallbacks",)}),
    )


# --- Budgets and alerting ------------------------------------------------------------------------


@admin.register(Budget)
class BudgetAdmin(AuditedAdmin):
    list_display = ("name", "tenant", "scope", "target", "period", "limit", "mode", "active")
    list_filter = ("scope", "period", "mode", "tenant", "active")
    search_fields = ("name", "department__code", "user_ref", "model", "tag_value")
    list_select_related = ("tenant", "department")
    autocomplete_fields = ("tenant", "department")
    fieldsets = (
        (None, {"fields": ("tenant", "name", "active")}),
        (
            "What it covers",
            {
                "fields": ("scope", "department", "user_ref", "model", "tag_key", "tag_value"),
                "description": "Fill the field that matches the scope.",
            },
        ),
        (
            "Limit",
            {
                "fields": ("period", "amount", "currency", "thresholds", "mode"),
                "description": "Periods follow the tenant's time zone. Hard budgets block gateway calls.",
            },
        ),
    )

    @admin.display(description="covers")
    def target(self, obj: Budget) -> str:
        match obj.scope:
            case Budget.Scope.DEPARTMENT:
                return obj.department.code if obj.department_id else "—"
            case Budget.Scope.USER:
                return obj.user_ref
            case Budget.Scope.MODEL:
                return obj.model
            case Budget.Scope.TAG:
                return f"{obj.tag_key}={obj.tag_value}"
        return "whole tenant"

    @admin.display(description="limit", ordering="amount")
    def limit(self, obj: Budget) -> str:
        return f"{plain_decimal(obj.amount)} {obj.currency}"


@admin.register(NotificationChannel)
class NotificationChannelAdmin(AuditedAdmin):
    list_display = ("name", "tenant", "kind", "target", "enabled")
    list_filter = ("kind", "enabled", "tenant")
    search_fields = ("name", "target")
    list_select_related = ("tenant",)
    autocomplete_fields = ("tenant",)


# --- Audit trail ---------------------------------------------------------------------------------


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    """Read-only: the trail is appended to by the code paths that change things, never edited."""

    list_display = ("created_at", "tenant", "actor_label", "action", "object_type", "object_id", "object_repr")
    list_filter = ("action", "object_type", "tenant")
    search_fields = ("object_repr", "actor_label", "=object_id")
    list_select_related = ("tenant",)
    date_hierarchy = "created_at"
    fields = (
        "created_at",
        "tenant",
        "actor",
        "actor_label",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "changes_table",
    )
    readonly_fields = fields

    @admin.display(description="changes")
    def changes_table(self, obj: AuditLog) -> str:
        if not obj.changes:
            return "—"
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td><td>{}</td></tr>",
            (
                (field, _cell(change.get("before")), _cell(change.get("after")))
                for field, change in sorted(obj.changes.items())
                if isinstance(change, dict)
            ),
        )
        return format_html("<table><tr><th>field</th><th>before</th><th>after</th></tr>{}</table>", rows)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditLog | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditLog | None = None) -> bool:
        return False


def _cell(value: Any) -> str:
    return "—" if value is None else str(value)
