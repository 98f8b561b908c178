"""Monthly range partitioning of the raw usage table on PostgreSQL.

`telemetry_usageevent` is the one table that grows without bound. On PostgreSQL it is
partitioned by RANGE on `occurred_at`, one partition per UTC calendar month
(`telemetry_usageevent_p2026_11` holds November 2026), plus a DEFAULT partition that catches
anything no monthly partition covers (very old imports, a clock far in the future). So:

- retention drops whole months (`DETACH` + `DROP`, no row-by-row delete, no bloat, no vacuum),
  and only deletes rows of the one month the horizon cuts through (telemetry/retention.py);
- a rollup rebuild, an invoice or a drill-down over a time range reads only the months it
  covers (partition pruning on `occurred_at`), whatever the history behind them;
- each month's indexes are as small as that month.

A partitioned table can only be unique on keys that include `occurred_at`, so the contract's
"event_id unique per tenant" moves to the idempotency ledger `UsageEventKey`: every writer
claims the key there and writes the event only if the claim was new, in one transaction.

Partitions are created `MONTHS_AHEAD` months ahead daily (`telemetry.ensure_partitions` on the
beat schedule, `manage.py partitions --ensure`), so the DEFAULT partition normally stays empty;
when it does hold rows of a month, `ensure_partitions` moves them into that month's new
partition. SQLite (the embedded default) keeps one plain table with its unique constraint.

The SQL here uses table names, not models, because the migration that converts the table
(telemetry/migrations/0010_partition_usage_events.py) calls it too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

log = logging.getLogger(__name__)

TABLE = "telemetry_usageevent"
DEFAULT_PARTITION = f"{TABLE}_pdefault"
KEY_TABLE = "telemetry_usageeventkey"
# PostgreSQL's name for the ledger's primary key: a unique violation on it is a duplicate id.
KEY_CONSTRAINT = f"{KEY_TABLE}_pkey"
# The unique constraint the model declares; it exists in the database on SQLite only.
UNIQUE_CONSTRAINT = "usage_event_id_unique_per_tenant"
MONTHS_AHEAD = 3
# A new table starts with the months the default retention (400 days) can still hold.
MONTHS_BACK = 13
# When converting, months older than this (relative to now) go to the DEFAULT partition
# rather than one partition each; `ensure_partitions` still splits them out on its next run.
CONVERT_MONTHS_BACK = 36
_NAME = re.compile(rf"^{TABLE}_p(\d{{4}})_(\d{{2}})$")


def partition_name(month: date) -> str:
    return f"{TABLE}_p{month.year:04d}_{month.month:02d}"


def month_of(moment: datetime | date) -> date:
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC calendar month."""
    following = add_months(month, 1)
    return (
        datetime(month.year, month.month, 1, tzinfo=UTC),
        datetime(following.year, following.month, 1, tzinfo=UTC),
    )


def is_postgresql(conn: Any = None) -> bool:
    return (conn or connection).vendor == "postgresql"


def is_partitioned(cursor: Any) -> bool:
    cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
    row = cursor.fetchone()
    return bool(row) and row[0] == "p"


@dataclass(frozen=True)
class Partition:
    name: str
    month: date | None  # None: the DEFAULT partition

    @property
    def bounds(self) -> tuple[datetime, datetime] | None:
        return None if self.month is None else month_bounds(self.month)


def list_partitions(cursor: Any) -> list[Partition]:
    """The usage table's partitions, oldest month first, DEFAULT last."""
    cursor.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
        [TABLE],
    )
    months: list[Partition] = []
    default: list[Partition] = []
    for (name,) in cursor.fetchall():
        match = _NAME.match(name)
        if match:
            months.append(Partition(name, date(int(match[1]), int(match[2]), 1)))
        else:
            default.append(Partition(name, None))
    return sorted(months, key=lambda p: p.month) + default


def _create_month(cursor: Any, month: date) -> None:
    start, end = month_bounds(month)
    cursor.execute(
        f'CREATE TABLE "{partition_name(month)}" PARTITION OF "{TABLE}" FOR VALUES FROM (%s) TO (%s)',
        [start, end],
    )


# --- Converting the table (the migration) --------------------------------------------------------


def convert(cursor: Any, *, now: datetime | None = None) -> None:
    """Turn the plain usage table into the partitioned one, keeping every row, index name,
    column default and the id sequence. Idempotent: a partitioned table is left alone."""
    if is_partitioned(cursor):
        return
    now = now or timezone.now()
    old = f"{TABLE}_unpartitioned"
    indexes = _set_aside(cursor, old, keep_out=(f"{TABLE}_pkey", UNIQUE_CONSTRAINT))
    cursor.execute(f"CREATE TABLE {_like(old)} PARTITION BY RANGE (occurred_at)")
    cursor.execute(f'SELECT min(occurred_at) FROM "{old}"')  # noqa: S608
    (first,) = cursor.fetchone()
    # Rows beyond the months ahead (a clock far off) stay in DEFAULT.
    current = month_of(now)
    start = add_months(current, -MONTHS_BACK)
    if first is not None:
        start = max(min(start, month_of(first)), add_months(current, -CONVERT_MONTHS_BACK))
    month = start
    while month <= add_months(current, MONTHS_AHEAD):
        _create_month(cursor, month)
        month = add_months(month, 1)
    cursor.execute(f'CREATE TABLE "{DEFAULT_PARTITION}" PARTITION OF "{TABLE}" DEFAULT')
    cursor.execute(f'INSERT INTO "{TABLE}" SELECT * FROM "{old}"')  # noqa: S608
    cursor.execute(
        f'INSERT INTO "{KEY_TABLE}" (tenant_id, event_id) SELECT tenant_id, event_id FROM "{old}" '  # noqa: S608
        "ON CONFLICT DO NOTHING"
    )
    cursor.execute(f'DROP TABLE "{old}"')
    cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY (id, occurred_at)')
    _rebuild_indexes(cursor, old, indexes)


def unconvert(cursor: Any) -> None:
    """The reverse migration: back to one plain table with the unique constraint."""
    if not is_partitioned(cursor):
        return
    old = f"{TABLE}_partitioned"
    indexes = _set_aside(cursor, old, keep_out=(f"{TABLE}_pkey",))
    cursor.execute(f"CREATE TABLE {_like(old)}")
    cursor.execute(f'INSERT INTO "{TABLE}" SELECT * FROM "{old}"')  # noqa: S608
    cursor.execute(f'DROP TABLE "{old}" CASCADE')
    cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY (id)')
    cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{UNIQUE_CONSTRAINT}" UNIQUE (tenant_id, event_id)')
    _rebuild_indexes(cursor, old, indexes)


def _set_aside(cursor: Any, old: str, *, keep_out: tuple[str, ...]) -> list[str]:
    """Rename the table to `old`; return its index definitions, but those named in `keep_out`."""
    cursor.execute(f'ALTER TABLE "{TABLE}" RENAME TO "{old}"')
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s",
        [old],
    )
    return [sql for name, sql in cursor.fetchall() if name not in keep_out]


def _like(old: str) -> str:
    return (
        f'"{TABLE}" (LIKE "{old}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY '
        "INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS)"
    )


def _rebuild_indexes(cursor: Any, old: str, indexes: list[str]) -> None:
    """The old table's indexes, same names, on the new one (a partitioned table's definitions
    read `ON ONLY`; built without it, they cover every partition), and the id sequence."""
    for sql in indexes:
        cursor.execute(re.sub(rf' ON (ONLY )?(\S+\.)?"?{old}"? ', f' ON "{TABLE}" ', sql, count=1))
    _reset_sequence(cursor)


def _reset_sequence(cursor: Any) -> None:
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
    (sequence,) = cursor.fetchone()
    cursor.execute(
        f'SELECT setval(%s, coalesce((SELECT max(id) FROM "{TABLE}"), 0) + 1, false)',  # noqa: S608
        [sequence],
    )


# --- Keeping months ahead, splitting DEFAULT ------------------------------------------------------


@dataclass
class EnsureResult:
    created: list[str] = field(default_factory=list)
    moved: int = 0  # rows moved out of the DEFAULT partition


def ensure_partitions(
    *, now: datetime | None = None, ahead: int = MONTHS_AHEAD, progress: Callable[[str], None] | None = None
) -> EnsureResult:
    """Create this month's and the next `ahead` months' partitions, and give every month that
    has rows in the DEFAULT partition its own partition, moving those rows there."""
    if not is_postgresql():
        return EnsureResult()
    with connection.cursor() as cursor:
        if not is_partitioned(cursor):
            return EnsureResult()
        cursor.execute(
            f"SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date "  # noqa: S608
            f'FROM "{DEFAULT_PARTITION}"'
        )
        stranded = {row[0] for row in cursor.fetchall()}
    current = month_of(now or timezone.now())
    return ensure_months({add_months(current, n) for n in range(ahead + 1)} | stranded, progress=progress)


def ensure_months(months: Iterable[date], *, progress: Callable[[str], None] | None = None) -> EnsureResult:
    """Give each of `months` (first days, UTC) its partition if it has none, moving its rows out
    of DEFAULT if there are any. Each month is its own short transaction; a run that is killed
    leaves the table consistent."""
    result = EnsureResult()
    if not is_postgresql():
        return result
    with connection.cursor() as cursor:
        if not is_partitioned(cursor):
            return result
        existing = {p.month for p in list_partitions(cursor)}
    for month in sorted(set(months) - existing):
        start, end = month_bounds(month)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f'SELECT EXISTS (SELECT 1 FROM "{DEFAULT_PARTITION}" '  # noqa: S608
                "WHERE occurred_at >= %s AND occurred_at < %s)",
                [start, end],
            )
            if cursor.fetchone()[0]:
                moved = _split_out(cursor, month)
            else:
                _create_month(cursor, month)
                moved = 0
        result.created.append(partition_name(month))
        result.moved += moved
        if progress:
            progress(f"created {partition_name(month)}" + (f", moved {moved:,} rows from DEFAULT" if moved else ""))
    if result.created:
        log.info("ensure_partitions: created %s, moved %d rows", ", ".join(result.created), result.moved)
    return result


def _split_out(cursor: Any, month: date) -> int:
    """A month whose rows sit in DEFAULT: create its table beside the parent, move the rows,
    then attach it (PostgreSQL refuses a new partition while DEFAULT holds rows of its range)."""
    name = partition_name(month)
    start, end = month_bounds(month)
    cursor.execute(f'CREATE TABLE "{name}" (LIKE "{TABLE}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
    cursor.execute(
        f'WITH moved AS (DELETE FROM "{DEFAULT_PARTITION}" WHERE occurred_at >= %s AND occurred_at < %s '  # noqa: S608
        f'RETURNING *) INSERT INTO "{name}" SELECT * FROM moved',
        [start, end],
    )
    moved = cursor.rowcount
    cursor.execute(f'ALTER TABLE "{TABLE}" ATTACH PARTITION "{name}" FOR VALUES FROM (%s) TO (%s)', [start, end])
    return moved


# --- Retention: dropping whole months ------------------------------------------------------------


@dataclass
class DropResult:
    dropped: list[str] = field(default_factory=list)
    rows: int = 0


def drop_months_before(horizon: datetime, *, dry_run: bool = False) -> DropResult:
    """Drop every monthly partition that ends at or before `horizon`, with its events' keys.
    Rows of the month the horizon cuts through are left to the row-by-row purge."""
    result = DropResult()
    if not is_postgresql():
        return result
    with connection.cursor() as cursor:
        if not is_partitioned(cursor):
            return result
        expired = [p for p in list_partitions(cursor) if p.month is not None and p.bounds[1] <= horizon]
    for partition in expired:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f'SELECT count(*) FROM "{partition.name}"')  # noqa: S608
            (rows,) = cursor.fetchone()
            if not dry_run:
                cursor.execute(f'ALTER TABLE "{TABLE}" DETACH PARTITION "{partition.name}"')
                cursor.execute(
                    f'DELETE FROM "{KEY_TABLE}" k USING "{partition.name}" e '  # noqa: S608
                    "WHERE k.tenant_id = e.tenant_id AND k.event_id = e.event_id"
                )
                cursor.execute(f'DROP TABLE "{partition.name}"')
        result.dropped.append(partition.name)
        result.rows += rows
    return result


# --- Writing through the ledger ------------------------------------------------------------------


def claim_keys(cursor: Any, tenant_ids_and_event_ids: Iterable[tuple[int, str]]) -> set[tuple[int, str]]:
    """Insert the keys into the ledger; return those that were new (the events to write).
    In id order, so two writers claiming overlapping ids wait on each other, never deadlock."""
    pairs = sorted(set(tenant_ids_and_event_ids))
    if not pairs:
        return set()
    cursor.execute(
        f'INSERT INTO "{KEY_TABLE}" (tenant_id, event_id) '  # noqa: S608
        "SELECT * FROM unnest(%s::bigint[], %s::varchar[]) ON CONFLICT DO NOTHING RETURNING tenant_id, event_id",
        [[t for t, _ in pairs], [e for _, e in pairs]],
    )
    return {(t, e) for t, e in cursor.fetchall()}


def insert_new_events(events: Sequence[Any]) -> int:
    """Write UsageEvent instances whose (tenant, event_id) is not stored yet; return how many.
    The ORM writers (the gateway's recorder, the demo) use this; ingest has its own COPY path.
    Call inside a transaction on PostgreSQL, so a claimed key never outlives a failed write."""
    from telemetry.models import UsageEvent

    if not events:
        return 0
    if not is_postgresql():
        return len(UsageEvent.objects.bulk_create(list(events), ignore_conflicts=True))
    with connection.cursor() as cursor:
        new = claim_keys(cursor, ((e.tenant_id, e.event_id) for e in events))
    fresh: list[Any] = []
    for event in events:
        key = (event.tenant_id, event.event_id)
        if key in new:
            new.discard(key)  # a repeat inside the batch is a duplicate too
            fresh.append(event)
    if fresh:
        UsageEvent.objects.bulk_create(fresh, batch_size=2000)
    return len(fresh)
