"""Load and soak on loopback: ingest + gateway + dashboards together, then exact totals.

Starts the production shape (PostgreSQL + Redis from DATABASE_URL / REDIS_URL): the fake OpenAI
upstream (`tests/fakes/upstream.py`), gunicorn gthread (2 workers), a Celery worker on
`default,slow` and Celery beat, so the minute rollups really run under load. For `--minutes` it
then drives, at bounded rates and concurrently:

- **ingest**: `POST /api/v1/usage-events`, 100-event batches (pre-built bodies, ids spliced in);
  every `--resend-every`-th request resends the previous batch on purpose (all duplicates), and a
  failed request is retried with the same body until it is answered (as a client must);
- **gateway**: `POST /v1/chat/completions` through httpx, half plain and half streamed, with
  three department-bound keys; each call's cost is computed by the generator from the usage the
  call returned and the prices this script created, in `Decimal`;
- **dashboards**: a finance user logs in over HTTP through `/login/` with the CSRF token like a
  browser (behind `X-Forwarded-Proto: https`, as production sits behind TLS, so the Secure
  cookies are honoured) and GETs `/overview/`, `/departments/`, `/invoices/`, `/budgets/`,
  `/quality/`.

Every 10 s it samples the RSS (VmRSS) of the gunicorn master and workers, the Celery worker (and
its pool child), beat and the upstream into `bench/results/soak-<timestamp>.csv`. Afterwards it
stops the load and gunicorn (gracefully, so the gateway's recorder flushes), waits for Celery's
rollups to catch up (falling back to `manage.py roll_up --pending`, reported), drafts the
month's invoices and checks, printing PASS/FAIL per check (exit 1 on any FAIL):

- raw events = unique ingest ids + successful gateway calls (count, every token bucket, cost);
- the server's accepted/duplicate answers add up to what was sent;
- hourly and daily rollup sums = raw sums exactly;
- the drafted invoices reconcile with the raw events (`reconcile_period`) and their unrounded
  line total equals the generator's cost;
- no request errors; no process grew by more than `--max-growth-mb` between the first and the
  last third of the run.

A summary JSON goes to `bench/soak/results-<minutes>min.json` (committed); the CSV is not.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmobs_soak REDIS_URL=redis://127.0.0.1:6379/9 \\
        .venv/bin/python bench/soak/run.py --minutes 10
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable
BIN = Path(PYTHON).parent
MILLION = Decimal(1_000_000)
DEPARTMENTS = ["research", "sales", "support", "engineering"]
PAGES = ["/overview/", "/departments/", "/invoices/", "/budgets/", "/quality/"]
PASSWORD = "soak-" + uuid.uuid4().hex
ID_MARK = b"@@ID@@"
TOKEN_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "reasoning_tokens",
)
# Tenant prices (per 1M tokens) for names the public catalogue does not have, so the generator
# knows every rate that applies. (provider, model) -> rates.
PRICES = {
    ("openai", "soak-gpt"): {
        "input_per_mtok": Decimal("2.50"),
        "cache_read_per_mtok": Decimal("1.25"),
        "output_per_mtok": Decimal("10"),
    },
    ("anthropic", "soak-claude"): {
        "input_per_mtok": Decimal("3"),
        "cache_read_per_mtok": Decimal("0.30"),
        "cache_write_per_mtok": Decimal("3.75"),
        "output_per_mtok": Decimal("15"),
    },
    ("openai", "soak-reasoner"): {
        "input_per_mtok": Decimal("1.10"),
        "cache_read_per_mtok": Decimal("0.55"),
        "output_per_mtok": Decimal("4.40"),
        "reasoning_per_mtok": Decimal("4.40"),
    },
}
GATEWAY_MODEL = ("openai", "soak-gpt")


def expected_cost(provider: str, model: str, usage: dict[str, int]) -> Decimal:
    """The generator's own price arithmetic (not the app's), exact in Decimal."""
    p = PRICES[(provider, model)]
    rin = p["input_per_mtok"]
    rread = p.get("cache_read_per_mtok", rin)
    rwrite = p.get("cache_write_per_mtok", rin)
    rout = p["output_per_mtok"]
    rreason = p.get("reasoning_per_mtok", rout)
    uncached = usage["input_tokens"] - usage["cache_read_input_tokens"] - usage["cache_creation_input_tokens"]
    return (
        uncached * rin
        + usage["cache_read_input_tokens"] * rread
        + usage["cache_creation_input_tokens"] * rwrite
        + (usage["output_tokens"] - usage["reasoning_tokens"]) * rout
        + usage["reasoning_tokens"] * rreason
    ) / MILLION


# --- setup ----------------------------------------------------------------------------------------


def django_setup():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")
    import django

    django.setup()


def prepare(run_id: str, upstream: str) -> dict:
    """Migrate; create the run's tenant, departments, prices, route, keys and finance user."""
    django_setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from chargeback.keys import create_api_key
    from chargeback.models import Budget, Department, Membership, ModelPrice, Role, Route, Tenant

    call_command("migrate", verbosity=0)
    tenant = Tenant.objects.create(name=f"Soak {run_id}", slug=f"soak-{run_id}", timezone="UTC", currency="USD")
    departments = {code: Department.objects.create(tenant=tenant, code=code, name=code.title()) for code in DEPARTMENTS}
    for (provider, model), rates in PRICES.items():
        ModelPrice.objects.create(
            tenant=tenant,
            provider=provider,
            model_pattern=model,
            match_type=ModelPrice.MatchType.EXACT,
            effective_from=datetime(2024, 1, 1, tzinfo=UTC),
            notes="bench/soak",
            **rates,
        )
    Route.objects.create(
        tenant=tenant,
        alias="soak",
        provider=GATEWAY_MODEL[0],
        upstream_model=GATEWAY_MODEL[1],
        base_url=upstream + "/v1",
        credential_env="",
        max_retries=0,
        timeout_seconds=Decimal("30"),
    )
    # A hard budget far above the run's spend, so every gateway call reserves and settles.
    Budget.objects.create(
        tenant=tenant,
        name="Soak hard cap",
        scope=Budget.Scope.DEPARTMENT,
        department=departments["research"],
        amount=Decimal("1000000000"),
        mode=Budget.Mode.HARD,
    )
    _, ingest_token = create_api_key(tenant=tenant, name="soak-ingest", rpm_limit=10_000_000)
    gateway_tokens = [
        create_api_key(
            tenant=tenant, name=f"soak-gw-{code}", department=departments[code], rpm_limit=10_000_000, tpm_limit=None
        )[1]
        for code in DEPARTMENTS[:3]
    ]
    username = f"soak-finance-{run_id}"
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    Membership.objects.create(user=user, tenant=tenant, role=Role.FINANCE)
    connection.close()
    return {
        "tenant_id": tenant.pk,
        "slug": tenant.slug,
        "ingest_token": ingest_token,
        "gateway_tokens": gateway_tokens,
        "username": username,
    }


# --- pacing and statistics ----------------------------------------------------------------------------


class Pacer:
    """Hands out start times `start + k / rate`; a worker that is late goes at once, so the rate
    is an upper bound and the worker count bounds concurrency."""

    def __init__(self, rate: float, start: float, stop: threading.Event) -> None:
        self.interval = 1.0 / rate
        self.next = start
        self.lock = threading.Lock()
        self.stop = stop

    def wait(self) -> bool:
        with self.lock:
            at = self.next
            self.next += self.interval
        delay = at - time.monotonic()
        if delay > 0:
            return not self.stop.wait(delay)
        return not self.stop.is_set()


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.requests: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.error_samples: list[str] = []

    def ok(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.requests[kind] += 1
            self.latencies[kind].append(seconds)

    def error(self, kind: str, detail: str) -> None:
        with self.lock:
            self.requests[kind] += 1
            self.errors[kind] += 1
            if len(self.error_samples) < 20:
                self.error_samples.append(f"{kind}: {detail[:300]}")

    def snapshot(self) -> dict[str, tuple[int, int]]:
        with self.lock:
            return {k: (self.requests[k], self.errors[k]) for k in ("ingest", "gateway", "dashboard")}


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return round(sorted_values[index] * 1000, 1)


# --- ingest ---------------------------------------------------------------------------------------------


class IngestTotals:
    """What the generator sent, and what the server answered."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unique = 0
        self.sent_events = 0
        self.tokens = dict.fromkeys(TOKEN_FIELDS, 0)
        self.cost = Decimal(0)
        self.accepted = 0
        self.duplicates = 0
        self.resends = 0
        self.resend_dups_answered = 0
        self.retries = 0


def batch_templates(count: int, size: int, seed: int) -> list[tuple[list[bytes], dict[str, int], Decimal]]:
    """`count` batch bodies split around their event ids, each with its token and cost totals."""
    rng = random.Random(seed)
    templates = []
    for _ in range(count):
        events, tokens, cost = [], dict.fromkeys(TOKEN_FIELDS, 0), Decimal(0)
        for _ in range(size):
            provider, model = rng.choice(list(PRICES))
            read = rng.choice([0, 0, 256, 1024])
            write = rng.choice([0, 0, 0, 512]) if provider == "anthropic" else 0
            out = rng.randint(5, 1500)
            usage = {
                "input_tokens": read + write + rng.randint(20, 4000),
                "cache_read_input_tokens": read,
                "cache_creation_input_tokens": write,
                "output_tokens": out,
                "reasoning_tokens": rng.randint(0, out) if model == "soak-reasoner" else 0,
            }
            for name in TOKEN_FIELDS:
                tokens[name] += usage[name]
            cost += expected_cost(provider, model, usage)
            events.append(
                {
                    "event_id": ID_MARK.decode(),
                    "timestamp": "@@TS@@",
                    "department": rng.choice(DEPARTMENTS),
                    "user": f"user{rng.randint(1, 200)}@example.com",
                    "provider": provider,
                    "model": model,
                    "operation": "chat",
                    "usage": usage,
                    "latency_ms": rng.randint(100, 9000),
                    "ttft_ms": rng.randint(30, 900),
                    "status": "ok",
                    "feature": rng.choice(["chat", "search", "summarise"]),
                    "tags": {"env": "soak", "team": rng.choice(["a", "b", "c"])},
                }
            )
        raw = json.dumps(events, separators=(",", ":")).encode()
        templates.append((raw.split(ID_MARK), tokens, cost))
    return templates


def splice(parts: list[bytes], ids: list[bytes], timestamp: bytes) -> bytes:
    out = [parts[0]]
    for event_id, part in zip(ids, parts[1:], strict=True):
        out.append(event_id)
        out.append(part)
    return b"".join(out).replace(b"@@TS@@", timestamp)


def ingest_worker(
    index: int, base: str, token: str, prefix: str, pacer: Pacer, stats: Stats, totals: IngestTotals, args
) -> None:
    templates = batch_templates(20, args.batch_size, seed=index)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    rng = random.Random(1000 + index)
    seq = 0
    n = 0
    previous = None
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        while pacer.wait():
            n += 1
            resend = previous is not None and args.resend_every and n % args.resend_every == 0
            if resend:
                body = previous
            else:
                parts, tokens, cost = rng.choice(templates)
                ids = [f"{prefix}{index}-{seq + i}".encode() for i in range(args.batch_size)]
                seq += args.batch_size
                now = datetime.now(UTC).isoformat(timespec="milliseconds").encode()
                body = splice(parts, ids, now)
            # A request that fails is retried with the same body until answered: an answer is
            # what tells the client its events are stored (resending is idempotent).
            while True:
                began = time.perf_counter()
                try:
                    response = client.post("/api/v1/usage-events", content=body)
                    elapsed = time.perf_counter() - began
                    if response.status_code == 202:
                        stats.ok("ingest", elapsed)
                        answer = response.json()
                        break
                    stats.error("ingest", f"HTTP {response.status_code} {response.text}")
                except httpx.HTTPError as exc:
                    stats.error("ingest", repr(exc))
                with totals.lock:
                    totals.retries += 1
                time.sleep(0.5)
            with totals.lock:
                totals.sent_events += args.batch_size
                totals.accepted += answer["accepted"]
                totals.duplicates += answer["duplicates"]
                if answer.get("rejected"):
                    stats.error("ingest", f"rejected {answer['rejected'][:2]}")
                if resend:
                    totals.resends += 1
                    totals.resend_dups_answered += answer["duplicates"]
                else:
                    totals.unique += args.batch_size
                    totals.cost += cost
                    for name in TOKEN_FIELDS:
                        totals.tokens[name] += tokens[name]
            previous = body


# --- gateway --------------------------------------------------------------------------------------------


class GatewayTotals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.ok = 0
        self.streamed = 0
        self.tokens = dict.fromkeys(TOKEN_FIELDS, 0)
        self.cost = Decimal(0)


def canonical(usage: dict) -> dict[str, int]:
    """OpenAI usage -> canonical buckets (input includes cached; output includes reasoning)."""
    return {
        "input_tokens": usage["prompt_tokens"],
        "cache_read_input_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        "cache_creation_input_tokens": 0,
        "output_tokens": usage["completion_tokens"],
        "reasoning_tokens": (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0,
    }


def gateway_worker(
    index: int, base: str, tokens: list[str], pacer: Pacer, stats: Stats, totals: GatewayTotals, args
) -> None:
    rng = random.Random(2000 + index)
    with httpx.Client(base_url=base, timeout=60) as client:
        while pacer.wait():
            stream = rng.random() < args.stream_share
            body = {
                "model": "soak",
                "messages": [{"role": "user", "content": f"Say hello ({rng.randint(1, 10**6)})."}],
                "max_tokens": 64,
            }
            if stream:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
            headers = {
                "Authorization": f"Bearer {rng.choice(tokens)}",
                "X-LLMObs-User": f"user{rng.randint(1, 50)}@example.com",
                "X-LLMObs-Feature": rng.choice(["chat", "assist"]),
            }
            with totals.lock:
                totals.calls += 1
            began = time.perf_counter()
            try:
                usage = None
                if stream:
                    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
                        if response.status_code != 200:
                            response.read()
                            stats.error("gateway", f"HTTP {response.status_code} {response.text}")
                            continue
                        for line in response.iter_lines():
                            if line.startswith("data: {") and '"usage"' in line:
                                chunk = json.loads(line[6:])
                                if chunk.get("usage"):
                                    usage = chunk["usage"]
                else:
                    response = client.post("/v1/chat/completions", json=body, headers=headers)
                    if response.status_code != 200:
                        stats.error("gateway", f"HTTP {response.status_code} {response.text}")
                        continue
                    usage = response.json().get("usage")
                elapsed = time.perf_counter() - began
            except (httpx.HTTPError, ValueError) as exc:
                stats.error("gateway", repr(exc))
                continue
            if not usage:
                stats.error("gateway", "answer without usage")
                continue
            stats.ok("gateway", elapsed)
            buckets = canonical(usage)
            with totals.lock:
                totals.ok += 1
                totals.streamed += stream
                totals.cost += expected_cost(*GATEWAY_MODEL, buckets)
                for name in TOKEN_FIELDS:
                    totals.tokens[name] += buckets[name]


# --- dashboards -----------------------------------------------------------------------------------------

# The app runs as in production: Secure cookies, behind a TLS-terminating proxy that sets
# X-Forwarded-Proto (SECURE_PROXY_SSL_HEADER). httpx keeps Secure cookies away from an http://
# URL, so this browser keeps its two cookies itself.
PROXY = {"X-Forwarded-Proto": "https"}


def login(client: httpx.Client, port: int, username: str) -> str:
    page = client.get("/login/", headers=PROXY)
    page.raise_for_status()
    csrf_cookie = page.cookies.get("csrftoken")
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    if not csrf_cookie or not match:
        raise RuntimeError("login page without a CSRF cookie or token")
    answer = client.post(
        "/login/",
        data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": match.group(1), "next": ""},
        headers={
            **PROXY,
            "Cookie": f"csrftoken={csrf_cookie}",
            "Referer": f"https://127.0.0.1:{port}/login/",
            "Origin": f"https://127.0.0.1:{port}",
        },
    )
    session = answer.cookies.get("sessionid")
    if answer.status_code != 302 or not session:
        raise RuntimeError(f"login failed: HTTP {answer.status_code} {answer.text[:300]}")
    return f"sessionid={session}; csrftoken={answer.cookies.get('csrftoken') or csrf_cookie}"


def dashboard_worker(index: int, base: str, port: int, username: str, pacer: Pacer, stats: Stats) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        cookie = login(client, port, username)
        n = index
        while pacer.wait():
            path = PAGES[n % len(PAGES)]
            n += 1
            began = time.perf_counter()
            try:
                response = client.get(path, headers={**PROXY, "Cookie": cookie})
            except httpx.HTTPError as exc:
                stats.error("dashboard", f"{path} {exc!r}")
                continue
            elapsed = time.perf_counter() - began
            if response.status_code == 200:
                stats.ok("dashboard", elapsed)
            else:
                stats.error("dashboard", f"{path} HTTP {response.status_code} {response.headers.get('location', '')}")


def guarded(target, stats: Stats, kind: str, *args) -> None:
    """A loader thread that dies must be seen, not leave the run silently lighter."""
    try:
        target(*args)
    except Exception as exc:  # reported as an error of its kind
        stats.error(kind, f"loader thread died: {exc!r}")


# --- processes and memory -------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    try:
        return sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return []


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Processes:
    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, command: list[str], env: dict, log: Path) -> subprocess.Popen:
        handle = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 30.0) -> None:
        """SIGTERM the process group (a graceful stop for gunicorn and Celery), then SIGKILL."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group (pool children)
        proc.wait()

    def stop_all(self) -> None:
        for name in list(reversed(self.procs)):
            self.stop(name, timeout=20)

    def roles(self) -> dict[str, int]:
        """Process label -> pid, resolved at each sample (a restarted worker has a new pid)."""
        out: dict[str, int] = {}
        if "gunicorn" in self.procs:
            master = self.procs["gunicorn"].pid
            out["gunicorn-master"] = master
            for i, pid in enumerate(children(master), 1):
                out[f"gunicorn-worker-{i}"] = pid
        if "celery-worker" in self.procs:
            main = self.procs["celery-worker"].pid
            out["celery-worker"] = main
            for i, pid in enumerate(children(main), 1):
                out[f"celery-pool-{i}"] = pid
        for name in ("celery-beat", "upstream"):
            if name in self.procs:
                out[name] = self.procs[name].pid
        return out


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def wait_celery_ready(log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and "ready." in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the Celery worker did not report ready (see {log})")


class Sampler(threading.Thread):
    """Every `interval` s: RSS of each process and the cumulative request counts, to CSV."""

    def __init__(
        self, procs: Processes, stats: Stats, path: Path, interval: float, warmup: float, stop: threading.Event
    ) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.procs, self.stats, self.path, self.interval, self.stop = procs, stats, path, interval, stop
        self.warmup = warmup
        # (elapsed, label -> RSS kB, label -> pid, kind -> (requests, errors) so far)
        self.samples: list[tuple[float, dict[str, int], dict[str, int], dict[str, tuple[int, int]]]] = []
        self.started = time.monotonic()

    def take(self) -> None:
        roles = self.procs.roles()
        rss = {label: kb for label, pid in roles.items() if (kb := rss_kb(pid)) is not None}
        self.samples.append((time.monotonic() - self.started, rss, roles, self.stats.snapshot()))

    def run(self) -> None:
        self.take()
        while not self.stop.wait(self.interval):
            self.take()
            self.write()
        self.take()
        self.write()

    def write(self) -> None:
        labels = sorted({label for _, rss, _, _ in self.samples for label in rss})
        kinds = ("ingest", "gateway", "dashboard")
        with open(self.path, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(
                [
                    "elapsed_s",
                    *[f"{label}_rss_kb" for label in labels],
                    *[f"{kind}_{what}" for kind in kinds for what in ("requests", "errors")],
                    *[f"{label}_pid" for label in labels],
                ]
            )
            for elapsed, rss, roles, counts in self.samples:
                out.writerow(
                    [
                        round(elapsed, 1),
                        *[rss.get(label, "") for label in labels],
                        *[n for kind in kinds for n in counts[kind]],
                        *[roles.get(label, "") for label in labels],
                    ]
                )

    def summary(self) -> dict[str, dict]:
        labels = sorted({label for _, rss, _, _ in self.samples for label in rss})
        out = {}
        for label in labels:
            series = [(rss[label], roles[label], t) for t, rss, roles, _ in self.samples if label in rss]
            values = [v for v, _, _ in series]
            # Growth is judged after the warm-up (first requests load code, templates, price books):
            # mean of the first third of the remaining samples against the mean of the last third.
            steady = [v for v, _, t in series if t >= self.warmup] or values
            third = max(1, len(steady) // 3)
            first, last = statistics.mean(steady[:third]), statistics.mean(steady[-third:])
            out[label] = {
                "first_mb": round(values[0] / 1024, 1),
                "last_mb": round(values[-1] / 1024, 1),
                "max_mb": round(max(values) / 1024, 1),
                "growth_first_to_last_third_mb": round((last - first) / 1024, 1),
                "samples": len(values),
                "steady_samples": len(steady),
                "pids": sorted({pid for _, pid, _ in series}),
            }
        return out


# --- checks ---------------------------------------------------------------------------------------------


def raw_totals(tenant_id: int, source: str | None = None) -> dict:
    from django.db.models import Count, Q, Sum

    from telemetry.models import UsageEvent

    qs = UsageEvent.objects.filter(tenant_id=tenant_id)
    if source:
        qs = qs.filter(source=source)
    agg = qs.aggregate(
        events=Count("id"),
        distinct_ids=Count("event_id", distinct=True),
        unpriced=Count("id", filter=Q(cost__isnull=True)),
        not_ok=Count("id", filter=~Q(status="ok")),
        cost=Sum("cost"),
        **{name: Sum(name) for name in TOKEN_FIELDS},
    )
    return {k: (v if v is not None else (Decimal(0) if k == "cost" else 0)) for k, v in agg.items()}


def rollup_totals(model, tenant_id: int) -> dict:
    from django.db.models import Sum

    agg = model.objects.filter(tenant_id=tenant_id).aggregate(
        events=Sum("requests"), cost=Sum("cost"), unpriced=Sum("unpriced"), **{n: Sum(n) for n in TOKEN_FIELDS}
    )
    return {k: (v if v is not None else (Decimal(0) if k == "cost" else 0)) for k, v in agg.items()}


MEASURES = ("events", "cost", *TOKEN_FIELDS)


def same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in MEASURES)


def months_between(start: datetime, end: datetime) -> list[date]:
    months, current = [], date(start.year, start.month, 1)
    while current <= end.date():
        months.append(current)
        current = date(current.year + current.month // 12, current.month % 12 + 1, 1)
    return months


class Checks:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def add(self, name: str, ok: bool, detail: object = "") -> None:
        self.results.append((name, bool(ok), str(detail)))
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail != "" else ""), flush=True)

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.results)


def jsonable(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


# --- main -----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8460, help="gunicorn")
    parser.add_argument("--upstream-port", type=int, default=8461, help="fake OpenAI upstream")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="threads per gthread worker")
    parser.add_argument("--ingest-rate", type=float, default=300.0, help="fresh + resent events per second")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--resend-every", type=int, default=10, help="every Nth ingest request resends the previous batch"
    )
    parser.add_argument("--gateway-rate", type=float, default=20.0, help="calls per second")
    parser.add_argument("--stream-share", type=float, default=0.5)
    parser.add_argument("--dashboard-rate", type=float, default=2.0, help="page GETs per second")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=60.0,
        help="RSS growth is judged after this (at most a quarter of the run)",
    )
    parser.add_argument("--catchup-seconds", type=float, default=180.0, help="wait this long for Celery's rollups")
    parser.add_argument("--max-growth-mb", type=float, default=25.0, help="per process, first → last third")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres") or not os.environ.get("REDIS_URL"):
        raise SystemExit("Set DATABASE_URL (PostgreSQL) and REDIS_URL: the soak runs the production configuration.")

    # Ctrl-C and SIGTERM both unwind through `finally`, which stops every process we started.
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with `&` (SIGINT ignored)

    run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix=f"llmobs-soak-{run_id}-"))
    csv_path = RESULTS / f"soak-{run_id}.csv"
    upstream = f"http://127.0.0.1:{args.upstream_port}"
    base = f"http://127.0.0.1:{args.port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "llmobs.settings",
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(logs / "prom"),
    }
    (logs / "prom").mkdir()
    procs = Processes()
    stop_load = threading.Event()
    stop_sampler = threading.Event()
    stats = Stats()
    ingest, gateway = IngestTotals(), GatewayTotals()
    checks = Checks()
    report: dict = {"run": run_id, "args": vars(args), "logs": str(logs), "csv": str(csv_path.relative_to(ROOT))}
    try:
        procs.start(
            "upstream",
            [PYTHON, "-m", "tests.fakes.upstream", "--port", str(args.upstream_port)],
            env,
            logs / "upstream.log",
        )
        setup = prepare(run_id, upstream)
        report["tenant"] = setup["slug"]
        print(f"tenant {setup['slug']} (id {setup['tenant_id']}); logs in {logs}", flush=True)
        procs.start(
            "gunicorn",
            [
                str(BIN / "gunicorn"),
                "llmobs.wsgi",
                "--worker-class",
                "gthread",
                "--workers",
                str(args.workers),
                "--threads",
                str(args.threads),
                "--bind",
                f"127.0.0.1:{args.port}",
                "--log-level",
                "warning",
                "--graceful-timeout",
                "20",
            ],
            env,
            logs / "gunicorn.log",
        )
        procs.start(
            "celery-worker",
            [str(BIN / "celery"), "-A", "llmobs", "worker", "-Q", "default,slow", "--concurrency", "1",
             "--loglevel", "INFO", "--hostname", f"soak-{run_id}@%h"],
            env,
            logs / "celery-worker.log",
        )  # fmt: skip
        procs.start(
            "celery-beat",
            [str(BIN / "celery"), "-A", "llmobs", "beat", "--loglevel", "INFO",
             "--schedule", str(logs / "celerybeat-schedule"), "--pidfile", str(logs / "beat.pid")],
            env,
            logs / "celery-beat.log",
        )  # fmt: skip
        wait_http(f"{upstream}/", timeout=30)
        wait_http(f"{base}/healthz", timeout=60)
        wait_celery_ready(logs / "celery-worker.log")
        for name, proc in procs.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited early with {proc.returncode} (see {logs})")

        # Warm each worker (imports, price book, connections) outside the measured run.
        with httpx.Client(base_url=base, timeout=30) as client:
            for i in range(args.workers * 4):
                client.get(PAGES[i % len(PAGES)], headers=PROXY)

        started_at = datetime.now(UTC)
        start = time.monotonic() + 0.5
        duration = args.minutes * 60
        warmup = min(args.warmup_seconds, duration / 4)
        sampler = Sampler(procs, stats, csv_path, args.sample_seconds, warmup, stop_sampler)
        sampler.start()
        ingest_pacer = Pacer(args.ingest_rate / args.batch_size, start, stop_load)
        gateway_pacer = Pacer(args.gateway_rate, start, stop_load)
        dashboard_pacer = Pacer(args.dashboard_rate, start, stop_load)
        prefix = f"soak{run_id}-"

        def loader(kind: str, target, *params) -> threading.Thread:
            return threading.Thread(target=guarded, args=(target, stats, kind, *params), daemon=True, name=kind)

        ingest_args = (base, setup["ingest_token"], prefix, ingest_pacer, stats, ingest, args)
        gateway_args = (base, setup["gateway_tokens"], gateway_pacer, stats, gateway, args)
        dashboard_args = (base, args.port, setup["username"], dashboard_pacer, stats)
        threads = [loader("ingest", ingest_worker, i, *ingest_args) for i in range(4)]
        threads += [loader("gateway", gateway_worker, i, *gateway_args) for i in range(8)]
        threads += [loader("dashboard", dashboard_worker, i, *dashboard_args) for i in range(2)]
        for thread in threads:
            thread.start()
        print(f"load running for {args.minutes:g} min …", flush=True)
        deadline = start + duration
        next_progress = start + 60
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= next_progress:
                next_progress += 60
                print(f"  {int(time.monotonic() - start)} s: {stats.snapshot()} (requests, errors)", flush=True)
        stop_load.set()
        for thread in threads:
            thread.join(timeout=90)
        elapsed = time.monotonic() - start
        stop_sampler.set()
        sampler.join(timeout=30)
        ended_at = datetime.now(UTC)

        load = {}
        for kind in ("ingest", "gateway", "dashboard"):
            lat = sorted(stats.latencies[kind])
            load[kind] = {
                "requests": stats.requests[kind],
                "errors": stats.errors[kind],
                "req_per_s": round(stats.requests[kind] / elapsed, 2),
                "p50_ms": percentile(lat, 0.50),
                "p95_ms": percentile(lat, 0.95),
                "p99_ms": percentile(lat, 0.99),
                "max_ms": round(lat[-1] * 1000, 1) if lat else None,
            }
        load["ingest"]["events_per_s"] = round(ingest.sent_events / elapsed, 1)
        load["ingest"]["unique_events"] = ingest.unique
        load["ingest"]["resent_batches"] = ingest.resends
        load["ingest"]["retries"] = ingest.retries
        load["gateway"]["streamed"] = gateway.streamed
        report.update(
            elapsed_s=round(elapsed, 1), load=load, memory=sampler.summary(), error_samples=stats.error_samples
        )
        print(json.dumps({"load": load}, indent=2), flush=True)
        print(f"memory (MB): first / last / max / growth first→last third after {warmup:g} s warm-up", flush=True)
        for label, m in report["memory"].items():
            print(
                f"  {label:20s} {m['first_mb']:7.1f} {m['last_mb']:7.1f} {m['max_mb']:7.1f} "
                f"{m['growth_first_to_last_third_mb']:+6.1f}  pids {m['pids']}",
                flush=True,
            )
        for sample in stats.error_samples[:10]:
            print("  error:", sample, flush=True)

        # Graceful gunicorn stop: the gateway's recorder flushes its queue at worker exit.
        procs.stop("gunicorn")
        django_setup()
        from django.core.management import call_command
        from django.db import connection

        from chargeback.invoicing import draft_invoices, reconcile_period
        from chargeback.models import Invoice, InvoiceLine, Tenant
        from telemetry.models import DailyRollup, HourlyRollup

        tenant_id = setup["tenant_id"]
        raw = raw_totals(tenant_id)
        raw_ingest = raw_totals(tenant_id, "ingest")
        raw_gateway = raw_totals(tenant_id, "gateway")

        # Rollups: Celery beat runs telemetry.roll_up every minute; wait for it to catch up.
        caught_up_by = "celery"
        waited = time.monotonic()
        while True:
            hourly = rollup_totals(HourlyRollup, tenant_id)
            daily = rollup_totals(DailyRollup, tenant_id)
            if same(hourly, raw) and same(daily, raw):
                break
            if time.monotonic() - waited > args.catchup_seconds:
                caught_up_by = "manage.py roll_up --pending (Celery had not caught up)"
                call_command("roll_up", "--pending", verbosity=0)
                hourly = rollup_totals(HourlyRollup, tenant_id)
                daily = rollup_totals(DailyRollup, tenant_id)
                break
            time.sleep(5)
            connection.close()
        report["rollups_caught_up_by"] = caught_up_by
        report["rollups_caught_up_after_s"] = round(time.monotonic() - waited, 1)
        print(f"rollups caught up by {caught_up_by} after {report['rollups_caught_up_after_s']} s", flush=True)
        for name in ("celery-beat", "celery-worker", "upstream"):
            procs.stop(name)

        sent_tokens = {n: ingest.tokens[n] + gateway.tokens[n] for n in TOKEN_FIELDS}
        sent = {"events": ingest.unique + gateway.ok, "cost": ingest.cost + gateway.cost, **sent_tokens}
        checks.add("no request errors", sum(stats.errors.values()) == 0, dict(stats.errors))
        checks.add(
            "loaders sent at the requested rates (≥ 90 %)",
            all(
                load[k]["req_per_s"] >= 0.9 * rate
                for k, rate in (
                    ("ingest", args.ingest_rate / args.batch_size),
                    ("gateway", args.gateway_rate),
                    ("dashboard", args.dashboard_rate),
                )
            ),
            {k: load[k]["req_per_s"] for k in load},
        )
        checks.add(
            "ingest answers add up (accepted = unique sent, accepted + duplicates = sent)",
            ingest.accepted == ingest.unique and ingest.accepted + ingest.duplicates == ingest.sent_events,
            f"accepted {ingest.accepted}, unique {ingest.unique}, duplicates {ingest.duplicates}, sent {ingest.sent_events}",
        )
        checks.add(
            "every resent batch answered as all duplicates",
            ingest.resend_dups_answered == ingest.resends * args.batch_size,
            f"{ingest.resends} resends, {ingest.resend_dups_answered} duplicates answered",
        )
        checks.add(
            "raw ingest events = unique ids sent (count, tokens, cost)",
            raw_ingest["events"] == ingest.unique
            and raw_ingest["distinct_ids"] == ingest.unique
            and raw_ingest["cost"] == ingest.cost
            and all(raw_ingest[n] == ingest.tokens[n] for n in TOKEN_FIELDS),
            f"raw {raw_ingest['events']} events / {raw_ingest['cost']} USD; sent {ingest.unique} / {ingest.cost}",
        )
        checks.add(
            "raw gateway events = successful gateway calls (count, tokens, cost)",
            raw_gateway["events"] == gateway.ok
            and raw_gateway["cost"] == gateway.cost
            and all(raw_gateway[n] == gateway.tokens[n] for n in TOKEN_FIELDS),
            f"raw {raw_gateway['events']} events / {raw_gateway['cost']} USD; "
            f"calls {gateway.calls}, ok {gateway.ok} / {gateway.cost}",
        )
        checks.add(
            "raw total = generator total; nothing unpriced, nothing not ok",
            same(raw, sent) and raw["unpriced"] == 0 and raw["not_ok"] == 0 and raw["events"] == raw["distinct_ids"],
            f"{raw['events']} events, {raw['cost']} USD",
        )
        checks.add("hourly rollups = raw exactly", same(hourly, raw), {k: hourly[k] for k in ("events", "cost")})
        checks.add("daily rollups = raw exactly", same(daily, raw), {k: daily[k] for k in ("events", "cost")})

        tenant = Tenant.objects.get(pk=tenant_id)
        periods = months_between(started_at, ended_at)
        invoiced = Decimal(0)
        all_reconciled = True
        for period in periods:
            draft_invoices(tenant=tenant, period=period, force=True)
            reconciliation = reconcile_period(tenant=tenant, period=period)
            all_reconciled &= reconciliation.ok
            for row in reconciliation.mismatches:
                print(f"  mismatch {period:%Y-%m} {row.department}: raw {row.raw} invoiced {row.invoiced}", flush=True)
            invoiced += sum(
                InvoiceLine.objects.filter(
                    invoice__tenant=tenant, invoice__period=period, kind=InvoiceLine.Kind.USAGE
                ).values_list("list_cost_unrounded", flat=True),
                Decimal(0),
            )
        invoices = Invoice.objects.filter(tenant=tenant).count()
        checks.add("invoices reconcile with raw events (reconcile_period)", all_reconciled, f"{invoices} invoices")
        checks.add("invoice usage lines (unrounded) = generator cost", invoiced == sent["cost"], f"{invoiced} USD")

        growth = {k: v["growth_first_to_last_third_mb"] for k, v in report["memory"].items()}
        checks.add(
            f"no process grew by more than {args.max_growth_mb:g} MB (first → last third after warm-up)",
            all(g <= args.max_growth_mb for g in growth.values()),
            ", ".join(f"{k} {v:+.1f}" for k, v in growth.items()),
        )
        restarted = {k: v["pids"] for k, v in report["memory"].items() if len(v["pids"]) > 1}
        checks.add("no process restarted during the run", not restarted, restarted or "")
        report["totals"] = {
            "sent": sent,
            "raw": raw,
            "hourly": hourly,
            "daily": daily,
            "invoiced_usage_unrounded": invoiced,
            "periods": [p.isoformat() for p in periods],
        }
    except KeyboardInterrupt:
        print("interrupted: stopping every process", file=sys.stderr, flush=True)
        checks.add("run completed", False, "interrupted")
    except Exception as exc:
        checks.add("run completed", False, repr(exc))
        raise
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave orphans.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_load.set()
        stop_sampler.set()
        procs.stop_all()
        report["checks"] = [{"check": n, "ok": ok, "detail": d} for n, ok, d in checks.results]
        report["pass"] = checks.ok
        summary = HERE / f"results-{args.minutes:g}min.json"
        summary.write_text(json.dumps(jsonable(report), indent=2) + "\n")
        print(f"{'PASS' if checks.ok else 'FAIL'} — summary {summary.relative_to(ROOT)}, series {csv_path}", flush=True)
    return 0 if checks.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
