"""A fake LLM upstream speaking the real wire formats of OpenAI (`/v1/chat/completions`, JSON
and SSE with a final usage chunk), Anthropic (`/v1/messages`, JSON and the SSE event sequence
message_start / content_block_* / message_delta / message_stop) and Ollama (`/api/chat`, JSON
and NDJSON ending in a `done` chunk with nanosecond durations).

Behaviour is scripted through `FakeUpstream.script` (latency, queued error statuses, malformed
bodies, disconnects mid-stream) and every request is kept in `requests` for assertions. Runs
in a thread (tests) or as a process (`python -m tests.fakes.upstream --port N`, benchmarks).
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORT_RANGE = range(8400, 8430)


@dataclass
class Script:
    latency: float = 0.0  # seconds before answering
    chunk_delay: float = 0.0  # seconds between stream chunks
    chunks: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    statuses: deque[int] = field(default_factory=deque)  # next requests fail with these
    malformed: int = 0  # next N requests get a broken body
    disconnect_after: int | None = None  # streams: drop the connection after N chunks
    omit_stream_usage: bool = False
    # OpenAI usage
    prompt_tokens: int = 1200
    cached_tokens: int = 1024
    completion_tokens: int = 300
    reasoning_tokens: int = 100
    # Anthropic usage (input_tokens excludes the cache counts)
    anthropic_input: int = 20
    anthropic_cache_read: int = 1000
    anthropic_cache_write: int = 200
    anthropic_output: int = 150
    # Ollama usage
    ollama_prompt: int = 26
    ollama_eval: int = 42
    model: str = ""  # served model name; empty = echo the requested one
    # Non-streamed answers: the next requests answer these texts in order (then `chunks` again),
    # e.g. a product answer followed by a judge's verdict.
    answers: deque[str] = field(default_factory=deque)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: without TCP_NODELAY, Nagle + delayed ACK add 40 ms.
    disable_nagle_algorithm = True
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        fake = self.server.fake
        script = fake.script
        with fake.lock:
            fake.requests.append(
                {"path": self.path, "body": body, "headers": {k.lower(): v for k, v in self.headers.items()}}
            )
            status = script.statuses.popleft() if script.statuses else 200
            malformed = script.malformed > 0
            if malformed:
                script.malformed -= 1
            self.answer = script.answers.popleft() if script.answers and not body.get("stream") else None
        if script.latency:
            time.sleep(script.latency)
        if status != 200:
            return self._error(status)
        if malformed:
            return self._send(200, b'{"id": "broken", "choices": [', "application/json")
        model = script.model or body.get("model", "model")
        if self.path.startswith("/v1/chat/completions"):
            return self._openai(body, model) if not body.get("stream") else self._openai_stream(body, model)
        if self.path.startswith("/v1/messages"):
            return self._anthropic(model) if not body.get("stream") else self._anthropic_stream(model)
        if self.path.startswith("/api/chat"):
            return self._ollama(model) if body.get("stream") is False else self._ollama_stream(model)
        return self._send(404, b'{"error": "not found"}', "application/json")

    # -- helpers --

    def _text(self) -> str:
        answer = getattr(self, "answer", None)
        return answer if answer is not None else "".join(self.server.fake.script.chunks)

    def _send(self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int) -> None:
        if self.path.startswith("/v1/messages"):
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
            payload = {"type": "error", "error": {"type": kind, "message": f"fake upstream error {status}"}}
        elif self.path.startswith("/api/chat"):
            payload = {"error": f"fake upstream error {status}"}
        else:
            payload = {"error": {"message": f"fake upstream error {status}", "type": "server_error", "code": None}}
        headers = {"Retry-After": "0"} if status == 429 else None
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _emit(self, data: bytes, index: int) -> bool:
        """Write one stream piece; False once the scripted disconnect point is reached."""
        limit = self.server.fake.script.disconnect_after
        if limit is not None and index >= limit:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return False
        self.wfile.write(data)
        self.wfile.flush()
        if self.server.fake.script.chunk_delay:
            time.sleep(self.server.fake.script.chunk_delay)
        return True

    # -- OpenAI --

    def _openai_usage(self) -> dict[str, Any]:
        s = self.server.fake.script
        return {
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "total_tokens": s.prompt_tokens + s.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": s.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": s.reasoning_tokens, "audio_tokens": 0},
        }

    def _openai(self, body: dict[str, Any], model: str) -> None:
        text = self._text()
        payload = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": self._openai_usage(),
        }
        self._send(200, json.dumps(payload).encode(), "application/json")

    def _openai_stream(self, body: dict[str, Any], model: str) -> None:
        script = self.server.fake.script
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        self._start_stream("text/event-stream")
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        pieces = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        ]
        pieces += [
            {**base, "choices": [{"index": 0, "delta": {"content": c}, "finish_reason": None}]} for c in script.chunks
        ]
        pieces.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if include_usage and not script.omit_stream_usage:
            pieces.append({**base, "choices": [], "usage": self._openai_usage()})
        for index, piece in enumerate(pieces):
            if not self._emit(b"data: " + json.dumps(piece).encode() + b"\n\n", index):
                return
        self._emit(b"data: [DONE]\n\n", len(pieces))

    # -- Anthropic --

    def _anthropic_usage(self, *, start: bool) -> dict[str, Any]:
        s = self.server.fake.script
        return {
            "input_tokens": s.anthropic_input,
            "cache_read_input_tokens": s.anthropic_cache_read,
            "cache_creation_input_tokens": s.anthropic_cache_write,
            # message_start carries a placeholder output count; message_delta the real total.
            "output_tokens": 1 if start else s.anthropic_output,
        }

    def _anthropic(self, model: str) -> None:
        text = self._text()
        payload = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": self._anthropic_usage(start=False),
        }
        self._send(200, json.dumps(payload).encode(), "application/json")

    def _anthropic_stream(self, model: str) -> None:
        script = self.server.fake.script
        self._start_stream("text/event-stream")
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_fake",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": self._anthropic_usage(start=True),
                    },
                },
            ),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
        ]
        events += [
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": c}},
            )
            for c in script.chunks
        ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        if not script.omit_stream_usage:
            # Cumulative usage: output_tokens is the final total, not an increment.
            events.append(
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": script.anthropic_output},
                    },
                )
            )
        events.append(("message_stop", {"type": "message_stop"}))
        for index, (name, data) in enumerate(events):
            if not self._emit(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode(), index):
                return

    # -- Ollama --

    def _ollama_final(self, model: str) -> dict[str, Any]:
        s = self.server.fake.script
        return {
            "model": model,
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "total_duration": 174_560_334,
            "load_duration": 101_397_084,
            "prompt_eval_count": s.ollama_prompt,
            "prompt_eval_duration": 13_074_791,
            "eval_count": s.ollama_eval,
            "eval_duration": 52_479_709,
        }

    def _ollama(self, model: str) -> None:
        final = self._ollama_final(model)
        final["message"]["content"] = self._text()
        self._send(200, json.dumps(final).encode(), "application/json")

    def _ollama_stream(self, model: str) -> None:
        script = self.server.fake.script
        self._start_stream("application/x-ndjson")
        lines = [
            {
                "model": model,
                "created_at": "2025-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": c},
                "done": False,
            }
            for c in script.chunks
        ]
        if not script.omit_stream_usage:
            lines.append(self._ollama_final(model))
        for index, line in enumerate(lines):
            if not self._emit(json.dumps(line).encode() + b"\n", index):
                return


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], fake: FakeUpstream) -> None:
        super().__init__(address, Handler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients closing keep-alive connections (load generators at the end of a run, tests
        # abandoning streams) are normal here, not errors worth a traceback.
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeUpstream:
    def __init__(self, port: int | None = None) -> None:
        self.script = Script()
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server = self._bind(port)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def _bind(self, port: int | None) -> FakeServer:
        for candidate in [port] if port else PORT_RANGE:
            try:
                return FakeServer(("127.0.0.1", candidate), self)
            except OSError:
                continue
        raise RuntimeError(f"No free port for the fake upstream in {PORT_RANGE}.")

    def start(self) -> FakeUpstream:
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.script = Script()
            self.requests.clear()

    def answer_next(self, *texts: str) -> None:
        """The next non-streamed requests answer these texts, in order."""
        with self.lock:
            self.script.answers.extend(texts)

    def fail_next(self, *statuses: int) -> None:
        with self.lock:
            self.script.statuses.extend(statuses)


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI/Anthropic/Ollama upstream.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeUpstream(port=args.port)
    fake.script.latency = args.latency
    fake.requests = _Discard()  # benchmarks: do not keep every request in memory
    fake.server.serve_forever()


class _Discard(list):
    def append(self, item: Any) -> None:
        return


if __name__ == "__main__":
    main()
