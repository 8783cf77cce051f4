"""Provenance to the job: the code hash, the environment's new fields, and export.json's chain from each run to its job."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agents.templates import bundle, replace_files, unbundle
from bus.provenance import FRESH, packages_sha256, provenance, spend, text_sha256, tree_sha256
from bus.schema import FinalInfo, JobEnvironment, JobStatus, MetricStat, RunRecord, Usage
from services.read.export import Exported, _manifest
from services.runner import runner

DIFF = "--- a/experiment.py\n+++ b/experiment.py\n@@ -1 +1 @@\n-lr = 0.1\n+lr = 0.2\n"


def template(folder: Path) -> Path:
    (folder / "lib").mkdir(parents=True)
    (folder / "experiment.py").write_text("lr = 0.1\n")
    (folder / "plot.py").write_text("print('plot')\n")
    (folder / "template.yaml").write_text("name: toy\n")
    (folder / "lib" / "model.py").write_text("WIDTH = 64\n")
    return folder


def test_a_code_edit_changes_the_hash_and_a_byte_code_cache_does_not(tmp_path: Path) -> None:
    code = template(tmp_path / "code")
    before = tree_sha256(code)
    assert len(before) == 64 and before == tree_sha256(code)  # hex sha256, the same tree the same hash
    # Running the code leaves caches and hidden files: not the code.
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "experiment.cpython-311.pyc").write_bytes(b"\x00cache")
    (code / "lib" / "__pycache__").mkdir()
    (code / "lib" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\x00cache")
    (code / "lib" / "stray.pyc").write_bytes(b"\x00")
    (code / ".ipynb_checkpoints").mkdir()
    (code / ".ipynb_checkpoints" / "x.py").write_text("x = 1\n")
    assert tree_sha256(code) == before
    # An outputs folder named in ``skip`` is not the code either.
    (code / "out").mkdir()
    (code / "out" / "final_info.json").write_text("{}")
    assert tree_sha256(code, skip=frozenset({"out"})) == before != tree_sha256(code)
    (code / "out" / "final_info.json").unlink()
    (code / "out").rmdir()
    # Any change of a file's bytes, of a path, or a new file is another hash.
    (code / "lib" / "model.py").write_text("WIDTH = 65\n")
    edited = tree_sha256(code)
    assert edited != before
    (code / "lib" / "model.py").write_text("WIDTH = 64\n")
    assert tree_sha256(code) == before
    (code / "lib" / "model.py").rename(code / "lib" / "model2.py")
    assert tree_sha256(code) not in (before, edited)


def test_path_and_content_cannot_trade_bytes(tmp_path: Path) -> None:
    """Lengths are hashed with the bytes: moving bytes between a name and a content is another hash."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "ab").write_text("c")
    (b / "a").write_text("bc")
    assert tree_sha256(a) != tree_sha256(b)
    assert tree_sha256(tmp_path / "missing") == tree_sha256(tmp_path / "empty-none") == hashlib.sha256().hexdigest()


def test_the_runner_hashes_the_bundle_it_ran_edits_included(tmp_path: Path) -> None:
    """What the runner unpacks hashes like the template folder; the engineer's code edit shows in the hash."""
    folder = template(tmp_path / "toy")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"\x00")
    data = bundle(folder)
    unbundle(data, tmp_path / "ran")
    assert tree_sha256(tmp_path / "ran") == tree_sha256(folder)
    unbundle(replace_files(data, {"experiment.py": "lr = 0.2\n"}), tmp_path / "ran-edited")
    assert tree_sha256(tmp_path / "ran-edited") != tree_sha256(folder)


def test_packages_and_diff_hashes() -> None:
    assert packages_sha256({"torch": "2.13.0", "numpy": "2.4.6"}) == packages_sha256({"numpy": "2.4.6", "torch": "2.13.0"})
    assert packages_sha256({"numpy": "2.4.6", "torch": "2.13.0"}) == hashlib.sha256(b"numpy==2.4.6\ntorch==2.13.0\n").hexdigest()
    assert packages_sha256({"torch": "2.13.1"}) != packages_sha256({"torch": "2.13.0"})
    assert packages_sha256({}) == "" and text_sha256("") == ""
    assert text_sha256(DIFF) == hashlib.sha256(DIFF.encode()).hexdigest()


def test_old_environment_documents_still_load() -> None:
    old = JobEnvironment.model_validate({"hostname": "node-1", "python": "3.11.9", "executor": "docker", "started_at": 3.0})
    assert (old.node, old.image, old.interpreter, old.packages_sha256, old.code_sha256) == ("", "", "", "", "")


def test_old_status_and_run_documents_load_without_compute() -> None:
    """Statuses and runs recorded before the runner measured compute: CPU time unknown (None, never 0), no GPU time."""
    status = JobStatus.model_validate({"type": "job_status", "job_id": "j1", "experiment_id": "x01", "state": "succeeded", "wall_s": 12.5})
    run = RunRecord.model_validate({"job_id": "j1", "experiment_id": "x01", "idea_id": "baseline", "overrides": {}, "seeds": [0],
                                    "status": "succeeded", "wall_s": 12.5})
    assert (status.cpu_s, status.gpu_s) == (None, 0.0) and (run.cpu_s, run.gpu_s) == (None, 0.0)
    assert (provenance(run)["cpu_s"], provenance(run)["gpu_s"]) == (None, 0.0)


def test_spend_totals_each_job_once_and_sums_only_the_measured_cpu_time() -> None:
    runs = [record("j1", "e-base").model_copy(update={"wall_s": 100.0, "cpu_s": 150.0, "gpu_s": 0.0}),
            record("j2", "e-idea").model_copy(update={"wall_s": 1800.0, "cpu_s": 1700.0, "gpu_s": 3600.0}),  # 2 GPUs for 30 min
            record("j3", "e-idea").model_copy(update={"wall_s": 900.0, "cpu_s": None, "gpu_s": 900.0})]  # its own container
    sp = spend([*runs, runs[0]])  # a run reported twice is one job
    assert sp == {"jobs": 3, "wall_s": 2800.0, "cpu_s": 1850.0, "cpu_measured": 2, "gpu_s": 4500.0, "gpu_hours": 1.25, "reused": 0}
    usage = {"pi": Usage(prompt_tokens=1000, completion_tokens=200, cost_usd=0.5), "writer": Usage(prompt_tokens=10, completion_tokens=5)}
    assert spend(runs, usage)["llm"] == {"prompt_tokens": 1010, "completion_tokens": 205, "tokens": 1215, "cost_usd": 0.5}
    assert spend([]) == {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0, "cpu_measured": 0, "gpu_s": 0.0, "gpu_hours": 0.0, "reused": 0}
    # A run the result cache served ran no job: counted as reused, not in the sums (its wall time was another project's).
    served = record("j4", "e-base").model_copy(update={"wall_s": 100.0, "cpu_s": 150.0, "reused_from": "p0/x01-baseline/j0"})
    assert spend([*runs, served]) == {**spend(runs), "reused": 1}


def test_export_spend_counts_every_reported_run_not_only_the_analysed_ones(tmp_path: Path) -> None:
    analysed = record("j1", "e-base").model_copy(update={"wall_s": 60.0, "cpu_s": 30.0})
    failed = record("j2", "e-idea").model_copy(update={"status": "failed", "wall_s": 6.0, "cpu_s": 3.0, "gpu_s": 6.0})
    usage = {"pi": Usage(prompt_tokens=7, completion_tokens=3, cost_usd=0.01)}
    done = Exported(project="p1", out=tmp_path, finished=True, stage="done", runs=[analysed], reported=[analysed, failed], usage=usage)
    manifest = _manifest(done, None)
    assert [(r["job_id"], r["cpu_s"], r["gpu_s"]) for r in manifest["provenance"]] == [("j1", 30.0, 0.0)]
    assert manifest["spend"] == {"jobs": 2, "wall_s": 66.0, "cpu_s": 33.0, "cpu_measured": 2, "gpu_s": 6.0, "gpu_hours": 0.0017, "reused": 0,
                                 "llm": {"prompt_tokens": 7, "completion_tokens": 3, "tokens": 10, "cost_usd": 0.01},
                                 "estimate": None, "limits": None}


def test_export_spend_has_the_estimate_and_the_limits_beside_what_was_spent(tmp_path: Path) -> None:
    from agents.pi.budget import estimate
    from bus.schema import ApprovalPolicy, Budget, TemplateSpec
    from tests.fakes import TOY_SPEC

    budget = Budget(max_runs=4, max_gpu_hours=2.0, max_cost_usd=1.5)
    est = estimate(TemplateSpec.model_validate({**TOY_SPEC, "resources": {"gpu": 1}}), None, budget, "offline", ApprovalPolicy())
    done = Exported(project="p1", out=tmp_path, finished=True, stage="done", reported=[], usage={}, budget=budget, estimate=est)
    sp = _manifest(done, None)["spend"]
    assert sp["estimate"]["gpu_hours"] == round(4 * 600 / 3600, 4) and sp["estimate"]["runs"] == 4 and sp["estimate"]["needs_approval"] is False
    assert sp["limits"] == {"max_runs": 4, "max_gpu_hours": 2.0, "max_cpu_hours": None, "max_cost_usd": 1.5, "max_tokens": None,
                            "wall_time_s": 3600.0}


def test_the_runner_records_node_image_interpreter_and_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_NODE_NAME", "gpu-node-3")
    monkeypatch.setenv("LAB_JOB_IMAGE", "ghcr.io/lab/runner@sha256:" + "ab" * 32)
    monkeypatch.setenv("LAB_EXECUTOR_KIND", "kubernetes")
    env = runner.environment()
    assert env.node == "gpu-node-3" and env.image.endswith("ab" * 32)
    assert env.interpreter.startswith(runner.sys.executable) and env.python in env.interpreter
    assert env.packages_sha256 == packages_sha256(env.packages)
    # Split (Docker, Kubernetes): the experiment container measured the machine; node, image and code are the runner's.
    measured = JobEnvironment(hostname="experiment-pod", node="experiment-pod", image="", executor="local", gpus=["H100"])
    got = runner._run_environment(None, measured, code_sha256="c" * 64)
    assert (got.node, got.image, got.executor, got.gpus, got.code_sha256) == ("gpu-node-3", env.image, "kubernetes", ["H100"], "c" * 64)
    # Locally a template's own environment ran the experiment: that interpreter is recorded.
    assert runner._run_environment(None, None, "d" * 64, "/envs/x/bin/python (the template's environment)").interpreter.startswith("/envs/x")


def test_the_node_defaults_to_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAB_NODE_NAME", raising=False)
    monkeypatch.delenv("LAB_JOB_IMAGE", raising=False)
    env = runner.environment()
    assert env.node == runner.socket.gethostname() and env.image == ""


def record(job: str, experiment: str, attempt: int = 1, diff: str = "", env: JobEnvironment | None = None) -> RunRecord:
    fi = FinalInfo(seeds=[0], metrics={"acc": MetricStat(mean=0.9, stderr=0.0, values=[0.9])})
    return RunRecord(job_id=job, experiment_id=experiment, idea_id="baseline" if experiment == "e-base" else "i1", overrides={},
                     seeds=[0], status="succeeded", final_info=fi, environment=env, attempt=attempt, diff=diff)


def test_export_manifest_traces_each_analysed_run_to_its_job(tmp_path: Path) -> None:
    local = JobEnvironment(hostname="h1", node="h1", executor="local", interpreter="/usr/bin/python3 3.11.9",
                           packages={"numpy": "2.4.6"}, packages_sha256=packages_sha256({"numpy": "2.4.6"}), code_sha256="a" * 64)
    pod = JobEnvironment(hostname="lab-j2-abcde", node="gpu-node-3", executor="kubernetes", image="ghcr.io/lab/runner:1.2",
                         interpreter="/usr/local/bin/python 3.11.9", code_sha256="b" * 64)
    runs = [record("j1", "e-base", env=local), record("j2", "e-idea", attempt=2, diff=DIFF, env=pod), record("j3", "e-old")]
    done = Exported(project="p1", out=tmp_path, finished=True, stage="done", runs=runs)
    rows = _manifest(done, None)["provenance"]
    assert [(r["experiment_id"], r["job_id"], r["attempt"]) for r in rows] == [("e-base", "j1", 1), ("e-idea", "j2", 2), ("e-old", "j3", 1)]
    base, idea, old = rows
    assert base == {"experiment_id": "e-base", "job_id": "j1", "attempt": 1, "status": "succeeded", "executor": "local", "node": "h1",
                    "image": "", "interpreter": "/usr/bin/python3 3.11.9", "packages_sha256": packages_sha256({"numpy": "2.4.6"}),
                    "code_sha256": "a" * 64, "diff_sha256": "", "reused": FRESH, "reused_from": "", "cpu_s": None, "gpu_s": 0.0}
    assert (idea["executor"], idea["node"], idea["image"], idea["code_sha256"]) == ("kubernetes", "gpu-node-3", "ghcr.io/lab/runner:1.2", "b" * 64)
    assert idea["diff_sha256"] == hashlib.sha256(DIFF.encode()).hexdigest()
    # A run recorded before provenance (or with no environment): every field says nothing rather than guess.
    assert (old["executor"], old["node"], old["image"], old["code_sha256"], old["reused"]) == ("", "", "", "", "fresh")
    assert provenance(runs[0]) == base


def test_a_run_served_by_the_result_cache_says_where_from_in_export_and_paper(tmp_path: Path) -> None:
    from agents.writer.assemble import provenance_rows

    local = JobEnvironment(hostname="h1", node="h1", executor="local", interpreter="/usr/bin/python3 3.11.9")
    served = record("j9", "x01-baseline", env=local).model_copy(update={"reused_from": "alpha/x01-baseline/j1234"})
    done = Exported(project="beta", out=tmp_path, finished=True, stage="done", runs=[served])
    [row] = _manifest(done, None)["provenance"]
    assert (row["reused"], row["reused_from"]) == ("reused from alpha/x01-baseline", "alpha/x01-baseline/j1234")
    assert provenance_rows([served])[0]["reused"] == "reused from alpha/x01-baseline"
    assert provenance_rows([record("j1", "x01-baseline", env=local)])[0]["reused"] == "fresh"
