"""Celery entry point for monthly invoice drafting (scheduled in CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from chargeback import invoicing
from chargeback.models import Tenant

log = logging.getLogger(__name__)


@shared_task(name="chargeback.generate_invoices", soft_time_limit=540, time_limit=600, ignore_result=True)
def generate_invoices(tenant_id: int | None = None, period: str | None = None, force: bool = False) -> None:
    """Draft last month's invoices for every tenant (or one) once its grace window has passed.

    Safe to run daily or twice: a month still inside its grace window is skipped, and drafting
    rewrites drafts in place and never touches issued invoices."""
    now = timezone.now()
    tenants = Tenant.objects.all() if tenant_id is None else Tenant.objects.filter(pk=tenant_id)
    for tenant in tenants:
        month = invoicing.parse_period(period) if period else invoicing.previous_period(tenant=tenant, now=now)
        try:
            summary = invoicing.draft_invoices(tenant=tenant, period=month, now=now, force=force, actor="celery")
        except invoicing.GraceWindowOpen as exc:
            log.info("invoices %s %s: %s", tenant.slug, f"{month:%Y-%m}", exc.message)
            continue
        log.info(
            "invoices %s %s: %d drafted, %d already issued",
            tenant.slug,
            f"{month:%Y-%m}",
            len(summary.drafted),
            len(summary.skipped_closed),
        )
