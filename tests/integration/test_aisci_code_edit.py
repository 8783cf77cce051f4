"""A code idea on an AI Scientist template: the engineer's llm mind edits the user's experiment.py, never the lab's wrapper.

The bundle's experiment.py is the lab's wrapper (agents/aisci_shim.py); the user's file is
original/experiment.py. The guard (agents.aisci.editable) offers the model only the user's
files, sends an edit of the wrapper back to it with the reason, and the patched bundle runs the
edited code through the wrapper. The model is tests/fake_openai.py's scripted server; the
mind, the guard and the run are real (about a second of numpy).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import pytest

from agents import aisci, templates
from agents.codeedit import apply_edits
from agents.codeideas import unified_diff
from agents.minds import make_mind
from tests.conftest import TESTS
from tests.fake_openai import FakeOpenAI, Reply, Request
from tests.llm_helpers import clean_env

TINY = TESTS / "aisci" / "aisci_tiny"
STEP = "        w -= LR * 2 * xt.T @ (xt @ w - yt) / len(yt)\n"
WARMUP = (
    "    for step in range(STEPS):\n"
    "        w -= warmup_lr(step) * 2 * xt.T @ (xt @ w - yt) / len(yt)\n"
)
NEW_FN = "def warmup_lr(step):\n    return LR * min(1.0, (step + 1) / 20)\n\n\n"


def answers(req: Request) -> Reply:
    """First an edit of the wrapper (refused), then the warmup written into the user's experiment.py."""
    if "original/experiment.py" in req.last_user and "edits:" not in req.last_user:
        wrapper = {"path": "experiment.py", "search": "import sys\n", "replace": "import sys  # edited\n"}
        return Reply.json({"explanation": "edit the runner", "overrides": [], "edits": [wrapper]})
    edits = [
        {"path": "original/experiment.py", "search": "def run(name, noise, seed):\n", "replace": NEW_FN + "def run(name, noise, seed):\n"},
        {"path": "original/experiment.py", "search": "    for _ in range(STEPS):\n" + STEP, "replace": WARMUP},
    ]
    return Reply.json({"explanation": "a linear warmup of the step size", "overrides": [], "edits": edits})


__all__ = ["clean_env"]  # the fixture, used by name


@pytest.mark.usefixtures("clean_env")
async def test_the_llm_edits_the_users_experiment_and_the_wrapper_runs_it(tmp_path) -> None:
    _, spec = templates.load(str(TINY))
    bundle = templates.bundle(TINY)
    files = templates.bundle_files(bundle)
    assert aisci.editable(files) == {"original/experiment.py", "original/plot.py"}
    idea = spec.seed_ideas[0]  # learning_rate_warmup, a code change to experiment.py
    with FakeOpenAI(answers) as fake:
        config = {"model": "fake-model", "base_url": fake.base_url, "api_key_env": "LAB_TEST_NO_SUCH_KEY", "timeout_s": 10,
                  "retries": {"backoff_s": 0.01, "backoff_max_s": 0.05}}
        plan = await make_mind("llm", "engineer", seed=0, config=config).plan(idea, spec, files)  # type: ignore[attr-defined]
    asked = [r.last_user for r in fake.requests]
    assert len(asked) == 2 and "['original/experiment.py', 'original/plot.py']" in asked[0]
    assert "'experiment.py'" in asked[1] and "edits:" in asked[1]  # the wrapper's edit went back with the reason
    assert {e.path for e in plan.edits} == {"original/experiment.py"}

    # As the engineer's workflow applies it: the same guard, the diff the paper shows, the bundle the runner fetches.
    patched = apply_edits(files, plan.edits, aisci.editable(files))
    assert patched["experiment.py"] == files["experiment.py"] and "warmup_lr(step)" in patched["original/experiment.py"]
    diff = unified_diff(files, patched)
    assert "original/experiment.py" in diff and "+def warmup_lr(step):" in diff and "aisci_shim" not in diff
    code = tmp_path / "code"
    with tarfile.open(fileobj=io.BytesIO(templates.replace_files(bundle, patched)), mode="r:gz") as tar:
        tar.extractall(code, filter="data")
    outs = {}
    for name, folder in (("edited", code), ("baseline", None)):
        if folder is None:
            folder = tmp_path / "base"
            with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
                tar.extractall(folder, filter="data")
        out = tmp_path / f"out-{name}"
        run = subprocess.run([sys.executable, "experiment.py", "--out_dir", str(out), "--seeds", "0"], cwd=folder, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        outs[name] = json.loads((out / "final_info.json").read_text())["metrics"]["line/final_val_loss"]["mean"]
    assert outs["edited"] != outs["baseline"]  # the wrapper ran the user's edited file
