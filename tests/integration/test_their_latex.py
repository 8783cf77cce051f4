"""The template's own paper style: the writer fills the fixture's latex/template.tex (with its tinystyle.sty) and
falls back to the lab's style, with a logged reason, when the template's does not compile."""

from __future__ import annotations

import shutil

import pytest
from structlog.testing import capture_logs

from agents import templates
from agents.writer import their_latex
from tests.conftest import TESTS
from tests.fakes import MemoryStore
from tests.unit.test_writer import request, write

TINY = TESTS / "aisci" / "aisci_tiny"


async def draft_with(monkeypatch, bundle: bytes):
    """test_writer's draft, with the project's template bundle in the store as `lab run` puts it."""
    real_init = MemoryStore.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        self.data[their_latex.bundle_object("proj")] = bundle

    monkeypatch.setattr(MemoryStore, "__init__", init)
    with capture_logs() as logs:
        out, store = await write(request())
    return out, store, logs


@pytest.mark.tex
async def test_the_paper_is_built_in_the_templates_own_style(monkeypatch):
    out, store, logs = await draft_with(monkeypatch, templates.bundle(TINY))
    assert out.pdf_error == "" and store.data[out.pdf].startswith(b"%PDF")
    tex = store.data[out.tex].decode()
    head = tex.split("\\begin{document}")[0]
    assert "\\usepackage{tinystyle}" in head and "geometry" not in head  # their style sets the page, not the lab's
    assert "\\bibliographystyle{plain}" in tex and "plainnat" not in tex
    assert "TITLE HERE" not in tex and "filecontents" not in tex and "INTRO HERE" not in tex  # their placeholders are not the paper
    assert "\\section{Results}" in tex and "\\begin{abstract}" in tex and "\\includegraphics" in tex
    assert not [e for e in logs if e["event"] == "their_latex_failed"]


@pytest.mark.tex
async def test_a_template_style_that_does_not_compile_falls_back_to_the_labs(monkeypatch, tmp_path):
    broken = tmp_path / "aisci_tiny"
    shutil.copytree(TINY, broken)
    (broken / "latex" / "tinystyle.sty").write_text("\\ProvidesPackage{tinystyle}\n\\thisisnotamacro\n")
    out, store, logs = await draft_with(monkeypatch, templates.bundle(broken))
    assert out.pdf_error == "" and store.data[out.pdf].startswith(b"%PDF")
    tex = store.data[out.tex].decode()
    assert "tinystyle" not in tex and "\\usepackage[margin=1in]{geometry}" in tex
    [failed] = [e for e in logs if e["event"] == "their_latex_failed"]
    assert "latex/template.tex does not compile" in failed["reason"] and "thisisnotamacro" in failed["reason"]


def test_fill_keeps_their_preamble_and_adds_only_what_they_lack():
    style = their_latex.Style(
        tex="\\documentclass{article}\n\\usepackage{venue,times}\n\\title{TITLE HERE}\n\\author{A \\\\ {B}}\n"
            "\\begin{document}\nBODY\n\\bibliographystyle{venue}\n\\end{document}\n",
        files={"venue.sty": b"\\RequirePackage[round]{natbib}\n\\RequirePackage{hyperref}\n"},
    )
    lab = ("\\documentclass[11pt]{article}\n\\usepackage[margin=1in]{geometry}\n\\usepackage{booktabs}\n\\usepackage[numbers,sort]{natbib}\n"
           "\\usepackage[hidelinks]{hyperref}\n\\title{Ours}\n\\author{Kenkyu Lab}\n\\begin{document}\n\\maketitle\nOURS\n"
           "\\bibliographystyle{plainnat}\n\\bibliography{references}\n\\end{document}\n")
    filled = their_latex.fill(style, lab)
    head, body = filled.split("\\begin{document}")
    assert head.startswith("\\documentclass{article}\n\\usepackage{venue,times}") and "TITLE HERE" not in head and "{B}" not in head
    assert "\\usepackage{booktabs}" in head and "\\title{Ours}" in head and "\\author{Kenkyu Lab}" in head
    assert "natbib" not in head and "hyperref" not in head and "geometry" not in head  # loaded by their style, or theirs to decide
    assert "OURS" in body and "BODY" not in body and "\\bibliographystyle{venue}" in body
