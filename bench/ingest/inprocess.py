"""CPU of one single-event ingest request in-process: the WSGI application (`llmobs.wsgi`, the
same handlers the server runs) called in one thread with the benchmark's event, no HTTP server
and no load generator. Process CPU includes the group-commit writer's thread; PostgreSQL's own
CPU is not included. Steadier than the HTTP benchmark on a shared box, so it is how session 6
measured each change before running `run.py` (docs/PERFORMANCE.md "Ingest → Session 6").

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmobs_ingest REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/ingest/inprocess.py --requests 4000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
os.environ.setdefault("DEBUG", "false")

import run as bench  # noqa: E402 - the HTTP benchmark's setup and events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument(
        "--batch", type=int, default=0, help="events per request (default: single events, as the benchmark's wrk phase)"
    )
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to a PostgreSQL database (and REDIS_URL): this measures production.")
    run_id = "ip" + time.strftime("%Y%m%d%H%M%S")
    _, token = bench.prepare(run_id)
    from llmobs.wsgi import application

    event = bench.event_pool(1, seed=99)[0]
    parts = bench.batch_template(bench.event_pool(2000, seed=1), args.batch) if args.batch else []

    def body_of(n: int) -> bytes:
        if not args.batch:
            return json.dumps({**event, "event_id": f"{run_id}-{n}"}, separators=(",", ":")).encode()
        return bench.splice(parts, [f"{run_id}-{n}-{i}".encode() for i in range(args.batch)])

    def environ(n: int) -> dict:
        body = body_of(n)
        return {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": bench.PATH,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8300",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1:8300",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_AUTHORIZATION": f"Bearer {token}",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
        }

    statuses: set[str] = set()

    def start_response(status, headers, exc_info=None):
        statuses.add(status)

    def call(env: dict) -> None:
        response = application(env, start_response)
        try:
            b"".join(response)
        finally:
            response.close()

    for n in range(200 if not args.batch else 5):  # warm: imports, price book, sessions, the writer thread
        call(environ(-n - 1))
    environs = [environ(n) for n in range(args.requests)]
    backends = [*bench.backend_pids(), connection_pid()]
    database = sum(bench.proc_cpu(pid) for pid in backends)
    wall, cpu = time.perf_counter(), time.process_time()
    for env in environs:
        call(env)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    database = sum(bench.proc_cpu(pid) for pid in backends) - database
    per = 1000 / (args.requests * max(args.batch, 1))  # per event, in ms per 1,000 when batched
    print(
        json.dumps(
            {
                "requests": args.requests,
                "events_per_request": max(args.batch, 1),
                "cpu_ms_per_request": round(1000 * cpu / args.requests, 3),
                "wall_ms_per_request": round(1000 * wall / args.requests, 3),
                "web_cpu_ms_per_1000_events": round(1000 * cpu * per, 2),
                "postgres_cpu_ms_per_1000_events": round(1000 * database * per, 2),
                "statuses": sorted(statuses),
            }
        )
    )


def connection_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


if __name__ == "__main__":
    main()
