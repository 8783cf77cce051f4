"""The char_lm template run for real: it trains, reports what the lab needs, plots, runs under torchrun, and `lab job render` sizes its jobs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agents.templates import BUILTIN_DIR
from bus.schema import FinalInfo, JobSpec, NatsAccess
from services.runner.runner import command
from tests.conftest import ROOT

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


def _render(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", "job", "render", *args], capture_output=True, text=True, timeout=60)


def _rendered(stdout: str) -> tuple[dict, JobSpec]:
    """The Job's experiment container (it holds the GPUs) and the job the runner reads from its per-job Secret."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(stdout)}
    [experiment] = [c for c in docs["Job"]["spec"]["template"]["spec"]["containers"] if c["name"] == "experiment"]
    return experiment, JobSpec.model_validate_json(docs["Secret"]["stringData"]["job.json"])


def test_job_render_with_the_gpu_profile_asks_for_a_gpu_and_two_gpus_mean_torchrun(tmp_path):
    # The gpu overlay's config, as its ConfigMap mounts it: the base's layers and the overlay's, one folder (LAB_CONFIG).
    config = tmp_path / "lab-config"
    config.mkdir()
    for layer in (ROOT / "k8s" / "base" / "config.yaml", ROOT / "k8s" / "base" / "team.yaml", ROOT / "k8s" / "overlays" / "gpu" / "gpu.yaml"):
        shutil.copy(layer, config / layer.name)
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
    root = ROOT
    # Run as a file (bench/ first on sys.path, where bench/bus.py lives), as people will.
    proc = subprocess.run([sys.executable, str(root / "bench" / "gpu.py")], capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("bench/gpu.py: skipped: no CUDA device here")
