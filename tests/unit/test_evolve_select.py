"""`lab evolve`'s selection on a planted testbed (tests/evolve_planted.py), in process: racing, duplicates, the
paired final test, honest preference pairs, and the operator programs of the offline mind."""

from __future__ import annotations

import asyncio
import random

import numpy as np

from agents.evolve.offline import builtin_pool, describe, mutate, render
from agents.evolve.race import duplicate_of
from agents.evolve.stats import paired
from agents.evolve.workflow import load_spec, patched
from agents.templates import load
from bus.schema.evolve import Candidate
from tests.evolve_planted import PLANTED, SPEC, run_planted


def test_a_planted_better_composition_is_found_and_significant_on_test() -> None:
    report, mem, ev = asyncio.run(run_planted(margin=0.03))
    best = report.final[0]
    assert best.program == PLANTED or describe(PLANTED) in best.name or best.name == describe(PLANTED), best.name
    assert report.beat_baseline and report.comparisons["baseline"].lo > 0, report.verdict
    cmp = report.comparisons["baseline"]
    assert cmp.split == "test" and cmp.seeds == list(range(1000, 1010)) and abs(cmp.diff - 0.03) < 0.01
    assert report.runs <= 80 and "beat the baseline" in report.verdict
    # every candidate's seeds and per-seed scores are kept; no dev run touched a test seed
    assert all(len(c.values) == len(c.seeds) >= 3 and max(c.seeds) < 1000 for c in report.archive if c.state == "succeeded")
    # a pair only with its evidence: the chosen beat the rejected on dev, paired, by more than noise
    assert mem.pairs and all(p.evidence.comparison.lo > 0 and p.evidence.comparison.split == "dev" for p in mem.pairs)
    assert all(c.diff.startswith("---") for c in report.archive if c.iteration > 0)  # each child is a real code diff


def test_all_equal_reports_nothing_beat_the_baseline_and_no_pair() -> None:
    report, mem, _ = asyncio.run(run_planted(margin=0.0))
    assert not report.beat_baseline and report.verdict.startswith("nothing beat the baseline"), report.verdict
    assert mem.pairs == []


def test_racing_spends_seeds_on_close_candidates_and_drops_clear_losers() -> None:
    report, _, ev = asyncio.run(run_planted(margin=0.03))
    out = [c for c in report.archive if c.eliminated]
    assert out and all("paired 95% CI" in c.eliminated for c in out)
    assert max(len(c.values) for c in report.archive) > 3  # the close ones got more seeds


def test_behaviourally_identical_candidates_are_named_once() -> None:
    a = Candidate(id="a", iteration=0, name="a", code="A", state="succeeded", seeds=[0, 1, 2], values=[1, 2, 3], behaviour=["x", "y", "z"])
    b = a.model_copy(update={"id": "b", "name": "b", "code": "B", "values": [1, 2, 3]})
    c = a.model_copy(update={"id": "c", "behaviour": ["x", "y", "w"]})
    assert duplicate_of(b, [a]) == "a" and duplicate_of(c, [a]) == ""


def test_paired_interval() -> None:
    a = Candidate(id="a", iteration=0, name="a", code="A", state="succeeded", seeds=[0, 1, 2, 3], values=[0.9, 0.8, 0.85, 0.95])
    b = a.model_copy(update={"id": "b", "values": [0.8, 0.7, 0.76, 0.84]})
    cmp = paired(a, b, "higher")
    assert cmp is not None and cmp.lo > 0 and abs(cmp.diff - 0.1) < 1e-9 and cmp.p < 0.01
    assert paired(b, a, "lower") is not None and paired(b, a, "lower").lo > 0  # type: ignore[union-attr]


def test_model_merging_declares_three_disjoint_splits() -> None:
    import importlib.util
    import sys

    from sklearn.datasets import load_digits

    folder, spec = load("model_merging")
    ev = load_spec(folder, spec.name)
    assert set(ev.splits) == {"fit", "dev", "test"} and ev.baseline == "task_arithmetic"
    mod_spec = importlib.util.spec_from_file_location("mm_experiment", folder / "experiment.py")
    assert mod_spec is not None and mod_spec.loader is not None
    mod = importlib.util.module_from_spec(mod_spec)
    sys.modules["mm_experiment"] = mod
    mod_spec.loader.exec_module(mod)
    y = load_digits().target
    held = None
    for seed in (0, 1, 1000):
        idx = mod.split_indices(y, seed)
        sets = {k: set(v.tolist()) for k, v in idx.items()}
        assert sum(len(s) for s in sets.values()) == len(set().union(*sets.values())) == len(y)  # disjoint, complete
        now = {k: sets[k] for k in ("fit", "dev", "test")}
        assert held is None or now == held  # the held-out digits are the same for every seed: no seed's dev is another's test
        held = now


def test_offline_programs_render_to_code_the_guarded_edit_accepts() -> None:
    folder, spec = load("model_merging")
    ev = load_spec(folder, spec.name)
    files = {"experiment.py": (folder / "experiment.py").read_text()}
    pool = builtin_pool(files["experiment.py"], ev)
    assert pool[0].name == "task_arithmetic" and all(p.builtin for p in pool)
    rng = random.Random(0)
    prog = ev.programs["ties"]
    for _ in range(20):
        prog = mutate(prog, ev.operators, rng)
        code = render(prog, ev.hook, ev.operators)
        patched(files, ev.hook, code)
        for name, _params in prog.stage:
            assert name in code
    assert np.isfinite(0.0)
    assert SPEC.baseline == "sum"
