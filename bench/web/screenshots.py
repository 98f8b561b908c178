"""Screenshots of the main pages on the demo tenant, into docs/screenshots/.

Seeds a demo database (`seed_demo --reset --days 62`, which builds the rollups and scores the
planted spike), re-runs the rollup command over the seeded range, drafts last month's invoices
(`issue_invoices --period <last month> --force`: the grace window may still be open), runs the
app on a local port, signs in through the login form as each demo user with Debian's Chromium
(Playwright) and saves PNGs at 1280×800 (full page) plus phone-width (375 px) shots.

    .venv/bin/python bench/web/screenshots.py                 # throwaway SQLite file
    DATABASE_URL=postgres://... .venv/bin/python bench/web/screenshots.py --port 8801

Without DATABASE_URL it uses /tmp/llmobs-screenshots.sqlite3, never your dev database.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "screenshots"
DAYS = 62  # two months of demo usage: this month and last month both have data
PASSWORD = "llmobs-demo"  # noqa: S105 - the demo tenant's published password
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

# (file name, demo user, path, viewport width); {budget}, {company_budget} and {invoice} are
# filled with the Research budget, the company-wide budget and Research's invoice ids.
SHOTS = [
    ("login.png", None, "/login/", 1280),
    ("overview.png", "finance", "/overview/", 1280),
    ("overview-filtered.png", "finance", "/overview/?start={last_month}-01&end={today}&department=research", 1280),
    ("overview-bad-filter.png", "finance", "/overview/?start=2026-13-01&end=yesterday", 1280),
    ("departments.png", "finance", "/departments/", 1280),
    ("department-research.png", "finance", "/departments/research/", 1280),
    ("my-department-manager.png", "manager", "/my-department/", 1280),
    ("invoices.png", "finance", "/invoices/", 1280),
    ("invoice-detail.png", "finance", "/invoices/{invoice}/", 1280),
    ("invoices-manager.png", "manager", "/invoices/", 1280),
    ("anomalies.png", "finance", "/anomalies/?status=all", 1280),
    ("anomalies-manager.png", "manager", "/anomalies/", 1280),
    ("quality.png", "finance", "/quality/?start={two_weeks_ago}&end={today}", 1280),
    ("chat.png", "employee", "/chat/", 1280),
    ("alerts.png", "finance", "/alerts/?state=all", 1280),
    ("reports.png", "finance", "/reports/week/{last_week}/", 1280),
    ("overview-375.png", "finance", "/overview/", 375),
    ("invoice-detail-375.png", "finance", "/invoices/{invoice}/", 375),
    ("my-usage.png", "employee", "/me/usage/", 1280),
    ("budgets-finance.png", "finance", "/budgets/", 1280),
    ("budget-detail.png", "finance", "/budgets/{budget}/", 1280),
    ("budgets-manager.png", "manager", "/budgets/", 1280),
    ("forbidden-403.png", "manager", "/budgets/{company_budget}/", 1280),
    ("not-found-404.png", "employee", "/no-such-page/", 1280),
    ("my-usage-375.png", "employee", "/me/usage/", 375),
    ("budgets-375.png", "manager", "/budgets/", 375),
]


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def wait_until_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "healthz", timeout=2)  # noqa: S310 - our own local server
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"The server at {url} did not start within {timeout:.0f} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8801)
    parser.add_argument("--skip-seed", action="store_true", help="Reuse an already seeded database.")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    env = dict(os.environ)
    env.setdefault("DATABASE_URL", "sqlite:////tmp/llmobs-screenshots.sqlite3")
    env.update({"DEBUG": "false", "SESSION_COOKIE_SECURE": "false", "PYTHONUNBUFFERED": "1"})
    manage(env, "migrate", "--no-input", "-v0")
    today = datetime.now(UTC).date()
    last_month = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    if not args.skip_seed:
        print(manage(env, "seed_demo", "--reset", "--days", str(DAYS)).strip().splitlines()[-2])
        start = today - timedelta(days=DAYS + 1)
        print(manage(env, "roll_up", "--start", start.isoformat(), "--end", (today + timedelta(days=1)).isoformat(),
                     "--chunk-hours", "168").strip().splitlines()[-1])  # fmt: skip
        print(manage(env, "issue_invoices", "--period", f"{last_month:%Y-%m}", "--tenant", "acme", "--force")
              .strip().splitlines()[1])  # fmt: skip
    ids = manage(
        env,
        "shell",
        "-c",
        "from chargeback.models import Budget as B, Invoice as I;"
        "print(B.objects.get(tenant__slug='acme', department__code='research').pk,"
        " B.objects.get(tenant__slug='acme', scope='tenant').pk,"
        " I.objects.filter(tenant__slug='acme', department__code='research').latest('period').pk)",
    ).split()
    # Django's shell may print a banner line first.
    budget, company_budget, invoice = ids[-3], ids[-2], ids[-1]

    base = f"http://127.0.0.1:{args.port}/"
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{args.port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(base)
        shoot(
            base, args.chromium, budget=budget, company_budget=company_budget, invoice=invoice,
            last_month=f"{last_month:%Y-%m}", today=today.isoformat(),
            two_weeks_ago=(today - timedelta(days=14)).isoformat(),
            last_week=(today - timedelta(days=today.weekday() + 7)).isoformat(),
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)


def shoot(base: str, chromium: str, **ids: str) -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        for name, username, path, width in SHOTS:
            context = browser.new_context(
                base_url=base, viewport={"width": width, "height": 800 if width > 400 else 740}
            )
            page = context.new_page()
            if username:
                page.goto("/login/")
                page.get_by_label("Username").fill(username)
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_load_state("networkidle")
            page.goto(path.format(**ids))
            page.wait_for_load_state("networkidle")
            if path.startswith("/chat/"):
                # A conversation through the demo route (the one that needs no provider key).
                page.select_option("#chat-route", "demo")
                for question in ("What does our travel policy say about client dinners?", "Summarise it in one line."):
                    page.fill("#chat-input", question)
                    page.click("#chat-send")
                    page.locator(".msg-assistant .msg-meta").last.filter(has_text="tokens").wait_for()
            if page.locator("canvas[data-chart]").count():
                page.wait_for_selector("canvas[data-rendered=true]")
                page.wait_for_timeout(400)  # let the chart's entry animation finish
            page.screenshot(path=str(OUT / name), full_page=True)
            print(f"saved docs/screenshots/{name}")
            context.close()
        browser.close()


if __name__ == "__main__":
    main()
