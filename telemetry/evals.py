"""Quality: LLM-as-judge evaluation of production calls, golden-dataset runs, user feedback and
the quality SLO alert (docs/EVALS.md).

Judge calls go through the gateway engine (`gateway.complete`): they pass the same budget checks
and are recorded as usage events with `source=eval`, `feature=eval`, attributed to the
department whose traffic was evaluated, so the judge's spend shows up on that department's bill
on its own `eval` line.

A judge answer is only ever turned into a score when it is a JSON object with a numeric `score`
on the rubric's scale; anything else is stored as a `parse_error` with the raw text, never a
guessed score.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from chargeback.models import Tenant
from telemetry import gateway, metrics, recorder
from telemetry.gateway import CallContext, GatewayError
from telemetry.models import (
    CapturedContent,
    EvalAlert,
    EvalConfig,
    EvalScore,
    Feedback,
    UsageEvent,
)
from telemetry.providers import ChatRequest

log = logging.getLogger(__name__)

JUDGE_MAX_TOKENS = 400
MAX_TEXT_CHARS = 12_000  # per prompt section: a judge prompt must not blow the judge's context
EVAL_FEATURE = "eval"
SAMPLING_SLICE = timedelta(hours=1)


# --- parsing the judge ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    score: Decimal | None = None
    reasoning: str = ""
    error: str = ""  # why the answer could not be read (parse failures)


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def _json_candidates(text: str) -> Iterable[str]:
    for match in _FENCE.finditer(text):
        yield match.group(1).strip()
    yield text.strip()
    # The first balanced {...} in prose ("Here is my verdict: {...}").
    start = text.find("{")
    while start != -1:
        depth, in_string, escape = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                if escape:
                    escape = False
                elif ch == "\\":
                    escape = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    yield text[start : i + 1]
                    break
        start = text.find("{", start + 1)


def parse_verdict(text: str, *, score_min: int, score_max: int) -> Verdict:
    """Read `{"score": n, "reasoning": "..."}` from a judge's answer (bare, fenced or in prose).
    Missing, non-numeric or off-scale scores are failures, never clamped or guessed."""
    if not text or not text.strip():
        return Verdict(ok=False, error="empty answer")
    obj: Any = None
    for candidate in _json_candidates(text):
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(obj, dict):
            break
    if obj is None:
        return Verdict(ok=False, error="no JSON object in the answer")
    if not isinstance(obj, dict):
        return Verdict(ok=False, error="the JSON is not an object")
    if "score" not in obj:
        return Verdict(ok=False, error="the JSON has no 'score'")
    raw = obj["score"]
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        return Verdict(ok=False, error=f"'score' is not a number: {raw!r}")
    try:
        score = Decimal(str(raw).strip())
    except InvalidOperation:
        return Verdict(ok=False, error=f"'score' is not a number: {raw!r}")
    if not score.is_finite():
        return Verdict(ok=False, error=f"'score' is not a number: {raw!r}")
    if not (score_min <= score <= score_max):
        return Verdict(ok=False, error=f"'score' {score} is outside the scale {score_min}-{score_max}")
    reasoning = obj.get("reasoning", obj.get("reason", ""))
    return Verdict(ok=True, score=score, reasoning=str(reasoning)[:4000] if reasoning is not None else "")


def normalise(score: Decimal, *, score_min: int, score_max: int) -> float:
    return float((score - score_min) / Decimal(score_max - score_min))


# --- prompts -----------------------------------------------------------------------------------------


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "\n[... truncated]"


def _transcript(messages: list[dict[str, Any]]) -> str:
    lines = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        lines.append(f"[{message.get('role', '?')}] {content}")
    return _clip("\n".join(lines))


def _json_instruction(score_min: int, score_max: int) -> str:
    return (
        "Answer with ONLY a JSON object, no other text: "
        f'{{"score": <integer from {score_min} to {score_max}>, "reasoning": "<one or two sentences>"}}'
    )


def rubric_prompt(
    *, criteria: str, messages: list[dict[str, Any]], answer: str, score_min: int, score_max: int, expected: str = ""
) -> list[dict[str, str]]:
    system = (
        "You are a strict evaluator of an AI assistant's answers. Score the answer against the "
        f"criteria on a scale from {score_min} (worst) to {score_max} (best). "
        + _json_instruction(score_min, score_max)
    )
    parts = [f"## Criteria\n{criteria or 'The answer is correct, relevant and helpful.'}"]
    if expected:
        parts.append(f"## Expected answer (reference)\n{_clip(expected)}")
    parts.append(f"## Conversation\n{_transcript(messages)}")
    parts.append(f"## Answer to evaluate\n{_clip(answer)}")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def faithfulness_prompt(
    *, context: str, messages: list[dict[str, Any]], answer: str, score_min: int, score_max: int, criteria: str = ""
) -> list[dict[str, str]]:
    system = (
        "You check whether an AI assistant's answer is supported by the retrieved context it was "
        f"given. Score {score_max} when every claim is supported by the context, {score_min} when "
        "the answer contradicts it or makes claims the context does not support. "
        + _json_instruction(score_min, score_max)
    )
    parts = []
    if criteria:
        parts.append(f"## Additional criteria\n{criteria}")
    parts.append(f"## Retrieved context\n{_clip(context) if context else '(in the conversation below)'}")
    parts.append(f"## Conversation\n{_transcript(messages)}")
    parts.append(f"## Answer to check\n{_clip(answer)}")
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


# --- RAG metadata ------------------------------------------------------------------------------------


def _id_list(value: Any) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        # `;`, `|` and spaces too: the gateway's X-LLMObs-Tags header already splits on commas.
        return [v for v in re.split(r"[,;|\s]+", value) if v]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return None


@dataclass(slots=True)
class RagContext:
    retrieved_ids: list[str] | None  # None: the call did not say what it retrieved
    cited_ids: list[str] | None
    context_text: str

    @property
    def is_rag(self) -> bool:
        return self.retrieved_ids is not None or bool(self.context_text)

    @property
    def unknown_citations(self) -> list[str]:
        if self.retrieved_ids is None or not self.cited_ids:
            return []
        retrieved = set(self.retrieved_ids)
        return [c for c in self.cited_ids if c not in retrieved]


def rag_context(*, tags: dict[str, Any], metadata: dict[str, Any]) -> RagContext:
    """Retrieved/cited document ids from the capture's metadata or the event's tags
    (`retrieved_doc_ids`, `cited_doc_ids`: lists, or strings separated by , ; | or spaces), and
    the context text."""
    metadata = metadata if isinstance(metadata, dict) else {}
    tags = tags if isinstance(tags, dict) else {}
    context = metadata.get("context")
    retrieved = _id_list(metadata.get("retrieved_ids", tags.get("retrieved_doc_ids")))
    text = ""
    if isinstance(context, str):
        text = context
    elif isinstance(context, list):
        chunks = []
        ids = []
        for doc in context:
            if isinstance(doc, dict):
                ids.append(str(doc.get("id", "")).strip())
                chunks.append(f"[{doc.get('id', '?')}] {doc.get('text', '')}")
            elif isinstance(doc, str):
                chunks.append(doc)
        text = "\n\n".join(chunks)
        if retrieved is None and any(ids):
            retrieved = [i for i in ids if i]
    cited = _id_list(metadata.get("cited_ids", tags.get("cited_doc_ids")))
    return RagContext(retrieved_ids=retrieved, cited_ids=cited, context_text=text)


# --- judging -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class JudgeResult:
    verdict: Verdict | None  # None when the call itself failed
    raw: str = ""
    judge_model: str = ""
    judge_event_id: str = ""
    cost: Decimal | None = None
    currency: str = ""
    error: str = ""


def ask_judge(
    *, ctx: CallContext, alias: str, messages: list[dict[str, str]], score_min: int, score_max: int
) -> JudgeResult:
    """One judge call through the gateway engine (budgets, retries, recording) and its verdict."""
    try:
        outcome = gateway.complete(
            ctx=ctx, alias=alias, request=ChatRequest(messages=messages, max_tokens=JUDGE_MAX_TOKENS, temperature=0.0)
        )
    except GatewayError as exc:
        return JudgeResult(verdict=None, error=f"{exc.code}: {exc.message}"[:2000])
    return JudgeResult(
        verdict=parse_verdict(outcome.text, score_min=score_min, score_max=score_max),
        raw=outcome.text,
        judge_model=outcome.served_model,
        judge_event_id=outcome.event_id,
        cost=outcome.priced.cost,
        currency=outcome.priced.currency,
    )


def judge_context(
    *, tenant: Tenant, event: UsageEvent, config_id: int | None = None, tags: dict[str, str] | None = None
) -> CallContext:
    """Judge calls are charged to the department whose traffic is judged, as feature `eval`."""
    return CallContext(
        tenant=tenant,
        source=UsageEvent.Source.EVAL,
        department_id=event.department_id,
        department_code=event.department_code,
        feature=EVAL_FEATURE,
        tags={
            "evaluated_event": event.event_id[:64],
            **({"eval_config": str(config_id)} if config_id else {}),
            **(tags or {}),
        },
    )


# --- sampling production traffic -------------------------------------------------------------------


def sampled(config_id: int, event_id: str, rate: Decimal) -> bool:
    """Deterministic per (config, event): a call left out once is left out on every later run,
    so the share judged is the configured rate however often the task runs."""
    if rate >= 1:
        return True
    if rate <= 0:
        return False
    digest = hashlib.sha256(f"{config_id}:{event_id}".encode()).digest()
    return Decimal(int.from_bytes(digest[:8], "big")) / Decimal(2**64) < rate


def candidates(config: EvalConfig, *, now: datetime | None = None) -> list[UsageEvent]:
    """Captured, not yet scored calls matching the config's filters, sampled, oldest first, at
    most `max_per_run`. Evaluation traffic itself is never judged."""
    now = now or timezone.now()
    events = (
        UsageEvent.objects.filter(
            tenant_id=config.tenant_id,
            occurred_at__gte=now - timedelta(hours=config.lookback_hours),
            occurred_at__lte=now,
        )
        .exclude(source=UsageEvent.Source.EVAL)
        .exclude(feature=EVAL_FEATURE)
    )
    if config.filter_department_id:
        events = events.filter(department_id=config.filter_department_id)
    if config.filter_feature:
        events = events.filter(feature=config.filter_feature)
    if config.filter_model:
        events = events.filter(model=config.filter_model)
    if config.filter_status:
        events = events.filter(status=config.filter_status)
    events = events.filter(
        Exists(CapturedContent.objects.filter(tenant_id=config.tenant_id, event_id=OuterRef("event_id")))
    ).exclude(Exists(EvalScore.objects.filter(config_id=config.pk, event_id=OuterRef("event_id"))))
    events = events.only(
        "event_id", "occurred_at", "department_id", "department_code", "model", "feature", "tags", "tenant_id"
    )
    picked: list[UsageEvent] = []
    # Hour by hour, oldest first: each query is a short index range on (tenant, occurred_at), and
    # a run usually fills `max_per_run` from the first hours instead of reading the whole window.
    slice_start = now - timedelta(hours=config.lookback_hours)
    while len(picked) < config.max_per_run and slice_start <= now:
        slice_end = min(slice_start + SAMPLING_SLICE, now + timedelta(microseconds=1))
        in_slice = events.filter(occurred_at__gte=slice_start, occurred_at__lt=slice_end).order_by("occurred_at", "pk")
        for event in in_slice:
            if sampled(config.pk, event.event_id, config.sample_rate):
                picked.append(event)
                if len(picked) >= config.max_per_run:
                    break
        slice_start = slice_end
    return picked
    # Ordered by the index column alone so PostgreSQL walks (tenant, occurred_at) and stops early.
    for event in events.order_by("occurred_at").iterator(chunk_size=500):
        if sampled(config.pk, event.event_id, config.sample_rate):
            picked.append(event)
            if len(picked) >= config.max_per_run:
                break
    return picked


def _score_row(config: EvalConfig, event: UsageEvent, **fields: Any) -> EvalScore:
    return EvalScore(
        tenant_id=config.tenant_id,
        config=config,
        event_id=event.event_id,
        event_at=event.occurred_at,
        department_id=event.department_id,
        department_code=event.department_code,
        model=event.model,
        feature=event.feature,
        **fields,
    )


def evaluate_event(*, config: EvalConfig, event: UsageEvent, capture: CapturedContent) -> EvalScore:
    """Score one captured call under one config (judge call, or citation check for RAG calls
    citing documents they did not retrieve)."""
    kind = EvalScore.Kind.RUBRIC
    if config.kind == EvalConfig.Kind.FAITHFULNESS:
        rag = rag_context(tags=event.tags, metadata=capture.metadata)
        unknown = rag.unknown_citations
        if unknown:
            return _score_row(
                config,
                event,
                kind=EvalScore.Kind.CITATION_CHECK,
                status=EvalScore.Status.OK,
                score=Decimal(config.score_min),
                normalized=0.0,
                passed=False,
                reasoning=f"Cites documents that were not retrieved: {', '.join(unknown)}.",
            )
        kind = EvalScore.Kind.FAITHFULNESS
        prompt = faithfulness_prompt(
            context=rag.context_text, messages=capture.messages, answer=capture.completion,
            score_min=config.score_min, score_max=config.score_max, criteria=config.criteria,
        )  # fmt: skip
    else:
        prompt = rubric_prompt(
            criteria=config.criteria, messages=capture.messages, answer=capture.completion,
            score_min=config.score_min, score_max=config.score_max,
        )  # fmt: skip
    result = ask_judge(
        ctx=judge_context(tenant=config.tenant, event=event, config_id=config.pk),
        alias=config.judge_route.alias,
        messages=prompt,
        score_min=config.score_min,
        score_max=config.score_max,
    )
    common = {
        "kind": kind,
        "raw": result.raw[:20_000],
        "judge_model": result.judge_model,
        "judge_event_id": result.judge_event_id,
        "cost": result.cost,
        "currency": result.currency,
    }
    if result.verdict is None:
        return _score_row(config, event, status=EvalScore.Status.JUDGE_ERROR, reasoning=result.error, **common)
    verdict = result.verdict
    if not verdict.ok:
        return _score_row(config, event, status=EvalScore.Status.PARSE_ERROR, reasoning=verdict.error, **common)
    assert verdict.score is not None
    return _score_row(
        config,
        event,
        status=EvalScore.Status.OK,
        score=verdict.score,
        normalized=normalise(verdict.score, score_min=config.score_min, score_max=config.score_max),
        passed=verdict.score >= config.pass_threshold,
        reasoning=verdict.reasoning,
        **common,
    )


@dataclass(slots=True)
class RunResult:
    scored: int = 0
    parse_errors: int = 0
    judge_errors: int = 0
    alerts: list[EvalAlert] = field(default_factory=list)


def run_config(*, config: EvalConfig, now: datetime | None = None) -> RunResult:
    """One evaluation pass of one config. Safe to run concurrently with itself: the unique
    (config, event) constraint keeps the first score and the other is dropped."""
    now = now or timezone.now()
    result = RunResult()
    events = candidates(config, now=now)
    if events:
        captures = {
            c.event_id: c
            for c in CapturedContent.objects.filter(
                tenant_id=config.tenant_id, event_id__in=[e.event_id for e in events]
            )
        }
        for event in events:
            capture = captures.get(event.event_id)
            if capture is None:  # purged between the two queries
                continue
            score = evaluate_event(config=config, event=event, capture=capture)
            try:
                with transaction.atomic():
                    score.save()
            except IntegrityError:
                continue  # scored by a concurrent run
            if score.status == EvalScore.Status.OK:
                result.scored += 1
            elif score.status == EvalScore.Status.PARSE_ERROR:
                result.parse_errors += 1
            else:
                result.judge_errors += 1
        recorder.flush()  # the judge's usage events are read back by reports and tests
    rate = rolling_pass_rate(config=config, now=now)
    if rate.pass_rate is not None:
        metrics.EVAL_PASS_RATE.labels(config.tenant.slug, config.name).set(float(rate.pass_rate))
    result.alerts = check_slo(config=config, now=now)
    return result


def run_all(*, now: datetime | None = None) -> dict[int, RunResult]:
    results = {}
    for config in EvalConfig.objects.filter(enabled=True).select_related("tenant", "judge_route").order_by("pk"):
        try:
            results[config.pk] = run_config(config=config, now=now)
        except Exception:  # one broken config must not stop the others
            log.exception("evaluation config %s failed", config.pk)
    update_satisfaction_gauges(now=now)
    return results


# --- the SLO ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PassRate:
    pass_rate: Decimal | None
    samples: int


def pass_rate_between(*, config: EvalConfig, start: datetime, end: datetime) -> PassRate:
    verdicts = list(
        EvalScore.objects.filter(
            config=config, status=EvalScore.Status.OK, created_at__gte=start, created_at__lt=end
        ).values_list("passed", flat=True)
    )
    if not verdicts:
        return PassRate(None, 0)
    return PassRate(
        (Decimal(sum(1 for v in verdicts if v)) / Decimal(len(verdicts))).quantize(Decimal("0.0001")), len(verdicts)
    )


def rolling_pass_rate(*, config: EvalConfig, now: datetime | None = None) -> PassRate:
    now = now or timezone.now()
    return pass_rate_between(
        config=config, start=now - timedelta(hours=config.window_hours), end=now + timedelta(seconds=1)
    )


def baseline_of(*, config: EvalConfig, now: datetime) -> PassRate:
    if config.baseline_pass_rate is not None:
        return PassRate(config.baseline_pass_rate, config.min_samples)
    window_start = now - timedelta(hours=config.window_hours)
    return pass_rate_between(config=config, start=window_start - timedelta(days=7), end=window_start)


def enough_samples(config: EvalConfig, rate: PassRate) -> bool:
    """Whether a rolling pass rate carries enough scores to call a breach or a recovery."""
    return rate.pass_rate is not None and rate.samples >= max(config.min_samples, 1)


def below_slo(config: EvalConfig, rate: PassRate) -> bool:
    """The SLO half of check_slo's rule (the Quality page shows it per config)."""
    return (
        config.slo_min_pass_rate is not None
        and enough_samples(config, rate)
        and rate.pass_rate < config.slo_min_pass_rate
    )


def check_slo(*, config: EvalConfig, now: datetime | None = None) -> list[EvalAlert]:
    """Alert when the rolling pass rate is below the SLO or more than the margin below the
    baseline (needs `min_samples` scores in the window), and resolve when it is back above.
    An EvalAlert row records each breach once per config, reason and UTC day (returned when
    created); the messages are routed, grouped and windowed by chargeback.alerting."""
    from chargeback import alerting
    from chargeback.models import AlertKind

    now = now or timezone.now()
    if config.slo_min_pass_rate is None and config.baseline_margin is None:
        return []
    current = rolling_pass_rate(config=config, now=now)
    if not enough_samples(config, current):
        return []  # too little evidence either way: leave any firing alert as it is
    breaches: list[tuple[str, Decimal, str]] = []
    if below_slo(config, current):
        breaches.append(
            (EvalAlert.Reason.SLO, config.slo_min_pass_rate, f"below its SLO of {config.slo_min_pass_rate:.0%}")
        )
    if config.baseline_margin is not None:
        base = baseline_of(config=config, now=now)
        if base.pass_rate is not None and base.samples >= max(config.min_samples, 1):
            floor = base.pass_rate - config.baseline_margin
            if current.pass_rate < floor:
                breaches.append(
                    (
                        EvalAlert.Reason.BASELINE,
                        floor,
                        f"more than {config.baseline_margin:.0%} below its baseline of {base.pass_rate:.0%}",
                    )
                )
    fired = []
    with transaction.atomic():
        for reason, threshold, why in breaches:
            alert, created = EvalAlert.objects.get_or_create(
                config=config,
                reason=reason,
                day=now.date(),
                defaults={
                    "tenant_id": config.tenant_id,
                    "pass_rate": current.pass_rate,
                    "threshold": threshold,
                    "samples": current.samples,
                },
            )
            if created:
                fired.append(alert)
            alerting.fire(
                tenant=config.tenant,
                kind=AlertKind.QUALITY_DROP,
                key=f"quality:config:{config.pk}:{reason}",
                title=f"Quality alert: {config.name} pass rate {current.pass_rate:.0%}",
                text=(
                    f"The evaluation '{config.name}' passed {current.pass_rate:.1%} of {current.samples} judged calls "
                    f"in the last {config.window_hours} h, {why}."
                ),
                payload={
                    "kind": "eval_alert",
                    "config": config.name,
                    "reason": reason,
                    "pass_rate": str(current.pass_rate),
                    "threshold": str(threshold),
                    "samples": current.samples,
                },
                now=now,
            )
        breached = {reason for reason, _, _ in breaches}
        for reason in EvalAlert.Reason.values:
            if reason not in breached:
                alerting.resolve(
                    tenant=config.tenant,
                    kind=AlertKind.QUALITY_DROP,
                    key=f"quality:config:{config.pk}:{reason}",
                    text=(
                        f"The evaluation '{config.name}' is back to {current.pass_rate:.1%} over "
                        f"{current.samples} judged calls in the last {config.window_hours} h."
                    ),
                    now=now,
                )
        alerting.send_pending(tenant=config.tenant, now=now)
    return fired


# --- feedback ---------------------------------------------------------------------------------------

IMPLICIT_WEIGHTS = {"copied": (1.0, 0.5), "regenerated": (0.0, 0.5), "abandoned": (0.0, 0.25)}


def feedback_value(row: Feedback | dict[str, Any]) -> tuple[float, float] | None:
    """(value in 0-1, weight) of one feedback, or None when it says nothing.

    Explicit signals have weight 1: thumbs up = 1, down = 0; a rating r in 1-5 = (r-1)/4 (both
    given: their mean). Implicit signals count only when there is no explicit one, at a lower
    weight: copied = 1 (w 0.5), regenerated = 0 (w 0.5), abandoned = 0 (w 0.25); several
    implicit signals average by weight."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    explicit = []
    if get("thumbs"):
        explicit.append(1.0 if get("thumbs") == Feedback.Thumbs.UP else 0.0)
    if get("rating"):
        explicit.append((get("rating") - 1) / 4)
    if explicit:
        return sum(explicit) / len(explicit), 1.0
    total = weight = 0.0
    for name, (value, w) in IMPLICIT_WEIGHTS.items():
        if get(name):
            total += value * w
            weight += w
    if weight == 0:
        return None
    return total / weight, weight


def satisfaction(rows: Iterable[Feedback | dict[str, Any]]) -> float | None:
    """Weighted mean of the feedback values: the share of satisfied answers (0-1)."""
    total = weight = 0.0
    for row in rows:
        value = feedback_value(row)
        if value is not None:
            total += value[0] * value[1]
            weight += value[1]
    return total / weight if weight else None


class FeedbackError(Exception):
    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


SIGNALS = ("regenerated", "copied", "abandoned")


def record_feedback(
    *,
    tenant: Tenant,
    event_id: str,
    author: str,
    user=None,
    visible_department_ids: frozenset[int] | None,
    own_user_ref: str | None = None,
    thumbs: str | None = None,
    rating: int | None = None,
    signals: Iterable[str] = (),
    reason: str | None = None,
    comment: str | None = None,
) -> tuple[Feedback, bool]:
    """Create or update `author`'s feedback on an event the caller may see. Returns (row, created).
    An event of another tenant, department or (for employees) user is reported as not found."""
    events = UsageEvent.objects.filter(tenant=tenant, event_id=event_id)
    if visible_department_ids is not None:
        events = events.filter(department_id__in=visible_department_ids)
    if own_user_ref is not None:
        events = events.filter(user_ref=own_user_ref)
    event = events.only("event_id", "occurred_at", "department_id", "department_code", "model", "feature").first()
    if event is None:
        raise FeedbackError("event_id", "No such event.", status=404)
    with transaction.atomic():
        row = Feedback.objects.select_for_update().filter(tenant=tenant, event_id=event_id, author=author).first()
        created = row is None
        if created:
            row = Feedback(
                tenant=tenant, event_id=event_id, author=author, user=user, event_at=event.occurred_at,
                department_id=event.department_id, department_code=event.department_code,
                model=event.model, feature=event.feature,
            )  # fmt: skip
        if thumbs is not None:
            row.thumbs = thumbs
        if rating is not None:
            row.rating = rating
        for signal in signals:
            setattr(row, signal, True)
        if reason is not None:
            row.reason = reason
        if comment is not None:
            row.comment = comment
        try:
            with transaction.atomic():
                row.save()
        except IntegrityError:
            # A concurrent first feedback from the same author won: update that one instead.
            existing = Feedback.objects.select_for_update().get(tenant=tenant, event_id=event_id, author=author)
            row.pk, row.created_at, created = existing.pk, existing.created_at, False
            row.save(force_update=True)
    return row, created


def update_satisfaction_gauges(*, now: datetime | None = None) -> None:
    """Satisfaction over the last 7 days per tenant and department, for Prometheus."""
    now = now or timezone.now()
    rows = Feedback.objects.filter(event_at__gte=now - timedelta(days=7)).values(
        "tenant__slug", "department_code", "thumbs", "rating", "regenerated", "copied", "abandoned"
    )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["tenant__slug"], row["department_code"] or "-")].append(row)
    for (slug, dept), members in groups.items():
        value = satisfaction(members)
        if value is not None:
            metrics.FEEDBACK_SATISFACTION.labels(slug, dept).set(value)


# --- the summary --------------------------------------------------------------------------------------


_SCORE_MEASURES = (
    "judged",
    "passed",
    "norm_sum",
    "norm_n",
    "faith_judged",
    "faith_passed",
    "parse_errors",
    "judge_errors",
)


class _Bucket:
    """Sums of one group; rows arrive pre-aggregated by the database."""

    __slots__ = ("fb_count", "fb_value", "fb_weight", *_SCORE_MEASURES)

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def add_scores(self, row: dict[str, Any]) -> None:
        for name in _SCORE_MEASURES:
            setattr(self, name, getattr(self, name) + (row["m_" + name] or 0))  # m_: not the model fields

    def add_feedback(self, *, value: tuple[float, float] | None, count: int) -> None:
        self.fb_count += count
        if value is not None:
            self.fb_value += value[0] * value[1] * count
            self.fb_weight += value[1] * count

    def to_dict(self) -> dict[str, Any]:
        def ratio(a: float, b: float) -> float | None:
            return round(a / b, 4) if b else None

        return {
            "judged": self.judged,
            "pass_rate": ratio(self.passed, self.judged),
            "mean_score": ratio(self.norm_sum, self.norm_n),
            "faithfulness": ratio(self.faith_passed, self.faith_judged),
            "parse_errors": self.parse_errors,
            "judge_errors": self.judge_errors,
            "feedback": self.fb_count,
            "satisfaction": ratio(self.fb_value, self.fb_weight),
        }


def pass_rate(
    *, tenant: Tenant, start: datetime, end: datetime, department_ids: Iterable[int] | None = None
) -> tuple[int, int]:
    """(judged, passed) over [start, end) by the evaluated call's time: the dashboards' card."""
    scores = EvalScore.objects.filter(tenant=tenant, event_at__gte=start, event_at__lt=end, status=EvalScore.Status.OK)
    if department_ids is not None:
        scores = scores.filter(department_id__in=list(department_ids))
    counts = scores.aggregate(judged=Count("pk"), passed=Count("pk", filter=Q(passed=True)))
    return counts["judged"], counts["passed"]


def quality_summary(
    *, tenant: Tenant, start: datetime, end: datetime, department_ids: Iterable[int] | None = None
) -> dict[str, Any] | None:
    """Pass rate, mean score (0-1), faithfulness and satisfaction over [start, end) (by the
    evaluated call's time), overall and by department, model, feature, config and day (tenant
    time zone). None when there is no evaluation or feedback data in scope.

    The database groups rows by every dimension at once (a few hundred groups for a month);
    the per-dimension totals are folded from those groups here."""
    scores = EvalScore.objects.filter(tenant=tenant, event_at__gte=start, event_at__lt=end)
    feedback = Feedback.objects.filter(tenant=tenant, event_at__gte=start, event_at__lt=end)
    if department_ids is not None:
        department_ids = list(department_ids)
        scores = scores.filter(department_id__in=department_ids)
        feedback = feedback.filter(department_id__in=department_ids)
    tz = tenant.tz
    ok = Q(status=EvalScore.Status.OK)
    faith = ok & Q(kind__in=[EvalScore.Kind.FAITHFULNESS, EvalScore.Kind.CITATION_CHECK])
    score_groups = list(
        scores.annotate(day=TruncDate("event_at", tzinfo=tz))
        .values("department_code", "model", "feature", "config__name", "day")
        .annotate(
            m_judged=Count("pk", filter=ok),
            m_passed=Count("pk", filter=ok & Q(passed=True)),
            m_norm_sum=Sum("normalized", filter=ok),
            m_norm_n=Count("normalized", filter=ok),
            m_faith_judged=Count("pk", filter=faith),
            m_faith_passed=Count("pk", filter=faith & Q(passed=True)),
            m_parse_errors=Count("pk", filter=Q(status=EvalScore.Status.PARSE_ERROR)),
            m_judge_errors=Count("pk", filter=Q(status=EvalScore.Status.JUDGE_ERROR)),
        )
        .order_by()
    )
    feedback_groups = list(
        feedback.annotate(day=TruncDate("event_at", tzinfo=tz))
        .values("department_code", "model", "feature", "day", "thumbs", "rating", "regenerated", "copied", "abandoned")
        .annotate(count=Count("pk"))
        .order_by()
    )
    if not score_groups and not feedback_groups:
        return None
    total = _Bucket()
    groups: dict[str, dict[str, _Bucket]] = {
        name: defaultdict(_Bucket) for name in ("department", "model", "feature", "config", "day")
    }

    def keys(row: dict[str, Any]) -> dict[str, str]:
        day = row["day"]
        return {
            "department": row["department_code"] or "",
            "model": row["model"] or "",
            "feature": row["feature"] or "",
            "day": day.isoformat() if hasattr(day, "isoformat") else str(day),
        }

    for row in score_groups:
        total.add_scores(row)
        for name, value in {**keys(row), "config": row["config__name"]}.items():
            groups[name][value].add_scores(row)
    for row in feedback_groups:
        value = feedback_value(row)
        total.add_feedback(value=value, count=row["count"])
        for name, key in keys(row).items():
            groups[name][key].add_feedback(value=value, count=row["count"])
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "total": total.to_dict(),
        **{
            f"by_{name}": [{name: value, **bucket.to_dict()} for value, bucket in sorted(buckets.items())]
            for name, buckets in groups.items()
        },
    }
