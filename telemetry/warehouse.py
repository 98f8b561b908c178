"""Warehouse export: a day's usage events and rollups, and a month's invoices, as Parquet and
CSV files partitioned Hive-style (`usage_events/tenant=acme/date=2026-11-22/part-0.parquet`),
in a directory or an S3-compatible bucket, for Databricks, Snowflake or DuckDB to load as is.

One file per partition and format, replaced whole on every run (written under a hidden
temporary name, then renamed, or copied server-side on S3), so a re-run never duplicates rows. Rows are streamed from a server-side cursor in chunks and written
as one Parquet row group per chunk: memory stays bounded whatever the size of the day.
Money is decimal128 (never float), timestamps are UTC with the zone, tags are JSON text.
The schema of every file is `TABLES` below; docs/WAREHOUSE.md documents it column by column.

Lives in `telemetry` (it reads usage events and rollups); invoices are read from `chargeback`
models, which the dependency direction allows.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from django.conf import settings

from chargeback.models import Department, Invoice, InvoiceLine, Tenant
from telemetry.models import (
    LATENCY_FIELDS,
    TTFT_FIELDS,
    DailyRollup,
    DimensionRollup,
    HourlyRollup,
    UsageEvent,
)

# Rows per Parquet row group (and per server-side cursor fetch). Rows are turned from Python
# tuples into compact Arrow arrays every PYTHON_CHUNK rows, so memory holds one row group of
# Arrow data plus PYTHON_CHUNK Python rows, whatever the size of the day.
CHUNK_ROWS = 100_000
PYTHON_CHUNK = 5_000
# Money columns mirror the database: event and invoice amounts are NUMERIC(20,10); rollup sums
# are NUMERIC(28,10) (a sum of many events can outgrow 10 integer digits).
MONEY = pa.decimal128(20, 10)
ROLLUP_MONEY = pa.decimal128(28, 10)
TIMESTAMP = pa.timestamp("us", tz="UTC")
TEN_PLACES = Decimal("1e-10")


class ExportError(ValueError):
    """A bad export request; `field` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    partition: str  # "date" or "month"
    doc: str
    columns: tuple[Column, ...]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])


def _i(name: str, doc: str, nullable: bool = False) -> Column:
    return Column(name, pa.int64(), doc, nullable)


def _s(name: str, doc: str) -> Column:
    return Column(name, pa.string(), doc)


TOKEN_COLUMNS = (
    _i("input_tokens", "Total input tokens, including cache reads and writes."),
    _i("cache_read_input_tokens", "Input tokens read from the provider's prompt cache."),
    _i("cache_creation_input_tokens", "Input tokens written to the cache (5 min + 1 h)."),
)
ROLLUP_MEASURES = (
    _i("requests", "Calls (attempts) in the bucket."),
    _i("errors", "Calls whose status is not ok."),
    _i("unpriced", "Calls with no cost (no matching price); never counted as 0 in cost."),
    *TOKEN_COLUMNS,
    _i("output_tokens", "Total output tokens, including reasoning."),
    _i("reasoning_tokens", "Reasoning tokens (included in output_tokens)."),
    Column("cost", ROLLUP_MONEY, "Exact sum of priced call costs, in `currency`."),
)
LATENCY_COLUMNS = (
    _i("latency_count", "Calls with a latency."),
    _i("latency_sum_ms", "Sum of latencies, ms (mean = latency_sum_ms / latency_count)."),
    _i("ttft_count", "Calls with a time to first token."),
    _i("ttft_sum_ms", "Sum of times to first token, ms."),
    Column("latency_histogram", pa.list_(pa.int64()), "71 counts: latency bucket i holds [EDGES[i-1], EDGES[i]) ms (see below)."),
    Column("ttft_histogram", pa.list_(pa.int64()), "71 counts, same buckets, for time to first token."),
)
ROLLUP_KEYS = (
    _i("tenant_id", "Tenant id (the `tenant=` partition holds its slug)."),
    _i("department_id", "Department id; 0 = unattributed."),
    _s("department_code", "Department code at export time; empty when unattributed."),
    _s("provider", "Provider (openai, anthropic, ollama, …)."),
    _s("model", "Served model."),
    _s("currency", "ISO 4217 currency of `cost`."),
)

USAGE_EVENTS = Table(
    "usage_events",
    "date",
    "One row per LLM call attempt; `date=` is the UTC date of `occurred_at`.",
    (
        _i("id", "Row id in llmobs (unique per deployment)."),
        _i("tenant_id", "Tenant id (the `tenant=` partition holds its slug)."),
        _s("event_id", "Idempotency key, unique per tenant."),
        _s("operation_id", "Links retries and fallback attempts of one logical call."),
        _s("source", "gateway, ingest, otlp, eval, chat or demo."),
        _i("department_id", "Department id; null when unattributed.", nullable=True),
        _s("department_code", "Department code copied onto the event when recorded."),
        _s("user_ref", "User the call is attributed to (may be empty)."),
        _i("api_key_id", "API key id; null when none.", nullable=True),
        _s("api_key_prefix", "Visible prefix of the API key."),
        _s("provider", "Provider."),
        _s("requested_model", "Model (alias) the caller asked for."),
        _s("model", "Model that served the call."),
        _s("operation", "chat, embeddings, …"),
        Column("occurred_at", TIMESTAMP, "When the call started (UTC)."),
        Column("received_at", TIMESTAMP, "When llmobs stored the event (UTC)."),
        _i("latency_ms", "End-to-end latency, ms.", nullable=True),
        _i("ttft_ms", "Time to first token, ms.", nullable=True),
        _s("status", "ok, error, timeout, rate_limited, cancelled or blocked."),
        _s("error_type", "Error class when status is not ok."),
        *TOKEN_COLUMNS,
        _i("cache_creation_1h_input_tokens", "Of which 1-hour cache writes."),
        _i("output_tokens", "Total output tokens, including reasoning."),
        _i("reasoning_tokens", "Reasoning tokens (included in output_tokens)."),
        _i("compute_ms", "Reported compute time (Ollama), ms.", nullable=True),
        Column("cost", MONEY, "Cost in `currency`, full precision; null when unpriced (never 0).", nullable=True),
        _s("currency", "ISO 4217 currency of `cost`."),
        _s("cost_provenance", "computed, reported, estimated or unpriced."),
        _i("price_id", "Price row that priced the call; null when none.", nullable=True),
        Column("reported_cost", MONEY, "Cost the caller reported, if any.", nullable=True),
        _s("reported_currency", "Currency of `reported_cost`."),
        _s("trace_id", "OpenTelemetry trace id (hex)."),
        _s("span_id", "OpenTelemetry span id (hex)."),
        _s("parent_span_id", "Parent span id (hex)."),
        _s("session_id", "Conversation/session id."),
        _s("feature", "Product feature the call served."),
        _s("tags", "Tags as a JSON object (text; parse with PARSE_JSON / json_extract)."),
        _s("prompt_version", "Prompt version label."),
        _s("sampling", "Gateway calls: why the trace was kept (error, slow, costly, sampled, off) or dropped; empty otherwise."),
    ),
)

HOURLY_ROLLUPS = Table(
    "hourly_rollups",
    "date",
    "Hourly aggregates; `date=` is the UTC date of `hour`.",
    (
        *ROLLUP_KEYS[:1],
        Column("hour", TIMESTAMP, "Start of the UTC hour."),
        *ROLLUP_KEYS[1:],
        Column("is_eval", pa.bool_(), "Evaluation traffic (feature or source 'eval')."),
        *ROLLUP_MEASURES,
        *LATENCY_COLUMNS,
    ),
)

DAILY_ROLLUPS = Table(
    "daily_rollups",
    "date",
    "Daily aggregates; `date=` (and `day`) is the tenant's local calendar day.",
    (
        *ROLLUP_KEYS[:1],
        Column("day", pa.date32(), "Calendar day in the tenant's time zone."),
        *ROLLUP_KEYS[1:],
        Column("is_eval", pa.bool_(), "Evaluation traffic (feature or source 'eval')."),
        *ROLLUP_MEASURES,
        *LATENCY_COLUMNS,
    ),
)

DIMENSION_ROLLUPS = Table(
    "dimension_rollups",
    "date",
    "Daily spend per user, feature or rolled-up tag; `date=` is the tenant's local day.",
    (
        *ROLLUP_KEYS[:1],
        Column("day", pa.date32(), "Calendar day in the tenant's time zone."),
        *ROLLUP_KEYS[1:3],
        _s("dimension", "'user', 'feature' or 'tag:<key>'."),
        _s("value", "The user, feature or tag value (empty = none)."),
        ROLLUP_KEYS[5],
        *ROLLUP_MEASURES,
    ),
)

INVOICES = Table(
    "invoices",
    "month",
    "One row per department invoice; `month=` is the invoiced month (YYYY-MM).",
    (
        _i("id", "Invoice id."),
        _i("tenant_id", "Tenant id."),
        _i("department_id", "Department id."),
        _s("department_code", "Department code."),
        _s("cost_centre", "GL cost-centre code of the department."),
        _s("number", "Invoice number (empty while draft)."),
        _s("status", "draft, issued, approved, disputed or resolved."),
        Column("period", pa.date32(), "First day of the invoiced month."),
        Column("period_start", TIMESTAMP, "Local midnight of the 1st (UTC instant), inclusive."),
        Column("period_end", TIMESTAMP, "Local midnight of the next 1st (UTC instant), exclusive."),
        _s("currency", "Invoice currency."),
        Column("list_total_unrounded", MONEY, "Usage at list price, full precision."),
        Column("total_unrounded", MONEY, "Charged total, full precision."),
        Column("usage_total", MONEY, "Production usage lines, rounded."),
        Column("eval_total", MONEY, "Evaluation lines, rounded."),
        Column("allocations_total", MONEY, "Shared-cost allocations, rounded."),
        Column("adjustments_total", MONEY, "Adjustments and credits, rounded."),
        Column("total", MONEY, "Amount charged: the sum of rounded lines."),
        Column("rounding_difference", MONEY, "total − total_unrounded."),
        _i("unpriced_requests", "Calls with no price in the month."),
        Column("budget_amount", MONEY, "The department's monthly budget, if any.", nullable=True),
        Column("generated_at", TIMESTAMP, "When the draft was (re)generated."),
        Column("issued_at", TIMESTAMP, "When issued.", nullable=True),
        Column("approved_at", TIMESTAMP, "When approved.", nullable=True),
        Column("disputed_at", TIMESTAMP, "When disputed.", nullable=True),
        Column("resolved_at", TIMESTAMP, "When the dispute was resolved.", nullable=True),
        _s("resolution", "credit or no_change after a dispute."),
    ),
)

INVOICE_LINES = Table(
    "invoice_lines",
    "month",
    "One row per invoice line; join to invoices on invoice_id.",
    (
        _i("id", "Line id."),
        _i("invoice_id", "Invoice id."),
        _i("tenant_id", "Tenant id."),
        _i("department_id", "Department id of the invoice."),
        _s("invoice_number", "Invoice number (empty while draft)."),
        _i("position", "Order on the invoice."),
        _s("kind", "usage, eval, allocation, adjustment or credit."),
        _s("description", "Line text."),
        _s("currency", "Line currency."),
        _s("provider", "Provider (usage lines)."),
        _s("model", "Model (usage lines)."),
        _i("requests", "Calls."),
        _i("unpriced_requests", "Calls with no price."),
        _i("input_tokens", "Uncached input tokens (buckets are exclusive on a line)."),
        _i("cache_read_tokens", "Cache-read input tokens."),
        _i("cache_write_tokens", "Cache-write input tokens."),
        _i("output_tokens", "Output tokens, including reasoning."),
        _i("reasoning_tokens", "Reasoning tokens (included in output)."),
        Column("input_per_mtok", MONEY, "Unit price per 1M input tokens (informational).", nullable=True),
        Column("output_per_mtok", MONEY, "Unit price per 1M output tokens (informational).", nullable=True),
        Column("list_cost_unrounded", MONEY, "Cost at the price book, full precision."),
        Column("list_cost", MONEY, "Cost at the price book, rounded."),
        Column("amount_unrounded", MONEY, "Charged amount, full precision."),
        Column("amount", MONEY, "Charged amount, rounded once (half-up)."),
        _s("basis", "How an allocation was split."),
        Column("adjusts_period", pa.date32(), "The closed month an adjustment corrects.", nullable=True),
    ),
)

TABLES: tuple[Table, ...] = (USAGE_EVENTS, HOURLY_ROLLUPS, DAILY_ROLLUPS, DIMENSION_ROLLUPS, INVOICES, INVOICE_LINES)


# --- Rows ----------------------------------------------------------------------------------------
def _utc_day(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _json(value: Any) -> str:
    return json.dumps(value if value is not None else {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# Column names are the model's attribute names (department_id, api_key_id, price_id are the FK columns).
EVENT_FIELDS = tuple(c.name for c in USAGE_EVENTS.columns)


def usage_event_rows(*, tenant: Tenant, day: date, chunk_rows: int) -> Iterator[tuple]:
    start, end = _utc_day(day)
    events = (
        UsageEvent.objects.filter(tenant_id=tenant.pk, occurred_at__gte=start, occurred_at__lt=end)
        .order_by("occurred_at", "id")
        .values_list(*EVENT_FIELDS)
    )
    tags_at = EVENT_FIELDS.index("tags")
    # iterator(): a server-side cursor on PostgreSQL, so only `chunk_rows` rows are in memory.
    for row in events.iterator(chunk_size=chunk_rows):
        row = list(row)
        row[tags_at] = _json(row[tags_at])
        yield tuple(row)


def _codes(tenant: Tenant) -> dict[int, str]:
    return dict(Department.objects.filter(tenant=tenant).values_list("pk", "code"))


def _rollup_rows(qs, table: Table, time_field: str, codes: dict[int, str], chunk_rows: int) -> Iterator[tuple]:
    with_latency = "latency_histogram" in {c.name for c in table.columns}
    plain = [c.name for c in table.columns if c.name not in ("department_code", "latency_histogram", "ttft_histogram")]
    fields = [*plain, *(LATENCY_FIELDS + TTFT_FIELDS if with_latency else ())]
    for values in qs.order_by(time_field, "department_id", "id").values_list(*fields).iterator(chunk_size=chunk_rows):
        row = dict(zip(fields, values, strict=True))
        out = []
        for c in table.columns:
            if c.name == "department_code":
                out.append(codes.get(row["department_id"], ""))
            elif c.name == "latency_histogram":
                out.append([row[f] for f in LATENCY_FIELDS])
            elif c.name == "ttft_histogram":
                out.append([row[f] for f in TTFT_FIELDS])
            else:
                out.append(row[c.name])
        yield tuple(out)


def hourly_rollup_rows(*, tenant: Tenant, day: date, chunk_rows: int) -> Iterator[tuple]:
    start, end = _utc_day(day)
    qs = HourlyRollup.objects.filter(tenant_id=tenant.pk, hour__gte=start, hour__lt=end)
    return _rollup_rows(qs, HOURLY_ROLLUPS, "hour", _codes(tenant), chunk_rows)


def daily_rollup_rows(*, tenant: Tenant, day: date, chunk_rows: int) -> Iterator[tuple]:
    qs = DailyRollup.objects.filter(tenant_id=tenant.pk, day=day)
    return _rollup_rows(qs, DAILY_ROLLUPS, "day", _codes(tenant), chunk_rows)


def dimension_rollup_rows(*, tenant: Tenant, day: date, chunk_rows: int) -> Iterator[tuple]:
    qs = DimensionRollup.objects.filter(tenant_id=tenant.pk, day=day)
    return _rollup_rows(qs, DIMENSION_ROLLUPS, "day", _codes(tenant), chunk_rows)


def invoice_rows(*, tenant: Tenant, month: date, chunk_rows: int) -> Iterator[tuple]:
    invoices = Invoice.objects.filter(tenant=tenant, period=month).select_related("department").order_by("department__code", "id")
    for inv in invoices.iterator(chunk_size=chunk_rows):
        yield (
            inv.pk, inv.tenant_id, inv.department_id, inv.department.code, inv.department.gl_cost_centre, inv.number,
            inv.status, inv.period, inv.period_start, inv.period_end, inv.currency, inv.list_total_unrounded,
            inv.total_unrounded, inv.usage_total, inv.eval_total, inv.allocations_total, inv.adjustments_total,
            inv.total, inv.rounding_difference, inv.unpriced_requests, inv.budget_amount, inv.generated_at,
            inv.issued_at, inv.approved_at, inv.disputed_at, inv.resolved_at, inv.resolution,
        )  # fmt: skip


def invoice_line_rows(*, tenant: Tenant, month: date, chunk_rows: int) -> Iterator[tuple]:
    lines = (
        InvoiceLine.objects.filter(invoice__tenant=tenant, invoice__period=month)
        .select_related("invoice")
        .order_by("invoice_id", "position", "id")
    )
    for ln in lines.iterator(chunk_size=chunk_rows):
        yield (
            ln.pk, ln.invoice_id, ln.invoice.tenant_id, ln.invoice.department_id, ln.invoice.number, ln.position,
            ln.kind, ln.description, ln.currency, ln.provider, ln.model, ln.requests, ln.unpriced_requests,
            ln.input_tokens, ln.cache_read_tokens, ln.cache_write_tokens, ln.output_tokens, ln.reasoning_tokens,
            ln.input_per_mtok, ln.output_per_mtok, ln.list_cost_unrounded, ln.list_cost, ln.amount_unrounded,
            ln.amount, ln.basis, ln.adjusts_period,
        )  # fmt: skip


DAY_TABLES: tuple[tuple[Table, Callable[..., Iterator[tuple]]], ...] = (
    (USAGE_EVENTS, usage_event_rows),
    (HOURLY_ROLLUPS, hourly_rollup_rows),
    (DAILY_ROLLUPS, daily_rollup_rows),
    (DIMENSION_ROLLUPS, dimension_rollup_rows),
)
MONTH_TABLES: tuple[tuple[Table, Callable[..., Iterator[tuple]]], ...] = (
    (INVOICES, invoice_rows),
    (INVOICE_LINES, invoice_line_rows),
)


# --- Destinations -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Destination:
    """A pyarrow filesystem and a root path inside it (a directory, or bucket/prefix on S3)."""

    fs: pafs.FileSystem
    root: str
    url: str

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])


def destination(url: str | None = None) -> Destination:
    """`s3://bucket/prefix` (credentials and region from the AWS_* environment, an S3-compatible
    endpoint from LLMOBS_EXPORT_S3_ENDPOINT) or a directory; default: LLMOBS_EXPORT_S3_URL if
    set, else LLMOBS_EXPORT_DIR."""
    url = url or settings.LLMOBS_EXPORT_S3_URL or str(settings.LLMOBS_EXPORT_DIR)
    if url.startswith("s3://"):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise ExportError("dest", f"{url!r} has no bucket; use s3://bucket/prefix.")
        options: dict[str, Any] = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        endpoint = settings.LLMOBS_EXPORT_S3_ENDPOINT
        if endpoint:
            ep = urlparse(endpoint)
            options["endpoint_override"] = ep.netloc or ep.path
            options["scheme"] = ep.scheme or "https"
            options["force_virtual_addressing"] = False
        fs = pafs.S3FileSystem(**options)
        return Destination(fs, f"{parsed.netloc}{parsed.path}".rstrip("/"), url)
    if "://" in url:
        raise ExportError("dest", f"{url!r}: use a directory path or s3://bucket/prefix.")
    root = os.path.abspath(url)
    return Destination(pafs.LocalFileSystem(), root, root)


# --- Writing -----------------------------------------------------------------------------------------
def _csv_cell(value: Any) -> str:
    # Machine-readable text: no spreadsheet formula guard here (it would alter values a loader
    # must read back exactly); the human-facing CSVs in chargeback.exports keep it.
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value.quantize(TEN_PLACES), "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _batch(table: Table, rows: list[tuple]) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(table.columns)
    arrays = [pa.array(list(values), type=c.type) for c, values in zip(table.columns, columns, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=table.schema)


@dataclass
class WrittenFile:
    table: str
    partition: str
    rows: int
    parquet: str
    csv: str


class _AtomicFile:
    """An output stream that becomes visible at `final` only when closed without error.

    Written under a temporary name beside `final`, then moved: a rename on a local disk; on S3
    a server-side copy (CopyObject, whole objects up to 5 GB) and a delete, so readers see the
    old object or the new one, never a partial upload (closing an S3 stream completes the upload,
    even after an error, so it must never be the final key)."""

    def __init__(self, dest: Destination, final: str) -> None:
        self.dest, self.final = dest, final
        directory, name = final.rsplit("/", 1)
        dest.fs.create_dir(directory, recursive=True)
        # A dot-prefixed name: Spark, Hive and most globs skip it while it is being written.
        self.target = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
        self.stream = dest.fs.open_output_stream(self.target)

    def commit(self) -> None:
        self.stream.close()
        self.dest.fs.move(self.target, self.final)

    def abort(self) -> None:
        if not self.stream.closed:
            self.stream.close()
        _delete(self.dest, self.target)


def _delete(dest: Destination, path: str) -> None:
    info = dest.fs.get_file_info(path)
    if info.type != pafs.FileType.NotFound:
        dest.fs.delete_file(path)


def write_partition(
    *, dest: Destination, table: Table, tenant_slug: str, partition: str, rows: Iterable[tuple], chunk_rows: int = CHUNK_ROWS
) -> WrittenFile:
    """Stream `rows` into `<table>/tenant=<slug>/<key>=<partition>/part-0.parquet` and the same
    under `csv/`, replacing what was there. No rows: any earlier files are removed."""
    key = f"tenant={tenant_slug}/{table.partition}={partition}"
    parquet_path = dest.path(table.name, key, "part-0.parquet")
    csv_path = dest.path("csv", table.name, key, "part-0.csv")
    count = 0
    parquet_out = csv_out = writer = csv_text = None
    rows_buffer: list[tuple] = []  # Python objects: kept small (PYTHON_CHUNK rows)
    pending: list[pa.RecordBatch] = []  # compact Arrow data: up to one row group
    pending_rows = 0
    python_chunk = min(PYTHON_CHUNK, chunk_rows)

    def convert() -> None:
        nonlocal parquet_out, csv_out, writer, csv_text, pending_rows
        if parquet_out is None:
            parquet_out, csv_out = _AtomicFile(dest, parquet_path), _AtomicFile(dest, csv_path)
            writer = pq.ParquetWriter(parquet_out.stream, table.schema, compression="zstd")
            csv_text = io.TextIOWrapper(_StreamWriter(csv_out.stream), encoding="utf-8", newline="")
            csv.writer(csv_text, lineterminator="\n").writerow([c.name for c in table.columns])
        pending.append(_batch(table, rows_buffer))
        pending_rows += len(rows_buffer)
        out = csv.writer(csv_text, lineterminator="\n")
        for row in rows_buffer:
            out.writerow([_csv_cell(v) for v in row])
        csv_text.flush()
        rows_buffer.clear()

    def write_row_group() -> None:
        nonlocal pending_rows
        writer.write_table(pa.Table.from_batches(pending, schema=table.schema), row_group_size=chunk_rows)
        pending.clear()
        pending_rows = 0

    try:
        for row in rows:
            rows_buffer.append(row)
            count += 1
            if len(rows_buffer) >= python_chunk:
                convert()
                if pending_rows >= chunk_rows:
                    write_row_group()
        if rows_buffer:
            convert()
        if pending:
            write_row_group()
        if parquet_out is None:  # nothing this time: leave no stale rows from an earlier run
            _delete(dest, parquet_path)
            _delete(dest, csv_path)
            return WrittenFile(table.name, key, 0, "", "")
        writer.close()
        csv_text.flush()
        csv_text.detach()
        parquet_out.commit()
        csv_out.commit()
    except BaseException:
        if writer is not None:
            writer.close()  # into the temporary file, which abort() then removes
        for f in (parquet_out, csv_out):
            if f is not None:
                f.abort()
        raise
    return WrittenFile(table.name, key, count, parquet_path, csv_path)


class _StreamWriter(io.RawIOBase):
    """Lets io.TextIOWrapper write into a pyarrow output stream."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.stream.write(bytes(data))
        return len(data)

    def close(self) -> None:  # the pyarrow stream is closed by _AtomicFile.commit/abort
        pass


# --- Entry point ----------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    destination: str
    files: list[WrittenFile] = field(default_factory=list)

    @property
    def rows(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            out[f.table] = out.get(f.table, 0) + f.rows
        return out


def _months_for(days: Iterable[date]) -> list[date]:
    """The months of the exported days and the month before each: invoices are drafted after a
    month ends and change status for weeks, so the previous month is refreshed too."""
    months: set[date] = set()
    for day in days:
        first = day.replace(day=1)
        months.add(first)
        months.add((first - timedelta(days=1)).replace(day=1))
    return sorted(months)


def export_warehouse(
    *, day: date, days: int = 1, tenant_slug: str | None = None, dest: str | None = None, chunk_rows: int = CHUNK_ROWS
) -> ExportResult:
    """Export `days` days ending with `day` (inclusive) for every tenant (or one), plus the
    invoices of the months they touch. Re-running replaces the same files."""
    if days < 1 or days > 366:
        raise ExportError("days", "must be between 1 and 366.")
    tenants = Tenant.objects.order_by("slug")
    if tenant_slug:
        tenants = tenants.filter(slug=tenant_slug)
        if not tenants.exists():
            raise ExportError("tenant", f"No tenant with slug {tenant_slug!r}.")
    target = destination(dest)
    result = ExportResult(destination=target.url)
    fetch = min(chunk_rows, PYTHON_CHUNK)  # rows per server-side cursor fetch
    day_list = [day - timedelta(days=n) for n in range(days - 1, -1, -1)]
    for tenant in tenants:
        for d in day_list:
            for table, rows in DAY_TABLES:
                result.files.append(
                    write_partition(
                        dest=target, table=table, tenant_slug=tenant.slug, partition=d.isoformat(),
                        rows=rows(tenant=tenant, day=d, chunk_rows=fetch), chunk_rows=chunk_rows,
                    )
                )  # fmt: skip
        for month in _months_for(day_list):
            if not Invoice.objects.filter(tenant=tenant, period=month).exists():
                continue
            for table, rows in MONTH_TABLES:
                result.files.append(
                    write_partition(
                        dest=target, table=table, tenant_slug=tenant.slug, partition=f"{month:%Y-%m}",
                        rows=rows(tenant=tenant, month=month, chunk_rows=fetch), chunk_rows=chunk_rows,
                    )
                )  # fmt: skip
    return result


def schema_markdown() -> str:
    """The column tables of docs/WAREHOUSE.md, generated from TABLES so they cannot drift."""
    out = []
    for table in TABLES:
        out.append(f"### `{table.name}` (partition `tenant=<slug>/{table.partition}=…`)\n\n{table.doc}\n")
        out.append("| column | Parquet type | null | meaning |\n|---|---|---|---|")
        for c in table.columns:
            out.append(f"| `{c.name}` | `{c.type}` | {'yes' if c.nullable else 'no'} | {c.doc} |")
        out.append("")
    return "\n".join(out)
