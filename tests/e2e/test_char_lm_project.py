"""A char_lm project through the whole lab: its loss curves and text samples reach the paper."""

from __future__ import annotations

import json
import subprocess

import pytest


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
