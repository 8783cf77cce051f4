"""`lab evolve`: the Self-Developing loop's logic, its offline mind, and whole runs (offline and with a scripted model).

The whole runs are real: a private nats-server, the local executor, the job
runner and model_merging's fast profile on CPU (2 iterations x 3 candidates,
about a minute each on 2 cores). What they check is read back from the files
the run wrote: which split each recorded run scored, the preference pairs,
the plot, and failed candidates recorded next to the ones that ran.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from agents.codeedit import EditForbidden, EditNotApplicable
from agents.evolve.workflow import ProposeRequest, examples, hook_for, patched, preference, summary
from agents.evolve.offline import OfflineEvolveMind, builtin_pool
from agents.templates import load
from bus.schema.evolve import Candidate
from tests.conftest import lab_cmd

try:
    from tests.fake_openai import FakeOpenAI, Reply, Request
except ImportError:  # tests/ is not a package: pytest put it on sys.path itself
    from fake_openai import FakeOpenAI, Reply, Request  # type: ignore[no-redef]

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


def cand(cid: str, code: str, score: float | None, state: str = "succeeded") -> Candidate:
    return Candidate(id=cid, iteration=0, name=cid, code=code, state=state, score=score)  # type: ignore[arg-type]


# ------------------------------------------------------------------ logic, no processes


def test_preference_pairs_best_against_worst_and_failures_count_as_worst() -> None:
    batch = [cand("a", "A", 0.8), cand("b", "B", 0.9), cand("c", "C", 0.7)]
    pair = preference("P", batch, "higher")
    assert pair is not None and (pair.prompt, pair.chosen, pair.rejected) == ("P", "B", "C")
    assert preference("P", [*batch, cand("x", "X", None, "failed")], "higher").rejected == "X"  # type: ignore[union-attr]
    assert preference("P", batch, "lower").chosen == "C"  # type: ignore[union-attr]
    assert preference("P", [cand("a", "A", 0.8)], "higher") is None
    assert preference("P", [cand("x", "X", None, "failed")], "higher") is None
    s = summary(0, [*batch, cand("x", "X", None, "failed")], "higher")
    assert (s.best, s.median, s.succeeded, s.failed, s.best_id) == (0.9, 0.8, 3, 1, "b")
    assert [c.id for c in examples([*batch, cand("d", "B", 0.95)], 2, "higher")] == ["d", "a"]  # distinct code only


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
    pool = builtin_pool(experiment_source(), HOOK)
    assert [p.name for p in pool][:3] == ["average", "task_arithmetic", "ties"]
    first = asyncio.run(OfflineEvolveMind(HOOK, pool, 0).propose(ProposeRequest(0, 3, "", [], [])))
    assert [p.code for p in first] == [p.code for p in pool[:3]]
    best = [cand("i0-c2", pool[2].code, 0.9), cand("i0-c1", pool[1].code, 0.8)]
    req = ProposeRequest(1, 3, "", best, [p.code for p in first])
    a = asyncio.run(OfflineEvolveMind(HOOK, pool, 0).propose(req))
    b = asyncio.run(OfflineEvolveMind(HOOK, pool, 0).propose(req))
    assert [p.code for p in a] == [p.code for p in b] and len(a) == 3
    assert len({p.code for p in a}) == 3 and not {p.code for p in a} & {p.code for p in first}
    files = {"experiment.py": experiment_source()}
    for p in a:
        patched(files, HOOK, p.code)  # every derived candidate passes the guarded edit
    assert any(p.parents for p in a)


# ------------------------------------------------------------------ whole runs


def records(out: Path) -> tuple[list[dict], list[dict]]:
    d = out / "evolve"
    dev = [json.loads(line) for line in (d / "candidates.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (d / "final.jsonl").read_text().splitlines()]
    return dev, test


def check_run(out: Path, iterations: int, population: int, final_top: int) -> tuple[list[dict], list[dict]]:
    """What every run must hold: the dev/test split respected, well-formed pairs, the plot, every candidate's code."""
    d = out / "evolve"
    dev, test = records(out)
    assert len(dev) == iterations * population
    assert {c["split"] for c in dev} == {"dev"} and {c["split"] for c in test} == {"test"}
    # The test split is scored only for the final best: the top distinct dev candidates, each exactly once.
    # (Records are written as runs finish; ties in score go to the earlier candidate, as the loop ranks them.)
    order = {c["id"]: (c["iteration"], int(c["id"].rsplit("-c", 1)[1])) for c in dev}
    ok = sorted((c for c in dev if c["state"] == "succeeded"), key=lambda c: (-c["score"], order[c["id"]]))
    top: list[dict] = []
    for c in ok:
        if all(c["code"].strip() != t["code"].strip() for t in top):
            top.append(c)
    assert sorted(t["id"] for t in test) == sorted(f"final-{c['id']}" for c in top[:final_top])
    assert all(t["state"] == "succeeded" and t["job_id"] for t in test)
    assert len({c["job_id"] for c in dev + test if c["job_id"]}) == len([c for c in dev + test if c["job_id"]])
    pairs = [json.loads(line) for line in (d / "preferences.jsonl").read_text().splitlines()]
    assert 1 <= len(pairs) <= iterations
    for pair in pairs:
        assert set(pair) == {"prompt", "chosen", "rejected"} and all(isinstance(v, str) and v for v in pair.values())
        assert pair["chosen"] != pair["rejected"]
        assert pair["chosen"] in {c["code"] for c in dev if c["state"] == "succeeded"}
        assert pair["rejected"] in {c["code"] for c in dev}
    assert (d / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((d / "candidates").glob("*.py"))) == len(dev) + len(test)
    assert len((d / "iterations.jsonl").read_text().splitlines()) == iterations
    summary = json.loads((d / "summary.json").read_text())
    assert summary["runs"] == len([c for c in dev + test if c["job_id"]])
    return dev, test


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_lab_evolve_offline(lab_env, tmp_path: Path) -> None:
    _, env = lab_env
    (tmp_path / "crash.py").write_text(CRASH)
    (tmp_path / "forbidden.py").write_text(FORBIDDEN)
    out = tmp_path / "out"
    proc = subprocess.run(
        lab_cmd("evolve", "--template", "model_merging", "--iterations", "2", "--population", "3", "--fast", "--final-top", "2",
                "--out", str(out), "--seed-code", str(tmp_path / "crash.py"), "--seed-code", str(tmp_path / "forbidden.py"), "--quiet"),
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dev, _ = check_run(out, 2, 3, 2)
    crash = next(c for c in dev if c["name"] == "crash")
    assert crash["state"] == "failed" and "evolve-test: this candidate crashes" in crash["reason"] and crash["job_id"]
    refused = next(c for c in dev if c["name"] == "forbidden")
    assert refused["state"] == "failed" and refused["reason"].startswith("edit refused") and "subprocess" in refused["reason"]
    assert not refused["job_id"]  # refused before any job ran
    assert all(c["state"] == "succeeded" for c in dev if c["iteration"] == 1)  # the loop went on after the failures
    assert any(c["parents"] for c in dev if c["iteration"] == 1)  # the second iteration builds on the first's best


def llm_config(path: Path, base_url: str) -> Path:
    path.write_text(yaml.safe_dump({"mind": {
        "model": "fake-model", "base_url": base_url, "api_key_env": "LAB_E2E_NO_SUCH_KEY", "timeout_s": 60,
        "retries": {"invalid_output": 2, "transport": 2, "backoff_s": 0.2, "backoff_max_s": 1.0},
    }}))
    return path


def scripted(req: Request) -> Reply:
    """Iteration 0: one candidate that crashes and two that run; iteration 1: three more, once the prompt shows examples."""
    prompt = req.last_user
    if "best algorithms so far" not in prompt:
        drafts = [("crasher", CRASH), ("half_sum", HALF_SUM), ("sign_sum", SIGN_MEAN)]
    else:
        drafts = [("median", MEDIAN), ("half_sign", SIGN_MEAN.replace("return (", "return 0.5 * (")),
                  ("sum", "def merge(task_vectors, args, gen):\n    return task_vectors.sum(0)\n")]
    return Reply.json({"candidates": [{"name": n, "rationale": f"scripted {n}", "code": c} for n, c in drafts]})


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_lab_evolve_with_a_scripted_llm(lab_env, tmp_path: Path) -> None:
    _, env = lab_env
    out = tmp_path / "out"
    with FakeOpenAI(scripted) as fake:
        config = llm_config(tmp_path / "mind.yaml", fake.base_url)
        env = {**{k: v for k, v in env.items() if not k.startswith("LAB_LLM_")}, "LAB_MIND_CONFIG": str(config),
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        proc = subprocess.run(
            lab_cmd("evolve", "--iterations", "2", "--population", "3", "--fast", "--mind", "llm", "--final-top", "1", "--out", str(out), "--quiet"),
            env=env, capture_output=True, text=True, timeout=400,
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dev, test = check_run(out, 2, 3, 1)
    crash = next(c for c in dev if c["name"] == "crasher")
    assert crash["state"] == "failed" and "this candidate crashes" in crash["reason"]
    assert [c["state"] for c in dev if c["iteration"] == 1] == ["succeeded"] * 3
    # One model call per iteration; the second shows the first's best code as an example.
    assert len(fake.requests) == 2
    best0 = max((c for c in dev if c["iteration"] == 0 and c["state"] == "succeeded"), key=lambda c: c["score"])
    assert best0["code"].strip() in fake.requests[1].last_user
    pairs = [json.loads(line) for line in (out / "evolve" / "preferences.jsonl").read_text().splitlines()]
    assert pairs[0]["rejected"] == CRASH and pairs[0]["chosen"] == best0["code"]
    assert pairs[0]["prompt"] in fake.requests[0].last_user or fake.requests[0].last_user in pairs[0]["prompt"]


@pytest.mark.parametrize("args, says", [
    (["--population", "0"], "--population must be at least 1"),
    (["--template", "grokking"], "declares no hook for `lab evolve`"),
    (["--seed-code", "/no/such/file.py"], "--seed-code /no/such/file.py: cannot read"),
    (["--max-runs", "2"], "leaves no run for the loop"),
])
def test_bad_arguments_are_one_line(lab_env, args: list[str], says: str) -> None:
    _, env = lab_env
    proc = subprocess.run(lab_cmd("evolve", *args), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines


def test_on_a_lab_the_runner_credential_and_job_secret_come_from_lab_home_or_the_environment(lab_env, monkeypatch) -> None:
    """`lab evolve --nats`: what `lab up` wrote for that lab; a lab that checks logins and no runner credential is one line."""
    import json as _json

    from agents.evolve.workflow import EvolveError
    from services.common.config import write_secret
    from services.cli.evolve import lab_access

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
    from services.common.config import write_secret
    from services.cli.evolve import lab_access
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
