"""The PI's evolve mode: an evolve project (`lab evolve`, ``StartProject.evolve``) runs the Self-Developing loop
instead of idea waves.

The loop itself is the evolve room's (``agents/evolve/project.py``), given to the PI by its wiring as a port
(``EvolveLoop``): rooms share schema, never code. This module keeps the project's side: the state
(``ProjectState.evolve``, and each evaluation as an experiment and an idea, so `lab status`, the web view and
`lab export` show them as any project's), the requests to the engineer, and at the end ``evolve/`` in the
object store, the idea archive's records and the decision.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from agents.pi import transitions as t
from agents.pi.state import ExperimentState, IdeaState, ProjectState
from bus.schema import ExperimentPlanned, ExperimentResult, StartProject, StepFailed
from bus.schema.evolve import Evaluated, EvolveSetting, EvolveState, EvolveStep

EvolveLoop = Callable[[EvolveState, EvolveSetting, Mapping[str, Evaluated], float], Awaitable[EvolveStep]]


def start(state: ProjectState | None, body: StartProject, project: str, now: float) -> ProjectState:
    """A new evolve project's state, started as any project is (its budget capped, its estimate made): the loop's
    first proposals come with the first ``advance``."""
    assert body.evolve is not None
    return t.start(state, body, project, now).state


def planned(st: ProjectState, body: ExperimentPlanned) -> ProjectState:
    """A refused plan (the guarded edit refused the candidate's code) is that evaluation's result: no job ran."""
    exp = st.experiments.get(body.experiment_id)
    if exp is None or not body.rejected or exp.status != "requested":
        return st
    st = st.model_copy(deep=True)
    st.experiments[body.experiment_id].status = "failed"
    st.experiments[body.experiment_id].reason = f"edit refused: {body.rejected}"
    return st


def result(st: ProjectState, body: ExperimentResult) -> ProjectState:
    exp = st.experiments.get(body.experiment_id)
    if exp is None or exp.status != "requested":
        return st
    st = st.model_copy(deep=True)
    exp = st.experiments[body.experiment_id]
    exp.runs = body.runs
    exp.status = "done" if any(r.status == "succeeded" for r in body.runs) else "failed"
    exp.reason = "; ".join(r.reason for r in body.runs if r.reason)
    return st


def step_failed(st: ProjectState, body: StepFailed) -> ProjectState:
    exp = st.experiments.get(body.ref) if body.step == "experiment" else None
    if exp is None or exp.status != "requested":
        return st
    st = st.model_copy(deep=True)
    st.experiments[body.ref].status, st.experiments[body.ref].reason = "failed", body.reason
    return st


async def advance(st: ProjectState, now: float, loop: EvolveLoop | None) -> t.Step:
    """Ask the loop how far the results in hand take it, and perform what it says."""
    if st.evolve is None or st.stage != "experiments":  # waiting for approval, or ended
        return t.Step(st)
    st = st.model_copy(deep=True)
    out: list[t.Effect] = []
    if loop is None:  # a PI wired without the evolve room (a test's plain context)
        t._finish(st, out, accepted=False, reason="this lab's PI runs no evolve loop", failed=True)
        return t.Step(st, out)
    setting = EvolveSetting(project=st.project, template=st.template, spec=st.spec, seed=st.seed, started_at=st.started_at,
                            direction=st.direction)
    seen = {k: Evaluated(status=e.status, runs=e.runs, reason=e.reason) for k, e in st.experiments.items()}
    ev = st.evolve
    assert ev is not None  # checked above, before the copy
    step = await loop(ev, setting, seen, now)
    st.evolve = step.evolve
    for ask in step.ask:
        st.ideas.setdefault(ask.idea.id, IdeaState(idea=ask.idea, wave=ask.iteration, status="running"))
        st.experiments[ask.experiment_id] = ExperimentState(experiment_id=ask.experiment_id, idea_id=ask.idea.id, seeds=ask.seeds,
                                                            round=0)
        out.append(t.Send(t.experiment_request(st, ask.experiment_id, ask.idea, ask.seeds, ask.fixed), "engineer"))
    out.extend(t.Log("info", "evolve", {"says": line}) for line in step.lines)
    _settle_ideas(st)
    if step.done:
        out.extend(t.PutArtifact(f"{st.project}/evolve/{name}", data) for name, data in step.files.items())
        out.extend(t.Remember(r) for r in step.records)
        t._finish(st, out, accepted=step.accepted, reason=step.verdict, failed=step.failed)
    return t.Step(st, out)


def _settle_ideas(st: ProjectState) -> None:
    """A candidate whose runs have all ended is done (one succeeded) or failed."""
    for idea_id, idea in st.ideas.items():
        exps = [e for e in st.experiments.values() if e.idea_id == idea_id]
        if idea.status == "running" and exps and all(e.status != "requested" for e in exps):
            ok = any(e.status == "done" for e in exps)
            idea.status, idea.reason = ("done", "") if ok else ("failed", exps[-1].reason)


__all__ = ["EvolveLoop", "advance", "planned", "result", "start", "step_failed"]
