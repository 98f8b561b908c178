"""Ingest throughput on loopback against the production stack: the Procfile's web server
(granian; `--server gunicorn` for gunicorn) + PostgreSQL + Redis.

Three phases against `POST /api/v1/usage-events`, each checked against the database afterwards:

1. **batch**: loader processes send 1,000-event JSON batches until `--batch-events` events have
   been sent. Every `--resend-every`-th request resends that process's previous batch (1,000
   duplicates on purpose) and every fresh batch repeats one id inside itself (1 duplicate). The
   loader keeps pre-built bodies (only the ids are spliced in) and one kept-alive connection
   each, so it costs the machine as little CPU as possible. The result names how those
   connections sat on the server's processes (`connections_per_worker`): under granian a
   2/2, 3/1 or 4/0 split of four connections on two workers moves the rate by ~15 % (one
   worker's GIL caps it at ~48k events/s on the development box); gunicorn's sync workers
   take a connection only when idle (`--server gunicorn --worker-class sync --workers 3`, as
   the batch target is measured in docs/PERFORMANCE.md).
2. **single, closed loop**: `wrk` (C, Lua script) posts one event per request from 32
   connections for `--single-seconds`, as fast as the server answers; every 50th request
   repeats the previous id. The most the server does; its p50/p99 (from wrk) are those of a
   saturated server, where 32 waiting clients make the latency (Little's law: 32 / rate).
3. **single, open loop**: `bench/ingest/openloop.c` sends one event per request at each fixed
   rate of `--open-rates` (after `--open-warm-seconds` at that rate that are not counted), and
   times every request from when it was due, as wrk2 does: the latency a client sees at that
   load, stalls included.

Afterwards the rows of the run's tenant are counted: stored == unique ids sent (0 lost) and no
id stored twice (0 double-counted), and the server's accepted/duplicates answers must add up.
Every phase reports the CPU it cost (web server, PostgreSQL sessions and background processes,
load generator).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmobs_ingest REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/ingest/run.py --port 8300 --batch-events 2000000
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import servers  # noqa: E402

PYTHON = sys.executable
PATH = "/api/v1/usage-events"
DEPARTMENTS = ["research", "sales", "support", "engineering", "marketing", "finance"]
MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("anthropic", "claude-sonnet-4-20250514"),
    ("google", "gemini-2.0-flash"),
    ("openai", "o3-mini"),
    ("ollama", "llama3.1:8b"),
]
ID_MARK = b"@@ID@@"


# --- setup --------------------------------------------------------------------------------------


def django_setup():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmobs.settings")
    import django

    django.setup()


def prepare(run_id: str) -> tuple[int, str]:
    """Migrate, make sure the price catalogue is loaded, create this run's tenant and key."""
    django_setup()
    from django.core.management import call_command

    from chargeback.keys import create_api_key
    from chargeback.models import Department, ModelPrice, Tenant

    call_command("migrate", verbosity=0)
    if not ModelPrice.objects.filter(tenant=None).exists():
        call_command("load_prices", verbosity=0)
    tenant = Tenant.objects.create(name=f"Bench {run_id}", slug=f"bench-{run_id}")
    for code in DEPARTMENTS:
        Department.objects.create(tenant=tenant, code=code, name=code.title())
    # A limit far above what the run sends: every request is counted, a lease of 64 at a time
    # (telemetry/ratelimit.py), as for any key allowing 6,400 requests a minute or more.
    _, token = create_api_key(tenant=tenant, name="bench", rpm_limit=10_000_000)
    return tenant.pk, token


def verify(tenant_id: int, prefix: str) -> dict[str, int]:
    django_setup()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM telemetry_usageevent "
            "WHERE tenant_id = %s AND event_id LIKE %s",
            [tenant_id, prefix + "%"],
        )
        rows, distinct = cursor.fetchone()
        cursor.execute(
            "SELECT count(*) FROM telemetry_usageevent WHERE tenant_id = %s AND event_id LIKE %s AND cost IS NULL",
            [tenant_id, prefix + "%"],
        )
        unpriced = cursor.fetchone()[0]
    return {"rows": rows, "distinct_ids": distinct, "unpriced": unpriced}


# --- event templates ------------------------------------------------------------------------------


def event_pool(size: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    pool = []
    for _ in range(size):
        provider, model = rng.choice(MODELS)
        cached = rng.choice([0, 0, 512, 1024])
        inp = cached + rng.randint(50, 4000)
        out = rng.randint(10, 1500)
        event = {
            "event_id": "",
            "timestamp": (now - timedelta(seconds=rng.randint(0, 3600))).isoformat(timespec="milliseconds"),
            "department": rng.choice(DEPARTMENTS),
            "user": f"user{rng.randint(1, 500)}@example.com",
            "provider": provider,
            "model": model,
            "operation": "chat",
            "usage": {"input_tokens": inp, "cache_read_input_tokens": cached, "output_tokens": out},
            "latency_ms": rng.randint(200, 9000),
            "ttft_ms": rng.randint(50, 900),
            "status": "ok" if rng.random() > 0.02 else "error",
            "feature": rng.choice(["chat", "search", "summarise", "support-bot"]),
            "tags": {"env": "prod", "team": rng.choice(["a", "b", "c"])},
        }
        if event["status"] == "error":
            event["error_type"] = "rate_limit"
        pool.append(event)
    return pool


def batch_template(pool: list[dict], size: int) -> list[bytes]:
    """A JSON array split around each event_id value, so a body is one bytes.join."""
    events = []
    for i in range(size):
        event = dict(pool[i % len(pool)])
        event["event_id"] = "@@ID@@"
        events.append(event)
    raw = json.dumps(events, separators=(",", ":")).encode()
    return raw.split(ID_MARK)


def splice(parts: list[bytes], ids: list[bytes]) -> bytes:
    out = [parts[0]]
    for event_id, part in zip(ids, parts[1:], strict=True):
        out.append(event_id)
        out.append(part)
    return b"".join(out)


# --- batch loader -----------------------------------------------------------------------------------


def post(port: int, token: str, body: bytes, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    """POST one body; on `conn` when given (kept alive between requests: http.client reconnects
    by itself when a server, such as gunicorn's sync worker, closes after each answer)."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for attempt in range(2):
        try:
            conn.request("POST", PATH, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            break
        except (http.client.HTTPException, ConnectionError):
            conn.close()  # a kept-alive connection the server closed meanwhile: once more on a new one
            if attempt:
                raise
    if own:
        conn.close()
    return response.status, data


def batch_worker(args: tuple) -> dict:
    index, port, token, prefix, batches, batch_size, resend_every, start_at = args
    parts = batch_template(event_pool(2000, seed=index), batch_size)
    while time.time() < start_at:
        time.sleep(0.001)
    stats = {"requests": 0, "events": 0, "unique_sent": 0, "dups_sent": 0, "accepted": 0, "duplicates": 0}
    stats["errors"] = 0
    latencies = []
    previous = None
    seq = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for n in range(batches):
        if previous is not None and resend_every and n % resend_every == 0:
            body, unique = previous, 0
        else:
            ids = [f"{prefix}{index}-{seq + i}".encode() for i in range(batch_size - 1)]
            ids.append(ids[0])  # one repeat inside the batch
            seq += batch_size - 1
            body, unique = splice(parts, ids), batch_size - 1
            previous = body
        began = time.perf_counter()
        status, data = post(port, token, body, conn)
        latencies.append(time.perf_counter() - began)
        stats["requests"] += 1
        stats["events"] += batch_size
        stats["unique_sent"] += unique
        stats["dups_sent"] += batch_size - unique
        if status == 202:
            answer = json.loads(data)
            stats["accepted"] += answer["accepted"]
            stats["duplicates"] += answer["duplicates"]
        else:
            stats["errors"] += 1
            if stats["errors"] <= 3:
                print(f"loader {index}: HTTP {status} {data[:300]!r}", file=sys.stderr)
    conn.close()
    stats["latencies"] = latencies
    stats["finished_at"] = time.time()
    return stats


def run_batches(
    port: int, token: str, prefix: str, total_events: int, loaders: int, batch_size: int, resend_every: int
):
    batches = -(-total_events // batch_size)
    per = [batches // loaders + (1 if i < batches % loaders else 0) for i in range(loaders)]
    start_at = time.time() + 1.0
    with mp.Pool(loaders) as pool:
        results = pool.map(
            batch_worker,
            [(i, port, token, prefix, per[i], batch_size, resend_every, start_at) for i in range(loaders)],
        )
    elapsed = max(r["finished_at"] for r in results) - start_at
    total = {
        k: sum(r[k] for r in results)
        for k in ("requests", "events", "unique_sent", "dups_sent", "accepted", "duplicates", "errors")
    }
    latencies = sorted(x for r in results for x in r["latencies"])
    total["elapsed_s"] = round(elapsed, 2)
    total["events_per_s"] = round(total["events"] / elapsed)
    total["accepted_per_s"] = round(total["accepted"] / elapsed)
    total["batch_p50_ms"] = round(latencies[len(latencies) // 2] * 1000, 1)
    total["batch_p99_ms"] = round(latencies[int(len(latencies) * 0.99)] * 1000, 1)
    return total


# --- single-event phase (wrk) ---------------------------------------------------------------------------

WRK_SCRIPT = r"""
local token, prefix, template = "%(token)s", "%(prefix)s", [[%(template)s]]
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  sent, dups = 0, 0
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Content-Type"] = "application/json"
end
local last = nil
function request()
  local id
  if last ~= nil and sent %% 50 == 49 then
    id = last
    dups = dups + 1
  else
    counter = counter + 1
    id = prefix .. tid .. "-" .. counter
    last = id
  end
  sent = sent + 1
  return wrk.format(nil, nil, nil, (template:gsub("@@ID@@", id)))
end
function done(summary, latency, requests)
  local s, d = 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
    d = d + t:get("dups")
  end
  io.write(string.format("LUA sent=%%d dups=%%d p50=%%.3f p90=%%.3f p99=%%.3f p999=%%.3f\n", s, d,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000))
end
"""


def run_single(port: int, token: str, prefix: str, seconds: int, connections: int) -> dict:
    event = event_pool(1, seed=99)[0]
    event["event_id"] = "@@ID@@"
    template = json.dumps(event, separators=(",", ":"))
    script = Path(tempfile.mkdtemp()) / "single.lua"
    script.write_text(WRK_SCRIPT % {"token": token, "prefix": prefix, "template": template})
    command = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{PATH}",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"LUA sent=(\d+) dups=(\d+) p50=([\d.]+) p90=([\d.]+) p99=([\d.]+) p999=([\d.]+)", output)
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {
        "requests": requests,
        "req_per_s": round(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))),
        "p50_ms": float(match.group(3)),
        "p90_ms": float(match.group(4)),
        "p99_ms": float(match.group(5)),
        "p999_ms": float(match.group(6)),
        # wrk counts requests it generated; those in flight at the end are generated but not sent.
        "generated": int(match.group(1)),
        "dups_generated": int(match.group(2)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
        "raw": output,
    }


OPENLOOP_SOURCE = ROOT / "bench" / "ingest" / "openloop.c"


def openloop_binary() -> Path:
    """bench/ingest/openloop.c compiled into the build cache (rebuilt when the source changes)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("A C compiler is needed for the open-loop phase (apt-get install -y gcc) or pass --skip-open.")
    out = Path(tempfile.gettempdir()) / f"llmobs-openloop-{int(OPENLOOP_SOURCE.stat().st_mtime)}"
    if not out.exists():
        subprocess.run([cc, "-O2", "-pthread", "-o", str(out), str(OPENLOOP_SOURCE)], check=True)
    return out


def openloop(port: int, token: str, prefix: str, rate: int, seconds: int, connections: int) -> dict:
    event = event_pool(1, seed=99)[0]
    event["event_id"] = "@@ID@@"
    template = Path(tempfile.mkdtemp()) / "single.json"
    template.write_text(json.dumps(event, separators=(",", ":")))
    command = [openloop_binary(), "127.0.0.1", port, PATH, token, rate, seconds, connections, prefix, template]
    output = subprocess.run([str(part) for part in command], capture_output=True, text=True, check=True).stdout
    result = json.loads(output)
    result["requests"] = result["answered"]
    return result


# --- main -------------------------------------------------------------------------------------------------


def wait_ready(port: int) -> None:
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("gunicorn did not become ready")


# --- CPU accounting ----------------------------------------------------------------------------------
# The machine is shared; wall-clock rates then depend on everyone else. CPU seconds spent by *our*
# processes (gunicorn workers, their PostgreSQL backends, the loader) do not, so each phase also
# reports its CPU cost per event and the rate that cost allows on two otherwise idle cores.

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    """Child processes of any of `pid`'s threads (granian starts its workers from a thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def connections_per_worker(server_pid: int, port: int) -> list[int]:
    """How many established client connections to `port` each server process holds, busiest
    first. Under granian a kept-alive connection stays with the worker the kernel handed it to,
    so four batch loaders can land 2/2, 3/1 or 4/0 on two workers, and a worker holding three
    is bound by its GIL while the other idles; gunicorn's sync workers accept only when idle."""
    owner = {}
    for pid in [server_pid, *children(server_pid)]:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    counts: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in owner:  # 01: ESTABLISHED
                pid = owner[fields[9]]
                counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


class SplitSampler:
    """Samples `connections_per_worker` twice a second in a thread; `stop` names the split seen
    most often and in what share of the samples (e.g. "2/2 in 97 %")."""

    def __init__(self, server_pid: int, port: int) -> None:
        self.seen: dict[str, int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(server_pid, port), daemon=True)
        self.thread.start()

    def _run(self, server_pid: int, port: int) -> None:
        while not self.done.wait(0.5):
            split = "/".join(map(str, connections_per_worker(server_pid, port))) or "none"
            self.seen[split] = self.seen.get(split, 0) + 1

    def stop(self) -> str:
        self.done.set()
        self.thread.join()
        if not self.seen:
            return "not sampled"
        split, count = max(self.seen.items(), key=lambda item: item[1])
        return f"{split} in {round(100 * count / sum(self.seen.values()))} %"


def backend_pids() -> list[int]:
    django_setup()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [row[0] for row in cursor.fetchall()]


def postgres_background_pids() -> list[int]:
    """The server's own processes that work for every session (WAL writer, checkpointer,
    background writer, autovacuum): their CPU is part of what ingest costs too."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and any(
            name in title for name in ("walwriter", "checkpointer", "background writer", "autovacuum")
        ):
            found.append(int(proc.name))
    return found


class CpuMeter:
    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.start = self.sample()
        self.children_start = os.times()

    def sample(self) -> dict[tuple[str, int], float]:
        web = [self.server_pid, *children(self.server_pid)]
        out = {("web", pid): proc_cpu(pid) for pid in web}
        out.update({("db", pid): proc_cpu(pid) for pid in backend_pids()})
        out.update({("db_background", pid): proc_cpu(pid) for pid in postgres_background_pids()})
        return out

    def stop(self, events: int) -> dict[str, float]:
        end = self.sample()
        used = {"web": 0.0, "db": 0.0, "db_background": 0.0}
        for key, value in end.items():
            used[key[0]] += value - self.start.get(key, 0.0)
        times = os.times()
        used["loader"] = (
            times.children_user
            + times.children_system
            - self.children_start.children_user
            - self.children_start.children_system
        )
        total = sum(used.values())
        return {
            "cpu_s_web": round(used["web"], 1),
            "cpu_s_postgres": round(used["db"], 1),
            "cpu_s_postgres_background": round(used["db_background"], 1),
            "cpu_s_loader": round(used["loader"], 1),
            "cpu_ms_per_1000_events": round(total / events * 1_000_000, 1),
            "rate_on_2_idle_cores": round(2 * events / total) if total else 0,
        }


def cpu_load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--server", choices=servers.SERVERS, default="granian", help="granian, as in the Procfile")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (gunicorn: gthread only)")
    parser.add_argument("--worker-class", default="gthread", help="gunicorn only: gthread or sync")
    parser.add_argument("--batch-events", type=int, default=2_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--loaders", type=int, default=4)
    parser.add_argument("--resend-every", type=int, default=20)
    parser.add_argument("--single-seconds", type=int, default=30)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument(
        "--open-rates",
        default="1500",
        help="comma-separated fixed rates (req/s) for the open-loop phase, each for --open-seconds",
    )
    parser.add_argument("--open-seconds", type=int, default=30)
    parser.add_argument("--open-connections", type=int, default=64)
    parser.add_argument("--open-warm-seconds", type=int, default=5, help="uncounted seconds at each rate first")
    parser.add_argument("--skip-open", action="store_true")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to a PostgreSQL database (and REDIS_URL): this measures production.")
    if not args.skip_single and not shutil.which("wrk"):
        raise SystemExit("wrk is needed for the single-event phase (apt-get install -y wrk) or pass --skip-single.")

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", args.port)) == 0:
            # granian binds with SO_REUSEPORT: a leftover server would silently take half the load.
            raise SystemExit(f"Something already listens on port {args.port}; stop it first.")
    run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    ctx = mp.get_context("fork")
    setup = ctx.Pool(1)
    tenant_id, token = setup.apply(prepare, (run_id,))
    setup.close()

    # Connections live for the whole run so the CPU of their PostgreSQL backends can be counted.
    env = dict(os.environ, DEBUG="false", LOG_LEVEL="WARNING", DB_CONN_MAX_AGE="3600")
    server = subprocess.Popen(
        servers.web_command(
            args.server, port=args.port, workers=args.workers, threads=args.threads, worker_class=args.worker_class
        ),
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    report: dict = {
        "run": run_id,
        "tenant_id": tenant_id,
        "server": servers.describe(
            args.server, workers=args.workers, threads=args.threads, worker_class=args.worker_class
        ),
        "load_before": cpu_load(),
    }
    try:
        wait_ready(args.port)
        # Warm every worker (imports, price book, connections) before measuring.
        warm = splice(batch_template(event_pool(50, 7), 50), [f"warm-{i}".encode() for i in range(50)])
        for _ in range(args.workers * 4):
            post(args.port, token, warm)
        if not args.skip_batch:
            prefix = f"b{run_id}-"
            meter = CpuMeter(server.pid)
            splits = SplitSampler(server.pid, args.port)
            result = run_batches(
                args.port, token, prefix, args.batch_events, args.loaders, args.batch_size, args.resend_every
            )
            result.update(meter.stop(result["events"]))
            result["connections_per_worker"] = splits.stop()
            result.update(verify(tenant_id, prefix))
            result["lost"] = result["unique_sent"] - result["rows"]
            result["double_counted"] = result["rows"] - result["distinct_ids"]
            result["answers_add_up"] = (
                result["accepted"] == result["rows"] and result["accepted"] + result["duplicates"] == result["events"]
            )
            report["batch"] = result
            print(json.dumps({"batch": result}, indent=2), flush=True)
        if not args.skip_single:
            prefix = f"s{run_id}-"
            meter = CpuMeter(server.pid)
            result = run_single(args.port, token, prefix, args.single_seconds, args.connections)
            result.update(meter.stop(result["requests"]))
            result["cpu_ms_per_request"] = round(result.pop("cpu_ms_per_1000_events") / 1000, 3)
            result.update(verify(tenant_id, prefix))
            print(result.pop("raw"), flush=True)
            report["single"] = result
            print(json.dumps({"single": result}, indent=2), flush=True)
        if not args.skip_open:
            report["open"] = []
            for rate in (int(r) for r in args.open_rates.split(",")):
                prefix = f"o{rate}-{run_id}-"
                if args.open_warm_seconds:
                    openloop(
                        args.port, token, f"w{rate}-{run_id}-", rate, args.open_warm_seconds, args.open_connections
                    )
                meter = CpuMeter(server.pid)
                result = openloop(args.port, token, prefix, rate, args.open_seconds, args.open_connections)
                result.update(meter.stop(max(result["requests"], 1)))
                result["cpu_ms_per_request"] = round(result.pop("cpu_ms_per_1000_events") / 1000, 3)
                result.update(verify(tenant_id, prefix))
                result["lost"] = result["statuses"].get("202", 0) - result["rows"]
                report["open"].append(result)
                print(json.dumps({"open": result}, indent=2), flush=True)
    finally:
        report["load_after"] = cpu_load()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(json.dumps({k: v for k, v in report.items() if k not in ("batch", "single", "open")}))


if __name__ == "__main__":
    main()
