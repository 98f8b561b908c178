"""Golden datasets: JSONL import, `run_eval_dataset` (table, pass rate, exit codes, stored run,
spend as eval usage) and `compare_runs`."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from telemetry.models import Dataset, DatasetRun, UsageEvent
from tests.fakes.fixtures import *  # noqa: F403

ITEMS = [
    {"id": "capital-fr", "input": "What is the capital of France?", "expected": "Paris"},
    {"id": "capital-de", "input": "What is the capital of Germany?", "expected": "Berlin"},
    {
        "id": "tone",
        "messages": [{"role": "system", "content": "Be polite."}, {"role": "user", "content": "Say hi."}],
        "criteria": "A polite greeting.",
    },
]


@pytest.fixture
def jsonl(tmp_path):
    def write(rows, name="golden.jsonl") -> str:
        path = tmp_path / name
        path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
        return str(path)

    return write


def run(*args) -> tuple[int, str]:
    from io import StringIO

    out = StringIO()
    try:
        call_command(*args, stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


def test_import_dataset(acme, jsonl):
    code, out = run("import_dataset", "--name", "golden", "--file", jsonl(ITEMS), "--tenant", "acme")
    assert code == 0 and "Imported 3 items" in out
    dataset = Dataset.objects.get(tenant=acme, name="golden")
    items = list(dataset.items.order_by("position"))
    assert [i.key for i in items] == ["capital-fr", "capital-de", "tone"]
    assert items[0].messages == [{"role": "user", "content": "What is the capital of France?"}]
    assert items[2].criteria == "A polite greeting." and items[2].messages[0]["role"] == "system"


@pytest.mark.parametrize(
    "rows,error",
    [
        (["{not json"], "line 1: not valid JSON"),
        ([{"input": "q"}], "line 1: give 'expected'"),
        ([{"expected": "a"}], "line 1.input"),
        ([{"messages": [{"role": "robot", "content": "x"}], "expected": "a"}], "line 1.messages[0]"),
        ([ITEMS[0], ITEMS[0]], "line 2.id: duplicate id"),
        ([ITEMS[0], {"input": "q", "expected": 3}], "line 2.expected: must be text"),
        ([], "file: has no items"),
    ],
)
def test_import_rejects_bad_files_whole(acme, jsonl, rows, error):
    code, out = run("import_dataset", "--name", "bad", "--file", jsonl(rows), "--tenant", "acme")
    assert code == 2 and error in out
    assert not Dataset.objects.filter(name="bad").exists()


def test_import_usage_errors(acme, jsonl, tmp_path):
    assert run("import_dataset", "--name", "x", "--file", str(tmp_path / "missing.jsonl"), "--tenant", "acme")[0] == 2
    assert run("import_dataset", "--name", "x", "--file", jsonl(ITEMS), "--tenant", "nope")[0] == 2
    run("import_dataset", "--name", "x", "--file", jsonl(ITEMS), "--tenant", "acme")
    code, out = run("import_dataset", "--name", "x", "--file", jsonl(ITEMS), "--tenant", "acme")
    assert code == 2 and "already exists" in out


@pytest.fixture
def golden(acme, jsonl):
    run("import_dataset", "--name", "golden", "--file", jsonl(ITEMS), "--tenant", "acme")
    return Dataset.objects.get(tenant=acme, name="golden")


def test_run_with_judge_passes_and_stores_the_run(acme, routes, golden, fake, research_dept):
    fake.answer_next(
        "Paris.", '{"score": 5, "reasoning": "Correct."}',
        "Berlin.", '```json\n{"score": 4, "reasoning": "Right, terse."}\n```',
        "Hello there!", '{"score": 5, "reasoning": "Polite."}',
    )  # fmt: skip
    code, out = run(
        "run_eval_dataset", "--dataset", "golden", "--route", "gpt-4o", "--judge-route", "claude",
        "--threshold", "0.8", "--tenant", "acme", "--department", "research",
    )  # fmt: skip
    assert code == 0, out
    assert "Pass rate 3/3 = 100.0% (threshold 80.0%): PASS" in out
    assert "capital-fr" in out and "Paris." in out and "Right, terse." in out
    stored = DatasetRun.objects.get()
    assert (stored.items_total, stored.items_passed, stored.pass_rate) == (3, 3, Decimal("1"))
    assert stored.judge_alias == "claude" and stored.cost > 0
    # Six calls (3 answers + 3 verdicts), all eval traffic of the department named.
    events = UsageEvent.objects.filter(tenant=acme, tags__dataset_run=str(stored.pk))
    assert events.count() == 6
    assert set(events.values_list("source", "feature", "department_id").distinct()) == {
        ("eval", "eval", research_dept.pk)
    }


def test_run_below_threshold_exits_1_and_parse_failures_fail_items(acme, routes, golden, fake):
    fake.answer_next(
        "Paris.", '{"score": 5, "reasoning": "Correct."}',
        "Munich.", '{"score": 1, "reasoning": "Wrong city."}',
        "Hello!", "Looks polite to me.",
    )  # fmt: skip
    code, out = run(
        "run_eval_dataset", "--dataset", "golden", "--route", "gpt-4o", "--judge-route", "claude", "--tenant", "acme"
    )
    assert code == 1
    assert "Pass rate 1/3 = 33.3% (threshold 80.0%): FAIL" in out
    assert "parse_error" in out and "no JSON object" in out
    results = {r.item.key: r for r in DatasetRun.objects.get().results.select_related("item")}
    assert results["tone"].status == "parse_error" and results["tone"].score is None and not results["tone"].passed
    assert results["tone"].raw == "Looks polite to me."


def test_run_without_judge_matches_the_expected_answer(acme, routes, jsonl, fake):
    run("import_dataset", "--name", "ref", "--file", jsonl(ITEMS[:2]), "--tenant", "acme")
    fake.answer_next("The capital is paris.", "It is Bonn.")
    code, out = run(
        "run_eval_dataset", "--dataset", "ref", "--route", "gpt-4o", "--threshold", "0.5", "--tenant", "acme"
    )
    assert code == 0 and "Pass rate 1/2 = 50.0%" in out


def test_run_usage_errors_exit_2(acme, routes, golden):
    assert run("run_eval_dataset", "--dataset", "nope", "--route", "gpt-4o", "--tenant", "acme")[0] == 2
    assert run("run_eval_dataset", "--dataset", "golden", "--route", "nope", "--tenant", "acme")[0] == 2
    assert (
        run("run_eval_dataset", "--dataset", "golden", "--route", "gpt-4o", "--threshold", "2", "--tenant", "acme")[0]
        == 2
    )
    assert (
        run("run_eval_dataset", "--dataset", "golden", "--route", "gpt-4o", "--threshold", "abc", "--tenant", "acme")[0]
        == 2
    )
    # An item with criteria only needs a judge.
    code, out = run("run_eval_dataset", "--dataset", "golden", "--route", "gpt-4o", "--tenant", "acme")
    assert code == 2 and "judge route is needed" in out
    assert not DatasetRun.objects.exists()


def test_failed_route_calls_fail_their_items(acme, routes, jsonl, fake):
    run("import_dataset", "--name", "ref", "--file", jsonl(ITEMS[:1]), "--tenant", "acme")
    fake.fail_next(500, 500, 500, 500)
    code, out = run("run_eval_dataset", "--dataset", "ref", "--route", "gpt-4o", "--tenant", "acme")
    assert code == 1 and "call_error" in out


def test_compare_runs(acme, routes, golden, fake):
    fake.answer_next("Paris", '{"score": 5}', "Munich", '{"score": 1}', "Hi", '{"score": 4}')
    run("run_eval_dataset", "--dataset", "golden", "--route", "gpt-4o", "--judge-route", "claude", "--tenant", "acme")
    fake.answer_next("Paris", '{"score": 3}', "Berlin", '{"score": 5}', "Hi", '{"score": 4}')
    run(
        "run_eval_dataset",
        "--dataset",
        "golden",
        "--route",
        "gpt-4o-mini",
        "--judge-route",
        "claude",
        "--tenant",
        "acme",
    )
    a, b = DatasetRun.objects.order_by("pk")
    code, out = run("compare_runs", str(a.pk), str(b.pk))
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["capital-fr"].endswith("regressed")
    assert lines["capital-de"].endswith("fixed")
    assert lines["tone"].endswith("same")
    assert "Pass rate A 66.7% → B 66.7%" in out
    assert run("compare_runs", str(a.pk), "999999")[0] == 2
