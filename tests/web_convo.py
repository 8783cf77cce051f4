"""A project's conversation as the web view's tests see it: baseline and one idea, analysis, two review rounds, a decision."""

from __future__ import annotations

import json

from bus.replay import Entry
from bus.schema import (
    AnalysisDone,
    AnalysisReport,
    Comparison,
    CoPINote,
    CoPINoteMsg,
    Decision,
    DraftReady,
    Envelope,
    ExperimentPlanned,
    ExperimentRequest,
    ExperimentResult,
    FinalInfo,
    Idea,
    ItemResponse,
    JobStatus,
    MetaReview,
    MetricStat,
    NoteAck,
    Rebuttal,
    Review,
    ReviewDone,
    ReviewScores,
    RevisionItem,
    RunRecord,
)
from tests.fakes import TOY_SPEC

P = "grok-1"
IDEA = Idea(id="wd-1", title="Stronger decay", hypothesis="more decay groks sooner", falsification="p >= 0.05", changes={"weight_decay": 1.0})


def env(sender: str, recipient: str, body) -> Envelope:
    return Envelope(project=P, sender=sender, recipient=recipient, body=body)


def run(job: str, exp: str, idea: str, acc: float, ok: bool = True) -> RunRecord:
    info = FinalInfo(metrics={"val_acc": MetricStat(mean=acc, stderr=0.01, values=[acc] * 3)}, seeds=[0, 1, 2]) if ok else None
    return RunRecord(job_id=job, experiment_id=exp, idea_id=idea, overrides={}, seeds=[0, 1, 2], status="succeeded" if ok else "failed",
                     reason="" if ok else "timeout after 600 s", final_info=info,
                     artifacts=[f"{P}/results/{job}/curve.png", f"{P}/results/{job}/final_info.json"],
                     wall_s=42.0)


def request(exp: str, idea: Idea | None) -> ExperimentRequest:
    return ExperimentRequest(experiment_id=exp, idea=idea, seeds=[0, 1, 2], template="grokking", template_object=f"{P}/template.tar.gz", spec=TOY_SPEC)


COMPARISON = Comparison(idea_id="wd-1", metric="val_acc", direction="higher", baseline_mean=0.61, baseline_stderr=0.02, idea_mean=0.93,
                        idea_stderr=0.01, n_baseline=3, n_idea=3, diff=0.32, improvement=0.32, ci_low=0.25, ci_high=0.39, p_value=0.0012,
                        effect_size=4.1, better=True, verdict="better")
SCORES = ReviewScores(originality=2, quality=3, clarity=3, significance=2, soundness=3, presentation=3, contribution=2, overall=5, confidence=3)


def review(n: int, decision: str, items: list[RevisionItem]) -> ReviewDone:
    r = Review(reviewer="r1", summary="s", strengths=[], weaknesses=[], questions=[], limitations="", ethics="", scores=SCORES, decision="reject")
    return ReviewDone(round=n, reviews=[r, r.model_copy(update={"scores": SCORES.model_copy(update={"overall": 6})})],
                      meta=MetaReview(summary=f"round {n} summary", overall=5.5, decision=decision, revision_items=items))  # type: ignore[arg-type]


def draft(n: int, pdf: bool = True) -> DraftReady:
    base = f"{P}/paper/round-{n}"
    return DraftReady(round=n, tex=f"{base}/paper.tex", markdown=f"{base}/paper.md", pdf=f"{base}/paper.pdf" if pdf else None, bib=f"{base}/references.bib",
                      pdf_error="" if pdf else "pdflatex not found; install texlive to get a PDF")


ITEMS = [RevisionItem(id="r1-1", kind="more_seeds", text="Run wd-1 with 5 seeds.", target="wd-1"),
         RevisionItem(id="r1-2", kind="add_limitation", text="Discuss the single task.")]
NOTE = CoPINote(id="n0te1", text="only vary weight_decay", to="pi")


def conversation() -> list[Envelope]:
    baseline = [run("j-base", "x01-baseline", "baseline", 0.61)]
    idea = [run("j-wd1", "x02-wd-1", "wd-1", 0.93), run("j-wd1b", "x02-wd-1", "wd-1", 0.0, ok=False)]
    report = AnalysisReport(project=P, round=1, primary_metric="val_acc", comparisons=[COMPARISON], runs=baseline + idea,
                            flags=["1 failed run: j-wd1b"], figures=[f"{P}/figures/round-1/val_acc.png"], summary="wd-1 beats the baseline")
    return [
        env("pi", "engineer", request("x01-baseline", None)),
        env("engineer", "pi", ExperimentPlanned(experiment_id="x01-baseline", idea_id="baseline", overrides={}, job_ids=["j-base"])),
        env("pi", "engineer", request("x02-wd-1", IDEA)),
        env("engineer", "pi", ExperimentPlanned(experiment_id="x02-wd-1", idea_id="wd-1", overrides={"weight_decay": 1.0}, job_ids=["j-wd1", "j-wd1b"])),
        env("copi", "pi", CoPINoteMsg(note=NOTE)),
        env("pi", "copi", NoteAck(note_id=NOTE.id, understood="from now on, new ideas vary only weight_decay")),
        env("engineer", "pi", ExperimentResult(experiment_id="x01-baseline", idea_id="baseline", runs=baseline)),
        env("engineer", "pi", ExperimentResult(experiment_id="x02-wd-1", idea_id="wd-1", runs=idea)),
        env("analyst", "pi", AnalysisDone(report=report)),
        env("writer", "pi", draft(1, pdf=False)),
        env("reviewer", "pi", review(1, "revise", ITEMS)),
        env("pi", "reviewer", Rebuttal(round=1, responses=[ItemResponse(item_id="r1-1", action="act", text="Two more seeds ran.")])),
        env("writer", "pi", draft(2)),
        env("reviewer", "pi", review(2, "accept", [])),
        env("pi", "copi", Decision(accepted=True, reason="the reviewers accept", rounds=2, paper=draft(2))),
    ]


def entries(convo: list[Envelope]) -> list[Entry]:
    from bus.schema import encode

    return [Entry(subject=f"lab.convo.{e.project}.{e.sender}.{e.recipient}", seq=i + 1, data=encode(e), envelope=e) for i, e in enumerate(convo)]


def job_entries() -> list[Entry]:
    """What the runner of j-base said on lab.jobs before its result came in."""
    status = Envelope(project=P, sender="runner", recipient="engineer", body=JobStatus(job_id="j-base", experiment_id="x01-baseline", state="running"))
    lines = [Entry(subject=f"lab.jobs.{P}.j-base.log", seq=10 + i, data=json.dumps({"job": "j-base", "line": f"step {i}", "t": 0}).encode(), envelope=None)
             for i in range(12)]
    return [Entry(subject=f"lab.jobs.{P}.j-base.status", seq=1, data=b"", envelope=status), *lines]
