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
    assert_the_paper_states_what_ran(out, paper, infos)


def assert_the_paper_states_what_ran(out, paper: str, infos: list[dict]) -> None:
    """Issue "Papers that are true", on a real --fast run: the Setup states the recorded baseline, the throughput is no
    finding, the undertrained model is said to be one, and title, abstract, results and conclusion tell one story."""
    import re

    from agents.writer.story import inconsistencies
    from bus.schema import AnalysisReport

    report = AnalysisReport.model_validate(json.loads((out / "analysis.json").read_text())["report"])
    base = next(r.final_info.config for r in report.runs if r.idea_id == "baseline" and r.final_info)
    setup = paper.split("## Experimental Setup", 1)[1].split("\n## ", 1)[0]
    for knob in ("n_layer", "lr", "max_steps", "warmup_steps"):  # the fast profile's values, never the template's defaults
        stated = re.search(rf"- `{knob}`: \w+, baseline ([^,\s]+)", setup)
        assert stated and float(stated.group(1)) == float(base[knob]), (knob, stated and stated.group(0), base[knob])
    assert "fast" in setup
    assert not [c for c in report.comparisons if c.metric == "tokens_per_s"]  # hardware-dependent: never in a test family
    assert any(d.metric == "tokens_per_s" for d in report.descriptive)
    assert any(f.kind == "not_converged" for f in report.flags) and "before convergence" in paper  # 400 steps at ~2.4 nats/char
    assert inconsistencies(paper, report, "") == []
    if json.loads((out / "export.json").read_text())["accepted"]:
        assert "Draft for review" not in paper and "Final version" in paper
