"""Golden datasets: import from JSONL, run every item through a route, judge the answers, store
the run and compare two runs item by item (docs/EVALS.md).

Calls made by a run (the route under test and the judge) go through the gateway engine like
production evaluation: budget checks, `source=eval`, `feature=eval`, charged to the department
given (or unattributed), tagged with the dataset and run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from chargeback.models import Department, Route, Tenant
from telemetry import evals, gateway, recorder
from telemetry.gateway import CallContext, GatewayError
from telemetry.models import Dataset, DatasetItem, DatasetRun, DatasetRunItem, UsageEvent
from telemetry.providers import ChatRequest

JUDGE_SCALE = (1, 5)
JUDGE_PASS = Decimal(4)
ROLES = {"system", "developer", "user", "assistant"}


class DatasetError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- import -------------------------------------------------------------------------------------------


def _messages(obj: dict[str, Any], where: str) -> list[dict[str, str]]:
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise DatasetError(f"{where}.messages", "must be a non-empty list of {role, content} objects.")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DatasetError(
                    f"{where}.messages[{i}]", f"needs a role ({', '.join(sorted(ROLES))}) and text content."
                )
            out.append({"role": m["role"], "content": m["content"]})
        return out
    text = obj.get("input")
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"{where}.input", "give 'input' (text) or 'messages'.")
    return [{"role": "user", "content": text}]


def parse_jsonl(lines: Iterable[str]) -> list[DatasetItem]:
    """Unsaved items from JSONL lines: `{"id"?, "input" | "messages", "expected"? , "criteria"?}`.
    Any bad line rejects the whole file, naming the line and the field."""
    items: list[DatasetItem] = []
    keys: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise DatasetError(where, f"not valid JSON ({exc}).") from exc
        if not isinstance(obj, dict):
            raise DatasetError(where, "must be a JSON object.")
        expected, criteria = obj.get("expected", ""), obj.get("criteria", "")
        for name, value in (("expected", expected), ("criteria", criteria)):
            if not isinstance(value, str):
                raise DatasetError(f"{where}.{name}", "must be text.")
        if not expected.strip() and not criteria.strip():
            raise DatasetError(where, "give 'expected' (the reference answer) or 'criteria'.")
        key = obj.get("id", "")
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise DatasetError(f"{where}.id", "must be text or a number.")
        key = str(key)[:128]
        if key and key in keys:
            raise DatasetError(f"{where}.id", f"duplicate id {key!r}.")
        keys.add(key)
        items.append(
            DatasetItem(
                position=len(items) + 1, key=key, messages=_messages(obj, where), expected=expected, criteria=criteria
            )
        )
    if not items:
        raise DatasetError("file", "has no items.")
    return items


def import_dataset(*, tenant: Tenant, name: str, lines: Iterable[str], description: str = "") -> Dataset:
    if Dataset.objects.filter(tenant=tenant, name=name).exists():
        raise DatasetError("name", f"a dataset {name!r} already exists in {tenant.slug}; choose another name.")
    items = parse_jsonl(lines)
    with transaction.atomic():
        dataset = Dataset.objects.create(tenant=tenant, name=name, description=description)
        for item in items:
            item.dataset = dataset
        DatasetItem.objects.bulk_create(items)
    return dataset


# --- runs ---------------------------------------------------------------------------------------------


def _normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def reference_match(*, output: str, expected: str) -> bool:
    """Without a judge: the expected answer appears in the output (case and spacing ignored)."""
    return bool(expected.strip()) and _normalise_text(expected) in _normalise_text(output)


def run_dataset(
    *,
    dataset: Dataset,
    route_alias: str,
    judge_alias: str = "",
    threshold: Decimal,
    department: Department | None = None,
) -> DatasetRun:
    """Run every item through `route_alias`, judge it (or compare it to the expected answer when
    no judge is given) and store the run. Failed calls count as failed items."""
    tenant = dataset.tenant
    for alias, name in ((route_alias, "route"), (judge_alias, "judge_route")):
        if alias and not Route.objects.filter(tenant=tenant, alias=alias, enabled=True).exists():
            raise DatasetError(name, f"no enabled route {alias!r} in {tenant.slug}.")
    items = list(dataset.items.order_by("position"))
    if not judge_alias and any(not item.expected.strip() for item in items):
        raise DatasetError("judge_route", "some items only have criteria: a judge route is needed to score them.")
    run = DatasetRun.objects.create(
        tenant=tenant, dataset=dataset, route_alias=route_alias, judge_alias=judge_alias,
        threshold=threshold, started_at=timezone.now(),
    )  # fmt: skip
    ctx = CallContext(
        tenant=tenant,
        source=UsageEvent.Source.EVAL,
        department_id=department.pk if department else None,
        department_code=department.code if department else "",
        feature=evals.EVAL_FEATURE,
        tags={"dataset": dataset.name[:64], "dataset_run": str(run.pk)},
    )
    cost = Decimal(0)
    results = []
    for item in items:
        result, item_cost = _run_item(ctx=ctx, run=run, item=item, route_alias=route_alias, judge_alias=judge_alias)
        cost += item_cost
        results.append(result)
    DatasetRunItem.objects.bulk_create(results)
    recorder.flush()
    passed = sum(1 for r in results if r.passed)
    scores = [r.normalized for r in results if r.normalized is not None]
    run.items_total = len(results)
    run.items_passed = passed
    run.pass_rate = (Decimal(passed) / Decimal(len(results))).quantize(Decimal("0.0001")) if results else None
    run.mean_score = sum(scores) / len(scores) if scores else None
    run.cost = cost
    run.finished_at = timezone.now()
    run.save()
    return run


def _run_item(
    *, ctx: CallContext, run: DatasetRun, item: DatasetItem, route_alias: str, judge_alias: str
) -> tuple[DatasetRunItem, Decimal]:
    row = DatasetRunItem(run=run, item=item, status=DatasetRunItem.Status.OK)
    cost = Decimal(0)
    try:
        outcome = gateway.complete(
            ctx=ctx, alias=route_alias, request=ChatRequest(messages=[dict(m) for m in item.messages], max_tokens=0)
        )
    except GatewayError as exc:
        row.status = DatasetRunItem.Status.CALL_ERROR
        row.reasoning = f"route: {exc.code}: {exc.message}"[:2000]
        return row, cost
    row.output, row.event_id = outcome.text, outcome.event_id
    cost += outcome.priced.cost or 0
    if not judge_alias:
        row.passed = reference_match(output=outcome.text, expected=item.expected)
        row.score = Decimal(1 if row.passed else 0)
        row.normalized = float(row.score)
        row.reasoning = "contains the expected answer" if row.passed else "does not contain the expected answer"
        return row, cost
    low, high = JUDGE_SCALE
    prompt = evals.rubric_prompt(
        criteria=item.criteria or "The answer agrees with the expected answer and is correct.",
        messages=item.messages, answer=outcome.text, score_min=low, score_max=high, expected=item.expected,
    )  # fmt: skip
    judged = evals.ask_judge(ctx=ctx, alias=judge_alias, messages=prompt, score_min=low, score_max=high)
    cost += judged.cost or 0
    row.raw, row.judge_event_id = judged.raw[:20_000], judged.judge_event_id
    if judged.verdict is None:
        row.status = DatasetRunItem.Status.CALL_ERROR
        row.reasoning = f"judge: {judged.error}"
    elif not judged.verdict.ok:
        row.status = DatasetRunItem.Status.PARSE_ERROR
        row.reasoning = judged.verdict.error
    else:
        score = judged.verdict.score
        assert score is not None
        row.score, row.normalized = score, evals.normalise(score, score_min=low, score_max=high)
        row.passed = score >= JUDGE_PASS
        row.reasoning = judged.verdict.reasoning
    return row, cost


# --- comparison ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemDiff:
    item: str
    a_score: Decimal | None
    a_passed: bool | None
    b_score: Decimal | None
    b_passed: bool | None

    @property
    def change(self) -> str:
        if self.a_passed is None or self.b_passed is None:
            return "only in A" if self.b_passed is None else "only in B"
        if self.a_passed != self.b_passed:
            return "fixed" if self.b_passed else "regressed"
        if self.a_score is not None and self.b_score is not None and self.a_score != self.b_score:
            return "better" if self.b_score > self.a_score else "worse"
        return "same"


def compare_runs(*, a: DatasetRun, b: DatasetRun) -> list[ItemDiff]:
    """Per-item scores of two runs, matched by item key (or position) so runs of two imports of
    the same file still line up."""

    def by_item(run: DatasetRun) -> dict[str, DatasetRunItem]:
        return {r.item.key or f"#{r.item.position}": r for r in run.results.select_related("item")}

    left, right = by_item(a), by_item(b)
    order = list(left) + [k for k in right if k not in left]
    return [
        ItemDiff(
            item=key,
            a_score=left[key].score if key in left else None,
            a_passed=left[key].passed if key in left else None,
            b_score=right[key].score if key in right else None,
            b_passed=right[key].passed if key in right else None,
        )
        for key in order
    ]
