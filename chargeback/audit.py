"""The audit trail: who changed which money-relevant row, when, and the before/after values.

Entry points (admin, commands, domain functions) call `record()` in the same transaction as the
change, so a change and its audit entry are committed or rolled back together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import models

from chargeback.models import AuditLog, Tenant

SYSTEM_ACTOR = "system"

# Never copied into an audit entry, even if a future edit makes them editable.
SECRET_FIELDS = frozenset({"key_hash"})

Actor = AbstractBaseUser | str | None


def record(
    *,
    tenant: Tenant | None,
    actor: Actor,
    action: str,
    obj: models.Model,
    changes: Mapping[str, Any] | None = None,
) -> AuditLog:
    """Write one audit entry.

    `actor` is a Django user, a label for a process (e.g. "manage.py reprice"), or None for the
    system itself. The label is stored beside the user so the entry still says who acted after
    the user is deleted.
    """
    user, label = _actor_parts(actor)
    return AuditLog.objects.create(
        tenant=tenant,
        actor=user,
        actor_label=label[:255],
        action=action,
        object_type=obj._meta.label,
        object_id=str(obj.pk),
        object_repr=str(obj)[:255],
        changes=dict(changes or {}),
    )


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, str | None]]:
    """The fields whose values differ, as {"field": {"before": ..., "after": ...}}.

    Values are compared as values (Decimal("3.50") == Decimal("3.5") is no change) and stored as
    strings so the JSON column never holds floats; a missing or None value is stored as None.
    """
    changed: dict[str, dict[str, str | None]] = {}
    for field in sorted(set(old) | set(new)):
        if field in SECRET_FIELDS:
            continue
        before, after = old.get(field), new.get(field)
        if before == after:
            continue
        changed[field] = {"before": _as_text(before), "after": _as_text(after)}
    return changed


def snapshot(obj: models.Model) -> dict[str, Any]:
    """The editable field values of a row, ready for `diff()`.

    Timestamps maintained by Django (auto_now/auto_now_add) and secrets are left out: they are
    not editable and would make every save look like a change. Foreign keys are shown by their
    string form, which is what an admin reading the trail recognises.
    """
    values: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if field.primary_key or not field.editable or field.name in SECRET_FIELDS:
            continue
        if field.is_relation:
            related = getattr(obj, field.name) if getattr(obj, field.attname) is not None else None
            values[field.name] = None if related is None else str(related)
        else:
            values[field.name] = field.value_from_object(obj)
    return values


def actor_label(actor: Actor) -> str:
    return _actor_parts(actor)[1]


def _actor_parts(actor: Actor) -> tuple[AbstractBaseUser | None, str]:
    if actor is None:
        return None, SYSTEM_ACTOR
    if isinstance(actor, str):
        return None, actor or SYSTEM_ACTOR
    if isinstance(actor, AbstractBaseUser):
        return actor, actor.get_username()
    # Anything else that acts (an API-key principal, AnonymousUser) is kept by its label only.
    return None, str(actor)


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        # Fixed-point without trailing zeros: "3.5" whether the value came from a form ("3.50")
        # or from a DECIMAL(20,10) column ("3.5000000000").
        text = format(value.normalize(), "f")
        return "0" if text == "-0" else text
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)
