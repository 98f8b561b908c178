"""Celery tasks of the chargeback app: entry points that take ids and call one domain function."""

from __future__ import annotations

from celery import shared_task

from chargeback import budgets, notify


@shared_task(name="chargeback.evaluate_budgets", soft_time_limit=50, time_limit=60, ignore_result=True)
def evaluate_budgets(tenant_id: int) -> None:
    budgets.evaluate_budgets(tenant_id=tenant_id)


@shared_task(
    bind=True,
    name="chargeback.deliver",
    soft_time_limit=20,
    time_limit=30,
    max_retries=notify.MAX_ATTEMPTS - 1,
    acks_late=True,
    ignore_result=True,
)
def deliver(self, delivery_id: int) -> None:
    if self.request.is_eager:
        # The embedded default has no broker to schedule a retry on: try the attempts back to
        # back (no backoff) and let the last one record the failure.
        for attempt in range(notify.MAX_ATTEMPTS):
            try:
                notify.attempt_delivery(delivery_id=delivery_id, final=attempt == notify.MAX_ATTEMPTS - 1)
                return
            except notify.DeliveryError:
                continue
        return
    final = self.request.retries >= self.max_retries
    try:
        notify.attempt_delivery(delivery_id=delivery_id, final=final)
    except notify.DeliveryError as exc:
        raise self.retry(exc=exc, countdown=notify.backoff_seconds(self.request.retries)) from exc
