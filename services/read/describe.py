"""One line per message, for a person watching the lab think: what `lab logs`, `lab run` and the web view print for an envelope."""

from __future__ import annotations

from bus.schema import Envelope


def _seeds(seeds: list[int]) -> str:
    return ",".join(map(str, seeds))


def describe(env: Envelope) -> str:
    b = env.body
    k = b.type
    if k == "start_project":
        return f"start {b.template!r} (seed {b.seed}, ≤{b.budget.max_ideas} ideas, ≤{b.budget.max_runs} runs, ≤{b.budget.max_revision_rounds} revision rounds){' — ' + b.direction if b.direction else ''}"
    if k == "copi_note":
        return f"co-PI note: {b.note.text!r}"
    if k == "note_ack":
        return f"re note {b.note_id}: {b.understood}"
    if k == "novelty_check":
        return f"is this new? [{b.idea.id}] {b.idea.hypothesis}"
    if k == "novelty_verdict":
        refs = ", ".join(r.key for r in b.references[:4])
        return f"[{b.idea_id}] {'novel' if b.novel else 'NOT novel'} — {b.justification[:160]}{' (refs: ' + refs + ')' if refs else ''}"
    if k == "experiment_request":
        what = f"idea {b.idea.id} {b.idea.changes}" if b.idea else "baseline"
        return f"run {b.experiment_id}: {what}, seeds {_seeds(b.seeds)}"
    if k == "experiment_planned":
        if b.rejected:
            return f"cannot run {b.experiment_id}: {b.rejected}"
        return f"planned {b.experiment_id} as job {', '.join(b.job_ids)} with {b.overrides}"
    if k == "experiment_result":
        parts = []
        for r in b.runs:
            if r.status == "succeeded" and r.final_info:
                m = ", ".join(f"{n}={s.mean:.4g}±{s.stderr:.2g}" for n, s in list(r.final_info.metrics.items())[:3])
                parts.append(f"{r.job_id} ok ({m}) in {r.wall_s:.0f}s")
            else:
                parts.append(f"{r.job_id} FAILED: {r.reason}")
        return f"{b.experiment_id} done: " + "; ".join(parts)
    if k == "job_status":
        return f"job {b.job_id} {b.state}{': ' + b.reason if b.reason else ''}"
    if k == "analysis_request":
        return f"analyse round {b.round}: {len(b.runs)} runs"
    if k == "analysis_done":
        r = b.report
        verdicts = ", ".join(f"{c.idea_id}:{c.verdict}(p={c.p_value:.3g})" for c in r.comparisons if c.metric == r.primary_metric)
        flags = f"; flags: {'; '.join(f.text for f in r.flags)}" if r.flags else ""
        return f"round {r.round} on {r.primary_metric}: {verdicts or 'no comparisons'}{flags}"
    if k == "draft_request":
        return f"write draft {b.round} ({len(b.ideas)} ideas, {len(b.references)} references, {len(b.revision_items)} revision items)"
    if k == "draft_ready":
        return f"draft {b.round}: {b.markdown}{', ' + b.pdf if b.pdf else ''}{' (no PDF: ' + b.pdf_error + ')' if b.pdf_error else ''}"
    if k == "review_request":
        return f"review draft {b.round} with {b.ensemble} reviewers"
    if k == "review_done":
        overall = ", ".join(str(r.scores.overall) for r in b.reviews)
        items = "; ".join(f"[{i.id}] {i.text}" for i in b.meta.revision_items)
        return f"round {b.round}: overall {overall} → {b.meta.decision}{' — asks: ' + items if items else ''}"
    if k == "rebuttal":
        return f"answers round {b.round}: " + "; ".join(f"[{r.item_id}] {r.action}: {r.text}" for r in b.responses)
    if k == "decision":
        return f"DECISION: {'accepted' if b.accepted else 'not accepted'} — {b.reason}"
    if k == "step_failed":
        return f"{b.step} failed{' (' + b.ref + ')' if b.ref else ''}: {b.reason}"
    if k == "usage_report":
        u = b.usage
        return f"usage: {u.prompt_tokens}+{u.completion_tokens} tokens, ${u.cost_usd:.4f}"
    return k
