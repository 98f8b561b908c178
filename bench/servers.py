"""The web server command lines the benchmarks start: granian (the Procfile's) or gunicorn."""

from __future__ import annotations

import sys

SERVERS = ("granian", "gunicorn")


def web_command(server: str, *, port: int, workers: int, threads: int, worker_class: str = "gthread") -> list[str]:
    """`python -m <server>` serving llmobs.wsgi on 127.0.0.1:`port` with `workers` processes of
    `threads` threads (gunicorn: `worker_class`; its sync workers take no threads)."""
    if server == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", str(workers),
            "--blocking-threads", str(threads), "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--backlog", "2048", "llmobs.wsgi:application",
        ]  # fmt: skip
    if server == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn", "llmobs.wsgi", "--worker-class", worker_class,
            "--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
            "--backlog", "2048", *(["--threads", str(threads)] if worker_class == "gthread" else []),
        ]  # fmt: skip
    raise ValueError(f"unknown server {server!r}; one of {', '.join(SERVERS)}")


def describe(server: str, *, workers: int, threads: int, worker_class: str = "gthread") -> str:
    if server == "granian":
        return f"granian, {workers} workers × {threads} threads"
    return f"gunicorn, {workers} {worker_class} workers" + (
        f" × {threads} threads" if worker_class == "gthread" else ""
    )
