"""Semantic Scholar through the real client against a local HTTP server replaying recorded responses."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from agents.lit.chain import FallbackChain
from agents.lit.errors import RateLimited, SourceUnavailable
from agents.lit.index import FtsIndex
from agents.lit.library_files import read_library_file
from agents.lit.s2 import SemanticScholarSource
from agents.lit.sources import LocalLibrarySource
from tests.conftest import TESTS
from tests.fakes import DictCache

DATA = TESTS / "data"


class S2Server:
    """Serves recorded S2 JSON; ``script`` holds (status, body, delay_s, headers) answers used first, in order."""

    def __init__(self) -> None:
        self.script: list[tuple[int, str, float, dict[str, str]]] = []
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        self.routes = {
            "/graph/v1/paper/search": (DATA / "s2" / "search_turing.json").read_text(),
            "/graph/v1/paper/CorpusID:1033682/references": (DATA / "s2" / "references_CorpusID_1033682.json").read_text(),
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlparse(self.path)
                server.requests.append((url.path, parse_qs(url.query), dict(self.headers)))
                status, body, delay, headers = (
                    server.script.pop(0) if server.script else (200, server.routes.get(url.path, ""), 0.0, {})
                )
                if not body and status == 200:
                    status, body = 404, json.dumps({"error": "Paper not found"})
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body.encode())))
                    self.end_headers()
                    self.wfile.write(body.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def s2() -> S2Server:
    server = S2Server()
    yield server
    server.close()


def source(server: S2Server, **kw: object) -> SemanticScholarSource:
    opts = {"api_url": server.url, "timeout_s": 2.0, "attempts": 3, "budget_s": 10.0, "base_wait_s": 0.01, "max_wait_s": 0.05}
    return SemanticScholarSource(**{**opts, **kw})


async def test_search_parses_recorded_response_into_references(s2: S2Server) -> None:
    refs = await source(s2).search("turing machines", 5)
    assert [r.title for r in refs] == ["Neural Turing Machines", "Attention is Turing-Complete"]
    ntm = refs[0]
    assert ntm.key == "graves2014neural" and ntm.year == 2014 and ntm.authors[0] == "Alex Graves"
    assert ntm.paper_id == "c3823aacea60bc1f2cabb9283144690a3d015db5" and ntm.source == "semantic_scholar"
    assert ntm.bibtex.startswith("@article{graves2014neural,") and "eprint = {1410.5401}" in ntm.bibtex
    assert refs[1].key == "perez2021attention" and "P{\\'e}rez" not in refs[1].bibtex  # plain UTF-8 kept
    path, query, _ = s2.requests[0]
    assert path == "/graph/v1/paper/search" and query["query"] == ["turing machines"] and query["limit"] == ["5"]


async def test_api_key_is_sent_as_header(s2: S2Server) -> None:
    await source(s2, api_key="k-123").search("turing", 2)
    assert s2.requests[0][2].get("x-api-key") == "k-123"


async def test_429_then_success_is_retried(s2: S2Server) -> None:
    s2.script = [(429, '{"message": "Too Many Requests"}', 0.0, {"Retry-After": "0.01"})] * 2
    refs = await source(s2).search("turing", 2)
    assert len(refs) == 2 and len(s2.requests) == 3


async def test_429_until_the_budget_is_spent_is_rate_limited(s2: S2Server) -> None:
    s2.script = [(429, "{}", 0.0, {})] * 5
    with pytest.raises(RateLimited):
        await source(s2).search("turing", 2)
    assert len(s2.requests) == 3  # bounded by attempts


async def test_502_is_an_outage_not_an_empty_result(s2: S2Server) -> None:
    s2.script = [(502, "bad gateway", 0.0, {})] * 3
    with pytest.raises(SourceUnavailable, match="HTTP 502"):
        await source(s2).search("turing", 2)


async def test_timeout_then_success(s2: S2Server) -> None:
    s2.script = [(200, "{}", 1.0, {})]
    start = time.monotonic()
    refs = await source(s2, timeout_s=0.2).search("turing", 2)
    assert len(refs) == 2 and time.monotonic() - start < 1.0


async def test_persistent_timeout_is_unavailable(s2: S2Server) -> None:
    s2.script = [(200, "{}", 1.0, {})] * 2
    with pytest.raises(SourceUnavailable, match="timed out"):
        await source(s2, timeout_s=0.2, attempts=2).search("turing", 2)


async def test_empty_search(s2: S2Server) -> None:
    s2.script = [(200, (DATA / "s2" / "search_empty.json").read_text(), 0.0, {})]
    assert await source(s2).search("n0 r3sult s3arch t3rm", 5) == []


async def test_references_and_unknown_paper(s2: S2Server) -> None:
    refs = await source(s2).references("CorpusID:1033682", limit=5)
    assert [r.key for r in refs] == ["erhan2010unsupervised"]
    assert refs[0].venue == "International Conference on Artificial Intelligence and Statistics"
    assert "doi = {10.5555/1756006.1756025}" in refs[0].bibtex
    assert await source(s2).paper("CorpusID:0") is None


async def test_chain_falls_back_to_local_library_when_s2_is_unreachable(tmp_path: Path) -> None:
    index = FtsIndex(tmp_path / "lib.sqlite3")
    index.upsert(read_library_file(DATA / "lit" / "library.bib").refs)
    dead = SemanticScholarSource(api_url="http://127.0.0.1:9", timeout_s=0.5, attempts=2, base_wait_s=0.01)
    chain = FallbackChain([dead, LocalLibrarySource(index)])
    answer = await chain.search("decoupled weight decay", 3)
    assert answer.answered == ["local"] and answer.refs[0].key == "loshchilov2019decoupled"
    assert "semantic_scholar" in answer.failures and "unreachable" in answer.failures["semantic_scholar"]
    # Known down for the rest of the check: not asked again.
    again = await chain.search("adam", 3)
    assert again.answered == ["local"] and again.failures["semantic_scholar"] == answer.failures["semantic_scholar"]
    index.close()


async def test_chain_rate_limited_s2_falls_back_and_answers_are_cached(s2: S2Server, tmp_path: Path) -> None:
    index = FtsIndex(tmp_path / "lib.sqlite3")
    index.upsert(read_library_file(DATA / "lit" / "library.bib").refs)
    cache = DictCache()  # one cache for every chain and context below, as the lab's bucket is

    chain = FallbackChain([source(s2), LocalLibrarySource(index)], cache)
    first = await chain.search("attention turing", 4)
    assert first.answered == ["semantic_scholar", "local"]  # S2 gave 2, the library filled up
    assert [r.source for r in first.refs][:2] == ["semantic_scholar"] * 2
    n = len(s2.requests)
    second = await FallbackChain([source(s2), LocalLibrarySource(index)], cache).search("Attention  Turing", 4)
    assert len(s2.requests) == n and second.cache_hits == 2 and second.refs == first.refs
    s2.script = [(429, "{}", 0.0, {})] * 3
    limited = await FallbackChain([source(s2), LocalLibrarySource(index)], cache).search("adam optimizer", 4)
    assert limited.answered == ["local"] and "rate-limited" in limited.failures["semantic_scholar"]
    index.close()


def test_source_selection_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.lit.config import source_names

    monkeypatch.delenv("LAB_LIT_SOURCES", raising=False)
    assert source_names() == (["semantic_scholar", "openalex", "local", "template"], [])  # the web first, by default
    monkeypatch.setenv("LAB_LIT_SOURCES", "s2, OpenAlex,local,,template,bogus,local")
    assert source_names() == (["semantic_scholar", "openalex", "local", "template"], ["bogus"])


async def test_novelty_check_asks_s2_first_and_a_repeat_makes_no_request(s2: S2Server, tmp_path: Path) -> None:
    from agents.literature.workflow import ROLE, LiteratureContext, Settings, State
    from agents.minds import make_mind
    from bus.schema import Envelope, Idea, NoveltyCheck, NoveltyVerdict

    cache = DictCache()  # one cache for every chain and context below, as the lab's bucket is

    idea = Idea(
        id="i1",
        title="External memory for neural Turing machines",
        hypothesis="A larger external memory lets neural Turing machines learn copying from examples.",
        falsification="Copy accuracy does not improve.",
        changes={"memory_size": 128},
    )
    env = Envelope(project="p", sender="pi", recipient="literature", body=NoveltyCheck(idea=idea, template="t", task="algorithm learning"))
    settings = {
        "sources": ["semantic_scholar", "local"],
        "rounds": 2,
        "web": {"semantic_scholar": {"api_url": s2.url, "base_wait_s": 0.01, "attempts": 2}},
    }

    def ctx() -> LiteratureContext:
        return LiteratureContext(
            project="p", role="literature", state=State(), artifacts=None, mind=make_mind("offline", "literature"),
            cache=cache, settings=Settings.model_validate(settings), lab_home=tmp_path,
        )

    first = ctx()
    await ROLE().handle(env, first)
    [(verdict, to)] = first.outputs
    assert isinstance(verdict, NoveltyVerdict) and to == "pi"
    assert verdict.sources == ["semantic_scholar"]
    assert {r.key for r in verdict.references} == {"graves2014neural", "perez2021attention"}
    assert "graves2014neural" in verdict.justification
    n = len(s2.requests)
    assert n == len(verdict.queries)
    second = ctx()
    await ROLE().handle(env, second)
    assert second.outputs[0][0] == verdict and len(s2.requests) == n
