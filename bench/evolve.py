"""`lab evolve` benchmark: candidates per CPU-hour, and what racing seeds saves against fixed seeds.

Two parts:

- **Throughput** (``--real``): one model_merging candidate (fast profile, evolve overrides, 3 seeds, dev split)
  run in process; candidates per CPU-hour = 3600 / its CPU seconds.
- **Racing vs fixed seeds** (always; seconds): on the planted testbed (tests/evolve_planted.py), over mind seeds,
  how often the loop finds the planted program and calls it significant on test, and how many seed-runs it
  spent, with racing (3 seeds first, up to 9) against every candidate on 9 fixed seeds.

The positive control of the real testbed (does model_merging separate methods known to differ by more than
seed noise?) is ``--control``: task arithmetic against the pretrained model (coefficient 0) and against TIES,
paired over 10 seeds on dev. It takes minutes on one core, so it lives here, not in CI.

    PYTHONPATH=. python bench/evolve.py [--real] [--control]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "templates" / "model_merging" / "experiment.py"


def racing(seeds: range) -> dict[str, dict[str, float]]:
    from tests.evolve_planted import run_planted

    out: dict[str, dict[str, float]] = {}
    for label, first, most in (("racing 3..9", None, None), ("fixed 9", 9, 9)):
        found = runs = 0
        for s in seeds:
            report, _, ev = asyncio.run(run_planted(0.03, seed=s, max_runs=400, first=first, most=most))
            found += report.beat_baseline
            runs += ev.seed_runs
        out[label] = {"found_and_significant": found / len(seeds), "seed_runs_per_search": runs / len(seeds)}
    return out


def evolve_flags() -> list[str]:
    """The fast profile's fine-tuning steps and evolve.yaml's overrides, as every evolve job sets them."""
    import yaml

    overrides = yaml.safe_load((EXPERIMENT.parent / "evolve.yaml").read_text())["overrides"]
    return ["--finetune_steps", "50", *[x for k, v in overrides.items() for x in (f"--{k}", str(v))]]


def run_experiment(out: Path, *flags: str) -> dict:
    subprocess.run([sys.executable, str(EXPERIMENT), "--out_dir", str(out), *evolve_flags(), *flags],
                   check=True, capture_output=True)
    return json.loads((out / "final_info.json").read_text())


def throughput() -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as tmp:
        run_experiment(Path(tmp), "--seeds", "0,1,2", "--split", "dev")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return 3600 / cpu


def control() -> dict[str, dict[str, float]]:
    from scipy import stats

    seeds = ",".join(str(s) for s in range(10))
    with tempfile.TemporaryDirectory() as tmp:
        arms = {
            "task_arithmetic": run_experiment(Path(tmp) / "ta", "--seeds", seeds, "--split", "dev"),
            "pretrained": run_experiment(Path(tmp) / "zero", "--seeds", seeds, "--split", "dev", "--select_scaling", "false", "--scaling_coef", "0"),
            "ties": run_experiment(Path(tmp) / "ties", "--seeds", seeds, "--split", "dev", "--merge_fn", "ties"),
        }
    ta = arms["task_arithmetic"]["metrics"]["task_acc"]["values"]
    out = {}
    for name in ("pretrained", "ties"):
        other = arms[name]["metrics"]["task_acc"]["values"]
        d = [a - b for a, b in zip(ta, other, strict=True)]
        out[f"task_arithmetic - {name}"] = {"diff": sum(d) / len(d), "p": float(stats.ttest_rel(ta, other).pvalue)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", action="store_true", help="time one real model_merging candidate")
    ap.add_argument("--control", action="store_true", help="the real testbed's positive control (minutes)")
    ap.add_argument("--mind-seeds", type=int, default=5)
    args = ap.parse_args()
    result: dict[str, object] = {"racing_vs_fixed": racing(range(args.mind_seeds))}
    if args.real:
        result["model_merging_candidates_per_cpu_hour"] = round(throughput(), 1)
    if args.control:
        result["positive_control"] = control()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
