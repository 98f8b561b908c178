"""All outbound notifications: e-mail, generic JSON webhooks and Slack-compatible webhooks.

Callers create `Delivery` rows (`queue_notification`) inside their own transaction; the
`chargeback.deliver` task sends each one after commit, retrying with backoff, so a slow or
broken receiver never blocks a rollup or a budget evaluation. Every attempt is recorded on the
row (attempts, last_error, status), which the admin shows.
"""

from __future__ import annotations

import logging
import smtplib
from typing import Any

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from chargeback.models import Delivery, NotificationChannel, Tenant

log = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(5.0, connect=3.0)
MAX_ATTEMPTS = 6  # the first try and five retries
USER_AGENT = "llmobs-notify/1"


class DeliveryError(Exception):
    """A transient delivery failure (network, 5xx, 429, SMTP): worth retrying."""


def backoff_seconds(retries: int) -> int:
    """30 s, 1 min, 2 min, 4 min, 8 min: about a quarter of an hour before giving up."""
    return min(30 * 2**retries, 3600)


def queue_notification(
    *, tenant: Tenant, subject: str, text: str, payload: dict[str, Any], reference: str
) -> list[Delivery]:
    """One pending Delivery per enabled channel of the tenant, sent after commit."""
    deliveries = [
        Delivery.objects.create(
            tenant=tenant, channel=channel, subject=subject[:255], text=text, payload=payload, reference=reference
        )
        for channel in NotificationChannel.objects.filter(tenant=tenant, enabled=True)
    ]
    from chargeback.tasks import deliver

    for delivery in deliveries:
        transaction.on_commit(lambda pk=delivery.pk: deliver.delay(pk))
    return deliveries


def attempt_delivery(*, delivery_id: int, final: bool) -> Delivery:
    """Send one delivery once. A transient failure raises DeliveryError unless this is the
    final attempt, which marks the delivery failed instead; a permanent one (4xx) fails now."""
    delivery = Delivery.objects.select_related("channel").get(pk=delivery_id)
    if delivery.status != Delivery.Status.PENDING:
        return delivery  # already sent (a duplicate task run) or given up
    delivery.attempts += 1
    try:
        _send(delivery)
    except DeliveryError as exc:
        delivery.last_error = str(exc)[:2000]
        if final:
            delivery.status = Delivery.Status.FAILED
        delivery.save(update_fields=["attempts", "last_error", "status"])
        log.warning("delivery %s to %s failed (attempt %s): %s", delivery.pk, delivery.channel, delivery.attempts, exc)
        if not final:
            raise
        return delivery
    except PermanentDeliveryError as exc:
        delivery.last_error = str(exc)[:2000]
        delivery.status = Delivery.Status.FAILED
        delivery.save(update_fields=["attempts", "last_error", "status"])
        return delivery
    delivery.status = Delivery.Status.SENT
    delivery.sent_at = timezone.now()
    delivery.last_error = ""
    delivery.save(update_fields=["attempts", "last_error", "status", "sent_at"])
    return delivery


class PermanentDeliveryError(Exception):
    """The receiver rejected the message (4xx other than 408/429): retrying will not help."""


def _send(delivery: Delivery) -> None:
    channel = delivery.channel
    if channel.kind == NotificationChannel.Kind.EMAIL:
        recipients = [a.strip() for a in channel.target.split(",") if a.strip()]
        try:
            send_mail(delivery.subject, delivery.text, settings.DEFAULT_FROM_EMAIL, recipients)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP: {exc}") from exc
        return
    if channel.kind == NotificationChannel.Kind.SLACK:
        body: dict[str, Any] = {"text": f"*{delivery.subject}*\n{delivery.text}"}
    else:
        body = {"subject": delivery.subject, "text": delivery.text, "reference": delivery.reference, **delivery.payload}
    try:
        response = httpx.post(channel.target, json=body, timeout=TIMEOUT, headers={"User-Agent": USER_AGENT})
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise DeliveryError(f"HTTP {response.status_code}: {response.text[:200]}")
    if response.status_code >= 400:
        raise PermanentDeliveryError(f"HTTP {response.status_code}: {response.text[:200]}")
