"""An AI Scientist template whose experiment.py runs but leaves no usable results fails its job with one line.

The bundle's experiment.py is the lab's wrapper (agents/aisci_shim.py); it runs the user's
original/experiment.py (here replaced by a few lines of Python) and converts its
run_0/final_info.json. What the user sees of a broken template is the wrapper's one line on
stderr, and the job's non-zero exit: the cases `lab template check` cannot see, since it never runs the code.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest

from agents import templates
from tests.conftest import TESTS

TINY = TESTS / "aisci" / "aisci_tiny"
MAKE_DIR = "import argparse, os\np = argparse.ArgumentParser()\np.add_argument('--out_dir')\nout = p.parse_args().out_dir\nos.makedirs(out, exist_ok=True)\n"


@pytest.mark.parametrize("original, code, line", [
    (MAKE_DIR, 3, "aisci: the template's experiment.py wrote no run_0/final_info.json"),
    (MAKE_DIR + "open(os.path.join(out, 'final_info.json'), 'w').write('{not json')\n", 3, "aisci: run_0/final_info.json: "),
    (MAKE_DIR + "open(os.path.join(out, 'final_info.json'), 'w').write('{\"d\": {\"note\": \"text\"}}')\n", 3, "aisci: run_0/final_info.json: "),
    ("import sys\nsys.exit(5)\n", 5, "aisci: the template's experiment.py exited with 5"),
], ids=["no-final-info", "not-json", "no-metrics", "exit-code"])
def test_a_template_without_usable_results_fails_with_one_line(tmp_path, original, code, line) -> None:
    with tarfile.open(fileobj=io.BytesIO(templates.bundle(TINY)), mode="r:gz") as tar:
        tar.extractall(tmp_path / "code", filter="data")
    (tmp_path / "code" / "original" / "experiment.py").write_text(original)
    run = subprocess.run([sys.executable, "experiment.py", "--out_dir", str(tmp_path / "out"), "--seeds", "0"],
                         cwd=tmp_path / "code", capture_output=True, text=True, timeout=60)
    assert run.returncode == code, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), run.stderr
    assert not (tmp_path / "out" / "final_info.json").exists()
