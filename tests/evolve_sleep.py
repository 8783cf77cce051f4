"""The tiny evolve template of the lab's own tests: the sleep template's quadratic with a hook for `lab evolve`.

Two built-in pickers (the baseline at x = 0 and one at the minimum, x = 0.3), so each job takes a second or two.
Used through the ``evolve_sleep`` fixture (tests/conftest.py) by the evolve tests that run a lab
(tests/chaos/test_evolve_lab.py) and by the engineer's ledger test (tests/integration/test_evolve_ledger.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

EXPERIMENT = '''"""Sleep a moment, then report a noisy quadratic in the x the hook picks (and which split it scored)."""

import argparse
import json
import random
import time
from pathlib import Path


def pick_x_zero(x, split, seed):
    """Evaluate at zero (the baseline)."""
    return 0.0


def pick_x_near(x, split, seed):
    """Evaluate at the minimum."""
    return 0.3


PICK = pick_x_zero


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--sleep_s", type=float, default=1.0)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    time.sleep(args.sleep_s)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    values = []
    for s in seeds:
        x = PICK(0.0, args.split, s)
        values.append((x - 0.3) ** 2 + 0.01 * random.Random(f"{args.split}-{s}").random() + 0.002 * random.Random(f"{s}-{x}").random())
    final = {"metrics": {"loss": {"mean": sum(values) / len(values), "stderr": 0.0, "values": values}},
             "seeds": seeds, "split": args.split}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "final_info.json").write_text(json.dumps(final))


if __name__ == "__main__":
    main()
'''

EVOLVE_YAML = """\
hook: {anchor: "PICK = pick_x_zero\\n", function: pick_x, signature: "pick_x(x, split, seed) -> float",
       assign: PICK = pick_x, describe: returns the x to evaluate the quadratic at}
fixed: the quadratic
splits: {fit: none, dev: dev seeds, test: test seeds from 1000}
baseline: zero
seeds: {first: 2, step: 1, most: 2, test: 2}
"""


def tiny_template(root: Path, name: str = "evolve_sleep") -> Path:
    """The sleeping quadratic with an evolve hook, as template ``name`` (x is the candidate's, not a knob).

    Two copies under other names are two templates: their bundles differ, so the result cache never serves one's runs to the other.
    """
    folder = root / name
    shutil.copytree(Path(__file__).resolve().parent / "sleep_template", folder)
    (folder / "experiment.py").write_text(EXPERIMENT)
    (folder / "evolve.yaml").write_text(EVOLVE_YAML)
    spec = (folder / "template.yaml").read_text().replace("name: sleep_template", f"name: {name}")
    spec = spec.replace("  x:\n    type: float\n    default: 0.0\n    min: -1.0\n    max: 1.0\n    candidates: [0.3, 0.9]\n"
                        "    description: where the quadratic is evaluated\n", "")
    (folder / "template.yaml").write_text(spec)
    return folder


def evolve_args(folder: Path, out: Path, seed: int = 0) -> list[str]:
    return ["evolve", "--template", str(folder), "--iterations", "1", "--population", "2", "--fast", "--seed", str(seed), "--out", str(out), "--quiet"]


def check_outputs(out: Path) -> list[dict]:
    """``evolve/`` as the PI stored it: per-seed test values, the baseline compared, the plot; the dev candidates."""
    d = out / "evolve"
    final = [json.loads(line) for line in (d / "final.jsonl").read_text().splitlines()]
    assert {c["name"] for c in final} == {"near", "zero"}
    assert all(c["state"] == "succeeded" and c["seeds"] == [1000, 1001] and len(c["values"]) == 2 for c in final)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["comparisons"]["baseline"]["split"] == "test" and summary["verdict"]
    assert (d / "progress.png").read_bytes()[:4] == b"\x89PNG"
    return [json.loads(line) for line in (d / "candidates.jsonl").read_text().splitlines()]


def web_pages(env: dict, project: str) -> tuple[str, str]:
    """`lab web` on the stopped lab: the index page's text and the project's page."""
    from tests.conftest import lab_cmd

    proc = subprocess.Popen(lab_cmd("web", "--port", "0"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "lab web: " in line, line + (proc.stderr.read() if proc.stderr else "")
        url = line.split("lab web: ", 1)[1].split()[0].split("?")[0].rstrip("/")
        with urllib.request.urlopen(f"{url}/", timeout=30) as index, urllib.request.urlopen(f"{url}/p/{project}", timeout=30) as page:
            return index.read().decode(), page.read().decode()
    finally:
        proc.terminate()
        proc.wait(30)
