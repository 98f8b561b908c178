"""API key lifecycle: issue a key (the raw token leaves this module exactly once) and revoke it.

Both operations write an audit entry in the same transaction as the change.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from chargeback import audit
from chargeback.models import ApiKey, Department, Membership, Tenant

# The visible prefix has 32 bits, so two keys can draw the same one; the unique constraint
# catches that and we draw again. Three attempts make a repeat failure practically impossible.
PREFIX_ATTEMPTS = 3


def check_key_binding(*, tenant: Tenant, department: Department | None, user: AbstractBaseUser | None) -> None:
    """Raise ValidationError (keyed by field) unless the key's bindings belong to its tenant.

    A key bound to another tenant's department or user would attribute one tenant's spend to
    another, so this is checked here and not only in forms.
    """
    errors: dict[str, str] = {}
    if department is not None:
        if department.tenant_id != tenant.pk:
            errors["department"] = f"The department {department.code!r} belongs to another tenant."
        elif not department.active:
            errors["department"] = f"The department {department.code!r} is inactive."
    if user is not None and not Membership.objects.filter(user=user, tenant=tenant).exists():
        errors["user"] = f"The user {user.get_username()!r} is not a member of {tenant.slug!r}."
    if errors:
        raise ValidationError(errors)


def create_api_key(
    *,
    tenant: Tenant,
    name: str,
    department: Department | None = None,
    user: AbstractBaseUser | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    actor: audit.Actor = None,
) -> tuple[ApiKey, str]:
    """Issue a key and return it with its raw token. Only the token's hash is stored, so the
    caller must show the token now: it cannot be recovered later."""
    check_key_binding(tenant=tenant, department=department, user=user)
    for attempt in range(1, PREFIX_ATTEMPTS + 1):
        raw, prefix = ApiKey.generate()
        key = ApiKey(
            tenant=tenant,
            name=name,
            prefix=prefix,
            key_hash=ApiKey.hash_token(raw),
            department=department,
            user=user,
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
        )
        # Field validation (name length, non-negative limits) without the uniqueness queries:
        # the constraints below decide uniqueness atomically.
        key.full_clean(validate_unique=False, validate_constraints=False)
        try:
            with transaction.atomic():
                key.save(force_insert=True)
                audit.record(
                    tenant=tenant,
                    actor=actor,
                    action="create",
                    obj=key,
                    changes=audit.diff({}, audit.snapshot(key)),
                )
        except IntegrityError:
            if attempt == PREFIX_ATTEMPTS or not ApiKey.objects.filter(prefix=prefix).exists():
                raise
            continue
        return key, raw
    raise AssertionError("unreachable: the loop returns or raises")


def revoke_api_key(*, key: ApiKey, actor: audit.Actor = None) -> bool:
    """Revoke a key. Idempotent: the first call sets revoked_at and returns True; later calls
    (or a concurrent one that lost the race) change nothing and return False."""
    now = timezone.now()
    with transaction.atomic():
        # Claim the transition in the UPDATE itself so two admins revoking at once write one
        # revoked_at and one audit entry.
        revoked = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now) == 1
        if revoked:
            audit.record(
                tenant=key.tenant,
                actor=actor,
                action="revoke",
                obj=key,
                changes=audit.diff({"revoked_at": None}, {"revoked_at": now}),
            )
    key.revoked_at = now if revoked else ApiKey.objects.values_list("revoked_at", flat=True).get(pk=key.pk)
    if revoked:
        # Ingest remembers keys it authenticated for a second (telemetry.ingest.SENDER_MAX_AGE_S);
        # this process forgets them at once, the others within that second.
        from telemetry import ingest

        ingest.forget_senders()
        transaction.on_commit(ingest.forget_senders)  # a request may have remembered it meanwhile
    return revoked
