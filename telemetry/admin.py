"""Read-only admin over raw usage events, built so that browsing it never scans the table.

The usage table is the one that grows to millions of rows, so every default the admin would
otherwise apply is checked here: no exact COUNT, no DISTINCT over the table for filters, no
sorting on unindexed columns, and search by exact identifiers only.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from chargeback.models import ModelPrice, Route
from telemetry.models import UsageEvent


class CappedCountPaginator(Paginator):
    """Counts at most `count_cap` + 1 rows (COUNT over a LIMIT subquery) instead of all of them.

    `count` is what pagination uses, so the page links stop at the cap and no page needs an
    OFFSET in the millions. `count_label` is what people read: exact below the cap, otherwise
    the PostgreSQL planner's estimate (`pg_class.reltuples`) for the unfiltered table, or
    "more than 10,000".
    """

    count_cap = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        # Ordering is irrelevant to a count and would only make the subquery sort.
        return queryset.order_by()[: self.count_cap + 1].count()

    @property
    def is_capped(self) -> bool:
        return self.count > self.count_cap

    @cached_property
    def estimated_total(self) -> int | None:
        """The planner's row estimate for an unfiltered queryset on PostgreSQL, else None."""
        queryset = self.object_list
        if not isinstance(queryset, QuerySet) or queryset.query.where:
            return None
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return None
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                [connection.ops.quote_name(queryset.model._meta.db_table)],
            )
            row = cursor.fetchone()
        # reltuples is -1 until the table is first analysed (PostgreSQL 14+).
        if row is None or row[0] is None or row[0] < 0:
            return None
        return int(row[0])

    @property
    def count_label(self) -> str:
        if not self.is_capped:
            return f"{self.count:,}"
        estimate = self.estimated_total
        if estimate is not None and estimate > self.count_cap:
            return f"about {estimate:,}"
        return f"more than {self.count_cap:,}"


class ProviderFilter(admin.SimpleListFilter):
    """Providers known from routes and prices: Django's default would run SELECT DISTINCT
    provider over the whole usage table on every changelist load."""

    title = "provider"
    parameter_name = "provider"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        providers = {value for value, _label in Route.Provider.choices}
        providers.update(ModelPrice.objects.order_by().values_list("provider", flat=True).distinct())
        if self.value():
            providers.add(self.value())
        return [(p, p) for p in sorted(providers)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value():
            return queryset.filter(provider=self.value())
        return queryset


@admin.register(UsageEvent)
class UsageEventAdmin(admin.ModelAdmin):
    list_display = (
        "occurred_at",
        "tenant",
        "department_code",
        "user_ref",
        "provider",
        "model",
        "status",
        "input_tokens",
        "output_tokens",
        "cost_display",
        "currency",
        "cost_provenance",
        "sampling",
    )
    list_filter = ("status", "cost_provenance", ProviderFilter, "source", "sampling", "tenant")
    list_select_related = ("tenant",)
    search_fields = ("=event_id", "=trace_id", "=user_ref", "=model")
    search_help_text = "Exact event id, trace id, user or served model."
    raw_id_fields = ("tenant", "department", "api_key", "price")
    paginator = CappedCountPaginator
    list_per_page = 100
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    # Default ordering is -pk (the primary-key index, newest rows first). Sorting by any other
    # column of an unfiltered table would sort millions of rows for one page.
    sortable_by = ()
    actions = None
    fieldsets = (
        (
            "Event",
            {"fields": ("event_id", "operation_id", "source", "status", "error_type", "occurred_at", "received_at")},
        ),
        (
            "Attribution",
            {
                "fields": (
                    "tenant",
                    "department",
                    "department_code",
                    "user_ref",
                    "api_key",
                    "api_key_prefix",
                    "feature",
                    "session_id",
                    "prompt_version",
                    "tags",
                )
            },
        ),
        ("Model", {"fields": ("provider", "requested_model", "model", "operation")}),
        ("Latency", {"fields": ("latency_ms", "ttft_ms", "compute_ms")}),
        (
            "Tokens",
            {
                "fields": (
                    "input_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                    "cache_creation_1h_input_tokens",
                    "output_tokens",
                    "reasoning_tokens",
                )
            },
        ),
        ("Cost", {"fields": ("cost", "currency", "cost_provenance", "price", "reported_cost", "reported_currency")}),
        ("Trace", {"fields": ("trace_id", "span_id", "parent_span_id", "sampling")}),
    )

    @admin.display(description="cost", empty_value="unpriced")
    def cost_display(self, obj: UsageEvent) -> str | None:
        return None if obj.cost is None else _plain(obj.cost)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        # Case-sensitive equality instead of the admin's "=" (iexact, i.e. UPPER(col) = UPPER(%s)),
        # so the database can use an index on these columns where one exists.
        term = search_term.strip()
        if not term:
            return queryset, False
        fields = [name.lstrip("=^@") for name in self.search_fields]
        return queryset.filter(Q.create([(f, term) for f in fields], connector=Q.OR)), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageEvent | None = None) -> bool:
        # Usage is append-only; retention is a partition drop, not a button.
        return False


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text
