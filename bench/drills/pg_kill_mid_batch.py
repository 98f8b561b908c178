"""Drill: the PostgreSQL backend serving a large ingest batch is killed mid-transaction.

A second connection holds a SHARE lock on the usage-event table, so the batch's COPY/INSERT
(ROW EXCLUSIVE) waits inside its transaction; the drill then `pg_terminate_backend`s that
waiting backend and releases the lock. Expected: the client gets a 5xx (or a dropped
connection), nothing of the batch is stored, the same batch retried is stored exactly once,
and a second retry reports every event as a duplicate.

Usage (a PostgreSQL database of your own; the server uses a port of your range):
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmobs_ops \
    .venv/bin/python bench/drills/pg_kill_mid_batch.py --port 8992 --events 2000
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import httpx
import psycopg
from common import setup_tenant, start_server  # bench/drills/common.py (puts the project on sys.path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8992)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    slug, token = setup_tenant()
    from django.db import connection

    from telemetry.models import UsageEvent

    server = start_server(args.port)
    base = f"http://127.0.0.1:{args.port}"
    headers = {"Authorization": f"Bearer {token}"}
    batch = [
        {"event_id": f"pgkill-{i:05d}", "timestamp": "2026-11-01T12:00:00Z", "provider": "openai",
         "model": "gpt-4o-mini", "usage": {"input_tokens": 100 + i, "output_tokens": 10}}
        for i in range(args.events)
    ]  # fmt: skip
    results: dict[str, object] = {"events": args.events}
    stored = UsageEvent.objects.filter(tenant__slug=slug)
    try:
        first: dict[str, object] = {}

        def post() -> None:
            try:
                r = httpx.post(base + "/api/v1/usage-events", json=batch, headers=headers, timeout=60)
                first["status"] = r.status_code
                first["body"] = r.text[:200]
            except httpx.HTTPError as exc:
                first["status"] = f"connection error: {type(exc).__name__}"

        # The locker holds the lock in its transaction; the watcher polls on its own connection
        # (pg_stat_activity is a snapshot per transaction, so the locker would never see a change).
        params = connection.get_connection_params()
        locker = psycopg.connect(**params)
        watcher = psycopg.connect(**params, autocommit=True)
        try:
            locker.execute(f"LOCK TABLE {UsageEvent._meta.db_table} IN SHARE MODE")
            client = threading.Thread(target=post)
            client.start()
            victim = None
            for _ in range(400):
                victim = watcher.execute(
                    "SELECT pid, left(query, 60) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> %s",
                    [locker.info.backend_pid],
                ).fetchone()
                if victim:
                    break
                time.sleep(0.05)
            results["killed_backend"] = {"pid": victim[0], "waiting_on": victim[1]} if victim else None
            if victim:
                watcher.execute("SELECT pg_terminate_backend(%s)", [victim[0]])
            locker.rollback()
        finally:
            locker.close()
            watcher.close()
        client.join(timeout=60)
        results["first_attempt"] = first
        results["stored_after_kill"] = stored.count()
        r = httpx.post(base + "/api/v1/usage-events", json=batch, headers=headers, timeout=60)
        body = r.json()
        results["retry"] = {
            "status": r.status_code,
            "accepted": body.get("accepted"),
            "duplicates": body.get("duplicates"),
        }
        r = httpx.post(base + "/api/v1/usage-events", json=batch, headers=headers, timeout=60)
        body = r.json()
        results["second_retry"] = {
            "status": r.status_code,
            "accepted": body.get("accepted"),
            "duplicates": body.get("duplicates"),
        }
        results["stored_final"] = stored.count()
        results["distinct_event_ids"] = stored.values("event_id").distinct().count()
        results["input_tokens_sum_ok"] = sum(stored.values_list("input_tokens", flat=True)) == sum(
            100 + i for i in range(args.events)
        )
        results["server_alive"] = server.poll() is None
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    if os.environ.get("DRILL_VERBOSE"):
        print(output)
    print(json.dumps(results, indent=2, default=str))
    status = results.get("first_attempt", {}).get("status")
    ok = (
        results.get("killed_backend") is not None
        and (not isinstance(status, int) or status >= 500)
        and results["stored_after_kill"] == 0
        and results["retry"]["accepted"] == args.events
        and results["second_retry"]["duplicates"] == args.events
        and results["stored_final"] == results["distinct_event_ids"] == args.events
        and results["input_tokens_sum_ok"]
        and results["server_alive"]
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
