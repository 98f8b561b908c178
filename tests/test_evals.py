"""LLM-as-judge on production traffic: sampling, the judge path through the gateway engine and
the provider fakes (good, bad and malformed verdicts), spend attribution, faithfulness and
citation checks, the SLO alert."""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from chargeback.models import Delivery, NotificationChannel
from telemetry import evals
from telemetry.models import CapturedContent, EvalAlert, EvalConfig, EvalScore, UsageEvent
from tests.fakes.fixtures import *  # noqa: F403

_ids = itertools.count(1)


def make_call(tenant, dept, *, feature="support", model="gpt-4o", status="ok", source="gateway", minutes_ago=30,
              tags=None, metadata=None, capture=True, answer="Paris is the capital of France.") -> UsageEvent:  # fmt: skip
    n = next(_ids)
    at = timezone.now() - timedelta(minutes=minutes_ago)
    event = UsageEvent.objects.create(
        tenant=tenant, event_id=f"evt-{n}", source=source, department=dept,
        department_code=dept.code if dept else "", provider="openai", model=model, occurred_at=at,
        status=status, cost_provenance="computed", cost=Decimal("0.001"), feature=feature, tags=tags or {},
    )  # fmt: skip
    if capture:
        CapturedContent.objects.create(
            tenant=tenant, event_id=event.event_id, department_code=event.department_code, model=model,
            messages=[{"role": "user", "content": "What is the capital of France?"}], completion=answer,
            metadata=metadata or {}, created_at=at, expires_at=at + timedelta(days=30),
        )  # fmt: skip
    return event


@pytest.fixture
def config(acme, routes):
    return EvalConfig.objects.create(
        tenant=acme, name="helpfulness", judge_route=routes["gpt-4o-mini"], criteria="Correct and concise.",
        score_min=1, score_max=5, pass_threshold=Decimal("4"), sample_rate=Decimal("1"), max_per_run=50,
    )  # fmt: skip


GOOD = '{"score": 5, "reasoning": "Correct."}'
BAD = '{"score": 2, "reasoning": "Wrong city."}'


# --- parsing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,score",
    [
        ('{"score": 4, "reasoning": "ok"}', Decimal(4)),
        ('```json\n{"score": 3, "reasoning": "meh"}\n```', Decimal(3)),
        ('Here is my verdict: {"score": 5, "reasoning": "uses {braces} fine"} thanks', Decimal(5)),
        ('{"score": "2", "reasoning": "string number"}', Decimal(2)),
        ('{"score": 4.5}', Decimal("4.5")),
    ],
)
def test_parse_verdict_reads_json_bare_fenced_or_in_prose(text, score):
    verdict = evals.parse_verdict(text, score_min=1, score_max=5)
    assert verdict.ok and verdict.score == score


@pytest.mark.parametrize(
    "text,error",
    [
        ("", "empty answer"),
        ("The answer looks great, 5/5!", "no JSON object"),
        ('```json\n{"score": 4, "reasoning": \n```', "no JSON object"),
        ("[4]", "not an object"),
        ('{"reasoning": "forgot the score"}', "no 'score'"),
        ('{"score": "high"}', "not a number"),
        ('{"score": true}', "not a number"),
        ('{"score": null}', "not a number"),
        ('{"score": "NaN"}', "not a number"),
        ('{"score": 7}', "outside the scale"),
        ('{"score": 0}', "outside the scale"),
        ('{"score": -1}', "outside the scale"),
    ],
)
def test_parse_verdict_failures_are_reported_never_guessed(text, error):
    verdict = evals.parse_verdict(text, score_min=1, score_max=5)
    assert not verdict.ok and verdict.score is None
    assert error in verdict.error


# --- the judge path end to end ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer,status,score,passed",
    [
        (GOOD, "ok", Decimal(5), True),
        (BAD, "ok", Decimal(2), False),
        ("```json\n" + GOOD + "\n```", "ok", Decimal(5), True),
        ("I think it's fine.", "parse_error", None, None),
        ('{"score": 11, "reasoning": "very good"}', "parse_error", None, None),
        ('{"reasoning": "no score"}', "parse_error", None, None),
    ],
)
def test_judge_verdicts_through_the_fake_upstream(acme, research_dept, config, fake, answer, status, score, passed):
    event = make_call(acme, research_dept)
    fake.answer_next(answer)
    result = evals.run_config(config=config)
    row = EvalScore.objects.get(config=config, event_id=event.event_id)
    assert row.status == status
    assert row.score == score
    assert row.passed is passed
    assert row.raw == answer  # the judge's text is kept, also (above all) when unreadable
    assert row.judge_model == "gpt-4o-mini" and row.judge_event_id
    assert (result.scored, result.parse_errors) == ((1, 0) if status == "ok" else (0, 1))
    # The judge saw a rubric prompt demanding JSON, with the call's question and answer.
    prompt = fake.requests[-1]["body"]["messages"]
    assert "JSON" in prompt[0]["content"]
    assert "capital of France" in prompt[1]["content"] and "Correct and concise." in prompt[1]["content"]


def test_malformed_upstream_body_is_a_judge_error_not_a_crash(acme, research_dept, config, fake):
    event = make_call(acme, research_dept)
    fake.script.malformed = 5
    result = evals.run_config(config=config)
    row = EvalScore.objects.get(config=config, event_id=event.event_id)
    assert row.status == EvalScore.Status.JUDGE_ERROR and row.score is None and row.passed is None
    assert row.reasoning
    assert result.judge_errors == 1


def test_judge_spend_is_a_usage_event_of_the_evaluated_department(acme, research_dept, sales_dept, config, fake):
    research_call = make_call(acme, research_dept)
    sales_call = make_call(acme, sales_dept)
    fake.answer_next(GOOD, BAD)
    evals.run_config(config=config)
    for call in (research_call, sales_call):
        score = EvalScore.objects.get(config=config, event_id=call.event_id)
        judge = UsageEvent.objects.get(tenant=acme, event_id=score.judge_event_id)
        assert judge.source == UsageEvent.Source.EVAL
        assert judge.feature == "eval"
        assert judge.department_id == call.department_id
        assert judge.model == "gpt-4o-mini" and judge.status == "ok"
        assert judge.cost is not None and judge.cost > 0 and score.cost == judge.cost
        assert judge.tags["evaluated_event"] == call.event_id


def test_judge_calls_are_refused_by_a_hard_budget(acme, research_dept, config, fake):
    from tests.factories import make_budget

    make_budget(tenant=acme, department=research_dept, amount=Decimal("0.0000001"), mode="hard")
    event = make_call(acme, research_dept)
    evals.run_config(config=config)
    row = EvalScore.objects.get(config=config, event_id=event.event_id)
    assert row.status == EvalScore.Status.JUDGE_ERROR and "budget_exceeded" in row.reasoning
    assert not fake.requests
    assert UsageEvent.objects.filter(tenant=acme, source="eval", status="blocked").count() == 1


# --- sampling -----------------------------------------------------------------------------------------


def test_no_double_scoring_across_runs(acme, research_dept, config, fake):
    make_call(acme, research_dept)
    make_call(acme, research_dept)
    evals.run_config(config=config)
    assert len(fake.requests) == 2
    evals.run_config(config=config)
    assert len(fake.requests) == 2
    assert EvalScore.objects.filter(config=config).count() == 2


def test_filters_and_exclusions(acme, research_dept, sales_dept, config, fake):
    config.filter_department = research_dept
    config.filter_feature = "support"
    config.filter_model = "gpt-4o"
    config.save()
    wanted = make_call(acme, research_dept)
    make_call(acme, sales_dept)  # other department
    make_call(acme, research_dept, feature="search")  # other feature
    make_call(acme, research_dept, model="claude-sonnet-4")  # other model
    make_call(acme, research_dept, status="error")  # failed call (filter_status = ok)
    make_call(acme, research_dept, capture=False)  # nothing captured to judge
    make_call(acme, research_dept, source="eval", feature="eval")  # never judge the judge
    make_call(acme, research_dept, minutes_ago=60 * 30)  # older than the lookback
    assert [e.event_id for e in evals.candidates(config)] == [wanted.event_id]


def test_other_tenants_traffic_is_never_sampled(acme, other_tenant, other_dept, config):
    make_call(other_tenant, other_dept)
    assert evals.candidates(config) == []


def test_sampling_rate_and_max_per_run(acme, research_dept, config):
    for _ in range(400):
        make_call(acme, research_dept)
    config.sample_rate = Decimal("0.25")
    config.max_per_run = 1000
    picked = evals.candidates(config)
    assert 60 <= len(picked) <= 140  # 100 expected; deterministic per (config, event)
    assert [e.event_id for e in evals.candidates(config)] == [e.event_id for e in picked]
    config.max_per_run = 7
    assert len(evals.candidates(config)) == 7
    config.sample_rate = Decimal("0")
    assert evals.candidates(config) == []


def test_disabled_configs_do_not_run(acme, research_dept, config, fake):
    config.enabled = False
    config.save()
    make_call(acme, research_dept)
    evals.run_all()
    assert not fake.requests and not EvalScore.objects.exists()


def test_celery_task_runs_every_enabled_config(acme, research_dept, config, fake, settings):
    from telemetry.tasks import run_evals

    make_call(acme, research_dept)
    fake.answer_next(GOOD)
    assert run_evals.delay().get() == 1
    assert settings.CELERY_BEAT_SCHEDULE["run-evals"]["task"] == "telemetry.run_evals"
    assert settings.CELERY_BEAT_SCHEDULE["run-evals"]["schedule"] == 900.0


# --- faithfulness -------------------------------------------------------------------------------------


@pytest.fixture
def faithfulness(acme, routes):
    return EvalConfig.objects.create(
        tenant=acme, name="faithfulness", kind=EvalConfig.Kind.FAITHFULNESS, judge_route=routes["claude"],
        criteria="", sample_rate=Decimal("1"),
    )  # fmt: skip


def test_citations_outside_the_retrieved_set_are_flagged_without_a_judge_call(acme, research_dept, faithfulness, fake):
    event = make_call(acme, research_dept, tags={"retrieved_doc_ids": "d1,d2", "cited_doc_ids": "d2,d9"})
    evals.run_config(config=faithfulness)
    row = EvalScore.objects.get(config=faithfulness, event_id=event.event_id)
    assert row.kind == EvalScore.Kind.CITATION_CHECK and row.passed is False and "d9" in row.reasoning
    assert not fake.requests and not row.judge_event_id


def test_faithfulness_judge_sees_the_retrieved_context(acme, research_dept, faithfulness, fake):
    metadata = {"context": [{"id": "d1", "text": "Paris has been the capital since 987."}], "cited_ids": ["d1"]}
    event = make_call(acme, research_dept, metadata=metadata)
    fake.answer_next('{"score": 5, "reasoning": "Supported by d1."}')
    evals.run_config(config=faithfulness)
    row = EvalScore.objects.get(config=faithfulness, event_id=event.event_id)
    assert row.kind == EvalScore.Kind.FAITHFULNESS and row.passed is True
    body = fake.requests[-1]["body"]
    assert fake.requests[-1]["path"].startswith("/v1/messages")  # the Anthropic judge route
    assert "Paris has been the capital since 987." in body["messages"][0]["content"]
    assert "supported by the retrieved context" in body["system"]


def test_rag_context_from_tags_and_metadata():
    rag = evals.rag_context(tags={"retrieved_doc_ids": "a|b"}, metadata={"cited_ids": ["b", "c"]})
    assert rag.retrieved_ids == ["a", "b"] and rag.unknown_citations == ["c"]
    assert evals.rag_context(tags={}, metadata={}).unknown_citations == []
    assert evals.rag_context(tags={"cited_doc_ids": "x"}, metadata={}).unknown_citations == []  # retrieval unknown


# --- the SLO alert ------------------------------------------------------------------------------------


def _scores(config, passed: int, failed: int, *, hours_ago: float = 1) -> None:
    at = timezone.now() - timedelta(hours=hours_ago)
    for i in range(passed + failed):
        row = EvalScore.objects.create(
            tenant_id=config.tenant_id, config=config, event_id=f"slo-{hours_ago}-{i}", event_at=at,
            kind="rubric", status="ok", score=5 if i < passed else 1, normalized=1.0 if i < passed else 0.0,
            passed=i < passed,
        )  # fmt: skip
        EvalScore.objects.filter(pk=row.pk).update(created_at=at)


def test_pass_rate_alert_fires_once_through_the_channels(acme, config, django_capture_on_commit_callbacks):
    NotificationChannel.objects.create(tenant=acme, name="quality", kind="webhook", target="http://127.0.0.1:9/hook")
    config.slo_min_pass_rate = Decimal("0.8")
    config.min_samples = 10
    config.save()
    _scores(config, passed=6, failed=4)
    with django_capture_on_commit_callbacks(execute=False):
        fired = evals.check_slo(config=config)
        assert [a.reason for a in fired] == ["slo"]
        assert evals.check_slo(config=config) == []  # same day: not again
        evals.run_config(config=config)
    assert EvalAlert.objects.count() == 1
    delivery = Delivery.objects.get(tenant=acme)
    assert "helpfulness" in delivery.subject and "60%" in delivery.subject
    assert delivery.payload["reason"] == "slo" and delivery.payload["pass_rate"] == "0.6000"


def test_no_alert_on_too_few_samples_or_a_healthy_rate(acme, config):
    config.slo_min_pass_rate = Decimal("0.8")
    config.min_samples = 10
    config.save()
    _scores(config, passed=1, failed=4)  # 5 samples only
    assert evals.check_slo(config=config) == []
    _scores(config, passed=40, failed=0, hours_ago=2)
    assert evals.check_slo(config=config) == []  # 41 of 45 = 91%


def test_baseline_drop_alert(acme, config):
    config.baseline_margin = Decimal("0.1")
    config.min_samples = 10
    config.save()
    _scores(config, passed=19, failed=1, hours_ago=72)  # baseline 95%
    _scores(config, passed=8, failed=2)  # now 80%: 15 points down
    fired = evals.check_slo(config=config)
    assert [a.reason for a in fired] == ["baseline"] and fired[0].threshold == Decimal("0.85")


def test_gauge_is_set_by_the_run(acme, research_dept, config, fake):
    from prometheus_client import REGISTRY

    make_call(acme, research_dept)
    fake.answer_next(GOOD)
    evals.run_config(config=config)
    assert REGISTRY.get_sample_value("llmobs_eval_pass_rate", {"tenant": "acme", "config": "helpfulness"}) == 1.0


# --- admin --------------------------------------------------------------------------------------------


def test_quality_admin_pages_load(acme, config, client, django_user_model):
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")
    client.force_login(admin)
    for name in ("evalconfig", "evalscore", "evalalert", "dataset", "datasetrun", "feedback"):
        assert client.get(f"/admin/telemetry/{name}/").status_code == 200, name
    assert client.get(f"/admin/telemetry/evalconfig/{config.pk}/change/").status_code == 200
    assert client.get("/admin/telemetry/dataset/add/").status_code == 200


def test_config_validation(acme, other_tenant, config):
    from django.core.exceptions import ValidationError

    from tests.factories import make_route

    config.score_max = 1
    with pytest.raises(ValidationError) as exc:
        config.clean()
    assert "score_max" in exc.value.message_dict
    config.score_max, config.pass_threshold = 5, Decimal(9)
    with pytest.raises(ValidationError) as exc:
        config.clean()
    assert "pass_threshold" in exc.value.message_dict
    config.pass_threshold, config.sample_rate, config.slo_min_pass_rate = Decimal(4), Decimal(2), Decimal(90)
    with pytest.raises(ValidationError) as exc:
        config.clean()
    assert {"sample_rate", "slo_min_pass_rate"} <= set(exc.value.message_dict)
    config.sample_rate, config.slo_min_pass_rate = Decimal("0.5"), Decimal("0.9")
    config.judge_route = make_route(tenant=other_tenant, alias="foreign")
    with pytest.raises(ValidationError) as exc:
        config.clean()
    assert "judge_route" in exc.value.message_dict
