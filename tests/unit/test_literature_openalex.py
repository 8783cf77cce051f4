"""OpenAlex through pyalex against a local HTTP server (the response is in OpenAlex's /works shape)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyalex
import pytest

from agents.lit.errors import RateLimited
from agents.lit.openalex import OpenAlexSource

# Metadata of a real work (Kingma & Ba, Adam), laid out as OpenAlex's /works search answers.
WORKS = {
    "meta": {"count": 1, "db_response_time_ms": 12, "page": 1, "per_page": 5},
    "results": [
        {
            "id": "https://openalex.org/W1522301498",
            "doi": None,
            "title": "Adam: A Method for Stochastic Optimization",
            "display_name": "Adam: A Method for Stochastic Optimization",
            "publication_year": 2014,
            "type": "preprint",
            "primary_location": {"source": {"display_name": "arXiv (Cornell University)"}},
            "authorships": [
                {"author": {"display_name": "Diederik P. Kingma"}},
                {"author": {"display_name": "Jimmy Ba"}},
            ],
            "abstract_inverted_index": {"We": [0], "introduce": [1], "Adam,": [2], "an": [3], "algorithm": [4]},
        }
    ],
}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    answers: list[int] = []
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.path)
            status = answers.pop(0) if answers else 200
            body = json.dumps(WORKS if status == 200 else {"error": "slow down"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    for key in ("openalex_url", "max_retries", "email"):
        monkeypatch.setitem(pyalex.config, key, pyalex.config[key])  # restored after the test
    yield f"http://127.0.0.1:{httpd.server_address[1]}", answers, seen
    httpd.shutdown()
    httpd.server_close()


def make(url: str) -> OpenAlexSource:
    return OpenAlexSource(api_url=url, timeout_s=2.0, attempts=3, base_wait_s=0.01, max_wait_s=0.02)


async def test_search_maps_a_work_to_a_reference(server) -> None:
    url, _, seen = server
    [ref] = await make(url).search("adam optimizer", 5)
    assert ref.key == "kingma2014adam" and ref.year == 2014 and ref.authors == ["Diederik P. Kingma", "Jimmy Ba"]
    assert ref.abstract == "We introduce Adam, an algorithm" and ref.source == "openalex"
    assert ref.venue == "arXiv (Cornell University)" and ref.bibtex.startswith("@article{kingma2014adam,")
    assert seen[0].startswith("/works?") and "search=adam" in seen[0]


async def test_429_is_retried_then_gives_up(server) -> None:
    url, answers, seen = server
    answers.extend([429])
    assert len(await make(url).search("adam", 5)) == 1 and len(seen) == 2
    answers.extend([429, 429, 429])
    with pytest.raises(RateLimited):
        await make(url).search("adam", 5)
