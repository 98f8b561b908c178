from django.apps import AppConfig


class ChargebackConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "chargeback"

    def ready(self) -> None:
        # Areas register their admin pages and Celery tasks from their own modules (autodiscovery
        # only finds admin.py and tasks.py).
        from chargeback import admin_alerts, admin_invoicing, tasks_invoicing  # noqa: F401
