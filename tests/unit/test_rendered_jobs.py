"""The Jobs and containers the executors render validate strictly against Kubernetes' schemas, and `lab job render` prints them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from bus.schema import JobSpec
from services.cli.job import app
from services.executors.render import KubernetesSettings, k8s_job, render_job
from tests.manifests import assert_restricted, container, example, validate


def test_validator_rejects_what_it_should() -> None:
    """The schema check used below is real: an unknown field and a wrong type both fail."""
    job = k8s_job(example(), KubernetesSettings())
    validate(job)
    job["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job)
    bad = k8s_job(example(), KubernetesSettings())
    bad["spec"]["backoffLimit"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)


def test_images_can_be_pinned_by_digest() -> None:
    pinned = "ghcr.io/kenkyu-lab/lab@sha256:" + "a" * 64
    job = k8s_job(example(), KubernetesSettings(image=pinned))
    validate(job)
    assert {c["image"] for c in job["spec"]["template"]["spec"]["containers"]} == {pinned}


@pytest.mark.parametrize("case", [
    {},
    {"gpu": 2, "options": {"gpus": 4, "priority_class": "high"}},
    {"options": {"kueue_queue": "lab-gpus", "nats_secret": "lab-nats-job", "scratch_size_mb": 2048}},
    {"network": True, "job_id": "Weird_ID.with.dots/" + "x" * 80},
    {"gpu": 1, "shm_mb": 4096, "disk_mb": 20000, "term_grace_s": 90,
     "options": {"gpus": 8, "gpu_products": ["NVIDIA-A100-SXM4-80GB"], "mig_profile": "3g.40gb", "gpu_runtime_class": "nvidia"}},
])
def test_rendered_jobs_validate_with_security_and_gpu_fields(case: dict[str, Any]) -> None:
    options = case.pop("options", {})
    job = example(**case)
    manifest, secret = yaml.safe_load_all(render_job(job, "kubernetes", options))
    validate(manifest)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == manifest["metadata"]["name"]
    assert len(manifest["metadata"]["name"]) <= 63
    assert all(len(v) <= 63 for v in manifest["metadata"]["labels"].values())
    pod = manifest["spec"]["template"]["spec"]
    assert_restricted("job", pod)
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    limits = container(manifest, "experiment")["resources"]["limits"]
    gpu_resource = f"nvidia.com/mig-{options['mig_profile']}" if "mig_profile" in options else "nvidia.com/gpu"
    assert limits.get(gpu_resource) == (str(job.gpu) if job.gpu else None)
    assert manifest["metadata"]["namespace"] == options.get("namespace", "lab-jobs")  # never beside the agents' Secrets
    assert pod["terminationGracePeriodSeconds"] >= job.term_grace_s + 30
    assert {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{job.shm_mb}Mi"}
    assert "nvidia.com/gpu" not in container(manifest, "runner")["resources"]["limits"]
    assert manifest["spec"].get("suspend", False) is bool(options.get("kueue_queue"))
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["shareProcessNamespace"] is False
    assert container(manifest, "experiment")["securityContext"]["runAsUser"] == 10002
    # No credential in any environment: the one reference is the runner's to its pod's node (env.json's provenance).
    node_ref = {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert not [e for c in pod["containers"] for e in c["env"] if e.get("valueFrom", node_ref) != node_ref or e["name"] == "LAB_JOB"]
    runner_env = {e["name"]: e for e in container(manifest, "runner")["env"]}
    assert runner_env["LAB_NODE_NAME"]["valueFrom"] == node_ref
    assert runner_env["LAB_JOB_IMAGE"]["value"] == container(manifest, "runner")["image"]
    assert "LAB_NODE_NAME" not in {e["name"] for e in container(manifest, "experiment")["env"]}
    inner = JobSpec.model_validate_json(secret["stringData"]["job.json"])
    assert inner.job_id == job.job_id and (inner.nats.password is None) is bool(options.get("nats_secret"))
    if job.network:
        assert manifest["spec"]["template"]["metadata"]["labels"]["lab.kenkyu.dev/network"] == "open"


def test_the_runner_serves_metrics_on_a_named_port_unless_the_executor_says_none() -> None:
    for options, port in (({}, 9464), ({"metrics_port": 9100}, 9100), ({"metrics_port": None}, None)):
        manifest = yaml.safe_load_all(render_job(example(), "kubernetes", options)).__next__()
        validate(manifest)
        runner = container(manifest, "runner")
        env = {e["name"]: e.get("value") for e in runner["env"]}
        if port is None:
            assert "ports" not in runner and "LAB_RUNNER_METRICS_PORT" not in env
        else:
            assert runner["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
            assert env["LAB_RUNNER_METRICS_PORT"] == str(port)
        assert "ports" not in container(manifest, "experiment")


@pytest.fixture
def template_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "experiment.py").write_text("print('x')\n")
    (folder / "plot.py").write_text("print('x')\n")
    (folder / "template.yaml").write_text(yaml.safe_dump({
        "name": "toy", "title": "Toy", "task": "t",
        "knobs": {"lr": {"type": "float", "default": 0.1, "min": 0.0, "max": 1.0}},
        "metrics": {"acc": {"direction": "higher", "primary": True}},
        "baseline": {"lr": 0.05}, "seeds": 4, "time_budget_s": 900,
        "resources": {"cpu": 2, "gpu": 1, "memory_mb": 4096},
    }))
    return folder


def test_cli_render_prints_a_valid_job_for_the_template_baseline(template_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"executor": {"kubernetes": {"namespace": "research", "gpus": 2}}}))
    result = CliRunner().invoke(app, ["render", "--template", str(template_dir), "--config", str(config)])
    assert result.exit_code == 0, result.output
    manifest, secret = yaml.safe_load_all(result.stdout)
    validate(manifest)
    assert manifest["metadata"]["namespace"] == "research"
    assert manifest["spec"]["activeDeadlineSeconds"] == 900 + 300
    c = container(manifest, "experiment")
    assert c["resources"]["limits"] == {"cpu": "2000m", "memory": f"{4096 + 128}Mi", "nvidia.com/gpu": "1"}
    inner = JobSpec.model_validate_json(secret["stringData"]["job.json"])
    assert inner.overrides == {"lr": 0.05} and inner.seeds == [0, 1, 2, 3]

    docker = CliRunner().invoke(app, ["render", "--template", str(template_dir), "--executor", "docker"])
    assert docker.exit_code == 0, docker.output
    volume, job_file, runner, experiment = yaml.safe_load_all(docker.stdout)
    assert volume["driver_opts"]["type"] == "tmpfs" and runner["network"] == "lab-bus" and runner["read_only"] is True
    # The job's description is a 0400 file bind-mounted into the runner alone, never its environment.
    assert job_file["mode"] == "0400" and JobSpec.model_validate(job_file["content"]).overrides == {"lr": 0.05}
    assert runner["volumes"][job_file["path"].rsplit("/", 1)[0]] == {"bind": "/run/lab/job", "mode": "ro"}
    assert "LAB_JOB" not in runner["environment"] and "/run/lab/job" not in str(experiment["volumes"])
    assert experiment["device_requests"][0]["Count"] == 1 and experiment["read_only"] is True
    assert experiment["network_mode"] == "none" and experiment["user"] != runner["user"]


@pytest.mark.parametrize("args, message", [
    (["--template", "no-such-template"], "unknown template"),
    (["--executor", "slurm"], "cannot render for executor 'slurm'"),
])
def test_cli_render_bad_input_is_one_line_and_exit_2(template_dir: Path, args: list[str], message: str) -> None:
    if "--template" not in args:
        args = ["--template", str(template_dir), *args]
    result = CliRunner().invoke(app, ["render", *args])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_render_bad_option_names_the_field(template_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("executor:\n  kubernetes:\n    gpus: none\n")
    result = CliRunner().invoke(app, ["render", "--template", str(template_dir), "--config", str(config)])
    assert result.exit_code == 2 and "bad executor option gpus" in result.stderr
