"""The literature role end to end: a NoveltyCheck in, a NoveltyVerdict with real references out."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agents.base import Context
from agents.lit.bibtex import check_citations, to_bibtex
from agents.lit.index import FtsIndex, library_path
from agents.lit.library_files import parse_bibtex, read_library_file
from agents.literature.workflow import ROLE, LiteratureContext, Settings, State
from agents.minds import make_mind
from agents.minds.base import LiteratureMind, NoveltyJudgement
from agents.templates import bundle
from bus.schema import CoPINote, CoPINoteMsg, Envelope, Idea, NoteAck, NoveltyCheck, NoveltyVerdict, StepFailed
from tests.conftest import TESTS
from tests.fakes import DictCache

LIB = TESTS / "data" / "lit"
TEMPLATE_BIB = """@inproceedings{murty2023grokking,
  title = {Grokking of Hierarchical Structure in Vanilla Transformers},
  author = {Murty, Shikhar and Sharma, Pratyusha and Andreas, Jacob and Manning, Christopher D.},
  booktitle = {Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics},
  year = {2023}
}

@article{power2022grokking,
  title = {Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets},
  author = {Power, Alethea and Burda, Yuri and Edwards, Harri and Babuschkin, Igor and Misra, Vedant},
  journal = {arXiv preprint arXiv:2201.02177},
  year = {2022}
}
"""

DROPOUT = Idea(
    id="i-dropout",
    title="Dropout to prevent overfitting in neural networks",
    hypothesis="Dropout prevents neural networks from overfitting the training set.",
    falsification="Validation loss does not improve with dropout.",
    changes={"dropout": 0.5},
)
WEIGHT_DECAY = Idea(
    id="i-wd",
    title="Stronger weight decay speeds up grokking on modular addition",
    hypothesis="Raising weight decay makes a small transformer grok modular addition in fewer steps.",
    falsification="Steps to 99% validation accuracy do not drop.",
    changes={"weight_decay": 1.0},
)


class FakeStore:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    async def put(self, name: str, data: bytes) -> str:
        self.objects[name] = data
        return name

    async def get(self, name: str) -> bytes:
        return self.objects[name]

    async def list(self, prefix: str) -> list[str]:
        return [n for n in self.objects if n.startswith(prefix)]


@pytest.fixture
def lab_home(tmp_path: Path) -> Path:
    index = FtsIndex(library_path(tmp_path / "home"))
    index.upsert(read_library_file(LIB / "library.bib").refs)
    index.close()
    return tmp_path / "home"


@pytest.fixture
def store(tmp_path: Path) -> FakeStore:
    folder = tmp_path / "grokking"
    folder.mkdir()
    (folder / "references.bib").write_text(TEMPLATE_BIB)
    (folder / "experiment.py").write_text("print('not run here')\n")
    return FakeStore({"p1/template.tar.gz": bundle(folder), "p1/garbage.tar.gz": b"not a tarball"})


def context(store: FakeStore, cache: DictCache | None, lab_home: Path, mind: Any = None, literature: dict[str, Any] | None = None) -> LiteratureContext:
    return LiteratureContext(
        project="p1",
        role="literature",
        state=State(),
        artifacts=store,
        mind=mind or make_mind("offline", "literature", seed=7),
        cache=cache,
        settings=Settings.model_validate(literature or {}),
        lab_home=lab_home,
    )


def check(idea: Idea, template_object: str = "p1/template.tar.gz") -> Envelope:
    body = NoveltyCheck(
        idea=idea,
        template="grokking",
        template_object=template_object,
        task="Train a small transformer on modular arithmetic and measure when it generalizes.",
        keywords=["grokking", "modular arithmetic", "generalization"],
    )
    return Envelope(project="p1", sender="pi", recipient="literature", body=body)


async def run(ctx: Context, env: Envelope) -> NoveltyVerdict:
    await ROLE().handle(env, ctx)
    assert len(ctx.outputs) == 1
    verdict, to = ctx.outputs[0]
    assert to == "pi" and isinstance(verdict, NoveltyVerdict)
    return verdict


def mentioned_keys(text: str, keys: set[str]) -> set[str]:
    return {w for w in re.findall(r"[A-Za-z0-9]+", text) if w in keys}


async def test_not_novel_when_a_found_paper_studies_the_change(store: FakeStore, lab_home: Path) -> None:
    with capture_logs() as logs:
        verdict = await run(context(store, DictCache(), lab_home), check(DROPOUT))
    assert verdict.idea_id == "i-dropout" and verdict.novel is False
    assert "srivastava2014dropout" in verdict.justification
    keys = {r.key for r in verdict.references}
    assert "srivastava2014dropout" in keys and len(keys) == len(verdict.references)
    # Only real entries: each reference's BibTeX parses back to itself.
    parsed = parse_bibtex(to_bibtex(verdict.references))
    assert not parsed.problems and [r.key for r in parsed.refs] == [r.key for r in verdict.references]
    # Every key the justification names is a found reference, so a writer can \cite it.
    named = mentioned_keys(verdict.justification, keys)
    check_citations("\\cite{" + ",".join(sorted(named)) + "}", to_bibtex(verdict.references))
    assert verdict.queries and len(verdict.queries) <= 9
    assert set(verdict.sources) <= {"local", "template"} and "local" in verdict.sources
    events = [e for e in logs if e["event"] == "lit_query"]
    assert [e["query"] for e in events] == verdict.queries
    assert all(e["answered_by"] for e in events)


async def test_novel_idea_names_the_closest_works_from_both_libraries(store: FakeStore, lab_home: Path) -> None:
    verdict = await run(context(store, DictCache(), lab_home), check(WEIGHT_DECAY))
    assert verdict.novel is True and "Closest" in verdict.justification
    keys = {r.key for r in verdict.references}
    assert {"krogh1991simple", "loshchilov2019decoupled"} & mentioned_keys(verdict.justification, keys)
    assert "murty2023grokking" in keys  # only the template's bib has it
    assert verdict.sources[:1] == ["local"] and "template" in verdict.sources
    by_key = {r.key: r for r in verdict.references}
    assert by_key["murty2023grokking"].source == "template" and by_key["krogh1991simple"].source == "local"


async def test_second_identical_check_is_served_from_the_cache(
    store: FakeStore, lab_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DictCache()
    first = await run(context(store, cache, lab_home), check(WEIGHT_DECAY))
    assert cache.hits == 0 and cache.puts > 0
    searches = []
    original = FtsIndex.search
    monkeypatch.setattr(FtsIndex, "search", lambda self, q, n=10: searches.append(q) or original(self, q, n))
    puts = cache.puts
    second = await run(context(store, cache, lab_home), check(WEIGHT_DECAY))
    assert second == first
    assert searches == [] and cache.puts == puts and cache.hits == puts
    # A changed library changes the cache key: the new entry is found, not a stale answer.
    index = FtsIndex(library_path(lab_home))
    index.upsert(parse_bibtex(
        "@inproceedings{nakkiran2020deep,\n  title = {Deep Double Descent: Where Bigger Models and More Data Hurt},\n"
        "  author = {Nakkiran, Preetum and Kaplun, Gal and Bansal, Yamini and Yang, Tristan and Barak, Boaz and Sutskever, Ilya},\n"
        "  booktitle = {International Conference on Learning Representations},\n  year = {2020},\n"
        "  abstract = {weight decay grokking modular addition}\n}\n"
    ).refs)
    index.close()
    third = await run(context(store, cache, lab_home), check(WEIGHT_DECAY))
    assert searches and "nakkiran2020deep" in {r.key for r in third.references}


async def test_no_cache_and_no_sources_says_the_search_was_empty(tmp_path: Path) -> None:
    ctx = context(FakeStore({}), None, tmp_path / "empty-home")
    verdict = await run(ctx, check(WEIGHT_DECAY, template_object=""))
    assert verdict.references == [] and verdict.sources == []
    assert "found no papers" in verdict.justification and "template: no template bundle given" in verdict.justification
    assert ctx.state == State()  # the verdict goes to the PI; nothing is kept


def test_state_stored_by_an_older_lab_still_loads() -> None:
    """Older labs stored each novelty verdict (written, never read); the field is gone and ignored on load."""
    state = State.model_validate({"verdicts": {"i-wd": True}, "extra_queries": ["grokking"]})
    assert state == State(extra_queries=["grokking"])


@pytest.mark.parametrize("obj", ["p1/garbage.tar.gz", "p1/missing.tar.gz"])
async def test_bad_template_bundle_is_skipped_not_fatal(store: FakeStore, lab_home: Path, obj: str) -> None:
    with capture_logs() as logs:
        verdict = await run(context(store, DictCache(), lab_home), check(DROPOUT, template_object=obj))
    assert verdict.novel is False and verdict.sources == ["local"]
    skipped = [e for e in logs if e["event"] == "lit_source_skipped"]
    assert skipped and skipped[0]["source"] == "template" and obj in skipped[0]["reason"]


async def test_a_failing_source_becomes_an_empty_answer(
    store: FakeStore, lab_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: FtsIndex, q: str, n: int = 10) -> list:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(FtsIndex, "search", broken)
    with capture_logs() as logs:
        verdict = await run(context(store, DictCache(), lab_home), check(DROPOUT))
    assert verdict.references == [] and verdict.sources == []
    assert any(e["event"] == "lit_source_failed" and "disk on fire" in e["reason"] for e in logs)


class InventingMind:
    """A mind that cites a paper nobody found (what an LLM may do)."""

    async def queries(self, idea: Idea, task: str, found: list, round: int) -> list[str]:
        return ["weight decay"] if round == 0 else []

    async def judge_novelty(self, idea: Idea, found: list, task: str = "") -> NoveltyJudgement:
        return NoveltyJudgement(novel=True, justification="see made2024up", cited_keys=["made2024up", found[0].key])


async def test_invented_citations_are_dropped(store: FakeStore, lab_home: Path) -> None:
    assert isinstance(InventingMind(), LiteratureMind)
    verdict = await run(context(store, None, lab_home, mind=InventingMind()), check(WEIGHT_DECAY))
    assert verdict.queries == ["weight decay"]
    assert "made2024up" not in {r.key for r in verdict.references}
    assert verdict.references[0].key in {"loshchilov2019decoupled", "krogh1991simple"}


class BrokenMind(InventingMind):
    async def judge_novelty(self, idea: Idea, found: list, task: str = "") -> NoveltyJudgement:
        raise TimeoutError("model endpoint timed out")


async def test_mind_failure_is_a_step_failed_to_the_pi(store: FakeStore, lab_home: Path) -> None:
    ctx = context(store, None, lab_home, mind=BrokenMind())
    await ROLE().handle(check(WEIGHT_DECAY), ctx)
    [(body, to)] = ctx.outputs
    assert to == "pi" and isinstance(body, StepFailed) and body.ref == "i-wd" and "timed out" in body.reason


async def test_offline_mind_is_deterministic_and_refines_from_found(store: FakeStore, lab_home: Path) -> None:
    a = await run(context(store, None, lab_home), check(WEIGHT_DECAY))
    b = await run(context(store, None, lab_home), check(WEIGHT_DECAY))
    assert a == b
    assert a.queries[0] == WEIGHT_DECAY.title and "weight decay grokking modular arithmetic" in a.queries
    assert len(a.queries) > 3  # later rounds added queries built from found titles
    assert all(q.startswith("weight decay ") for q in a.queries[3:])


async def test_copi_note_adds_a_quoted_query(store: FakeStore, lab_home: Path) -> None:
    ctx = context(store, None, lab_home)
    note = CoPINote(id="n1", text='Please also look for "double descent" papers.', to="literature")
    await ROLE().handle(Envelope(project="p1", sender="copi", recipient="literature", body=CoPINoteMsg(note=note)), ctx)
    [(ack, to)] = ctx.outputs
    assert isinstance(ack, NoteAck) and ack.note_id == "n1" and "double descent" in ack.understood and to == "copi"
    ctx.outputs.clear()
    verdict = await run(ctx, check(WEIGHT_DECAY))
    assert "double descent" in verdict.queries


async def test_a_reference_search_returns_only_papers_the_paper_does_not_cite_yet(store: FakeStore, lab_home: Path) -> None:
    from bus.schema import ReferenceSearch, ReferencesFound

    ctx = context(store, DictCache(), lab_home)
    body = ReferenceSearch(item_id="r0-1", queries=["grokking", "weight decay grokking"], template_object="p1/template.tar.gz",
                           known=["power2022grokking"])
    await ROLE().handle(Envelope(project="p1", sender="pi", recipient="literature", body=body), ctx)
    (found, to), = ctx.outputs
    assert to == "pi" and isinstance(found, ReferencesFound) and found.item_id == "r0-1"
    keys = {r.key for r in found.references}
    assert "murty2023grokking" in keys and "power2022grokking" not in keys
    assert found.sources and found.reason == ""

    ctx = context(store, DictCache(), lab_home)
    body = ReferenceSearch(item_id="r0-2", queries=["zzzz qqqq"], template_object="p1/template.tar.gz")
    await ROLE().handle(Envelope(project="p1", sender="pi", recipient="literature", body=body), ctx)
    (found, _), = ctx.outputs
    assert found.references == [] and "no paper beyond the 0 already cited answered 1 queries" in found.reason


async def test_the_lab_says_once_when_it_works_from_the_local_library_only(store: FakeStore, lab_home: Path) -> None:
    from agents.literature import workflow as literature
    literature._said_local_only.discard("p1")
    with capture_logs() as logs:
        await run(context(store, DictCache(), lab_home, literature={"sources": ["local", "template"]}), check(DROPOUT))
        await run(context(store, DictCache(), lab_home, literature={"sources": ["local", "template"]}), check(WEIGHT_DECAY))
    said = [e for e in logs if e["event"] == "lit_local_only"]
    assert said[0]["message"] == "literature: web sources off (sources: local, template); working from the local library only"
    assert len(said) == 1


async def test_an_unreachable_web_source_is_said_once_and_the_local_library_answers(store: FakeStore, lab_home: Path) -> None:
    from agents.literature import workflow as literature
    literature._said_local_only.discard("p1")
    settings = {"sources": ["semantic_scholar", "local", "template"], "web": {"semantic_scholar": {"api_url": "http://127.0.0.1:9", "timeout_s": 2}}}
    with capture_logs() as logs:
        verdict = await run(context(store, DictCache(), lab_home, literature=settings), check(DROPOUT))
    assert verdict.references and "semantic_scholar" not in verdict.sources
    said = [e for e in logs if e["event"] == "lit_local_only"]
    assert len(said) == 1 and said[0]["message"] == "literature: Semantic Scholar unreachable; working from the local library only"
    assert "semantic_scholar" in said[0]["reasons"]


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_default_chain_with_the_web_unreachable_answers_fast_from_the_local_library(
    store: FakeStore, lab_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from agents.literature import workflow as literature
    from bus.retry import breaker_for

    monkeypatch.delenv("LAB_LIT_SOURCES")  # the default chain: Semantic Scholar, OpenAlex, library, template
    literature._said_local_only.discard("p1")
    s2_url, openalex_url = f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"
    settings = {"web": {"semantic_scholar": {"api_url": s2_url}, "openalex": {"api_url": openalex_url}}}
    with capture_logs() as logs:
        start = time.monotonic()
        first = await run(context(store, DictCache(), lab_home, literature=settings), check(DROPOUT))
        took = time.monotonic() - start
        again = await run(context(store, DictCache(), lab_home, literature=settings), check(WEIGHT_DECAY))
    # One retry after a refused connection waits base_wait_s (1 s) per source: a refused port must cost none.
    # The bound leaves room for a loaded machine; the breaker checks below say the same without a clock.
    assert took < 2.0, f"a refused web source cost {took:.2f} s"
    assert first.references and first.sources and set(first.sources) <= {"local", "template"}
    assert again.references and set(again.sources) <= {"local", "template"}
    said = [e for e in logs if e["event"] == "lit_local_only"]
    assert [e["message"] for e in said] == ["literature: Semantic Scholar and OpenAlex unreachable; working from the local library only"]
    # Both breakers opened: later checks do not even try the web until the cool-down ends.
    assert breaker_for(s2_url).state == breaker_for(openalex_url).state == "open"
    with capture_logs() as logs:
        await run(context(store, DictCache(), lab_home, literature=settings), check(DROPOUT))
    fast = [e["source"] for e in logs if e["event"] == "lit_source_unavailable" and "failing fast" in e["reason"]]
    assert fast == ["semantic_scholar", "openalex"]
    assert not [e for e in logs if e["event"] == "lit_local_only"]  # said once per project
