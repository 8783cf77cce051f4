"""A lab config split into layers (a base and an overlay's differences, k8s/), and the cap on one job's GPUs.

On Kubernetes the ConfigMap lab-config is mounted as a folder and ``LAB_CONFIG`` names it: the lab merges its
``*.yaml`` files in name order. The kubernetes executor refuses a job over ``max_gpus_per_job`` with one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.settings import ConfigError
from services.common.config import lab_config
from services.executors.base import ExecutorError
from services.executors.kubernetes import KubernetesExecutor
from services.executors.render import KubernetesSettings, k8s_job, k8s_job_secret, k8s_jobset
from tests.manifests import container, example


def test_a_config_folder_is_its_files_merged_in_name_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.yaml").write_text("executor:\n  kubernetes:\n    image: a:1\n    gpus: 4\n    extra_labels: {x: '1'}\n")
    (tmp_path / "gpu.yaml").write_text("executor:\n  kubernetes:\n    min_gpu: 1\n    extra_labels: {y: '2'}\n")
    (tmp_path / "kueue.yaml").write_text("executor: {kubernetes: {gpus: null, kueue_queue: q}}\n")
    (tmp_path / "notes.txt").write_text("not: [a layer")  # only *.yaml counts
    (tmp_path / "..data").mkdir()  # a ConfigMap volume's own entries
    monkeypatch.setenv("LAB_CONFIG", str(tmp_path))
    options = lab_config().executor_options("kubernetes")
    assert options == {"image": "a:1", "gpus": None, "extra_labels": {"x": "1", "y": "2"}, "min_gpu": 1, "kueue_queue": "q"}
    (tmp_path / "zz.yaml").write_text("executor: [not, a, mapping]\n")
    with pytest.raises(ConfigError, match="executor"):
        lab_config()
    (tmp_path / "zz.yaml").write_text("executor: {kubernetes: {image: [\n")
    with pytest.raises(ConfigError, match=r"zz\.yaml: not valid YAML"):
        lab_config()


def test_a_job_over_the_gpu_cap_is_refused_with_the_reason_not_clamped() -> None:
    s = KubernetesSettings(min_gpu=1, max_gpus_per_job=4)
    ok = k8s_job(example(gpu=4), s)
    assert container(ok, "experiment")["resources"]["limits"]["nvidia.com/gpu"] == "4"
    with pytest.raises(ExecutorError, match=r"job proj-exp-1 asks for 8 GPUs, over this lab's max_gpus_per_job of 4") as e:
        k8s_job(example(gpu=8), s)
    assert "\n" not in str(e.value)
    with pytest.raises(ExecutorError, match="max_gpus_per_job"):
        k8s_job_secret(example(gpu=8), s)  # the first thing submit makes: nothing is created
    # All the nodes of a multi-node job count: 2 x 3 GPUs is over 4.
    with pytest.raises(ExecutorError, match=r"asks for 6 GPUs \(3 per node x 2 nodes\)"):
        k8s_jobset(example(gpu=3, nodes=2), s)
    assert k8s_jobset(example(gpu=2, nodes=2), s)["kind"] == "JobSet"
    # min_gpu counts too, and a config whose floor is above its cap is refused when read.
    with pytest.raises(ValueError, match=r"min_gpu \(5\) is above max_gpus_per_job \(4\)"):
        KubernetesSettings(min_gpu=5, max_gpus_per_job=4)
    assert "nvidia.com/gpu" in container(k8s_job(example(gpu=100), KubernetesSettings()), "experiment")["resources"]["limits"]


async def test_the_executor_refuses_before_calling_the_cluster(tmp_path: Path) -> None:
    """Submit fails at once (the engineer fails that run with the line); no API call is attempted (none would answer)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: k, cluster: {server: 'http://127.0.0.1:9'}}]\n"
                          "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n")
    ex = KubernetesExecutor(max_gpus_per_job=2, in_cluster=False, kubeconfig=str(kubeconfig), api_retries=0)
    with pytest.raises(ExecutorError, match="asks for 3 GPUs, over this lab's max_gpus_per_job of 2"):
        await ex.submit(example(gpu=3))
    await ex.close()
