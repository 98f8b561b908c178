"""PostgreSQL: range-partition the usage table by month (telemetry/partitions.py).

The model state does not change: Django keeps seeing one table with its (tenant, event_id)
unique constraint, which SQLite still enforces; on PostgreSQL the ledger `UsageEventKey`
enforces it. Existing rows are copied into the partitions and their keys into the ledger, in
this migration's transaction: on a large installation, run it in a maintenance window
(docs/OPERATIONS.md, "Partitioning").
"""

from django.db import migrations


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from telemetry import partitions

    with schema_editor.connection.cursor() as cursor:
        partitions.convert(cursor)


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from telemetry import partitions

    with schema_editor.connection.cursor() as cursor:
        partitions.unconvert(cursor)


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0009_usage_event_key")]

    operations = [migrations.RunPython(partition, unpartition)]
