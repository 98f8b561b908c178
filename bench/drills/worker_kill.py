"""Drill: a worker is SIGKILLed mid-rollup and mid-invoice, then the work is re-run.

Rollup: `manage.py roll_up` over 4 days in 1-hour chunks is killed after 20 chunks; re-run,
the hourly/daily/dimension rollups must equal a clean run's exactly. Invoice:
`manage.py issue_invoices --issue` is killed as soon as it starts printing; re-run, every
department must have exactly one issued invoice with the clean run's total.

Usage (a PostgreSQL database of your own):
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmobs_ops .venv/bin/python bench/drills/worker_kill.py
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.pop("REDIS_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from chargeback.models import Department, Invoice, Tenant  # noqa: E402
from telemetry import rollups  # noqa: E402
from telemetry.models import DailyRollup, DimensionRollup, HourlyRollup, MonthlyDimensionRollup, UsageEvent  # noqa: E402

START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 10, 5, tzinfo=UTC)


def seed(n: int = 40_000) -> Tenant:
    slug = f"drill-{uuid.uuid4().hex[:8]}"
    tenant = Tenant.objects.create(name=slug, slug=slug, timezone="Europe/Paris")
    depts = [Department.objects.create(tenant=tenant, code=f"d{i}", name=f"Dept {i}") for i in range(6)]
    rng = random.Random(9)
    span = int((END - START).total_seconds()) - 3 * 3600  # stay inside the month in Paris time
    UsageEvent.objects.bulk_create(
        [
            UsageEvent(
                tenant=tenant, event_id=f"wk-{i}", source="ingest", department=(d := rng.choice(depts)),
                department_code=d.code, user_ref=f"u{i % 17}", provider="openai", model=rng.choice(["a", "b"]),
                occurred_at=START + timedelta(seconds=3 * 3600 + rng.randrange(span)),
                input_tokens=rng.randrange(1, 5000), output_tokens=rng.randrange(1, 900),
                cost=Decimal(rng.randrange(1, 10**6)) / Decimal(10**6), cost_provenance="computed",
                latency_ms=rng.randrange(1, 20_000), feature=rng.choice(["chat", "rag", ""]),
            )
            for i in range(n)
        ],
        batch_size=5000,
    )  # fmt: skip
    return tenant


def snapshot(tenant: Tenant) -> dict:
    def rows(model, order):
        return [
            {k: str(v) for k, v in r.items() if k not in {"id", "updated_at", "created_at"}}
            for r in model.objects.filter(tenant=tenant).order_by(*order).values()
        ]

    return {
        "hourly": rows(HourlyRollup, ["hour", "department_id", "model"]),
        "daily": rows(DailyRollup, ["day", "department_id", "model"]),
        "dimension": rows(DimensionRollup, ["day", "department_id", "dimension", "value"]),
        "monthly dimension": rows(MonthlyDimensionRollup, ["month", "department_id", "dimension", "value"]),
    }


def wipe_rollups(tenant: Tenant) -> None:
    for model in (HourlyRollup, DailyRollup, DimensionRollup, MonthlyDimensionRollup):
        model.objects.filter(tenant=tenant).delete()


def run_and_kill(args: list[str], *, kill_after_lines: int = 0, kill_at: str = "") -> tuple[int, list[str]]:
    """Run a command, SIGKILL it after `kill_after_lines` lines of output or at the first line
    containing `kill_at`."""
    proc = subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if (kill_after_lines and len(lines) >= kill_after_lines) or (kill_at and kill_at in line):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    return proc.returncode, lines


def invoices(tenant: Tenant) -> dict:
    return {
        i.department.code: {"status": i.status, "total": str(i.total), "number": bool(i.number)}
        for i in Invoice.objects.filter(tenant=tenant).select_related("department")
    }


def main() -> int:
    call_command("migrate", stdout=io.StringIO())
    results: dict[str, object] = {}
    tenant = seed()
    window = ["--start", START.date().isoformat(), "--end", END.date().isoformat(), "--tenant", tenant.slug]

    rollups.rebuild(start=START, end=END, tenant_id=tenant.pk)
    clean = snapshot(tenant)
    results["clean_rows"] = {k: len(v) for k, v in clean.items()}
    wipe_rollups(tenant)
    code, lines = run_and_kill(["roll_up", *window, "--chunk-hours", "1"], kill_after_lines=20)
    partial = snapshot(tenant)
    results["rollup_killed"] = {
        "returncode": code,
        "progress_lines": len(lines),
        "rows": {k: len(v) for k, v in partial.items()},
    }
    subprocess.run(
        [sys.executable, "manage.py", "roll_up", *window, "--chunk-hours", "1"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    results["rollup_converged"] = snapshot(tenant) == clean

    # Invoices: a clean draft, then wipe and kill an issuing run, then re-run it.
    call_command("issue_invoices", "--period", "2026-10", "--tenant", tenant.slug, "--force", stdout=io.StringIO())
    clean_totals = {k: v["total"] for k, v in invoices(tenant).items()}
    Invoice.objects.filter(tenant=tenant).delete()
    code, lines = run_and_kill(
        ["issue_invoices", "--period", "2026-10", "--tenant", tenant.slug, "--force", "--issue"],
        kill_at=tenant.slug.upper(),
    )
    results["invoice_killed"] = {"returncode": code, "lines": lines, "after_kill": invoices(tenant)}
    rerun = subprocess.run(
        [sys.executable, "manage.py", "issue_invoices", "--period", "2026-10", "--tenant", tenant.slug, "--force", "--issue"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    final = invoices(tenant)
    results["invoice_rerun_returncode"] = rerun.returncode
    results["invoice_final"] = final
    per_dept = {d: Invoice.objects.filter(tenant=tenant, department__code=d).count() for d in final}
    results["invoice_converged"] = (
        {k: v["total"] for k, v in final.items()} == clean_totals
        and all(v["status"] == Invoice.Status.ISSUED and v["number"] for v in final.values())
        and set(per_dept.values()) == {1}
    )
    numbers = sorted(Invoice.objects.filter(tenant=tenant).values_list("number", flat=True))
    results["invoice_numbers"] = numbers
    # Gapless and unique across the kill: the killed run's number is kept, none is burnt.
    results["invoice_numbers_gapless"] = [int(n.rsplit("-", 1)[1]) for n in numbers] == list(range(1, len(final) + 1))
    results["clean_totals"] = clean_totals
    print(json.dumps(results, indent=2, default=str))
    ok = (
        results["rollup_converged"]
        and results["invoice_converged"]
        and results["invoice_numbers_gapless"]
        and results["rollup_killed"]["returncode"] == -9
        and results["invoice_killed"]["returncode"] == -9
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
