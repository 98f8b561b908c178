"""Two read indexes for the web pages: one person's calls (tenant, user_ref, occurred_at) on
the raw table, and one user's / tag value's days on the per-dimension rollup.

The raw table is the one huge, hot table: on PostgreSQL its index is built CONCURRENTLY (no
write lock while it builds, hence a non-atomic migration); SQLite builds it normally.
"""

from django.db import migrations, models

USAGE_INDEX = models.Index(fields=["tenant", "user_ref", "occurred_at"], name="usage_tenant_user_time")
DIMENSION_INDEX = models.Index(fields=["tenant", "dimension", "value", "day"], name="dimension_rollup_value_day")


def create_usage_index(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS usage_tenant_user_time "
            "ON telemetry_usageevent (tenant_id, user_ref, occurred_at)"
        )
    else:
        schema_editor.add_index(apps.get_model("telemetry", "UsageEvent"), USAGE_INDEX)


def drop_usage_index(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS usage_tenant_user_time")
    else:
        schema_editor.remove_index(apps.get_model("telemetry", "UsageEvent"), USAGE_INDEX)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [("telemetry", "0002_rollups_and_anomalies")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="usageevent", index=USAGE_INDEX)],
            database_operations=[migrations.RunPython(create_usage_index, drop_usage_index)],
        ),
        migrations.AddIndex(model_name="dimensionrollup", index=DIMENSION_INDEX),
    ]
