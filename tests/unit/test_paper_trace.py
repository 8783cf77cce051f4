"""Every decimal the paper prints can be found in analysis.json or a run's final_info.json; the paper names its mind."""

from __future__ import annotations

import json
import re

import pytest

from agents.minds.base import PaperSections
from agents.writer import trace
from bus.schema import Usage
from tests.unit.test_writer import TOKEN, evidence, request, write


@pytest.fixture(autouse=True)
def no_pdf(monkeypatch):
    """These tests read the Markdown and LaTeX source; building the PDF (tested in test_writer) would only cost time."""
    from agents.writer import pdf

    monkeypatch.setattr(pdf, "available", lambda: False)


def decimals_of(text: str, masks: list[str]) -> list[str]:
    """An independent reading: mask identifiers from the evidence and LaTeX layout options, keep decimal tokens."""
    text = re.sub(r"\\includegraphics\[[^\]]*\]", " ", text)
    for s in masks:
        text = text.replace(s, " ")
    return [t for t in TOKEN.findall(text) if "." in t.lower().split("e")[0]]


def json_numbers(o, out=None):
    out = set() if out is None else out
    if isinstance(o, bool) or o is None:
        return out
    if isinstance(o, (int, float)):
        out.add(float(o))
    elif isinstance(o, dict):
        [json_numbers(v, out) for v in o.values()]
    elif isinstance(o, list):
        [json_numbers(v, out) for v in o]
    return out


def untraced_in(text: str, analysis: dict, final_infos: list[dict], masks: list[str]) -> list[str]:
    shown = set(analysis["display"])
    raw = json_numbers(analysis) | set().union(*(json_numbers(fi) for fi in final_infos))
    return [t for t in decimals_of(text, masks) if t not in shown and float(t) not in raw]


async def test_analysis_json_is_stored_and_every_decimal_of_the_paper_is_in_it():
    req = request()
    out, store = await write(req)
    assert out.analysis == "proj/paper/round-1/analysis.json"
    analysis = json.loads(store.data[out.analysis])
    assert analysis["report"]["correction"] == "holm" and analysis["correction"] == "holm"
    assert len(analysis["report"]["comparisons"]) == len(req.report.comparisons)
    final_infos = [r.final_info.model_dump(mode="json") for r in req.report.runs if r.final_info]
    _, masks = evidence(req)
    md, tex = store.data[out.markdown].decode(), store.data[out.tex].decode()
    found = decimals_of(md, masks)
    assert len(found) > 30  # the check has something to check: p-values, means, CIs, ...
    assert untraced_in(md, analysis, final_infos, masks) == []
    assert untraced_in(tex, analysis, final_infos, masks) == []
    # The p-values the table prints are the display strings of analysis.json, corrected ones included.
    c = req.report.comparisons[0]
    assert trace.fmt(c.p_adjusted) in analysis["display"] and trace.fmt(c.p_adjusted) in md


async def test_the_scan_fails_on_a_number_analysis_json_does_not_hold():
    req = request()
    out, store = await write(req)
    analysis = json.loads(store.data[out.analysis])
    md = store.data[out.markdown].decode() + "\nA stray measurement of 0.7777 crept in.\n"
    _, masks = evidence(req)
    assert untraced_in(md, analysis, [], masks) == ["0.7777"]
    assert trace.untraced(md, analysis, strings=masks) == ["0.7777"]


class RoundingMind:
    """Writes a mean rounded its own way (0.94 for 0.944), which analysis.json does not list."""

    usage = Usage()

    def describe(self) -> str:
        return "llm mind (models per role: writer: test-model-1)"

    async def write(self, request):
        wd1 = next(c for c in request.report.comparisons if c.idea_id == "wd-1" and c.metric == "val_acc")
        text = f"The idea reached {wd1.idea_mean:.2f} accuracy."
        return PaperSections(title="T", abstract=text, introduction=text, related_work="", method="", experimental_setup="",
                             results=text, limitations="", conclusion="")


async def test_a_mind_s_own_rounding_is_printed_as_analysis_json_prints_it():
    req = request()
    wd1 = next(c for c in req.report.comparisons if c.idea_id == "wd-1" and c.metric == "val_acc")
    out, store = await write(req, mind=RoundingMind())
    md = store.data[out.markdown].decode()
    assert f"reached {trace.fmt(wd1.idea_mean)} accuracy" in md and f"{wd1.idea_mean:.2f} accuracy" not in md
    assert "Written by the llm mind (models per role: writer: test-model-1)." in md


async def test_the_paper_names_the_offline_mind_and_the_correction():
    out, store = await write(request())
    md, tex = store.data[out.markdown].decode(), store.data[out.tex].decode()
    assert "Written by the offline mind" in md and "no language model was used" in md
    assert "Written by the offline mind" in tex
    assert "Holm's correction for multiple comparisons within each family of the 4 comparisons" in md
    assert "| p (corrected) |" in md


async def test_the_paper_says_which_ideas_were_dropped_as_not_novel():
    why = "Not novel: power2022grokking ('Grokking') already studies decay, weight on grokking: \"weight decay is among the interventions\""
    out, store = await write(request(not_novel={"weight-decay-3p0": why}))
    md = store.data[out.markdown].decode()
    related = md.split("## Related Work")[1].split("## Method")[0]
    assert "Ideas dropped before running" in related and "`weight-decay-3p0`" in related and "weight decay is among the interventions" in related
