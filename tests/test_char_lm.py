"""The char_lm template: it trains, reports what the lab needs, plots, runs under torchrun, and its profiles size jobs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agents.templates import BUILTIN_DIR, load
from bus.schema import FinalInfo, JobSpec, NatsAccess, TemplateError, parse_spec
from services.runner.runner import command

TEMPLATE = BUILTIN_DIR / "char_lm"
TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 8, "max_steps": 30,
        "warmup_steps": 5, "eval_batches": 2}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _flags(overrides: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in overrides.items()]


def test_the_template_trains_reports_compute_and_samples_and_plots(tmp_path):
    out, figs = tmp_path / "out", tmp_path / "figs"
    subprocess.run([sys.executable, str(TEMPLATE / "experiment.py"), "--out_dir", str(out), "--seeds", "0,1,2", *_flags(TINY)],
                   env=ENV, check=True, capture_output=True, timeout=300)
    raw = json.loads((out / "final_info.json").read_text())
    info = FinalInfo.model_validate(raw)
    assert set(info.metrics) == {"val_loss", "train_loss", "tokens_per_s"}
    assert info.seeds == [0, 1, 2] and all(len(m.values) == 3 for m in info.metrics.values())
    # 30 steps from random init (ln 78 = 4.36 nats) learn something, and nothing more than that is claimed.
    assert all(2.0 < v < 4.36 for v in info.metrics["val_loss"].values)
    assert info.metrics["val_loss"].stderr > 0  # seeds differ
    assert raw["device"] == "cpu" and raw["world_size"] == 1 and "reproducible" in raw["determinism"]
    assert raw["compute"]["tokens"] == 30 * 8 * 32 and raw["compute"]["params"] > 10_000
    assert raw["compute"]["flops"] >= 6 * raw["compute"]["params"] * raw["compute"]["tokens"]
    assert set(raw["samples"]) == {"0", "1", "2"} and all(len(s) == 400 for s in raw["samples"].values())
    curves = json.loads((out / "curves.json").read_text())
    assert curves["0"]["curve"]["step"][-1] == 30 and len(curves["0"]["curve"]["val_loss"]) == len(curves["0"]["curve"]["step"])
    subprocess.run([sys.executable, str(TEMPLATE / "plot.py"), "--run_dir", str(out), "--out_dir", str(figs)],
                   env={**ENV, "MPLBACKEND": "Agg"}, check=True, capture_output=True, timeout=120)
    for name in ("loss_curves.png", "text_samples.png"):
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_knob_is_one_readable_line(tmp_path):
    proc = subprocess.run([sys.executable, str(TEMPLATE / "experiment.py"), "--out_dir", str(tmp_path), "--n_embd", "30", "--n_head", "4"],
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "must be a multiple of --n_head" in proc.stderr and "Traceback" not in proc.stderr


def _job(gpu: int) -> JobSpec:
    return JobSpec(job_id="j", project="p", experiment_id="x", template="char_lm", bundle_object="b", overrides=TINY,
                   seeds=[0], wall_time_s=60, memory_mb=1024, gpu=gpu, nats=NatsAccess(url="nats://127.0.0.1:4222"))


def test_a_multi_gpu_job_runs_under_torchrun_and_on_cpu_uses_gloo_with_one_writer(tmp_path):
    code = tmp_path / "code"
    shutil.copytree(TEMPLATE, code)
    out = tmp_path / "out"
    assert command(_job(1), code, out)[:2] == [sys.executable, str(code / "experiment.py")]
    cmd = command(_job(2), code, out)
    assert Path(cmd[0]).name == "torchrun" or cmd[1:3] == ["-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc_per_node=2" in cmd
    proc = subprocess.run(cmd, cwd=code, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["curves.json", "final_info.json"]
    raw = json.loads((out / "final_info.json").read_text())
    assert raw["world_size"] == 2
    assert raw["compute"]["tokens"] == 2 * 30 * 8 * 32  # both processes trained
    assert proc.stdout.count("done in") == 1  # rank 0 alone reports


def test_knob_defaults_match_the_experiment():
    spec = importlib.util.spec_from_file_location("char_lm_experiment", TEMPLATE / "experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, tpl = load("char_lm")
    assert {k: v.default for k, v in tpl.knobs.items()} == {k: d for k, (_, d) in module.KNOBS.items()}


def test_profiles_choose_knobs_resources_and_time():
    _, spec = load("char_lm")
    assert spec.resumable
    default, fast, gpu = spec.profile(None), spec.profile("fast"), spec.profile("gpu")
    assert default.resources.gpu == 0 and default.overrides == {}
    assert fast.resources == spec.resources and fast.overrides["max_steps"] < spec.knobs["max_steps"].default
    assert spec.fast == fast.overrides  # --fast and --profile fast are one thing
    assert gpu.resources.gpu == 1 and gpu.time_budget_s > spec.time_budget_s and gpu.overrides["n_embd"] == 384
    with pytest.raises(TemplateError, match="no profile 'tpu'; known: default, fast, gpu"):
        spec.profile("tpu")
    assert parse_spec(spec.model_dump(mode="json")) == spec  # the spec travels in messages as JSON


def test_a_profile_with_an_unknown_knob_is_rejected():
    data = yaml.safe_load((TEMPLATE / "template.yaml").read_text())
    data["profiles"]["gpu"]["overrides"]["n_layers"] = 6
    with pytest.raises(TemplateError, match=r"profiles.gpu.n_layers: not a declared knob"):
        parse_spec(data)
    del data["profiles"]["gpu"]["overrides"]["n_layers"]
    data["fast"] = {"max_steps": 50}  # an old-style fast profile that disagrees with profiles.fast
    with pytest.raises(TemplateError, match="declare the fast profile once"):
        parse_spec(data)
    data["profiles"]["default"] = data["profiles"].pop("fast")
    with pytest.raises(TemplateError, match="profiles.default: reserved"):
        parse_spec(data)


def _render(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", "job", "render", *args], capture_output=True, text=True, timeout=60)


def _rendered(stdout: str) -> tuple[dict, JobSpec]:
    """The Job's experiment container (it holds the GPUs) and the job the runner reads from its per-job Secret."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(stdout)}
    [experiment] = [c for c in docs["Job"]["spec"]["template"]["spec"]["containers"] if c["name"] == "experiment"]
    return experiment, JobSpec.model_validate_json(docs["Secret"]["stringData"]["job.json"])


def test_job_render_with_the_gpu_profile_asks_for_a_gpu_and_two_gpus_mean_torchrun(tmp_path):
    config = Path(__file__).resolve().parent.parent / "k8s" / "overlays" / "gpu" / "config.yaml"
    proc = _render("--template", "char_lm", "--profile", "gpu", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    container, job = _rendered(proc.stdout)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and job.gpu == 1
    # A template whose gpu profile asks for two: the Job asks for two, and the runner starts torchrun.
    two = tmp_path / "char_lm"
    shutil.copytree(TEMPLATE, two)
    data = yaml.safe_load((two / "template.yaml").read_text())
    data["profiles"]["gpu"]["resources"]["gpu"] = 2
    (two / "template.yaml").write_text(yaml.safe_dump(data))
    proc = _render("--template", str(two), "--profile", "gpu", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    container, job = _rendered(proc.stdout)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert job.resumable and job.gpu == 2
    assert "--nproc_per_node=2" in command(job, Path("/code"), Path("/out"))


def test_job_render_with_an_unknown_profile_is_one_line():
    proc = _render("--template", "char_lm", "--profile", "tpu")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: template char_lm has no profile 'tpu'; known: default, fast, gpu"


def test_the_gpu_bench_skips_with_a_clear_message_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: bench/gpu.py would run, not skip")
    root = Path(__file__).resolve().parent.parent
    # Run as a file (bench/ first on sys.path, where bench/bus.py lives), as people will.
    proc = subprocess.run([sys.executable, str(root / "bench" / "gpu.py")], capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("bench/gpu.py: skipped: no CUDA device here")


@pytest.mark.parametrize(
    ("profile", "fast", "gpu", "max_steps"),
    [("gpu", False, 1, 5000), ("", True, 0, 400), ("fast", False, 0, 400), ("", False, 0, 500)],
)
async def test_the_engineer_plans_a_job_with_its_profile(profile, fast, gpu, max_steps):
    """A project's profile reaches the job: knobs, GPUs, memory and time; an old `fast: true` still means fast."""
    from types import SimpleNamespace

    from agents.engineer.workflow import Engineer
    from bus.schema import ExperimentRequest

    _, spec = load("char_lm")
    req = ExperimentRequest(experiment_id="x00-baseline", seeds=[0, 1, 2], template="char_lm", template_object="p/t.tar.gz",
                            spec=spec.model_dump(mode="json"), profile=profile, fast=fast)
    record = await Engineer()._plan(SimpleNamespace(project="p"), req, 1, "")
    job = record.spec
    chosen = spec.profile(profile or ("fast" if fast else None))
    assert job.gpu == gpu and job.memory_mb == chosen.resources.memory_mb and job.wall_time_s == chosen.time_budget_s
    assert job.overrides.get("max_steps", spec.knobs["max_steps"].default) == max_steps
    assert job.resumable and job.nats is None  # a plan kept in state never holds the runner's credential


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_lab_run_char_lm_fast_end_to_end_writes_loss_curves_and_text_samples(lab_env, tmp_path):
    """`lab run --template char_lm --fast` as a user starts it: real agents, sandboxed runs, a paper with the curves."""
    from tests.conftest import lab_cmd

    home, env = lab_env
    out = tmp_path / "out"
    args = lab_cmd("run", "--template", "char_lm", "--fast", "--seed", "0", "--max-ideas", "1", "--max-rounds", "0", "--quiet", "--out", str(out))
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1100, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    infos = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*/final_info.json"))]
    assert infos and all(len(i["seeds"]) >= 3 for i in infos)
    for info in infos:  # a generated text sample per seed, and the compute the run used
        assert set(info["samples"]) == {str(s) for s in info["seeds"]} and all(len(t) > 50 for t in info["samples"].values())
        assert info["compute"]["params"] > 0 and info["compute"]["flops"] > 0 and info["metrics"]["val_loss"]["mean"] > 0
    paper = (out / "paper.md").read_text()
    assert "loss_curves.png" in paper and "text_samples.png" in paper
    assert (out / "paper.pdf").read_bytes().startswith(b"%PDF")


def test_heads_must_divide_the_width_in_every_run_the_template_allows():
    """``divides``: checked on the template's own runs when it loads, and on each run's whole configuration."""
    from agents.engineer.jobs import plan_job

    _, spec = load("char_lm")
    assert spec.knobs["n_head"].divides == ["n_embd"]
    assert spec.check_overrides({"n_head": 8}) == {"n_head": 8}
    with pytest.raises(TemplateError, match="n_head=12 must divide n_embd=128"):
        spec.check_overrides({"n_head": 12})
    assert spec.check_overrides({"n_head": 12}, profile="gpu") == {"n_head": 12}  # 384 wide
    with pytest.raises(TemplateError, match="n_head=6 must divide n_embd=64"):
        spec.check_overrides({"n_embd": 64}, profile="gpu")  # the gpu profile's 6 heads stay
    # The engineer plans the run with the profile's knobs: the same refusal, before any job starts.
    with pytest.raises(TemplateError, match="n_head=12 must divide n_embd=64"):
        plan_job(spec, "fast", job_id="j", project="p", experiment_id="x", bundle_object="b", seeds=[0], changes={"n_head": 12})
    # A template whose own profile breaks the relation does not load, in one line naming it.
    data = yaml.safe_load((TEMPLATE / "template.yaml").read_text())
    data["profiles"]["gpu"]["overrides"]["n_embd"] = 380
    with pytest.raises(TemplateError, match="profiles.gpu: n_head=6 must divide n_embd=380"):
        parse_spec(data)
    data = yaml.safe_load((TEMPLATE / "template.yaml").read_text())
    data["knobs"]["n_head"]["divides"] = ["dropout"]
    with pytest.raises(TemplateError, match="divides: 'dropout' must be a declared int knob"):
        parse_spec(data)
