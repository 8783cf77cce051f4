"""An AI Scientist template, unchanged, through a whole `lab run --mind llm`: the PI takes the template's own seed
idea, the engineer's model writes it into the user's experiment.py as guarded edits, the edited code runs against
the baseline's run_0 per dataset, and the paper is typeset in the template's own latex/template.tex.

Only the model is scripted (tests/llm_script.py's LabScript, without faults); the lab, the bus, the sandboxed runs,
the analysis, pdflatex and the review are real. It found three defects, each fixed with a test of its own: the llm PI
asked the model for no ideas on a template without knobs, and a review's "more seeds" re-ran the same hard-coded seeds
(the PI) and blocked the paper with a demand no revision could meet (the reviewer's checks). The fixture is tests/aisci/aisci_tiny (two datasets, three seeds,
about a second of numpy); its seed idea ``sine_features`` adds sin(3x) inputs, which the ``wave`` dataset's target
contains, so the edit must lower wave/final_val_loss far below the baseline's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TESTS
from tests.e2e.test_llm_run import run_llm_project
from tests.fake_openai import Request
from tests.llm_script import PAPER_MARK, LabScript, first_user, keys_in, line_after, schema_of

pytestmark = [pytest.mark.slow, pytest.mark.tex, pytest.mark.timeout(900)]

TINY = TESTS / "aisci" / "aisci_tiny"
SEED = "seed-sine-features"
ANCHOR = "    w = np.zeros(4)\n"
SINE = (
    "    xt, xv = np.hstack([xt, np.sin(3 * xt)]), np.hstack([xv, np.sin(3 * xv)])  # sine_features\n"
    "    w = np.zeros(xt.shape[1])\n"
)


class AisciScript(LabScript):
    """The model of an aisci_tiny project: no ideas of its own (the template's seed ideas lead), the sine features as code."""

    FAULTS: dict[tuple[str, int], str] = {}

    def ideas(self, req: Request) -> dict[str, Any]:
        idea = {  # scored under the template's sine_features (6, 9, 4), so with one idea to run the seed goes first
            "title": "Momentum for full-batch gradient descent",
            "hypothesis": "Heavy-ball momentum 0.9 lowers line/final_val_loss within the fixed 200 steps.",
            "falsification": "line/final_val_loss is not lower than the baseline's over its seeds.",
            "changes": [],
            "code": "Replace the plain gradient step by heavy-ball momentum with coefficient 0.9.",
            "rationale": "The loop may not have converged in 200 steps.",
            "interestingness": 3, "feasibility": 8, "novelty": 2,
        }
        return {"thoughts": "The step rule is the lever this template hard-codes.", "ideas": [idea], "done": True}

    def queries(self, req: Request) -> dict[str, Any]:
        return {"queries": ["stochastic approximation", "convex optimization"] if "Search round 0." in first_user(req) else []}

    def plan(self, req: Request) -> dict[str, Any]:
        prompt = first_user(req)
        idea = json.loads(line_after(prompt, "Idea to implement: "))
        assert idea["id"] == SEED and "This idea changes the code" in prompt, prompt[:2000]
        edit = {"path": "original/experiment.py", "search": ANCHOR, "replace": SINE}
        return {"explanation": "Append sin(3x) of each input as features.", "overrides": [], "edits": [edit]}

    def paper(self, req: Request) -> dict[str, Any]:
        refs = keys_in(line_after(first_user(req), "References (cite with \\cite{key}, only these): "))
        cite = f" \\cite{{{refs[0]}}}" if refs else ""
        return {
            **super().paper(req),
            "title": "Sinusoidal input features for small regression problems",
            "abstract": f"We append sin(3x) features to a linear model fitted by gradient descent ({PAPER_MARK}).",
            "introduction": "Periodic structure in a target is invisible to a linear model of the raw inputs.",
            "related_work": "Gradient descent on a least-squares objective converges for a small enough step" + cite + ".",
            "method": "We append sin(3x) of each input to the features and refit by full-batch gradient descent.",
            "experimental_setup": "Two synthetic datasets, line and wave, three seeds each, as the template runs them.",
            "conclusion": "Sinusoidal features help where the target has periodic structure.",
            "limitations": ("The template runs its own three seeds, so each comparison is underpowered against the seed plan. "
                            "The time line/total_train_time is hardware-dependent: reported descriptively, not tested. "
                            "wave/total_train_time is hardware-dependent too. Two synthetic datasets only."),
        }

    def meta(self, req: Request) -> dict[str, Any]:
        return {"summary": "A small, clearly reported study.", "overall": 6.0, "decision": "accept", "revision_items": []}


def test_an_ai_scientist_template_runs_a_code_edited_seed_idea_into_a_paper_in_its_own_style(lab_env, tmp_path: Path) -> None:
    home, env = lab_env
    out = tmp_path / "out"
    script = AisciScript()
    run, requests = run_llm_project(env, tmp_path, script, str(TINY), timeout=800, fast=False)  # it has no fast profile: it is fast
    logs = {r: p.read_text(errors="replace") if (p := home / "logs" / f"{r}.log").is_file() else ""
            for r in ("pi", "engineer", "analyst", "writer", "reviewer")}
    assert run.returncode in (0, 1), (run.stdout + run.stderr)[-4000:] + "\n".join(f"--- {r}\n{t[-1500:]}" for r, t in logs.items())
    assert not script.unknown, script.unknown
    convo = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]

    # The PI asked the model for code ideas (the template has no knobs), and ranked the template's own seed idea
    # (a code change) over the model's.
    (asked,) = [r for r in requests if schema_of(r) == "IdeaBatch"]
    assert asked.role == "pi" and "declares no knobs" in first_user(asked)
    assert "llm_invalid_answer" not in logs["pi"]  # the model's code idea passed the rules; the seed outranked it
    (check,) = [m["body"] for m in convo if m["body"]["type"] == "novelty_check"]
    idea = check["idea"]
    assert idea["id"] == SEED and idea["changes"] == {} and idea["code"]["summary"].startswith("Append sin(3x)")

    # The engineer's model edited the user's experiment.py (not the lab's wrapper); the run applied that diff.
    results = [m["body"] for m in convo if m["body"]["type"] == "experiment_result"]
    runs = {r["idea_id"]: r for res in results for r in res["runs"] if r["status"] == "succeeded"}
    code_run, base_run = runs[SEED], runs["baseline"]
    assert base_run["diff"] == "" and code_run["seeds"] == base_run["seeds"]
    assert "original/experiment.py" in code_run["diff"] and "+    w = np.zeros(xt.shape[1])" in code_run["diff"]
    assert "aisci_shim" not in code_run["diff"]

    # The edited code ran: per dataset, against run_0's baseline, wave's loss falls far (its target has sin(3x) in it).
    report = [m["body"]["report"] for m in convo if m["body"]["type"] == "analysis_done"][-1]
    assert report["primary_metric"] == "line/final_val_loss"
    compared = {c["metric"]: c for c in report["comparisons"] if c["idea_id"] == SEED}
    assert {"line/final_val_loss", "wave/final_val_loss"} <= set(compared), sorted(compared)
    wave = compared["wave/final_val_loss"]
    assert wave["idea_mean"] < 0.5 * wave["baseline_mean"], wave
    base_wave = base_run["final_info"]["metrics"]["wave/final_val_loss"]["mean"]
    assert code_run["final_info"]["metrics"]["wave/final_val_loss"]["mean"] == pytest.approx(wave["idea_mean"])
    assert base_wave == pytest.approx(wave["baseline_mean"])

    # The paper: typeset in the template's own latex/template.tex (its tinystyle.sty, its bibliography style), not
    # the lab's fallback, and it shows the idea as a code change with its diff.
    tex = (out / "paper.tex").read_text()
    head = tex.split("\\begin{document}", 1)[0]
    assert "\\usepackage{tinystyle}" in head and "The lab's additions to the template's preamble" in head
    assert "\\bibliographystyle{plain}" in tex and "plainnat" not in tex  # the template's bibliography style
    assert "robbins1951stochastic" in (out / "references.bib").read_text()  # its own references (its filecontents block)
    assert "TITLE HERE" not in tex and "Sinusoidal input features" in tex
    assert "their_latex_failed" not in logs["writer"]
    assert (out / "paper.pdf").read_bytes().startswith(b"%PDF")
    assert "\\section{Code changes}" in tex
    paper = (out / "paper.md").read_text()
    appendix = paper.split("## Appendix D: Code changes", 1)[1]
    assert idea["code"]["summary"] in appendix and "```diff" in appendix and "+    w = np.zeros(xt.shape[1])" in appendix

    # The template runs its own seeds: a review's "more seeds" is answered with a rebuttal, not by re-running seeds 0-2
    # (which the analysis would flag as duplicates); one run per arm.
    assert sorted(r["idea_id"] for res in results for r in res["runs"]) == ["baseline", SEED]
    assert not [f for f in report["flags"] if f["kind"] == "duplicate_seed"]

    # The reviewer's checks find nothing blocking (the limitations say why three seeds: the template fixes them) and the
    # model's meta-review accepts.
    (decision,) = [m["body"] for m in convo if m["body"]["type"] == "decision"]
    assert decision["accepted"] is True and run.returncode == 0, decision["reason"]
    reviews = json.loads((out / "review.json").read_text())
    assert reviews and all(rv["reviewer"].startswith("llm-") for r in reviews for rv in r["reviews"])
    assert {r.role for r in requests} >= {"pi", "engineer", "writer", "reviewer"}
