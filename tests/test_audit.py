"""The audit trail: field diffs (pure) and entries written with each kind of actor."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from chargeback import audit
from chargeback.models import ApiKey, AuditLog
from tests.factories import make_price


def test_diff_lists_only_changed_fields_as_strings():
    old = {"input_per_mtok": Decimal("2.5000000000"), "output_per_mtok": Decimal("10"), "notes": "", "priority": 0}
    new = {"input_per_mtok": Decimal("2.00"), "output_per_mtok": Decimal("10.00"), "notes": "negotiated", "priority": 0}
    assert audit.diff(old, new) == {
        "input_per_mtok": {"before": "2.5", "after": "2"},
        "notes": {"before": "", "after": "negotiated"},
    }


def test_diff_of_a_creation_and_a_deletion_uses_none_for_the_missing_side():
    values = {"effective_to": None, "amount": Decimal("100.10"), "thresholds": [50, 80], "active": True}
    assert audit.diff({}, values) == {
        "active": {"before": None, "after": "true"},
        "amount": {"before": None, "after": "100.1"},
        "thresholds": {"before": None, "after": "[50, 80]"},
    }
    assert audit.diff(values, {})["amount"] == {"before": "100.1", "after": None}


def test_diff_renders_datetimes_in_iso_format():
    changes = audit.diff(
        {"effective_to": None},
        {"effective_to": datetime(2025, 7, 1, tzinfo=UTC)},
    )
    assert changes == {"effective_to": {"before": None, "after": "2025-07-01T00:00:00+00:00"}}


def test_diff_never_copies_the_key_hash():
    assert audit.diff({"key_hash": "a" * 64}, {"key_hash": "b" * 64}) == {}


@pytest.mark.django_db
def test_record_by_a_user_keeps_the_user_and_the_username(acme, finance_user):
    price = make_price(tenant=acme)
    entry = audit.record(
        tenant=acme, actor=finance_user, action="update", obj=price, changes={"notes": {"before": "", "after": "x"}}
    )
    entry.refresh_from_db()
    assert (entry.tenant, entry.actor, entry.actor_label) == (acme, finance_user, "fiona")
    assert (entry.action, entry.object_type, entry.object_id) == ("update", "chargeback.ModelPrice", str(price.pk))
    assert entry.object_repr == "openai/gpt-4o-mini from 2024-01-01 [acme]"
    assert entry.changes == {"notes": {"before": "", "after": "x"}}


@pytest.mark.django_db
def test_record_by_a_process_or_the_system_has_no_user(acme):
    price = make_price()
    by_command = audit.record(tenant=None, actor="manage.py reprice", action="reprice", obj=price)
    by_system = audit.record(tenant=None, actor=None, action="reprice", obj=price)
    assert (by_command.actor, by_command.actor_label, by_command.changes) == (None, "manage.py reprice", {})
    assert (by_system.actor, by_system.actor_label) == (None, "system")
    assert AuditLog.objects.count() == 2


@pytest.mark.django_db
def test_snapshot_leaves_out_secrets_and_automatic_timestamps(acme, research_dept):
    key = ApiKey.objects.create(tenant=acme, name="bot", prefix="abcd1234", key_hash="f" * 64, department=research_dept)
    assert audit.snapshot(key) == {
        "tenant": "Acme",
        "name": "bot",
        "department": "research (Research)",
        "user": None,
        "rpm_limit": None,
        "tpm_limit": None,
        "revoked_at": None,
    }
