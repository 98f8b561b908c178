"""Issuing and revoking API keys, through the domain functions and `manage.py create_api_key`."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from chargeback import keys
from chargeback.auth import authenticate_token
from chargeback.models import ApiKey, AuditLog

pytestmark = pytest.mark.django_db


def test_create_api_key_stores_only_the_hash_and_returns_a_working_token(acme, research_dept, employee_user):
    key, raw = keys.create_api_key(
        tenant=acme, name="support-bot", department=research_dept, user=employee_user, rpm_limit=60, tpm_limit=90000
    )
    stored = ApiKey.objects.get(pk=key.pk)
    assert raw.startswith(f"llmo_{stored.prefix}_")
    assert stored.key_hash == ApiKey.hash_token(raw)
    assert raw not in {stored.key_hash, stored.prefix, stored.name}
    assert (stored.department, stored.user, stored.rpm_limit, stored.tpm_limit) == (
        research_dept,
        employee_user,
        60,
        90000,
    )
    assert ApiKey.objects.for_token(raw) == stored


def test_create_api_key_writes_an_audit_entry_without_the_secret(acme, finance_user):
    key, raw = keys.create_api_key(tenant=acme, name="etl", actor=finance_user)
    entry = AuditLog.objects.get()
    assert (entry.tenant, entry.actor, entry.action, entry.object_type, entry.object_id) == (
        acme,
        finance_user,
        "create",
        "chargeback.ApiKey",
        str(key.pk),
    )
    assert entry.changes["name"] == {"before": None, "after": "etl"}
    assert "key_hash" not in entry.changes
    assert raw not in str(entry.changes)


def test_a_department_of_another_tenant_is_rejected_and_nothing_is_written(acme, other_dept):
    with pytest.raises(ValidationError) as exc:
        keys.create_api_key(tenant=acme, name="bot", department=other_dept)
    assert exc.value.message_dict == {"department": ["The department 'research' belongs to another tenant."]}
    assert ApiKey.objects.count() == 0
    assert AuditLog.objects.count() == 0


def test_an_inactive_department_is_rejected(acme, research_dept):
    research_dept.active = False
    research_dept.save()
    with pytest.raises(ValidationError) as exc:
        keys.create_api_key(tenant=acme, name="bot", department=research_dept)
    assert exc.value.message_dict == {"department": ["The department 'research' is inactive."]}


def test_a_default_user_who_is_not_a_member_of_the_tenant_is_rejected(other_tenant, employee_user):
    with pytest.raises(ValidationError) as exc:
        keys.create_api_key(tenant=other_tenant, name="bot", user=employee_user)
    assert exc.value.message_dict == {"user": ["The user 'emil' is not a member of 'globex'."]}
    assert ApiKey.objects.count() == 0


def test_revoke_is_idempotent_and_audited_once(acme, finance_user):
    key, raw = keys.create_api_key(tenant=acme, name="bot")
    assert keys.revoke_api_key(key=key, actor=finance_user) is True
    first_revoked_at = ApiKey.objects.get(pk=key.pk).revoked_at
    assert first_revoked_at is not None
    assert key.revoked_at == first_revoked_at

    stale = ApiKey.objects.get(pk=key.pk)
    assert keys.revoke_api_key(key=stale, actor=finance_user) is False
    assert ApiKey.objects.get(pk=key.pk).revoked_at == first_revoked_at
    assert stale.revoked_at == first_revoked_at
    assert ApiKey.objects.for_token(raw) is None
    assert list(AuditLog.objects.filter(action="revoke").values_list("object_id", "actor_label")) == [
        (str(key.pk), "fiona")
    ]


def test_command_prints_a_token_that_authenticates(acme, research_dept, employee_user):
    out = StringIO()
    call_command(
        "create_api_key",
        "--tenant=acme",
        "--name=support-bot",
        "--department=research",
        "--user=emil",
        "--rpm=30",
        "--tpm=1000",
        stdout=out,
    )
    lines = out.getvalue().splitlines()
    raw = lines[-1]
    assert "will not be shown again" in lines[-2]
    key = authenticate_token(raw)
    assert key is not None
    assert (key.tenant, key.name, key.department, key.user, key.rpm_limit, key.tpm_limit) == (
        acme,
        "support-bot",
        research_dept,
        employee_user,
        30,
        1000,
    )
    assert AuditLog.objects.get().actor_label == "manage.py create_api_key"


def test_command_fails_clearly_for_an_unknown_tenant(db):
    with pytest.raises(CommandError) as exc:
        call_command("create_api_key", "--tenant=nope", "--name=bot", stdout=StringIO())
    assert str(exc.value) == "Unknown tenant 'nope': no tenant has that slug."
    assert ApiKey.objects.count() == 0


def test_command_fails_clearly_for_an_unknown_department_or_user(acme):
    with pytest.raises(CommandError) as exc:
        call_command("create_api_key", "--tenant=acme", "--name=bot", "--department=ops", stdout=StringIO())
    assert str(exc.value) == "Unknown department 'ops' in tenant 'acme'."
    with pytest.raises(CommandError) as exc:
        call_command("create_api_key", "--tenant=acme", "--name=bot", "--user=ghost", stdout=StringIO())
    assert str(exc.value) == "Unknown user 'ghost'."
    assert ApiKey.objects.count() == 0


def test_command_reports_a_binding_in_another_tenant_as_an_error(acme, other_tenant, employee_user):
    with pytest.raises(CommandError) as exc:
        call_command("create_api_key", "--tenant=globex", "--name=bot", "--user=emil", stdout=StringIO())
    assert str(exc.value) == "Cannot create the key. user: The user 'emil' is not a member of 'globex'."
