"""LaTeX errors go back to the llm writer with the section they are in; a PDF that still fails is reported with its log."""

from __future__ import annotations

import json

import pytest
import tiktoken

from agents.minds import make_mind
from agents.writer import latexfix
from tests.fake_openai import FakeOpenAI, Reply, Request
from tests.llm_helpers import clean_env
from tests.unit.test_writer import request, write

__all__ = ["clean_env"]
pytestmark = pytest.mark.usefixtures("clean_env")

# A letter the markup lets through (Latin, below U+0180) that pdflatex's utf8 inputenc cannot set: the build fails on
# the mind's prose. (Control characters no longer can: they are stripped before TeX sees them.)
BROKEN = "Weight decay changed how fast the model generalized\u0149 on held-out sums."
FIXED = "Weight decay changed how fast the model generalized on held-out sums."
DRAFT = {
    "title": "Weight decay and grokking", "abstract": "We study how weight decay changes grokking on modular addition.",
    "introduction": "Grokking is delayed generalization [@power2022grokking].", "related_work": "Decoupled weight decay [@loshchilov2019adamw].",
    "method": "We vary the weight decay.", "experimental_setup": "A small transformer.", "results": BROKEN,
    "limitations": "Few seeds.", "conclusion": "Weight decay matters.", "revision_notes": "",
}


@pytest.fixture(autouse=True)
def no_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tiktoken would download its encoding files at run time")

    monkeypatch.setattr(tiktoken, "get_encoding", refuse)
    monkeypatch.setattr(tiktoken, "encoding_for_model", refuse)


def schema_of(req: Request) -> str:
    return str(((req.body.get("response_format") or {}).get("json_schema") or {}).get("name", ""))


def model(fixes: list[str]):
    """The paper in one answer (with a broken results section), then the fixes in order."""

    def answer(req: Request) -> Reply:
        if schema_of(req) == "PaperDraft":
            return Reply.json(DRAFT)
        return Reply.json({"text": fixes.pop(0)})

    return answer


def writer(fake: FakeOpenAI):
    config = {"model": "fake-model", "base_url": fake.base_url, "api_key_env": "LAB_TEST_NO_SUCH_KEY", "timeout_s": 10,
              "write_by_section": False, "retries": {"backoff_s": 0.01, "backoff_max_s": 0.05}}
    return make_mind("llm", "writer", seed=0, config=config)


@pytest.mark.tex
async def test_a_latex_error_goes_back_to_the_model_and_the_fixed_section_builds() -> None:
    with FakeOpenAI(model([FIXED])) as fake:
        out, store = await write(request(), mind=writer(fake))
    asks = [r for r in fake.requests if schema_of(r) == "SectionText"]
    assert len(asks) == 1
    prompt = asks[0].last_user
    assert "results section" in prompt and "U+0149" in prompt and json.dumps(BROKEN)[1:-1] in json.dumps(prompt)
    assert out.pdf_error == "" and out.pdf and store.data[out.pdf].startswith(b"%PDF")
    tex, md = store.data[out.tex].decode(), store.data[out.markdown].decode()
    assert FIXED in tex and FIXED in md and "\u0149" not in tex + md


@pytest.mark.tex
async def test_a_pdf_that_still_fails_after_the_bounded_fixes_is_reported_with_the_log() -> None:
    with FakeOpenAI(model([BROKEN] * latexfix.FIX_ROUNDS)) as fake:
        out, store = await write(request(), mind=writer(fake))
    assert len([r for r in fake.requests if schema_of(r) == "SectionText"]) == latexfix.FIX_ROUNDS
    assert out.pdf is None and "Unicode character" in out.pdf_error and "l." in out.pdf_log
    assert out.tex in store.data and out.markdown in store.data  # the draft still goes out
