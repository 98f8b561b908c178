"""DRF API views of the telemetry app, one module per area (ingest, reporting, …)."""
