"""The result cache's key (bus/resultcache.run_key, agents/engineer cache_key): what determines a run's result, and nothing else."""

from __future__ import annotations

from pathlib import Path

from agents.engineer.jobs import plan_job
from agents.engineer.workflow import cache_key
from agents.pi import transitions as t
from agents.templates import bundle, bundle_files, load, replace_files
from bus.provenance import tar_sha256, tree_sha256
from bus.resultcache import CacheEntry, _verdict, run_key
from bus.schema import AnalysisDone, JobStatus
from tests.unit.test_pi_transitions import report, significant, to_analysis

SLEEP = Path(__file__).resolve().parents[1] / "sleep_template"
RUNTIME = "python 3.12.1 packages abc"


def key(bundle_bytes: bytes, project: str = "p1", profile: str | None = "fast", seeds: list[int] | None = None,
        changes: dict[str, float] | None = None, runtime: str = RUNTIME) -> str:
    spec = load(str(SLEEP))[1]
    job = plan_job(spec, profile, job_id=f"j-{project}", project=project, experiment_id="x01-baseline", bundle_object=f"{project}/t.tar.gz",
                   seeds=[0, 1, 2] if seeds is None else seeds, changes=changes)
    return cache_key(job, spec, tar_sha256(bundle_bytes), runtime)


def test_identical_requests_from_two_projects_have_the_same_key() -> None:
    data = bundle(SLEEP)
    assert key(data, project="alpha") == key(bundle(SLEEP), project="beta")  # the project, job id and object name are not in it


def test_the_key_changes_with_the_code_the_knobs_the_seeds_and_the_runtime() -> None:
    data = bundle(SLEEP)
    base = key(data)
    files = bundle_files(data)
    edited = replace_files(data, {**files, "experiment.py": files["experiment.py"] + "\n# a code edit\n"})
    assert key(edited) != base  # a code edit
    assert key(data, profile=None) != base  # another profile: other effective knobs (sleep_s)
    assert key(data, changes={"x": 0.9}) != base  # an idea's change
    assert key(data, seeds=[0, 1]) != base and key(data, seeds=[2, 1, 0]) != base  # the seed list, in order
    assert key(data, runtime="image ghcr.io/lab/runner:2") != base and key(data, runtime="python 3.13.0 packages abc") != base
    assert key(data) == base


def test_the_bundle_hash_is_the_runners_code_hash_of_the_unpacked_tree(tmp_path: Path) -> None:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(bundle(SLEEP)), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    assert tar_sha256(bundle(SLEEP)) == tree_sha256(tmp_path)


def test_the_hardware_class_counts_only_where_results_depend_on_it() -> None:
    spec = load(str(SLEEP))[1]
    job = plan_job(spec, None, job_id="j", project="p", experiment_id="x", bundle_object="o", seeds=[0])
    assert cache_key(job, spec, "c", RUNTIME) == cache_key(job.model_copy(update={"cpu": 4.0}), spec, "c", RUNTIME)
    assert cache_key(job, spec, "c", RUNTIME) != cache_key(job.model_copy(update={"gpu": 1}), spec, "c", RUNTIME)  # CPU vs GPU numerics
    metrics = {**spec.metrics, "throughput": spec.metrics["loss"].model_copy(update={"kind": "hardware", "primary": False})}
    timed = spec.model_copy(update={"metrics": metrics})
    assert cache_key(job, timed, "c", RUNTIME) != cache_key(job.model_copy(update={"cpu": 4.0}), timed, "c", RUNTIME)


def test_confirmation_runs_on_fresh_seeds_are_never_hits() -> None:
    """The PI confirms a finding on seeds no arm has used, so its confirmation runs key differently from every earlier run."""
    before = to_analysis()
    step = t.analysis_done(before, AnalysisDone(report=report(comparisons=[significant("i4")])), when=5.0)
    first = sorted({s for e in before.experiments.values() for s in e.seeds})
    fresh = step.sent[0][0].seeds
    assert not set(first) & set(fresh)
    data = bundle(SLEEP)
    assert key(data, seeds=fresh) != key(data, seeds=first)


def test_a_claim_is_waited_for_unless_it_is_ones_own_or_stale() -> None:
    done = CacheEntry(state="done", owner="a/x01/j1", since=0.0, status=JobStatus(job_id="j1", experiment_id="x01", state="succeeded"))
    live = CacheEntry(state="running", owner="a/x01/j1", since=1e12, stale_after_s=60)
    stale = CacheEntry(state="running", owner="a/x01/j1", since=0.0, stale_after_s=60)
    assert _verdict(done, "b/x01/").kind == "hit"  # type: ignore[union-attr]
    assert _verdict(live, "b/x01/").kind == "wait"  # type: ignore[union-attr]
    assert _verdict(live, "a/x01/") is None  # its own (a redelivered handler, a lost runner's next attempt): run
    assert _verdict(stale, "b/x01/") is None  # a crashed lab's claim: taken over
    assert _verdict(None, "b/x01/") is None
    assert run_key(code_sha256="c", overrides={"a": 1, "b": 2}, seeds=[0], runtime="r") == run_key(
        code_sha256="c", overrides={"b": 2, "a": 1}, seeds=[0], runtime="r")


def test_no_cache_rides_from_the_start_message_on_every_experiment_request() -> None:
    """`lab run --no-cache` sets StartProject.cache; the PI carries it on each request, where the engineer reads it."""
    from bus.schema import Budget, ExperimentRequest, StartProject
    from tests.fakes import TOY_SPEC

    budget = Budget(max_ideas=2, max_runs=10, max_revision_rounds=1, wall_time_s=600)
    for cache in (True, False):
        body = StartProject(template="toy", template_object="p1/t.tar.gz", spec=TOY_SPEC, seed=7, budget=budget, cache=cache)
        step = t.start(None, body, "p1", 0.0)
        requests = [b for b, _ in step.sent if isinstance(b, ExperimentRequest)]
        assert requests and all(r.cache is cache for r in requests) and step.state.cache is cache


def test_lab_run_offers_no_cache() -> None:
    from typer.testing import CliRunner

    from services.cli.app import app

    out = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "--no-cache" in out


def test_a_bundle_too_large_to_hash_is_refused_not_read(monkeypatch) -> None:
    import bus.provenance as prov

    monkeypatch.setattr(prov, "TAR_HASH_LIMIT", 100)
    try:
        prov.tar_sha256(bundle(SLEEP))
    except ValueError as e:
        assert "not hashed" in str(e)
    else:
        raise AssertionError("a bundle over the limit was hashed")
