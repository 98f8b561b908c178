"""Drill: Redis is down (REDIS_URL points at a closed port) while the web server runs.

Expected (docs/GATEWAY.md, docs/INGEST.md): ingest still accepts and stores events; the gateway
fails open on the budget ledger and the rate limiter and answers; nothing crashes.

Usage (PostgreSQL database of your own; the server uses a port of your range):
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmobs_rel \
    /work/main/.venv/bin/python bench/drills/redis_down.py --port 8991 --dead-redis-port 9039
"""

from __future__ import annotations

import argparse
import json
import os
import time

import httpx
from common import setup_tenant, start_server  # bench/drills/common.py (puts the project on sys.path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8991)
    parser.add_argument("--dead-redis-port", type=int, default=9039)
    args = parser.parse_args()
    slug, token = setup_tenant(with_gateway=True)

    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{args.dead_redis_port}/0"}
    server = start_server(args.port, env=env, extra=("--nothreading",))
    base = f"http://127.0.0.1:{args.port}"
    results: dict[str, object] = {}
    try:
        headers = {"Authorization": f"Bearer {token}"}
        results["readyz"] = httpx.get(base + "/readyz", timeout=10).status_code
        events = [
            {"event_id": f"redis-down-{i}", "timestamp": "2026-11-01T12:00:00Z", "provider": "openai",
             "model": "gpt-4o-mini", "usage": {"input_tokens": 100, "output_tokens": 10}}
            for i in range(5)
        ]  # fmt: skip
        started = time.monotonic()
        r = httpx.post(base + "/api/v1/usage-events", json=events, headers=headers, timeout=30)
        results["ingest"] = {"status": r.status_code, "body": r.json(), "seconds": round(time.monotonic() - started, 2)}
        started = time.monotonic()
        r = httpx.post(
            base + "/v1/chat/completions", headers=headers, timeout=30,
            json={"model": "demo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20},
        )  # fmt: skip
        results["gateway"] = {"status": r.status_code, "seconds": round(time.monotonic() - started, 2),
                              "event_id": r.headers.get("X-LLMObs-Event-Id"), "body": r.text[:200]}  # fmt: skip
        from telemetry.models import UsageEvent

        time.sleep(1.5)  # the recorder thread writes gateway events within 0.2 s
        stored = UsageEvent.objects.filter(tenant__slug=slug)
        results["stored_ingest_events"] = stored.filter(event_id__startswith="redis-down-").count()
        results["stored_gateway_events"] = stored.filter(source=UsageEvent.Source.GATEWAY).count()
        results["server_alive"] = server.poll() is None
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    warnings = [line for line in output.splitlines() if "fail open" in line.lower() or "Traceback" in line]
    results["server_log_fail_open_or_traceback_lines"] = warnings[:10]
    if os.environ.get("DRILL_VERBOSE"):
        print(output)
    print(json.dumps(results, indent=2, default=str))
    ok = (
        results["ingest"]["status"] == 202
        and results["stored_ingest_events"] == 5
        and results["gateway"]["status"] == 200
        and results["stored_gateway_events"] == 1
        and results["server_alive"]
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
