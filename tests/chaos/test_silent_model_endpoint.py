"""`lab run --mind llm` against an endpoint that accepts requests and never answers ends soon, and says why.

Before the breaker, each step paid its timeout × retries, and every step did
so again: a project ran for many minutes having sent a handful of requests.
Now each agent process stops calling the endpoint after two timeouts in a
row, the step fails with the breaker's reason, and the PI ends the project
once the experiment in flight (the baseline) is in.
The server here is real (asyncio on 127.0.0.1): it reads each request and
stays silent, so the openai client, autogen and the guard all take their
real path to the timeout.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Self

import pytest
import yaml

from tests.conftest import lab_cmd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TIMEOUT_S = 1.5


class SilentServer:
    """Accepts connections, reads what is sent, answers nothing; counts the chat requests it swallowed."""

    def __init__(self) -> None:
        self.requests: list[str] = []  # the X-Lab-Role of each request
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        try:
            while chunk := await reader.read(65536):
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    if head.startswith(b"POST"):
                        role = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n") if line.lower().startswith(b"x-lab-role:")), "")
                        self.requests.append(role)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def test_a_silent_endpoint_ends_the_project_with_the_breakers_reason(lab_env, tmp_path: Path) -> None:
    home, env = lab_env
    out = tmp_path / "out"
    with SilentServer() as server:
        config = tmp_path / "mind.yaml"
        config.write_text(yaml.safe_dump({"mind": {
            "model": "silent-model",
            "base_url": server.base_url,
            "api_key_env": "LAB_E2E_NO_SUCH_KEY",
            "timeout_s": TIMEOUT_S,
            "retries": {"transport": 4, "backoff_s": 0.2, "backoff_max_s": 1.0, "breaker_after": 2, "breaker_cooldown_s": 600},
        }}))
        env = {k: v for k, v in env.items() if not k.startswith("LAB_LLM_")}
        env.update({"LAB_MIND_CONFIG": str(config), "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
        args = lab_cmd("run", "--template", "grokking", "--fast", "--mind", "llm", "--seed", "0",
                       "--max-ideas", "1", "--max-rounds", "1", "--out", str(out))
        start = time.monotonic()
        run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=500, stdin=subprocess.DEVNULL, check=False)
        took = time.monotonic() - start
        requests = list(server.requests)
    text = " ".join((run.stdout + run.stderr).split())  # the CLI wraps lines to the terminal
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted((home / "logs").glob("*.log")))

    convo = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()] if (out / "conversation.jsonl").is_file() else []
    decisions = [m["body"] for m in convo if m["body"]["type"] == "decision"]
    assert len(decisions) == 1, text[-3000:] + logs
    decision = decisions[0]
    assert decision["accepted"] is False
    reason = "is not answering (2 timeouts in a row); failing fast for"
    assert f"LLM endpoint {server.base_url} {reason}" in decision["reason"], decision
    assert reason in text, text[-3000:]
    print(f"took {took:.1f}s; requests by role: {requests}")
    # The PI's two timeouts, then nothing: no retry after the breaker opened, and no later step asked the model.
    assert requests == ["pi", "pi"], requests
    kinds = [m["body"]["type"] for m in convo]
    assert "analysis_request" not in kinds and "novelty_check" not in kinds, kinds
    # The PI's step cost about two timeouts; once the baseline in flight was in, the project ended at once.
    at = {m["body"]["type"]: datetime.fromisoformat(m["created_at"]) for m in convo}
    assert (at["experiment_request"] - at["start_project"]).total_seconds() < 2 * TIMEOUT_S + 10, at
    assert (at["decision"] - at["experiment_result"]).total_seconds() < 5, at
    assert decision["reason"].startswith("ideas failed: LLM endpoint"), decision
    # The rest is the lab's start and the baseline's --fast run (slow on a busy 2-core machine, hence the room).
    assert took < 300, took
