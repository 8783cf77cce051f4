"""`lab evolve`'s Self-Developing loop without processes.

Preference pairs, the guarded edit, the offline mind, and where a running
lab's credentials come from.
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



def test_on_a_lab_the_runner_credential_and_job_secret_come_from_lab_home_or_the_environment(lab_env, monkeypatch) -> None:
    """`lab evolve --nats`: what `lab up` wrote for that lab; a lab that checks logins and no runner credential is one line."""
    import json as _json

    from agents.evolve.workflow import EvolveError
    from services.cli.evolve import lab_access
    from services.common.config import write_secret

    home, _ = lab_env
    url = "nats://127.0.0.1:4999"
    home.mkdir(parents=True)
    write_secret(home / "lab.json", _json.dumps({"url": url, "credentials": {"copi": "copi-pw"}}))
    with pytest.raises(EvolveError, match="no runner credential for the lab at nats://127.0.0.1:4999"):
        lab_access(url, {})
    assert lab_access(url, {"nats_secret": "lab-runner"}).runner.password is None  # the cluster's Secret gives it to the pods
    write_secret(home / "secrets" / "runner", "runner-pw", private_folder=True)
    write_secret(home / "secrets" / "job-secret", "s" * 64, private_folder=True)
    access = lab_access(url, {})
    assert (access.bus.user, access.bus.password) == ("copi", "copi-pw")
    assert (access.runner.url, access.runner.user, access.runner.password, access.job_secret) == (url, "runner", "runner-pw", "s" * 64)
    # Another lab's URL: nothing from this LAB_HOME; the environment (a Deployment's, a user's) still counts.
    monkeypatch.setenv("LAB_RUNNER_PASSWORD", "env-pw")
    monkeypatch.setenv("LAB_RUNNER_NATS_URL", "nats://nats.lab.svc:4222")
    other = lab_access("nats://10.0.0.9:4222", {})
    assert (other.runner.url, other.runner.password, other.job_secret) == ("nats://nats.lab.svc:4222", "env-pw", None)


def test_on_a_lab_with_the_auth_service_each_runner_is_its_own_user(lab_env, monkeypatch) -> None:
    """`lab up` runs the auth callout: evolve's runners log in as their job (its key as password), as the engineer's do."""
    import json as _json

    from agents.evolve.workflow import EvolveError
    from bus.permissions import JOB_USER, job_user
    from bus.schema import JobSpec
    from services.cli.evolve import lab_access
    from services.common.config import write_secret
    from services.host.jobs import runner_access

    home, _ = lab_env
    url = "nats://127.0.0.1:4998"
    home.mkdir(parents=True)
    write_secret(home / "lab.json", _json.dumps({"url": url, "credentials": {"copi": "copi-pw"}, "runner_user": JOB_USER}))
    with pytest.raises(EvolveError, match="no job secret is known here"):
        lab_access(url, {})
    write_secret(home / "secrets" / "job-secret", "s" * 64, private_folder=True)
    write_secret(home / "secrets" / "runner", "runner-pw", private_folder=True)  # an older lab's file: not used
    access = lab_access(url, {})
    assert (access.runner.user, access.runner.password, access.job_secret) == (JOB_USER, None, "s" * 64)
    spec = JobSpec(job_id="j1", project="p1", experiment_id="x", template="t", bundle_object="p1/b", wall_time_s=10, seeds=[0], memory_mb=256)
    own = runner_access(access.runner, spec, "key-of-j1")
    assert own is not None and (own.user, own.password) == (job_user("p1", "j1"), "key-of-j1")
