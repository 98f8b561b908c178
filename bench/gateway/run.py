"""Gateway overhead benchmark: the same fake OpenAI upstream called directly, through our
gateway (granian as in the Procfile, or `--server gunicorn`; PostgreSQL + Redis) and through LiteLLM's proxy, in one run.

Measures, per target: non-streaming latency at concurrency 1 and 50 (wrk), max req/s, and
streaming time-to-first-token (sequential httpx). Prints a Markdown table for
docs/PERFORMANCE.md and writes results.json next to this file.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmobs_gateway REDIS_URL=redis://127.0.0.1:6379/4 \\
    LITELLM=/tmp/gw-litellm-venv/bin/litellm /work/main/.venv/bin/python bench/gateway/run.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import servers

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
UPSTREAM_PORT, GATEWAY_PORT, LITELLM_PORT = 8441, 8440, 8442
LITELLM_KEY = "sk-" + secrets.token_hex(32)
BODY = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "Say hello in one short sentence, please."}],
    "max_tokens": 64,
}


def wait_for(url: str, timeout: float = 60.0, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.post(url, json=BODY, headers=headers or {}, timeout=2.0)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def wrk(url: str, *, connections: int, seconds: int, key: str = "") -> dict[str, float]:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(HERE / "post.lua"), url],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_KEY": key},
        check=True,
    ).stdout
    match = re.search(r"RESULT rps=([\d.]+) p50=([\d.]+) p90=([\d.]+) p99=([\d.]+) errors=(\d+) non2xx=(\d+)", out)
    if not match:
        raise RuntimeError(out)
    rps, p50, p90, p99, errors, non2xx = match.groups()
    return {
        "rps": float(rps),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "errors": int(errors),
        "non2xx": int(non2xx),
    }


def _process_tree(root_pid: int) -> dict[int, float]:
    """CPU seconds (user + system, from /proc) of a process and each of its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = (int(fields[11]) + int(fields[12])) / ticks
    tree, stack = {}, [root_pid]
    while stack:
        pid = stack.pop()
        tree[pid] = stats.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root_pid: int) -> float:
    """User + system CPU of a process and all its descendants, in seconds. On a shared machine,
    CPU per request is a fairer measure of cost than wall-clock throughput."""
    return sum(_process_tree(root_pid).values())


def pause_tree(root_pid: int, paused: bool) -> None:
    """SIGSTOP (or SIGCONT) a proxy and its workers, so that while one proxy is measured the
    other's idle work (timers, background threads) takes no CPU from it."""
    for pid in _process_tree(root_pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)


def ttft(url: str, *, n: int, key: str = "") -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    samples = []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            start = time.perf_counter()
            with client.stream("POST", url, json=body, headers=headers) as response:
                response.raise_for_status()
                lines = response.iter_lines()
                for line in lines:
                    if '"content": "' in line or '"content":"' in line:
                        if '"content": ""' in line or '"content":""' in line:
                            continue
                        samples.append((time.perf_counter() - start) * 1000)
                        break
                for _line in lines:  # drain, so the next request reuses the connection
                    pass
    samples.sort()
    return {"p50": statistics.median(samples), "p99": samples[int(len(samples) * 0.99) - 1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--ttft-requests", type=int, default=300)
    parser.add_argument("--server", choices=servers.SERVERS, default="granian", help="granian, as in the Procfile")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--upstream-latency", type=float, default=0.0)
    parser.add_argument("--skip-litellm", action="store_true")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not env.get("DATABASE_URL") or not env.get("REDIS_URL"):
        sys.exit("Set DATABASE_URL (PostgreSQL) and REDIS_URL: the benchmark runs the production configuration.")
    procs: list[subprocess.Popen] = []
    metrics_dir = tempfile.mkdtemp(prefix="llmobs-prom-")
    try:
        procs.append(
            subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "tests.fakes.upstream",
                    "--port",
                    str(UPSTREAM_PORT),
                    "--latency",
                    str(args.upstream_latency),
                ],
                cwd=ROOT,
                env=env,
            )
        )
        upstream = f"http://127.0.0.1:{UPSTREAM_PORT}"
        # A fresh benchmark database needs the schema first.
        subprocess.run([PYTHON, str(ROOT / "manage.py"), "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        key = (
            subprocess.run(
                [PYTHON, str(HERE / "setup_data.py"), upstream], env=env, capture_output=True, text=True, check=True
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        procs.append(
            subprocess.Popen(
                servers.web_command(args.server, port=GATEWAY_PORT, workers=args.workers, threads=args.threads),
                cwd=ROOT,
                env={**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir, "LOG_LEVEL": "WARNING"},
            )
        )
        targets = {
            "direct": (f"{upstream}/v1/chat/completions", ""),
            "llmobs gateway": (f"http://127.0.0.1:{GATEWAY_PORT}/v1/chat/completions", key),
        }
        pids = {"direct": procs[0].pid, "llmobs gateway": procs[1].pid}
        litellm = os.environ.get("LITELLM", "litellm")
        if not args.skip_litellm:
            # LiteLLM would use DATABASE_URL/REDIS_URL if it saw them: run it without a database.
            litellm_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
            procs.append(
                subprocess.Popen(
                    [
                        litellm,
                        "--config",
                        str(HERE / "litellm_config.yaml"),
                        "--port",
                        str(LITELLM_PORT),
                        "--num_workers",
                        str(args.workers),
                        "--run_gunicorn",
                    ],
                    cwd=HERE,
                    # No database; auth by the master key only (it refuses to start without one).
                    env={
                        **litellm_env,
                        "LITELLM_LOG": "ERROR",
                        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                        "LITELLM_MASTER_KEY": LITELLM_KEY,
                    },
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            targets["LiteLLM proxy"] = (f"http://127.0.0.1:{LITELLM_PORT}/v1/chat/completions", LITELLM_KEY)
            pids["LiteLLM proxy"] = procs[-1].pid
        for url, k in targets.values():
            wait_for(url, headers={"Authorization": f"Bearer {k}"} if k else None, timeout=120)
        results: dict[str, dict] = {}
        proxies = [name for name in targets if name != "direct"]  # the upstream always runs
        for name, (url, k) in targets.items():
            for other in proxies:
                pause_tree(pids[other], paused=other != name)
            wrk(url, connections=8, seconds=3, key=k)  # warm pools and caches
            c1 = wrk(url, connections=1, seconds=args.seconds, key=k)
            cpu_before = tree_cpu_seconds(pids[name])
            c50 = wrk(url, connections=50, seconds=args.seconds, key=k)
            cpu_ms = (tree_cpu_seconds(pids[name]) - cpu_before) * 1000 / max(c50["rps"] * args.seconds, 1)
            results[name] = {
                "c1": c1,
                "c50": c50,
                "cpu_ms_per_request": cpu_ms,
                "ttft": ttft(url, n=args.ttft_requests, key=k),
            }
            print(name, json.dumps(results[name]), flush=True)
        report(results, args)
    finally:
        for proc in procs:
            pause_tree(proc.pid, paused=False)
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    direct = results["direct"]
    lines = [
        f"Upstream latency {args.upstream_latency * 1000:.0f} ms; gateway {servers.describe(args.server, workers=args.workers, threads=args.threads)}; "
        f"wrk {args.seconds} s per cell; TTFT over {args.ttft_requests} sequential streamed requests. All ms.",
        "",
        "| target | c=1 p50 | c=1 p99 | added p50 / p99 (c=1) | c=50 p50 | c=50 p99 | added p50 / p99 (c=50) | max req/s (c=50) | CPU ms / request (c=50) | TTFT p50 | added TTFT p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():

        def added(cell: str, pct: str, r=r) -> str:
            return f"{r[cell][pct] - direct[cell][pct]:+.2f}"

        lines.append(
            f"| {name} | {r['c1']['p50']:.2f} | {r['c1']['p99']:.2f} | {added('c1', 'p50')} / {added('c1', 'p99')} | "
            f"{r['c50']['p50']:.2f} | {r['c50']['p99']:.2f} | {added('c50', 'p50')} / {added('c50', 'p99')} | "
            f"{r['c50']['rps']:.0f} | {r['cpu_ms_per_request']:.2f} | {r['ttft']['p50']:.2f} | {r['ttft']['p50'] - direct['ttft']['p50']:+.2f} / "
            f"{r['ttft']['p99'] - direct['ttft']['p99']:+.2f} |"
        )
    errors = {
        name: (r["c1"]["errors"] + r["c50"]["errors"], r["c1"]["non2xx"] + r["c50"]["non2xx"])
        for name, r in results.items()
    }
    lines += ["", f"Socket errors / non-2xx per target: {errors}"]
    text = "\n".join(lines)
    print(text)
    (HERE / "results.json").write_text(json.dumps({"args": vars(args), "results": results, "table": text}, indent=2))


if __name__ == "__main__":
    main()
