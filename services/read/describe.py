"""One line per message, for a person watching the lab think: what `lab logs`, `lab run` and the web view print for an envelope.

``describe`` matches on the body's class (the discriminated union ``bus.schema.messages.Body``), so
each case reads its own typed fields, and ``assert_never`` makes mypy name a kind added to the union
and not described here.
"""

from __future__ import annotations

from typing import assert_never

from agents.writer.story import clip
from bus.schema import (
    AnalysisDone,
    AnalysisRequest,
    CoPINoteMsg,
    Decision,
    DraftReady,
    DraftRequest,
    Envelope,
    ExperimentPlanned,
    ExperimentRequest,
    ExperimentResult,
    JobStatus,
    NoteAck,
    NoveltyCheck,
    NoveltyVerdict,
    ProjectApproval,
    ProjectEstimate,
    Rebuttal,
    ReferenceSearch,
    ReferencesFound,
    ReviewDone,
    ReviewRequest,
    StartProject,
    StepFailed,
    UsageReport,
)


def _seeds(seeds: list[int]) -> str:
    return ",".join(map(str, seeds))


def describe(env: Envelope) -> str:
    match env.body:
        case StartProject() as b:
            budget = f"≤{b.budget.max_ideas} ideas, ≤{b.budget.max_runs} runs, ≤{b.budget.max_revision_rounds} revision rounds"
            return f"start {b.template!r} (seed {b.seed}, {budget}){' — ' + b.direction if b.direction else ''}"
        case ProjectEstimate() as b:
            e = b.estimate
            wait = f" — WAITING FOR APPROVAL ({e.why}): `lab approve {env.project}`" if e.needs_approval else ""
            return f"estimate: {e.line()}{wait}"
        case ProjectApproval() as b:
            return f"{'approved' if b.approved else 'REFUSED'} by the co-PI{': ' + b.reason if b.reason else ''}"
        case CoPINoteMsg() as b:
            return f"co-PI note: {b.note.text!r}"
        case NoteAck() as b:
            return f"re note {b.note_id}: {b.understood}"
        case NoveltyCheck() as b:
            return f"is this new? [{b.idea.id}] {b.idea.hypothesis}"
        case NoveltyVerdict() as b:
            refs = ", ".join(r.key for r in b.references[:4])
            return f"[{b.idea_id}] {'novel' if b.novel else 'NOT novel'} — {clip(b.justification, 160)}{' (refs: ' + refs + ')' if refs else ''}"
        case ExperimentRequest() as b:
            what = f"idea {b.idea.id} {b.idea.changes}" if b.idea else "baseline"
            return f"run {b.experiment_id}: {what}, seeds {_seeds(b.seeds)}"
        case ExperimentPlanned() as b:
            if b.rejected:
                return f"cannot run {b.experiment_id}: {b.rejected}"
            return f"planned {b.experiment_id} as job {', '.join(b.job_ids)} with {b.overrides}"
        case ExperimentResult() as b:
            return _experiment_result(b)
        case JobStatus() as b:
            return f"job {b.job_id} {b.state}{': ' + b.reason if b.reason else ''}"
        case AnalysisRequest() as b:
            return f"analyse round {b.round}: {len(b.runs)} runs"
        case AnalysisDone() as b:
            return _analysis_done(b)
        case DraftRequest() as b:
            return f"write draft {b.round} ({len(b.ideas)} ideas, {len(b.references)} references, {len(b.revision_items)} revision items)"
        case DraftReady() as b:
            return f"draft {b.round}: {b.markdown}{', ' + b.pdf if b.pdf else ''}{' (no PDF: ' + b.pdf_error + ')' if b.pdf_error else ''}"
        case ReviewRequest() as b:
            return f"review draft {b.round} with {b.ensemble} reviewers"
        case ReviewDone() as b:
            return _review_done(b)
        case Rebuttal() as b:
            return f"answers round {b.round}: " + "; ".join(f"[{r.item_id}] {r.action}: {r.text}" for r in b.responses)
        case Decision() as b:
            return f"DECISION: {'accepted' if b.accepted else 'not accepted'} — {b.reason}"
        case StepFailed() as b:
            return f"{b.step} failed{' (' + b.ref + ')' if b.ref else ''}: {b.reason}"
        case UsageReport() as b:
            u = b.usage
            return f"usage: {u.prompt_tokens}+{u.completion_tokens} tokens, ${u.cost_usd:.4f}"
        case ReferenceSearch() | ReferencesFound() as b:
            return b.type  # the PI's reference requests and their answers: their kind says enough
        case _ as unknown:
            assert_never(unknown)


def _experiment_result(b: ExperimentResult) -> str:
    """``x02-d-model-32 done: j… ok (steps_to_val_99=…, …)``: the primary metric first, then two others."""
    parts = []
    for r in b.runs:
        if r.status == "succeeded" and r.final_info:
            metrics = sorted(r.final_info.metrics.items(), key=lambda kv: kv[0] != b.primary_metric)  # stable: the rest keep their order
            m = ", ".join(f"{n}={s.mean:.4g}±{s.stderr:.2g}" for n, s in metrics[:3])
            parts.append(f"{r.job_id} ok ({m}) in {r.wall_s:.0f}s")
        else:
            parts.append(f"{r.job_id} FAILED: {r.reason}")
    return f"{b.experiment_id} done: " + "; ".join(parts)


def _analysis_done(b: AnalysisDone) -> str:
    r = b.report
    verdicts = ", ".join(f"{c.idea_id}:{c.verdict}(p={c.p_value:.3g})" for c in r.comparisons if c.metric == r.primary_metric)
    flags = f"; flags: {'; '.join(f.text for f in r.flags)}" if r.flags else ""
    return f"round {r.round} on {r.primary_metric}: {verdicts or 'no comparisons'}{flags}"


def _review_done(b: ReviewDone) -> str:
    overall = ", ".join(str(r.scores.overall) for r in b.reviews)
    items = "; ".join(f"[{i.id}] {i.text}" for i in b.meta.revision_items)
    return f"round {b.round}: overall {overall} → {b.meta.decision}{' — asks: ' + items if items else ''}"
