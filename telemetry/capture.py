"""Prompt and completion capture: whether to keep a call's text (the tenant's policy), masking
obvious secrets and e-mail addresses before anything is stored, and purging after retention.

The evals read captured calls; nothing else should. Redaction is pattern-based and catches the
common shapes (provider API keys, bearer tokens, AWS keys, private-key blocks, e-mail
addresses); it is a safety net, not a DLP system.
"""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from chargeback.models import Tenant
from telemetry.models import CapturedContent

REDACTIONS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
        "[REDACTED_PRIVATE_KEY]",
    ),
    (re.compile(r"\b(?:sk|rk|pk)-(?:ant-|proj-|live-|test-)?[A-Za-z0-9_\-]{16,}"), "[REDACTED_API_KEY]"),
    (re.compile(r"\bllmo_[0-9a-f]{8}_[A-Za-z0-9]{16,}"), "[REDACTED_API_KEY]"),
    (re.compile(r"\b(?:ghp|gho|ghs|github_pat|xox[abpsr]|glpat)[-_][A-Za-z0-9_\-]{16,}"), "[REDACTED_TOKEN]"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "[REDACTED_AWS_KEY]"),
    (
        re.compile(r"(?i)(aws_secret_access_key|secret_access_key)(\s*[:=]\s*)[\"']?[A-Za-z0-9/+=]{40}[\"']?"),
        r"\1\2[REDACTED_AWS_SECRET]",
    ),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{12,}=*"), "Bearer [REDACTED_TOKEN]"),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"), "[REDACTED_JWT]"),
    (re.compile(r"(?i)\b(password|passwd|api[_-]?key|secret|token)(\s*[:=]\s*)\S{6,}"), r"\1\2[REDACTED]"),
    (re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b"), "[REDACTED_EMAIL]"),
]


def redact(text: str) -> tuple[str, int]:
    """The text with secrets and e-mail addresses masked, and how many were masked. NUL
    characters are dropped too: PostgreSQL cannot store them in text or jsonb."""
    text = text.replace("\x00", "")
    total = 0
    for pattern, replacement in REDACTIONS:
        text, count = pattern.subn(replacement, text)
        total += count
    return text, total


def _redact_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    out, total = [], 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            content, n = redact(content)
        elif isinstance(content, list):
            parts = []
            n = 0
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    text, k = redact(part["text"])
                    part = {**part, "text": text}
                    n += k
                parts.append(part)
            content = parts
        else:
            n = 0
        total += n
        out.append({"role": message.get("role", ""), "content": content})
    return out, total


def should_capture(tenant: Tenant, *, rng: random.Random | None = None) -> bool:
    mode = tenant.capture_mode
    if mode == Tenant.CaptureMode.ON:
        return True
    if mode == Tenant.CaptureMode.SAMPLED:
        rate = Decimal(tenant.capture_sample_rate or 0)
        return Decimal(str((rng or random).random())) < rate
    return False


def build_capture(
    *,
    tenant: Tenant,
    event_id: str,
    operation_id: str,
    department_code: str,
    model: str,
    messages: list[dict[str, Any]],
    completion: str,
    at: datetime | None = None,
) -> CapturedContent:
    """An unsaved, redacted capture row (the recorder writes it with its event)."""
    at = at or timezone.now()
    redacted_messages, n_messages = _redact_messages(messages)
    redacted_completion, n_completion = redact(completion)
    return CapturedContent(
        tenant_id=tenant.pk,
        event_id=event_id,
        operation_id=operation_id,
        department_code=department_code,
        model=model,
        messages=redacted_messages,
        completion=redacted_completion,
        redactions=n_messages + n_completion,
        created_at=at,
        expires_at=at + timedelta(days=tenant.capture_retention_days),
    )


def purge_expired_captures(*, now: datetime | None = None, batch_size: int = 5000) -> int:
    """Delete captures past their expiry, in batches so a big purge never holds long locks.
    Returns how many were deleted. Safe to run twice."""
    now = now or timezone.now()
    deleted = 0
    while True:
        ids = list(CapturedContent.objects.filter(expires_at__lte=now).values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        deleted += CapturedContent.objects.filter(pk__in=ids).delete()[0]
