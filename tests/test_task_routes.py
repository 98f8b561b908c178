"""Every registered Celery task routes to the queue it is meant for: bulky work (evals,
reports, exports, invoices, rebuilds, purges) on `slow`, the minute pipeline on `default`
(docs/OPERATIONS.md). A new task must be added here."""

from __future__ import annotations

from llmobs.celery import app

EXPECTED = {
    "chargeback.deliver": "default",
    "chargeback.evaluate_budgets": "default",
    "chargeback.generate_invoices": "slow",
    "telemetry.check_alerts": "default",
    "telemetry.export_warehouse": "slow",
    "telemetry.purge_captures": "default",
    "telemetry.purge_usage": "slow",
    "telemetry.ensure_partitions": "slow",
    "telemetry.roll_up": "default",
    "telemetry.roll_up_dimensions": "default",
    "telemetry.roll_up_range": "slow",
    "telemetry.run_evals": "slow",
    "telemetry.score_anomalies": "default",
    "telemetry.send_reports": "slow",
}


def test_every_registered_task_routes_to_its_intended_queue():
    app.loader.import_default_modules()
    ours = sorted(name for name in app.tasks if not name.startswith("celery."))
    assert ours == sorted(EXPECTED)
    routed = {name: app.amqp.router.route({}, name)["queue"].name for name in ours}
    assert routed == EXPECTED


def test_every_beat_entry_names_a_registered_task():
    app.loader.import_default_modules()
    for entry in app.conf.beat_schedule.values():
        assert entry["task"] in app.tasks, entry
    assert app.conf.beat_schedule["purge-usage"]["task"] == "telemetry.purge_usage"
