"""A real OpenAI-compatible HTTP server on 127.0.0.1 that answers from a script.

Why a server and not a mock: the llm mind's retries, timeouts and token
accounting live in the HTTP path (openai's client, autogen's client, our
guard), so tests drive that path for real. Stdlib only (http.server in a
thread), so nothing else must be installed.

Use it from any test::

    from tests.fake_openai import FakeOpenAI, Reply

    with FakeOpenAI([Reply.json({"summary": "ok"}), Reply.error(429), Reply.hang(30)]) as fake:
        config = {"model": "fake", "base_url": fake.base_url}   # the llm mind's config
        ...
        assert fake.requests[0].role == "analyst"

``script`` is one of:

- a list of ``Reply``: served in call order, whoever asks;
- a dict role -> list of ``Reply``: each role (the ``X-Lab-Role`` header the
  llm mind sends) gets its own queue; a ``"*"`` key serves any other role;
- a callable ``(Request) -> Reply``: full control (e.g. answer by prompt text).

A request with nothing left to serve gets HTTP 400 ("script exhausted"),
which the mind reports at once instead of retrying. ``fake.requests`` holds
every request received (role, path, parsed JSON body, headers), in order.
Hanging replies are released when the server stops, so tests end promptly.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    content: str = ""
    status: int = 200
    hang_s: float = 0.0
    prompt_tokens: int = 11
    completion_tokens: int = 7
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, **kw: Any) -> Reply:
        return cls(content=json.dumps(obj), **kw)

    @classmethod
    def text(cls, text: str, **kw: Any) -> Reply:
        return cls(content=text, **kw)

    @classmethod
    def error(cls, status: int, message: str = "", **kw: Any) -> Reply:
        return cls(content=message or f"fake error {status}", status=status, **kw)

    @classmethod
    def hang(cls, seconds: float = 60.0) -> Reply:
        return cls(hang_s=seconds, content="{}")


@dataclass
class Request:
    path: str
    role: str
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def last_user(self) -> str:
        users = [m for m in self.messages if m.get("role") == "user"]
        return str(users[-1].get("content", "")) if users else ""


Script = list[Reply] | dict[str, list[Reply]] | Callable[[Request], Reply]


class FakeOpenAI:
    def __init__(self, script: Script) -> None:
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        if callable(script):
            self._fn: Callable[[Request], Reply] | None = script
            self._queues: dict[str, deque[Reply]] = {}
        else:
            self._fn = None
            queues = {"*": script} if isinstance(script, list) else script
            self._queues = {k: deque(v) for k, v in queues.items()}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def remaining(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next(self, request: Request) -> Reply | None:
        with self._lock:
            self.requests.append(request)
            if self._fn is not None:
                return self._fn(request)
            queue = self._queues.get(request.role) or self._queues.get("*")
            return queue.popleft() if queue else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "test"}]})
                else:
                    self._send(404, {"error": {"message": "not found", "type": "not_found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
                    return
                request = Request(self.path, self.headers.get("X-Lab-Role", ""), body, dict(self.headers.items()))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                reply = fake._next(request)
                if reply is None:
                    self._send(400, {"error": {"message": "fake server: script exhausted", "type": "invalid_request_error"}})
                    return
                if reply.hang_s:
                    fake._release.wait(reply.hang_s)
                if reply.status != 200:
                    kind = "rate_limit_exceeded" if reply.status == 429 else "server_error"
                    self._send(reply.status, {"error": {"message": reply.content, "type": kind}}, reply.headers)
                    return
                self._send(200, _completion(body.get("model", "fake"), reply), reply.headers)

        return Handler


def _completion(model: str, reply: Reply) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content}, "finish_reason": "stop", "logprobs": None}],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    }
