"""A web worker's life in miniature, for tests/test_recorder_exit.py: in a forked child (as
granian starts its workers), queue one gateway usage event in the recorder with its background
thread off, so nothing is written before exit, and return as a worker's target does on shutdown."""

from __future__ import annotations


def queue_one_event_and_exit(tenant_id: int, department_id: int, event_id: str) -> None:
    from django.conf import settings
    from django.utils import timezone

    from telemetry import recorder
    from telemetry.models import UsageEvent

    settings.LLMOBS_RECORDER_BACKGROUND = False  # this process's copy only
    recorder.record(
        UsageEvent(
            tenant_id=tenant_id,
            event_id=event_id,
            source=UsageEvent.Source.GATEWAY,
            occurred_at=timezone.now(),
            provider="openai",
            model="gpt-4o",
            department_id=department_id,
            input_tokens=10,
        )
    )
    assert recorder.recorder.pending() == 1
