"""The Procfile's `web` command is the production server: it starts, serves the app (both WSGI
handlers: the full stack and the ingest lane) and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_command(port: int) -> list[str]:
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    # ${NAME:-default} → default, as the shell would with nothing set; PORT is ours.
    command = line.removeprefix("web:").strip().replace("${PORT:-8000}", str(port))
    while "${" in command:
        start = command.index("${")
        end = command.index("}", start)
        command = command[:start] + command[start:end].split(":-", 1)[1] + command[end + 1 :]
    argv = shlex.split(command)
    return [sys.executable, "-m", argv[0], *argv[1:]]


@pytest.mark.slow
def test_the_procfile_web_command_serves_both_handlers_and_stops_on_sigterm():
    port = free_port()
    argv = web_command(port)
    assert argv[2] == "granian" and "--host" in argv, argv
    argv[argv.index("--host") + 1] = "127.0.0.1"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}  # embedded default
    server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60  # a loaded CI box can take many seconds to import Django
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    assert response.status == 200 and response.headers["X-Frame-Options"] == "DENY"
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the web command never answered /healthz")
                time.sleep(0.1)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/usage-events", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)  # noqa: S310 - http to our own server
        assert refused.value.code == 401  # the ingest lane: DRF authentication, no frame header
        assert refused.value.headers["X-Frame-Options"] is None
        assert refused.value.headers["X-Content-Type-Options"] == "nosniff"
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0].decode()
    assert server.returncode == 0, output
