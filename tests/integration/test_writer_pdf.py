"""The writer's PDF through a real TeX engine: it builds, it survives what minds write, and a failure is one line with its log."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest

from agents.base import Context
from agents.minds.base import PaperSections
from agents.writer import numbers
from agents.writer.offline import make
from agents.writer.workflow import ROLE
from bus.schema import Envelope, ItemResponse, Reference, RevisionItem, Usage
from tests.fakes import MemoryStore
from tests.unit.test_writer import REFS, png, request, write


@pytest.fixture(scope="module")
def drafted():
    """test_writer's drafted paper, drafted once for this module (as importing its module-scoped fixture did)."""
    req = request()
    out, store = asyncio.run(write(req))
    return req, out, store


@pytest.mark.tex
def test_pdflatex_is_installed():
    assert shutil.which("pdflatex"), "pdflatex is missing: install texlive (texlive-latex-recommended, texlive-latex-extra)"


@pytest.mark.tex
def test_pdf_contents(drafted):
    req, out, store = drafted
    assert out.pdf_error == ""
    assert out.pdf == "proj/paper/round-1/paper.pdf" and store.data[out.pdf].startswith(b"%PDF")
    # The paper's figures sit next to it, named as paper.md refers to them: one per comparison (wd-1 and wd-0
    # against the baseline), then the plot a run uploaded; the analyst's per-metric charts are not repeated.
    assert out.figures == [f"proj/paper/round-1/figures/figure-{x}.png" for x in "abc"]
    assert store.data[out.figures[2]] == store.data["proj/runs/job-b1/curves.png"]
    md = store.data[out.markdown].decode()
    assert all(f"](figures/figure-{x}.png)" in md for x in "abc")
    tex = store.data[out.tex].decode()
    assert tex.count("\\includegraphics") == 3
    assert {out.tex, out.markdown, out.bib} == {f"proj/paper/round-1/paper.{x}" for x in ("tex", "md")} | {"proj/paper/round-1/references.bib"}


@pytest.mark.tex
async def test_revisions_answer_each_item():
    items = [RevisionItem(id="r1-1", kind="more_seeds", text="Run wd-0 with 5 seeds.", target="wd-0"),
             RevisionItem(id="r1-2", kind="add_limitation", text="Discuss the single task.")]
    responses = [ItemResponse(item_id="r1-1", action="act", text="Two more seeds ran and were pooled.")]
    out, store = await write(request(revision_items=items, responses=responses))
    md = store.data[out.markdown].decode()
    assert "## Revisions" in md
    assert "`r1-1` (more_seeds, `wd-0`): Run wd-0 with 5 seeds. **Response (act):** Two more seeds ran and were pooled." in md
    assert "`r1-2` (add_limitation): Discuss the single task. **Response (none):** No response was recorded" in md
    assert out.pdf_error == ""


class LyingMind:
    """A mind that invents a number, cites a paper nobody found and writes LaTeX-hostile text."""

    usage = Usage()

    async def write(self, request):
        text = "We reached 99.7 percent accuracy on 100% of inputs & beat [@ghost2020] and [@power2022grokking] with $x_1^2$ # {}."
        return PaperSections(title="A 12.5x speedup", abstract=text, introduction=text, related_work=text, method=text,
                             experimental_setup=text, results=text, limitations=text, conclusion=text)


@pytest.mark.tex
async def test_invented_numbers_and_unknown_citations_are_removed():
    out, store = await write(request(), mind=LyingMind())
    md, tex = store.data[out.markdown].decode(), store.data[out.tex].decode()
    assert "99.7" not in md and "12.5" not in md and "[?]" in md
    assert "ghost2020" not in tex and "power2022grokking" in tex
    assert out.pdf_error == "" and store.data[out.pdf].startswith(b"%PDF")


@pytest.mark.tex
async def test_latex_failure_is_one_line_not_a_crash():
    from agents.writer import pdf
    with pytest.raises(pdf.PdfError, match=r"^! Undefined control sequence"):
        await pdf.compile_pdf("\\documentclass{article}\\begin{document}\\nosuchmacro\\end{document}", "", {})


@pytest.mark.tex
async def test_a_pdf_that_does_not_build_still_gives_a_draft(monkeypatch):
    from agents.writer import pdf
    monkeypatch.setattr(pdf, "STEP_TIMEOUT_S", 0.001)
    out, store = await write(request())
    assert out.pdf is None and "took longer than" in out.pdf_error
    assert out.markdown in store.data and out.tex in store.data and out.bib in store.data


class LatexMind:
    """Writes the light LaTeX an LLM tends to produce, and a reference with Unicode pdflatex cannot set."""

    usage = Usage()

    async def write(self, request):
        c = next(c for c in request.report.comparisons if c.metric == "val_acc" and c.idea_id == "wd-1")
        text = (f"As shown by \\citet{{power2022grokking}}, decay matters~\\cite{{loshchilov2019adamw}}. "
                f"Accuracy rose to {numbers.fmt(c.idea_mean)} ($p = {numbers.fmt(c.p_value)}$, \\emph{{significant}} at $\\alpha$) "
                f"with \\texttt{{wd\\_1}} \\& more.")
        return PaperSections(title="Decay", abstract=text, introduction=text, related_work=text, method=text,
                             experimental_setup=text, results=text, limitations=text, conclusion=text)


@pytest.mark.tex
async def test_light_latex_from_a_mind_is_normalized():
    refs = [*REFS, Reference(key="zh2023", title="权重衰减 — a study", authors=["张 伟"], year=2023,
                             bibtex="@misc{zh2023, title={权重衰减 — a study}, author={张 伟}, year={2023}}")]
    out, store = await write(request(refs=refs), mind=LatexMind())
    md, tex = store.data[out.markdown].decode(), store.data[out.tex].decode()
    assert "As shown by (Power et al., 2022), decay matters (Loshchilov and Hutter, 2019)." in md
    assert "\\citet" not in md and "$" not in md and "`wd_1` & more" in md and "significant at α" in md
    assert "\\citep{power2022grokking}" in tex and "\\texttt{wd\\_1}" in tex
    assert out.pdf_error == "", out.pdf_error


class UnsetCharMind:
    """Writes a letter the markup passes (Latin, below U+0180) but pdflatex's utf8 inputenc has no glyph for: a real TeX error."""

    usage = Usage()

    async def write(self, request):
        text = "The model generalized on held-out sums \u0149 quickly."
        return PaperSections(title="Decay", abstract=text, introduction=text, related_work=text, method=text,
                             experimental_setup=text, results=text, limitations=text, conclusion=text)


@pytest.mark.tex
async def test_a_pdf_that_fails_is_reported_with_the_log_excerpt(capsys):
    out, store = await write(request(), mind=UnsetCharMind())
    assert out.pdf is None and out.pdf_error.startswith("! LaTeX Error: Unicode character") and " l." in out.pdf_error
    excerpt = out.pdf_log.splitlines()
    assert excerpt[0].startswith("!") and len(excerpt) > 1 and any(ln.startswith("l.") for ln in excerpt)
    assert out.pdf_error.split(" l.")[0] in out.pdf_log
    assert out.markdown in store.data and out.tex in store.data  # the draft still goes on, with the failure on record
    logged = capsys.readouterr().out
    assert "pdf_failed" in logged and "Unicode character" in logged  # in the writer's log too, never silent


@pytest.mark.tex
async def test_a_fake_figure_is_left_out_and_the_pdf_still_builds(capsys):
    """A run's plot.py wrote bytes that only claim to be a PNG: the figure is left out, the paper is built."""
    store = MemoryStore()
    await store.put("proj/figures/round-1/val_acc.png", png())
    await store.put("proj/runs/job-b1/curves.png", b"\x89PNG\r\n\x1a\nthis is not a PNG file")
    ctx = Context(project="proj", role="writer", state=None, artifacts=store, mind=make(0, {}))
    await ROLE().handle(Envelope(project="proj", sender="pi", recipient="writer", body=request()), ctx)
    (out, _), = ctx.outputs
    assert out.pdf_error == "" and store.data[out.pdf].startswith(b"%PDF")
    assert out.figures and all(store.data[f].startswith(b"\x89PNG") for f in out.figures)
    assert not any(store.data[f].endswith(b"this is not a PNG file") for f in out.figures)  # only real images went in
    assert store.data[out.tex].decode().count("\\includegraphics") == len(out.figures)
    logged = capsys.readouterr().out
    assert "figure_invalid" in logged and "curves.png" in logged and "does not decode" in logged


@pytest.mark.tex
async def test_an_esc_in_the_title_still_gives_a_pdf():
    refs = [REFS[0].model_copy(update={"title": "Grokking\x1b[31m: beyond \x7f overfitting\x9b"}), REFS[1]]
    out, store = await write(request(refs=refs), mind=EscMind())
    assert out.pdf_error == "", out.pdf_error + "\n" + out.pdf_log
    assert store.data[out.pdf].startswith(b"%PDF")
    for name in (out.tex, out.bib):
        text = store.data[name].decode()
        assert not any(ord(c) < 32 and c not in "\n\t" or 0x7f <= ord(c) < 0xa0 for c in text), name


class EscMind:
    """An ESC (and other control characters) in the title and the prose, as a terminal-coloured string would bring them."""

    usage = Usage()

    async def write(self, request):
        text = "Weight decay\x1b[0m matters\x07 [@power2022grokking]."
        return PaperSections(title="Decay\x1b[1m and grokking\x00", abstract=text, introduction=text, related_work=text, method=text,
                             experimental_setup=text, results=text, limitations=text, conclusion=text)


@pytest.mark.tex
async def test_compile_pdf_leaves_out_a_figure_that_does_not_decode():
    from agents.writer import pdf
    tex = ("\\documentclass{article}\\usepackage{graphicx}\\begin{document}"
           "\\includegraphics[width=2cm]{bad.png}\\includegraphics[width=2cm]{good.png}\\includegraphics{fake.jpg}\\end{document}")
    left_out: dict[str, str] = {}
    built = await pdf.compile_pdf(tex, "", {"bad.png": png()[:200], "good.png": png(), "fake.jpg": png()}, left_out)
    assert built.startswith(b"%PDF")
    assert set(left_out) == {"bad.png", "fake.jpg"} and "does not decode" in left_out["bad.png"] and "not a JPEG" in left_out["fake.jpg"]


@pytest.mark.tex
async def test_the_final_build_says_final_and_keeps_figures_and_tables_readable():
    """The accepted paper's PDF is the final version; tables are not shrunk, figures stay in the Results section."""
    import subprocess
    import tempfile
    from pathlib import Path

    from tests.unit.test_writer_story import request as char_lm_request
    from tests.unit.test_writer_story import write as write_char_lm

    out, md, tex = await write_char_lm(char_lm_request(final=True))
    assert out.pdf_error == "" and "Draft for review" not in md and "Final version" in md
    assert "\\resizebox" not in tex and "\\small" in tex and "\\tiny" not in tex and "\\scriptsize" not in tex
    assert "\\FloatBarrier" in tex and "[htbp]" in tex and not re.search(r"``[a-z]+-", tex)  # identifiers are \\texttt, never quoted
    assert tex.index("\\includegraphics") < tex.index("\\section{Limitations}")
    assert "\\texttt{dropout-0p2}" in tex
    store = MemoryStore()
    ctx = Context(project="p", role="writer", state=None, artifacts=store, mind=make(0, {}))
    await ROLE().handle(Envelope(project="p", sender="pi", recipient="writer", body=char_lm_request(final=True)), ctx)
    (final, _), = ctx.outputs
    with tempfile.TemporaryDirectory() as d:
        pdf_path = Path(d) / "paper.pdf"
        pdf_path.write_bytes(store.data[final.pdf])
        text = subprocess.run(["pdftotext", str(pdf_path), "-"], capture_output=True, text=True, check=True).stdout
    assert "Draft for review" not in text and "Final version, accepted after review round 1" in text
    assert "dropout-0p2" in text


@pytest.mark.tex
async def test_a_draft_for_review_says_so():
    from tests.unit.test_writer_story import request as char_lm_request
    from tests.unit.test_writer_story import write as write_char_lm

    out, md, _ = await write_char_lm(char_lm_request())
    assert "Draft for review, round 1" in md and "Final version" not in md


@pytest.mark.tex
async def test_the_final_version_is_the_reviewed_text_with_the_final_date_line():
    """After an accept the writer rebuilds the reviewed draft itself: no mind writes again, only the date line changes."""
    import subprocess
    import tempfile
    from pathlib import Path

    from tests.unit.test_writer_story import request as char_lm_request

    store = MemoryStore()
    ctx = Context(project="p", role="writer", state=None, artifacts=store, mind=make(0, {}))
    await ROLE().handle(Envelope(project="p", sender="pi", recipient="writer", body=char_lm_request()), ctx)
    (reviewed, _), = ctx.outputs
    md = store.data[reviewed.markdown].decode()

    class NoMind:  # a model asked again would write a paper nobody reviewed
        usage = Usage()

        async def write(self, request):
            raise AssertionError("the final build asked the mind to write")

    final_ctx = Context(project="p", role="writer", state=None, artifacts=store, mind=NoMind())
    final_req = char_lm_request(final=True, reviewed=reviewed)
    await ROLE().handle(Envelope(project="p", sender="pi", recipient="writer", body=final_req), final_ctx)
    (final, _), = final_ctx.outputs
    final_md = store.data[final.markdown].decode()
    assert final.markdown != reviewed.markdown and final.pdf and final.pdf_error == ""
    assert final_md == md.replace("Draft for review, round 1", "Final version, accepted after review round 1")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "paper.pdf"
        path.write_bytes(store.data[final.pdf])
        text = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout
    assert "Draft for review" not in text and "Final version, accepted after review round 1" in text


@pytest.mark.tex
async def test_the_provenance_table_typesets_with_long_images_and_paths():
    """An image reference with its digest and an interpreter's path in the provenance table build (a long cell wraps)."""
    from tests.unit.test_writer import RUNS
    env = RUNS[0].environment.model_copy(update={
        "image": "registry.example.org/kenkyu/lab-runner_gpu@sha256:" + "0f" * 32, "code_sha256": "ab" * 32,
        "interpreter": "/opt/conda/envs/lab_env/bin/python3.11 3.11.9"})
    out, store = await write(request(runs=[r.model_copy(update={"environment": env}) if r.environment else r for r in RUNS]))
    assert out.pdf_error == "", out.pdf_log
    assert "\\section{Provenance}" in store.data[out.tex].decode()
