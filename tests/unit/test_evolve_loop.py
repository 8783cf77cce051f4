"""`lab evolve`'s Self-Developing loop without processes.

Preference pairs, the guarded edit and the offline mind.
"""

from __future__ import annotations

import asyncio

import pytest

from agents.codeedit import EditForbidden, EditNotApplicable
from agents.evolve.offline import OfflineEvolveMind, builtin_pool
from agents.evolve.workflow import ProposeRequest, hook_for, load_spec, patched
from agents.templates import load
from bus.schema.evolve import Candidate

HOOK = hook_for("model_merging")
CRASH = 'def merge(task_vectors, args, gen):\n    raise RuntimeError("evolve-test: this candidate crashes")\n'
FORBIDDEN = "import subprocess\n\n\ndef merge(task_vectors, args, gen):\n    return task_vectors.sum(0)\n"
HALF_SUM = "def merge(task_vectors, args, gen):\n    return 0.5 * task_vectors.sum(0)\n"
SIGN_MEAN = (
    "def merge(task_vectors, args, gen):\n    sign = torch.sign(task_vectors.sum(0))\n"
    "    agree = torch.sign(task_vectors) == sign\n    return (task_vectors * agree).sum(0)\n"
)
MEDIAN = "def merge(task_vectors, args, gen):\n    return len(task_vectors) * task_vectors.median(0).values\n"


def experiment_source() -> str:
    folder, _ = load("model_merging")
    return (folder / "experiment.py").read_text()


def cand(cid: str, code: str, score: float | None, state: str = "succeeded", program: object = None) -> Candidate:
    return Candidate(id=cid, iteration=0, name=cid, code=code, state=state, score=score, program=program,  # type: ignore[arg-type]
                     seeds=[0, 1, 2], values=[score or 0.0] * 3)


def test_the_guarded_edit_checks_candidates() -> None:
    files = {"experiment.py": experiment_source()}
    out = patched(files, HOOK, HALF_SUM)["experiment.py"]
    assert "EVOLVED_MERGE = merge" in out and "EVOLVED_MERGE = None" not in out
    with pytest.raises(EditForbidden, match="subprocess"):
        patched(files, HOOK, FORBIDDEN)
    with pytest.raises(EditNotApplicable, match="merge"):
        patched(files, HOOK, "def combine(a, b, c):\n    return a\n")
    with pytest.raises(EditNotApplicable, match="syntax"):
        patched(files, HOOK, "def merge(:\n")


def test_offline_mind_is_deterministic_and_builds_on_the_best() -> None:
    folder, spec = load("model_merging")
    ev = load_spec(folder, spec.name)
    pool = builtin_pool(experiment_source(), ev)
    assert pool[0].name == "task_arithmetic"
    first = asyncio.run(OfflineEvolveMind(ev, pool, 0).propose(ProposeRequest(0, 3, "", [], [])))
    assert first[0].code == pool[0].code and all(p.builtin for p in first)
    best = [cand("i0-c2", pool[2].code, 0.9, program=pool[2].program), cand("i0-c1", pool[1].code, 0.8, program=pool[1].program)]
    req = ProposeRequest(1, 3, "", best, [p.code for p in first])
    a = asyncio.run(OfflineEvolveMind(ev, pool, 0).propose(req))
    b = asyncio.run(OfflineEvolveMind(ev, pool, 0).propose(req))
    assert [p.code for p in a] == [p.code for p in b] and len(a) == 3
    assert len({p.code for p in a}) == 3 and not {p.code for p in a} & {p.code for p in first}
    files = {"experiment.py": experiment_source()}
    for p in a:
        patched(files, HOOK, p.code)  # every derived candidate passes the guarded edit
        assert p.program is not None and p.parents
