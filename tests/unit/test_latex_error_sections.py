"""pdflatex's error line names the section of the mind's text it is in, so the fix goes back to the right part."""

from __future__ import annotations

from agents.writer import latexfix


def test_the_error_line_names_the_section_it_is_in() -> None:
    tex = "\n".join([
        r"\title{T}", r"\begin{document}", r"\maketitle", r"\begin{abstract}", "abs", r"\end{abstract}",
        r"\section{Introduction}", "intro", r"\section{Experimental Setup}", "setup", r"\section*{Revisions}", "notes",
        r"\appendix", r"\section{Runs}", "runs",
    ])
    assert latexfix.failing_sections(tex, "! Undefined control sequence. l.3 \\maketitle") == ["title"]
    assert latexfix.failing_sections(tex, "! x\nl.5 abs") == ["abstract"]
    assert latexfix.failing_sections(tex, "! x\nl.8 intro") == ["introduction"]
    assert latexfix.failing_sections(tex, "! x\nl.10 setup") == ["experimental_setup"]
    assert latexfix.failing_sections(tex, "! x\nl.12 notes") == ["revision_notes"]
    assert latexfix.failing_sections(tex, "! x\nl.15 runs") == []  # the appendix is the lab's, not the mind's
    assert latexfix.failing_sections(tex, "bibtex: I couldn't open file name") == []
