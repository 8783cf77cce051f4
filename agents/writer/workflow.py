"""The writer: a LaTeX paper and its Markdown twin from the analysis, and a PDF when TeX is here.

The mind writes the prose; everything else (results table, environment,
figures, references, appendix) is rendered from the records by code. Before
anything is uploaded, every number in the mind's prose must match a value in
the evidence (numbers that do not are replaced by "[?]" and logged), and
every ``\\cite`` key must be in references.bib. Minds write the small markup
of ``agents.writer.markup``; light LaTeX (``\\cite{}``, ``$p<0.05$``, ``\\%``)
is normalized into it first, so both the LLM and the offline mind render the same way.

When pdflatex fails on the mind's prose, the error and the section it names
go back to the mind (``fix_latex``) for at most ``latexfix.FIX_ROUNDS``
fixes; a PDF that still fails is reported with its log excerpt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from agents.base import Context, EmptyState, Role, on
from agents.minds.base import PaperSections, WriterMind
from agents.writer import assemble, citations, latexfix, markup, numbers, pdf, revisions, story, their_latex, trace
from bus.errors import ArtifactMissing
from bus.schema import DraftReady, DraftRequest, Envelope

TEMPLATES = Path(__file__).resolve().parent
AUTHOR = "Kenkyu Lab (automated research agents)"
WriterContext = Context[EmptyState, WriterMind]

_tex_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    block_start_string=r"\BLOCK{", block_end_string="}",
    variable_start_string=r"\VAR{", variable_end_string="}",
    comment_start_string=r"\#{", comment_end_string="}",
    trim_blocks=True, lstrip_blocks=True, autoescape=False, undefined=jinja2.StrictUndefined,
    finalize=lambda v: v if isinstance(v, markup.Tex) else markup.tex_escape("" if v is None else str(v)),
)
_md_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
)


def scrub_sections(sections: PaperSections, strings: list[str], evidence: set[float]) -> tuple[PaperSections, list[str]]:
    fields, removed = {}, []
    for name, text in sections.model_dump().items():
        fields[name], gone = numbers.scrub(markup.normalize(text), strings, evidence)
        removed += gone
    return PaperSections(**fields), removed


def describe_mind(mind: Any) -> str:
    """Which mind wrote the paper, for its byline: a reader must know whether a model was involved."""
    describe = getattr(mind, "describe", None)
    return describe() if callable(describe) else f"{type(mind).__name__} (undescribed mind)"


def canonical_sections(sections: PaperSections, strings: list[str], evidence: set[float], shown: set[str]) -> tuple[PaperSections, list[tuple[str, str]]]:
    fields, changed = {}, []
    for name, text in sections.model_dump().items():
        fields[name], c = trace.canonical(text, strings, evidence, shown)
        changed += c
    return PaperSections(**fields), changed


def date_line(request: DraftRequest) -> str:
    """Drafts sent to review say so; the accepted paper's final build says final."""
    if request.final:
        return f"Final version, accepted after review round {numbers.fmt(request.round)}"
    return f"Draft for review, round {numbers.fmt(request.round)}"


def render(request: DraftRequest, sections: PaperSections, figures: list[assemble.FigureRef], mind: str = "") -> tuple[str, str]:
    refs = {r.key: r for r in request.references}
    known = set(refs)
    rows = assemble.rows(request.report)
    common: dict[str, Any] = dict(
        author=AUTHOR,
        mind_line=f"Written by the {mind}." if mind else "",
        date_line=date_line(request),
        environment=assemble.environment_lines(request.report.runs),
        rows=[r for r in rows if r["family"] == "primary"],
        secondary_rows=[r for r in rows if r["family"] != "primary"],
        descriptive=assemble.descriptive_rows(request.report),
        table_caption=assemble.table_caption(request.report),
        revisions=assemble.revision_rows(request),
        runs=assemble.run_rows(request.report.runs),
        flags=[f.text for f in request.report.flags],
        usage=assemble.usage_rows(request),
        notes=assemble.notes(request),
        provenance_caption=assemble.PROVENANCE_CAPTION,
    )
    code = assemble.code_rows(request)
    provenance = assemble.provenance_rows(request.report.runs)
    # A diff goes into verbatim as it is: only the one sequence that would end the environment early is broken up.
    tex_code = [{**c, "summary": markup.to_tex(c["summary"], known),
                 "verbatim": markup.Tex(c["diff"].replace("\\end{verbatim}", "\\end {verbatim}"))} for c in code]
    names = [(title, getattr(sections, field)) for title, field in assemble.SECTION_ORDER]
    tex = _tex_env.get_template("paper.tex.j2").render(
        **common,
        code=tex_code,
        provenance=[{**p, "ran_in": markup.breakable(p["ran_in"])} for p in provenance],
        title=markup.inline_tex(sections.title),
        abstract=markup.to_tex(sections.abstract, known),
        sections=[{"name": n, "body": markup.to_tex(t, known)} for n, t in names],
        revision_notes=markup.to_tex(sections.revision_notes, known),
        figures=[{"file": f.file, "caption": markup.inline_tex(f.caption)} for f in figures],
        flags_tex=[markup.inline_tex(f.text) for f in request.report.flags],
        # bibtex fails on an empty bibliography, so only when something is cited
        cite_any=any(k in known for t in [sections.abstract, sections.revision_notes, *(t for _, t in names)] for k in markup.cited_keys(t)),
    )
    md = _md_env.get_template("paper.md.j2").render(
        **common,
        code=code,
        provenance=provenance,
        title=sections.title,
        abstract=markup.to_markdown(sections.abstract, refs),
        sections=[{"name": n, "body": markup.to_markdown(t, refs)} for n, t in names],
        revision_notes=markup.to_markdown(sections.revision_notes, refs),
        # Relative to paper.md, as `lab run` lays the figures out next to it.
        figures=[{"name": f"figures/{f.file}", "caption": f.caption} for f in figures],
        references=[{"key": r.key, "text": assemble.reference_line(r)} for r in refs.values()],
    )
    return tex, md


class Writer(Role):
    name = "writer"

    @on(DraftRequest)
    async def draft(self, body: DraftRequest, env: Envelope, ctx: WriterContext) -> None:
        if body.final and body.reviewed is not None:
            await self._finalise(body, body.reviewed, ctx)
            return
        evidence_doc = body.model_dump(mode="json")
        evidence = numbers.evidence_values(evidence_doc)
        mind = describe_mind(ctx.mind)
        analysis = trace.analysis_document(body, mind)
        strings = numbers.evidence_strings({**evidence_doc, "mind": mind})
        sections, removed = scrub_sections(await ctx.mind.write(body), strings, evidence)
        if removed:
            ctx.log.warning("unverified_numbers_removed", numbers=removed)
        sections, rewritten = canonical_sections(sections, strings, evidence, set(analysis["display"]))
        if rewritten:
            ctx.log.info("numbers_printed_as_in_analysis", rewritten=rewritten)
        figures, files = await self._figures(body, ctx)
        tex, md = render(body, sections, figures, mind)
        # One story or a failed draft: what disagrees goes with the draft (DraftReady.inconsistencies) for the reviewer.
        left_over = story.inconsistencies(md, body.report, body.direction)
        if left_over:
            ctx.log.error("story_inconsistent", problems=left_over)
        body, tex, md = await self._keep_promises(body, sections, figures, mind, tex, md, ctx)
        bib = citations.references_bib(body.references)
        missing = citations.unresolved(tex, bib)
        built: bytes | pdf.PdfError | None = None
        if not missing:
            built, tex, md = await self._typeset(body, sections, figures, mind, tex, md, bib, files, (strings, evidence, analysis), ctx)
        masks = strings + [f.name for f in figures] + [f"figures/{f.file}" for f in figures] + assemble.provenance_masks(body.report.runs)
        printed = numbers.tokens(md, masks)
        left = numbers.unverified(printed, evidence)
        if left:
            ctx.log.warning("unverified_numbers", numbers=left)
        untraced = trace.untraced(md, analysis, strings=masks) + trace.untraced(tex, analysis, strings=masks)
        if untraced:
            ctx.log.warning("untraced_numbers", numbers=list(dict.fromkeys(untraced)))
        base = f"{ctx.project}/paper/round-{body.round}"
        out = DraftReady(
            round=body.round,
            tex=await ctx.artifacts.put(f"{base}/paper.tex", tex.encode()),
            markdown=await ctx.artifacts.put(f"{base}/paper.md", md.encode()),
            bib=await ctx.artifacts.put(f"{base}/references.bib", bib.encode()),
            figures=[await ctx.artifacts.put(f"{base}/figures/{f.file}", files[f.file]) for f in figures],
            numbers=list(dict.fromkeys(float(t) for t in printed)),
            analysis=await ctx.artifacts.put(f"{base}/analysis.json", json.dumps(analysis, indent=2).encode()),
            inconsistencies=left_over,
        )
        if missing:
            out.pdf_error = f"unresolved citation keys: {', '.join(missing)}"
        elif isinstance(built, pdf.PdfError):
            out.pdf_error, out.pdf_log = str(built), built.excerpt
        elif built is not None:
            out.pdf = await ctx.artifacts.put(f"{base}/paper.pdf", built)
        if out.pdf_error:
            ctx.log.warning("pdf_failed", error=out.pdf_error, log=out.pdf_log)
        ctx.send(out, to="pi")

    async def _finalise(self, body: DraftRequest, reviewed: DraftReady, ctx: WriterContext) -> None:
        """The accepted draft's final build: its own text, figures and bibliography, with the final date line.

        No mind is asked: the final version must say exactly what the reviewers accepted.
        """
        draft_line, final_line = date_line(body.model_copy(update={"final": False})), date_line(body)
        tex = (await ctx.artifacts.get(reviewed.tex)).decode().replace(draft_line, final_line)
        md = (await ctx.artifacts.get(reviewed.markdown)).decode().replace(draft_line, final_line)
        bib = (await ctx.artifacts.get(reviewed.bib)).decode()
        files = {name.rsplit("/", 1)[-1]: await ctx.artifacts.get(name) for name in reviewed.figures}
        base = f"{ctx.project}/paper/final"
        out = reviewed.model_copy(update={
            "tex": await ctx.artifacts.put(f"{base}/paper.tex", tex.encode()),
            "markdown": await ctx.artifacts.put(f"{base}/paper.md", md.encode()),
            "pdf": None, "pdf_error": "", "pdf_log": "",
        })
        try:
            style = await their_latex.load(ctx.artifacts, ctx.project)  # its style files, if the draft was built in its style
            out.pdf = await ctx.artifacts.put(f"{base}/paper.pdf", await pdf.compile_pdf(tex, bib, files, extra=style.files if style else None))
        except pdf.PdfError as e:
            out.pdf_error, out.pdf_log = str(e), e.excerpt
            ctx.log.warning("pdf_failed", error=out.pdf_error, log=out.pdf_log)
        ctx.log.info("final_version", round=body.round, pdf=out.pdf)
        ctx.send(out, to="pi")

    async def _figures(self, body: DraftRequest, ctx: WriterContext) -> tuple[list[assemble.FigureRef], dict[str, bytes]]:
        """The paper's figures and their bytes: one drawn here per comparison, then the runs' own plots from the store."""
        drawn = assemble.comparison_figures(body.report, f"{ctx.project}/paper/round-{body.round}/comparisons")
        made = {f.name: png for f, png in drawn}
        figures, files = [], {}
        for f in assemble.figure_refs(body.report, [f for f, _ in drawn]):
            try:
                data = made[f.name] if f.name in made else await ctx.artifacts.get(f.name)
            except KeyError:
                ctx.log.warning("figure_missing", name=f.name)
                continue
            problem = pdf.image_problem(f.file, data)
            if problem:  # a run's fake PNG is left out, not a failed build
                ctx.log.warning("figure_invalid", name=f.name, reason=problem)
                continue
            files[f.file] = data
            figures.append(f)
        return figures, files

    async def _typeset(
        self, body: DraftRequest, sections: PaperSections, figures: list[assemble.FigureRef], mind: str, tex: str, md: str,
        bib: str, files: dict[str, bytes], checks: tuple[list[str], set[float], dict[str, Any]], ctx: WriterContext,
    ) -> tuple[bytes | pdf.PdfError, str, str]:
        """The PDF, or its error after at most FIX_ROUNDS fixes of the sections the error names; the tex and md built."""
        strings, evidence, analysis = checks
        style = await their_latex.load(ctx.artifacts, ctx.project)  # the template's own latex/template.tex, if it has one
        fix = getattr(ctx.mind, "fix_latex", None)  # minds written before fix_latex (and test doubles) offer none
        for attempt in range(latexfix.FIX_ROUNDS + 1):
            try:
                built, tex = await their_latex.compile_styled(style, tex, bib, files, ctx.log)
                return built, tex, md
            except pdf.PdfError as e:
                error = e
            failing = latexfix.failing_sections(tex, f"{error}\n{error.excerpt}")
            if attempt == latexfix.FIX_ROUNDS or not failing or fix is None:
                break
            ctx.log.warning("pdf_fix_asked", attempt=attempt + 1, sections=failing, error=str(error))
            try:
                fixed = await fix(sections, failing, error.excerpt or str(error))
            except Exception as e:  # a mind that cannot fix leaves the PDF error as it was: the draft still goes out
                ctx.log.warning("pdf_fix_unanswered", reason=f"{type(e).__name__}: {e}")
                break
            if fixed is None:
                break
            # A fixed section is the mind's prose like any other: the same number checks before it is printed.
            fixed, _ = scrub_sections(PaperSections(**{**sections.model_dump(), **{k: getattr(fixed, k) for k in failing}}), strings, evidence)
            sections, _ = canonical_sections(fixed, strings, evidence, set(analysis["display"]))
            tex, md = render(body, sections, figures, mind)
        if attempt:
            ctx.log.warning("pdf_fix_failed", fixes=attempt, error=str(error))
        return error, tex, md

    async def _keep_promises(
        self, body: DraftRequest, sections: PaperSections, figures: list[assemble.FigureRef], mind: str, tex: str, md: str, ctx: WriterContext
    ) -> tuple[DraftRequest, str, str]:
        """Turn each "act" that did not change its part of the paper into a rebuttal saying so, and re-render."""
        if body.round == 0 or not any(r.action == "act" for r in body.responses):
            return body, tex, md
        try:
            before = (await ctx.artifacts.get(f"{ctx.project}/paper/round-{body.round - 1}/paper.md")).decode()
        except (ArtifactMissing, KeyError):
            return body, tex, md
        kept = revisions.unkept(body.revision_items, body.responses, before, md)
        changed = [r.item_id for r, k in zip(body.responses, kept, strict=True) if r.action != k.action]
        if not changed:
            return body, tex, md
        ctx.log.warning("revision_not_done", items=changed)
        body = body.model_copy(update={"responses": kept})
        tex, md = render(body, sections, figures, mind)
        return body, tex, md


ROLE = Writer
