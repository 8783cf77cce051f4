"""A code-level idea with ``--mind llm`` end to end: the PI proposes a new merge function as code, the engineer's
model writes it as guarded edits, it runs against the baseline's seeds, is compared, and the paper shows its diff.

Only the model is scripted (tests/llm_script.py's LabScript, without faults, answering for model_merging); the
lab, the bus, the sandboxed runs, the analysis and the paper are real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_llm_run import run_llm_project
from tests.fake_openai import Request
from tests.llm_script import LabScript, first_user, line_after

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HOOK = "def merge(tvs: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:\n"
CALL = "    return MERGERS[args.merge_fn](tvs, args, gen)\n"
NEW_FN = (
    "def merge_trimmed_mean(tvs: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:\n"
    '    """Per entry, the sum of task vectors after zeroing entries whose sign disagrees with the median task vector."""\n'
    "    med = tvs.median(0).values\n"
    "    return (tvs * (torch.sign(tvs) == torch.sign(med))).sum(0)\n"
    "\n\n"
)
SUMMARY = "Add merge_trimmed_mean: sum the task vectors after zeroing entries whose sign disagrees with the median task vector."


class CodeScript(LabScript):
    """A model_merging project whose one idea is a new merge function, implemented by the engineer's edits."""

    FAULTS: dict[tuple[str, int], str] = {}

    def ideas(self, req: Request) -> dict[str, Any]:
        idea = {
            "title": "A median-sign merge of task vectors",
            "hypothesis": "Dropping entries that disagree with the median task vector's sign raises task_acc over task arithmetic.",
            "falsification": "task_acc is not higher than the baseline's over seeds.",
            "changes": [],
            "code": SUMMARY,
            "rationale": "Sign conflicts between task vectors are what TIES removes; the median is a robust sign vote.",
            "interestingness": 7,
            "feasibility": 8,
            "novelty": 5,
        }
        return {"thoughts": "A new merge rule, as code.", "ideas": [idea], "done": True}

    def plan(self, req: Request) -> dict[str, Any]:
        idea = json.loads(line_after(first_user(req), "Idea to implement: "))
        assert idea["code"]["summary"] == SUMMARY and "This idea changes the code" in first_user(req)
        edits = [
            {"path": "experiment.py", "search": HOOK, "replace": NEW_FN + HOOK},
            {"path": "experiment.py", "search": CALL, "replace": "    return merge_trimmed_mean(tvs, args, gen)\n"},
        ]
        return {"explanation": "A new merge function, called from the merge() hook.", "overrides": [], "edits": edits}

    def meta(self, req: Request) -> dict[str, Any]:
        return {"summary": "Reviewers agree the study is sound but narrow.", "overall": 6.0, "decision": "accept", "revision_items": []}


def test_llm_code_idea_adds_a_merge_function_and_the_paper_shows_its_diff(lab_env, tmp_path: Path) -> None:
    home, env = lab_env
    out = tmp_path / "out"
    script = CodeScript()
    run, _ = run_llm_project(env, tmp_path, script, "model_merging", timeout=800)
    logs = {r: (home / "logs" / f"{r}.log").read_text(errors="replace")[-1500:] for r in ("pi", "engineer", "analyst", "writer")}
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:] + "\n".join(f"--- {r}\n{t}" for r, t in logs.items())
    assert not script.unknown, script.unknown

    convo = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
    (check,) = [m["body"] for m in convo if m["body"]["type"] == "novelty_check"]
    idea = check["idea"]
    # No edits of its own (an evolve candidate's are): the engineer asks the model for them.
    assert idea["changes"] == {} and idea["code"] == {"summary": SUMMARY, "variant": None, "edits": []}

    # Implemented by the model's edits, run on the baseline's seeds, and reported with the applied diff.
    results = [m["body"] for m in convo if m["body"]["type"] == "experiment_result"]
    runs = {r["idea_id"]: r for res in results for r in res["runs"] if r["status"] == "succeeded"}
    code_run, base_run = runs[idea["id"]], runs["baseline"]
    assert base_run["diff"] == "" and code_run["seeds"] == base_run["seeds"]
    assert "+def merge_trimmed_mean(" in code_run["diff"] and "+    return merge_trimmed_mean(tvs, args, gen)" in code_run["diff"]
    assert code_run["final_info"]["compute"] == base_run["final_info"]["compute"]

    # Compared like any idea, with no compute flag (the new rule spends what the baseline spends).
    report = [m["body"]["report"] for m in convo if m["body"]["type"] == "analysis_done"][-1]
    assert {c["idea_id"] for c in report["comparisons"]} == {idea["id"]}
    assert not [f for f in report["flags"] if f["kind"] == "compute_changed"]

    paper = (out / "paper.md").read_text()
    appendix = paper.split("## Appendix D: Code changes", 1)[1]
    assert SUMMARY in appendix and "+def merge_trimmed_mean(" in appendix and "```diff" in appendix
    assert "\\section{Code changes}" in (out / "paper.tex").read_text()
