"""A code idea through the engineer, a real run of its edited template, the analyst and the writer.

It is compared against the baseline's seeds, and its diff is in the paper.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agents import templates


class Executor:
    """Runs each submitted job's bundle at once, as the job runner would, and keeps its final_info (no bus, no sandbox)."""

    ledger = None  # no lab-wide ledger: the engineer counts this project's jobs
    results = None  # no result cache: every job runs

    def __init__(self, store, tmp: Path) -> None:  # type: ignore[no-untyped-def]
        self.store, self.tmp, self.submitted, self.finals = store, tmp, [], {}

    def capacity(self) -> int | None:
        return None

    def runtime(self) -> str:
        return "this test's python"

    async def submit(self, job) -> None:  # type: ignore[no-untyped-def]
        import subprocess
        import sys

        from bus.schema import FinalInfo

        self.submitted.append(job)
        work = self.tmp / job.job_id
        templates.unbundle(await self.store.get(job.bundle_object), work / "code")
        flags = [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in job.overrides.items()]
        cmd = [sys.executable, "experiment.py", "--out_dir", str(work / "out"), "--seeds", ",".join(map(str, job.seeds)), *flags]
        proc = subprocess.run(cmd, cwd=work / "code", capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        self.finals[job.job_id] = FinalInfo.model_validate_json((work / "out" / "final_info.json").read_text())

    async def cancel(self, job_id: str) -> None:
        pass

    async def cleanup(self, project: str) -> None:
        pass


class Lab:
    """The engineer role with a real template bundle, an executor that really runs it, then the analyst and the writer."""

    def __init__(self, tmp: Path, mind) -> None:  # type: ignore[no-untyped-def]
        from agents.engineer.workflow import Engineer, EngineerState
        from tests.fakes import MemoryStore

        self.folder, self.spec = templates.load("model_merging")
        self.role, self.state, self.store, self.mind = Engineer(), EngineerState(), MemoryStore(), mind
        self.store.data["p1/template.tar.gz"] = templates.bundle(self.folder)
        self.executor = Executor(self.store, tmp)
        self.results: list = []  # type: ignore[type-arg]

    async def send(self, body, sender: str = "pi") -> list:  # type: ignore[no-untyped-def, type-arg]
        from agents.engineer.workflow import EngineerContext
        from bus.schema import Envelope

        env = Envelope(project="p1", sender=sender, recipient="engineer", body=body)
        ctx = EngineerContext(project="p1", role="engineer", state=self.state, artifacts=self.store, mind=self.mind, jobs=self.executor)
        await self.role.handle(env, ctx)
        return ctx.outputs

    async def experiment(self, exp_id: str, idea) -> None:  # type: ignore[no-untyped-def]
        from bus.schema import ExperimentRequest, JobStatus

        out = await self.send(ExperimentRequest(experiment_id=exp_id, idea=idea, seeds=[0, 1, 2], template="model_merging",
                                                template_object="p1/template.tar.gz", spec=self.spec, fast=True))
        planned = out[0][0]
        assert not planned.rejected, planned.rejected
        (job_id,) = planned.job_ids
        done = await self.send(JobStatus(job_id=job_id, experiment_id=exp_id, state="succeeded",
                                         final_info=self.executor.finals[job_id]), sender="runner")
        (result, _), = done
        self.results += result.runs

    async def paper(self, ideas, tmp: Path):  # type: ignore[no-untyped-def]
        from agents.analyst.workflow import build_report
        from agents.base import Context
        from agents.writer.offline import make as writer_mind
        from agents.writer.workflow import Writer
        from bus.schema import AnalysisRequest, DraftRequest, Envelope

        report, _ = build_report("p1", AnalysisRequest(round=0, spec=self.spec, runs=self.results))
        request = DraftRequest(round=0, spec=self.spec, direction="merge better", ideas=ideas, report=report, references=[])
        ctx = Context(project="p1", role="writer", state=None, artifacts=self.store, mind=writer_mind(0, {}))
        await Writer().handle(Envelope(project="p1", sender="pi", recipient="writer", body=request), ctx)
        (ready, _), = ctx.outputs
        return report, ready, (await self.store.get(ready.markdown)).decode(), (await self.store.get(ready.tex)).decode()


@pytest.mark.timeout(600)
async def test_a_template_variant_idea_is_implemented_run_compared_and_shown_with_its_diff(tmp_path: Path) -> None:
    from agents.engineer.offline import OfflineEngineerMind
    from bus.schema import CodeChange, Idea

    idea = Idea(id="ties-magsign", title="TIES with magnitude-weighted sign election", changes={},
                hypothesis="Electing signs by squared magnitude raises task_acc over task arithmetic.",
                falsification="task_acc is not higher than the baseline's over seeds.",
                code=CodeChange(summary="Replace the merge with TIES whose sign election weighs entries by their squared magnitude.",
                                variant="ties_magnitude_sign"))
    lab = Lab(tmp_path, OfflineEngineerMind())
    await lab.experiment("x01-baseline", None)
    await lab.experiment("x02-ties-magsign", idea)

    base, run = lab.results
    assert base.diff == "" and run.idea_id == "ties-magsign" and run.overrides == base.overrides  # only the code differs
    assert "--- a/experiment.py" in run.diff and "+    sign = torch.sign((torch.sign(t) * t.pow(2)).sum(0))" in run.diff
    assert "-    return MERGERS[args.merge_fn](tvs, args, gen)" in run.diff
    assert run.final_info is not None and base.final_info is not None
    assert run.final_info.compute == base.final_info.compute  # a new merge rule spends what the baseline spends
    assert run.final_info.metrics["task_acc"].values != base.final_info.metrics["task_acc"].values  # the code really ran

    report, ready, md, tex = await lab.paper([idea], tmp_path)
    assert {c.idea_id for c in report.comparisons} == {"ties-magsign"}
    assert not [f for f in report.flags if f.kind == "compute_changed"]
    method = md.split("## Method", 1)[1].split("## Experimental Setup", 1)[0]
    assert "changes the experiment's code" in method and "ties_magnitude_sign" in method and "appendix (Code changes)" in method
    appendix = md.split("## Appendix D: Code changes", 1)[1]
    assert "```diff\n--- a/experiment.py" in appendix and "+    w = t.abs() * ((torch.sign(t) == sign) & (t != 0))" in appendix
    assert "\\section{Code changes}" in tex and "\\begin{verbatim}\n--- a/experiment.py" in tex
    if shutil.which("pdflatex"):  # the LaTeX with the verbatim diff builds
        assert ready.pdf and not ready.pdf_error, (ready.pdf_error, ready.pdf_log)


class ScriptedMind:
    """An engineer mind that implements a code idea with fixed edits (what an llm mind would answer)."""

    def __init__(self, edits) -> None:  # type: ignore[no-untyped-def]
        from bus.schema import Usage

        self.edits, self.usage = edits, Usage()

    async def plan(self, idea, spec, files, error=""):  # type: ignore[no-untyped-def]
        from agents.minds.base import CodePlan

        return CodePlan(overrides=dict(idea.changes), edits=self.edits, explanation="scripted")


@pytest.mark.timeout(600)
async def test_a_code_edit_that_changes_the_compute_is_flagged(tmp_path: Path) -> None:
    from bus.schema import CodeChange, CodeEdit, Idea

    longer = CodeEdit(path="experiment.py", search="    for _ in range(steps):\n", replace="    for _ in range(2 * steps):  # train twice as long\n")
    idea = Idea(id="longer", title="Fine-tune twice as long inside the code", changes={},
                hypothesis="Doubling every training loop in code raises task_acc.", falsification="task_acc does not rise.",
                code=CodeChange(summary="Run every training loop for twice its configured steps."))
    lab = Lab(tmp_path, ScriptedMind([longer]))
    await lab.experiment("x01-baseline", None)
    await lab.experiment("x02-longer", idea)
    base, run = lab.results
    assert run.final_info.compute["optimizer_steps"] == 2 * base.final_info.compute["optimizer_steps"]
    report, _, md, _ = await lab.paper([idea], tmp_path)
    (flag,) = [f for f in report.flags if f.kind == "compute_changed"]
    assert flag.idea_id == "longer" and "optimizer_steps" in flag.text
    assert "recorded different compute per run than the baseline" in md  # the paper lists the flag
