"""The paper's parts that come from records, not from the mind: tables, environment, figures, appendix.

Numbers go through ``numbers.fmt`` and nothing else; hardware and versions
come only from the runs' recorded ``JobEnvironment`` (an environment nobody
recorded is "not recorded", never a guess).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from agents.codeideas import describe
from agents.plotting import Bar
from agents.writer import charts as figures
from agents.writer.numbers import fmt
from bus.provenance import provenance
from bus.schema import AnalysisReport, Comparison, DraftRequest, JobEnvironment, Reference, RunRecord

SECTION_ORDER = (
    ("Introduction", "introduction"),
    ("Related Work", "related_work"),
    ("Method", "method"),
    ("Experimental Setup", "experimental_setup"),
    ("Results", "results"),
    ("Limitations", "limitations"),
    ("Conclusion", "conclusion"),
)


@dataclass
class FigureRef:
    name: str  # object-store name
    file: str  # file name next to paper.tex
    caption: str


def table_caption(report: AnalysisReport) -> str:
    return (
        "Each idea against the baseline: mean ± standard error over seeds (n seeds per arm); "
        "improvement signed so that a positive value is better whatever the metric's direction; "
        "the test's t-interval of the improvement at the level its corrected verdict was decided at (it excludes zero exactly when "
        "the corrected test rejects no difference); "
        "two-sided p-value of the test named (paired t-test when both arms ran the same seeds, else Welch) and the same p "
        + (f"after Holm's correction within its family (of {fmt(len(report.comparisons))} comparisons in all), which decides the verdict; "
           if report.correction == "holm" else "(no correction for multiple comparisons); ")
        + f"effect size (Hedges' g, or Cohen's d_z marked d_z for a paired test) signed like the improvement; α = {fmt(report.alpha)}."
        + (" Conclusions are withheld: the testbed did not separate a known-different setting, so no verdict is stated."
           if _withheld(report) else "")
    )


def _withheld(report: AnalysisReport) -> bool:
    return report.conclusions_withheld or any(f.kind == "no_separation" for f in report.flags)


def rows(report: AnalysisReport) -> list[dict[str, str]]:
    """Every tested comparison, the primary family first; "family" says which table a row goes in.

    With conclusions withheld, no row states a verdict.
    """
    ordered = sorted(report.comparisons, key=lambda c: (c.family != "primary" or c.metric != report.primary_metric, c.metric, c.idea_id))
    return [
        {
            "idea": c.idea_id,
            "control": c.control,
            "family": "primary" if c.family == "primary" and c.metric == report.primary_metric else "secondary",
            "metric": c.metric,
            "direction": f"{c.direction} is better",
            "base": f"{fmt(c.baseline_mean)} ± {fmt(c.baseline_stderr)} ({fmt(c.n_baseline)})",
            "arm": f"{fmt(c.idea_mean)} ± {fmt(c.idea_stderr)} ({fmt(c.n_idea)})",
            "improvement": fmt(c.improvement),
            "ci": f"[{fmt(c.ci_low)}, {fmt(c.ci_high)}]",
            "p": fmt(c.p_value),
            "p_adj": fmt(c.p_adjusted) if c.p_adjusted is not None else "not corrected",
            "test": "paired" if c.test == "paired" else "Welch",
            "g": fmt(c.effect_size) + (" (d_z)" if c.effect_kind == "paired_d" else ""),
            "verdict": "withheld" if _withheld(report) else c.verdict,
        }
        for c in ordered
    ]


def descriptive_rows(report: AnalysisReport) -> list[dict[str, str]]:
    return [{"idea": d.idea_id, "metric": d.metric, "value": f"{fmt(d.mean)} ± {fmt(d.stderr)} ({fmt(d.n)})",
             "reason": d.reason.strip().rstrip(".") or "depends on the machine and its load"} for d in report.descriptive]


# Where a run ran and what code it ran, which the provenance appendix lists run by run: not a different machine.
_NOT_MACHINE = {"hostname": "", "node": "", "image": "", "interpreter": "", "code_sha256": ""}


def _env_key(env: JobEnvironment) -> str:
    return env.model_copy(update=_NOT_MACHINE).model_dump_json()


def environment_lines(runs: list[RunRecord]) -> list[str]:
    """One line per distinct recorded environment, naming the runs it covers."""
    groups: dict[str, tuple[JobEnvironment, list[str]]] = {}
    for r in runs:
        if r.environment is not None:
            groups.setdefault(_env_key(r.environment), (r.environment, []))[1].append(r.job_id)
    lines = []
    for env, jobs in groups.values():
        parts = []
        if env.cpu:
            parts.append(f"CPU {env.cpu}" + (f" ({fmt(env.cpu_count)} cores)" if env.cpu_count else ""))
        elif env.cpu_count:
            parts.append(f"{fmt(env.cpu_count)} CPU cores (model not recorded)")
        parts.append(f"GPUs {', '.join(env.gpus)}" if env.gpus else "no GPU recorded")
        parts.append(f"experiment device {env.device}")
        if env.cuda:
            parts.append(f"CUDA {env.cuda}")
        if env.driver:
            parts.append(f"driver {env.driver}")
        parts.append(f"Python {env.python}" if env.python else "Python version not recorded")
        if env.platform:
            parts.append(f"platform {env.platform}")
        if env.packages:
            parts.append("packages " + ", ".join(f"{k} {v}" for k, v in sorted(env.packages.items())))
        parts.append(f"executor {env.executor}")
        lines.append(f"Runs {', '.join(jobs)}: " + "; ".join(parts) + ".")
    return lines


def p_value_words(report: AnalysisReport, metric: str) -> str:
    """The p-value a figure annotates, named by the test that actually ran for that metric's comparisons ("" when none ran)."""
    tests = {c.test for c in report.comparisons if c.metric == metric}
    if tests == {"paired"}:
        return "paired t-test p-value"
    if tests == {"welch"}:
        return "Welch p-value"
    if tests:
        return "p-value (paired t-test where both arms ran the same seeds, Welch otherwise)"
    return ""


def _panel(c: Comparison, report: AnalysisReport) -> figures.Panel:
    verdict = "" if _withheld(report) else c.verdict
    return figures.Panel(
        metric=c.metric, direction=c.direction,
        control=Bar(c.control, c.baseline_mean, c.baseline_stderr, c.n_baseline),
        idea=Bar(c.idea_id, c.idea_mean, c.idea_stderr, c.n_idea, c.p_value, verdict),
    )


def comparison_figures(report: AnalysisReport, base: str) -> list[tuple[FigureRef, bytes]]:
    """One figure per comparison (an idea against its control), a panel per tested metric, the primary metric first."""
    arms: dict[tuple[str, str], list[Comparison]] = {}
    for c in report.comparisons:
        arms.setdefault((c.idea_id, c.control), []).append(c)
    out = []
    for (idea, control), cs in arms.items():
        cs.sort(key=lambda c: (c.metric != report.primary_metric, c.metric))
        png = figures.comparison_chart(f"{idea} against {control}", [_panel(c, report) for c in cs])
        metrics = ", ".join(c.metric for c in cs)
        p = p_value_words(report, cs[0].metric)
        what = "the positive control (a testbed check)" if idea == "positive-control" else f"`{idea}`"
        caption = (f"{what} against {'the baseline' if control == 'baseline' else control}: mean ± standard error per arm "
                   f"for {metrics}, the primary metric first; the idea's bar is annotated with its {p or 'p-value'}.")
        out.append((FigureRef(f"{base}/{idea}.png", "", caption), png))
    return out


def figure_refs(report: AnalysisReport, drawn: list[FigureRef] | None = None) -> list[FigureRef]:
    """The comparisons' figures (drawn here; the analyst's per-metric charts only where nothing was compared), then any PNG a run uploaded."""
    out: list[FigureRef] = list(drawn or [])
    for name in report.figures if not report.comparisons else []:
        metric = posixpath.splitext(posixpath.basename(name))[0]
        p = p_value_words(report, metric)
        annotated = f", each idea annotated with its {p}" if p else ""
        out.append(FigureRef(name, "", f"{metric}: mean ± standard error per arm, baseline and ideas{annotated}."))
    for run in report.runs:
        for name in run.artifacts:
            if name.lower().endswith(".png") and name not in report.figures:
                out.append(FigureRef(name, "", f"Plot written by run {run.job_id} (idea {run.idea_id}): {posixpath.basename(name)}."))
    for i, f in enumerate(out):
        f.file = f"figure-{chr(ord('a') + i % 26)}{'' if i < 26 else i}.png"
    return out


def run_rows(runs: list[RunRecord]) -> list[dict[str, str]]:
    return [
        {
            "job": r.job_id,
            "idea": r.idea_id,
            "status": r.status,
            "seeds": ", ".join(fmt(s) for s in (r.final_info.seeds if r.final_info else r.seeds)) or "none",
            "wall": fmt(r.wall_s) if r.wall_s else "",
            "reason": r.reason,
        }
        for r in runs
    ]


PROVENANCE_CAPTION = (
    "Each run traced to the job that produced it: the experiment, the job id and attempt, the container image it ran in "
    "(or, without a container, the interpreter and a hash of its package versions), the first twelve hex digits of the sha256 "
    "of the template code the job ran (its code edits applied), and whether the result was computed fresh for this study "
    "or reused: a run the lab's result cache served (same code, configuration, seeds and runtime, run before) names the "
    "project and experiment whose run it reused. export.json holds the full hashes, the node and the diff's hash."
)


def _ran_in(p: dict[str, Any]) -> str:
    if p["image"]:
        return str(p["image"])
    if p["interpreter"]:
        packages = f", packages sha256 {p['packages_sha256'][:12]}" if p["packages_sha256"] else ""
        return f"interpreter {_interpreter(str(p['interpreter']))}{packages}"
    return "not recorded"


def _interpreter(recorded: str) -> str:
    """The interpreter as a paper names it: its version, never its path (a home folder names its user; export.json has it)."""
    version = re.search(r"\s(\d+\.\d+[\w.+-]*)$", recorded)
    if version:
        return f"Python {version.group(1)}"
    return "of the template's environment" if recorded.endswith("(the template's environment)") else "recorded in export.json"


def provenance_rows(runs: list[RunRecord]) -> list[dict[str, str]]:
    """The provenance appendix's table, one row per analysed run (``bus.provenance``); an unrecorded field says so."""
    out = []
    for r in runs:
        p = provenance(r)
        out.append({
            "experiment": r.experiment_id,
            "job": r.job_id + (f" (attempt {fmt(r.attempt)})" if r.attempt > 1 else ""),
            "ran_in": _ran_in(p),
            "code": p["code_sha256"][:12] or "not recorded",
            "reused": p["reused"],
        })
    return out


def provenance_masks(runs: list[RunRecord]) -> list[str]:
    """The hash prefixes the provenance appendix prints: identifiers, not numbers (a prefix may start with digits)."""
    return sorted({h[:12] for r in runs for h in (provenance(r)["code_sha256"], provenance(r)["packages_sha256"]) if h})


def usage_rows(request: DraftRequest) -> list[dict[str, str]]:
    return [
        {"role": role, "prompt": fmt(u.prompt_tokens), "completion": fmt(u.completion_tokens), "cost": fmt(u.cost_usd)}
        for role, u in sorted(request.usage.items())
    ]


def revision_rows(request: DraftRequest) -> list[dict[str, str]]:
    answers = {r.item_id: r for r in request.responses}
    out = []
    for item in request.revision_items:
        a = answers.get(item.id)
        out.append(
            {
                "id": item.id, "kind": item.kind, "target": item.target, "text": item.text,
                "action": a.action if a else "none", "response": a.text if a else "No response was recorded for this item.",
            }
        )
    return out


def reference_line(ref: Reference) -> str:
    parts = [", ".join(ref.authors) if ref.authors else "Unknown authors", ref.title]
    if ref.venue:
        parts.append(ref.venue)
    if ref.year:
        parts.append(fmt(ref.year))
    return ". ".join(p.rstrip(".") for p in parts) + "."


def code_rows(request: DraftRequest) -> list[dict[str, str]]:
    """Each code-level idea with a faithful account of the change and the diff its run applied (the appendix's code changes).

    The diff is the last one recorded for the idea (a retry that fixed its edit supersedes the first attempt);
    an idea that never ran has none, and the appendix says so.
    """
    out = []
    for idea in request.ideas:
        if idea.code is None:
            continue
        diffs = [r.diff for r in request.report.runs if r.idea_id == idea.id and r.diff]
        ok = [r.diff for r in request.report.runs if r.idea_id == idea.id and r.diff and r.status == "succeeded"]
        out.append({"idea": idea.id, "title": idea.title, "summary": describe(idea, request.spec),
                    "variant": idea.code.variant or "", "diff": (ok or diffs or [""])[-1]})
    return out


def notes(request: DraftRequest) -> list[dict[str, Any]]:
    return [{"id": n.id, "to": n.to, "text": n.text} for n in request.notes]
