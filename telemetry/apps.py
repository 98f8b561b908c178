from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "telemetry"

    def ready(self) -> None:
        from telemetry import (
            admin_evals,  # noqa: F401 - registers the quality admins
            admin_rollups,  # noqa: F401 - registers the anomaly and watermark admins
            admin_sampling,  # noqa: F401 - registers the trace sampling policy admin
        )
