"""Shared argument handling of the dataset commands."""

from __future__ import annotations

from django.core.management.base import CommandError

from chargeback.models import Tenant

USAGE_ERROR = 2  # bad arguments or data; 1 is reserved for "ran, but below the threshold"


def resolve_tenant(slug: str | None) -> Tenant:
    if slug:
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"Unknown tenant {slug!r}: no tenant has that slug.", returncode=USAGE_ERROR)
        return tenant
    tenants = list(Tenant.objects.all()[:2])
    if len(tenants) != 1:
        raise CommandError("Name the tenant with --tenant SLUG.", returncode=USAGE_ERROR)
    return tenants[0]
