"""The Celery application: Redis broker in production, eager tasks on the embedded default."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")

app = Celery("llmobs")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
