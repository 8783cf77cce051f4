"""Golden paper: the same offline project writes the same paper, modulo what is not behaviour.

One `lab run --template model_merging --fast --seed 0 --max-ideas 2 --max-rounds 1` as a user
starts it (real agents on an embedded nats-server, real sandboxed experiments, the offline
minds), then paper.md, paper.tex and references.bib are normalised and compared with
``tests/golden/model_merging_fast.{md,tex,bib}``. It pins a whole pipeline: two ideas, ranked
by the offline PI's scores, through the novelty check — two knob changes (merge_fn, hidden_size; until
the template gained its finetune_optimizer knob the second was a template-declared code variant, whose
guarded edits tests/integration/test_code_idea_runs.py pins) — baseline
and idea runs, analysis (paired tests, Holm, bootstrap CIs), draft, review, rebuttal with more
seeds, re-analysis, revised draft, second review and a decision on an inconclusive study.
(Confirmation runs on fresh seeds and the "significant, replicated gain" title are pinned by
tests/unit/test_pi.py and tests/unit/test_writer.py; the golden showed them until the PI learned to rank
ideas, which changed the ideas it runs.)
A refactor that claims no behaviour change must leave this test green.

Why model_merging: its fast profile trains in about 1.5 s for 3 seeds (grokking's takes about
35 s), so this project (6 runs, one revision round) took 65-120 s on two shared cores;
grokking --fast with one idea already takes about 110 s and never groks (steps_to_val_99 stays
at the 800-step cap), which pins little. The agents' pipeline is the same for every template.
The explicit --max-ideas/--max-rounds keep a change of the CLI defaults from moving the golden.

What is normalised, and why it is not behaviour:

- job ids (``j`` + 16 hex digits) become ``<job-1>``, ``<job-2>``, ... in order of first
  appearance: they are sha256(project/experiment/attempt) and the project id carries a random
  uuid suffix (``services/cli/run.py: new_project_id``). The project id itself becomes
  ``<project>`` (the paper does not print it today).
- run wall times (``wall time 10.52 s``) become ``wall time <s> s``: wall-clock durations.
- in the "Hardware and software" lines only: the CPU model and core count, the Python
  version, the platform string and package versions: facts about the machine. Which fields
  are recorded, the package names, the device, "no GPU recorded" and the executor are kept.
- in the provenance table only: the interpreter cell of a run without a container (the
  interpreter's path and version and the hash of the package versions) becomes
  ``interpreter <interpreter>``: facts about the machine. The code hash is kept: the same
  template and the same edits hash the same anywhere.

Nothing else is normalised, numbers included. Measured when this test was written: two
grokking --fast projects, two model_merging --fast projects with one idea and four with this
test's arguments, each with a fresh LAB_HOME and the same seed (Python's hash seed random per
process; two runs' experiment results arrived on the bus in different orders), gave
byte-identical paper.md, paper.tex, references.bib and analysis.json except for the items
above: the templates seed every RNG and run torch on one thread, the bootstrap is seeded by
``stats.stable_seed(idea, metric)``, and the paper lists runs in request order, not arrival order. So floats are compared
exactly, as printed (4 significant digits, by ``agents/writing/numbers.fmt``).

Caveat: the experiment numbers are exact for one software and hardware stack (torch, numpy,
scikit-learn versions; CPU instruction set). On another stack the last printed digits of a
measurement may change with no change in the lab's code; the failure message then shows the
environment the golden was made with next to this run's (``model_merging_fast.env.txt``).
Regenerate on the new stack from unchanged code first, then compare the refactor against it.

Updating: ``LAB_UPDATE_GOLDEN=1 pytest tests/e2e/test_golden_paper.py`` rewrites the golden files
from this run (the test then skips, saying so); review the diff of ``tests/golden/`` before
committing it. On a mismatch the test prints a unified diff and leaves the normalised outputs
in ``<tmp_path>/golden-new/`` (and the raw project in ``<tmp_path>/out/``).
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import time

import pytest

from tests.conftest import TESTS, lab_cmd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GOLDEN = TESTS / "golden"
NAME = "model_merging_fast"
TEMPLATE, SEED = "model_merging", 0
ARGS = ("--template", TEMPLATE, "--fast", "--seed", str(SEED), "--max-ideas", "2", "--max-rounds", "1", "--quiet")
FILES = {"paper.md": ".md", "paper.tex": ".tex", "references.bib": ".bib"}
UPDATE = os.environ.get("LAB_UPDATE_GOLDEN") == "1"

JOB_ID = re.compile(r"\bj[0-9a-f]{16}\b")
PROJECT_ID = re.compile(rf"\b{re.escape(TEMPLATE)}-s{SEED}-[0-9a-f]{{6}}\b")
WALL = re.compile(r"wall time [0-9.]+(?:[eE][-+]?\d+)? s")
ENV_LINE = re.compile(r"^(?:- |\\item )Runs .*$", re.MULTILINE)  # "**Hardware and software.**" lines, md and tex
# The provenance table's cell for a run without a container: the interpreter's path and version, the packages' hash.
INTERPRETER = re.compile(r"\binterpreter [^|&\n]*?(?= \||\s*&)")


def _machine_facts(line: str) -> str:
    line = re.sub(r"CPU [^;]*;", "CPU <cpu>;", line)
    line = re.sub(r"Python \d[^;]*;", "Python <python>;", line)
    line = re.sub(r"platform [^;]*;", "platform <platform>;", line)
    return re.sub(r"packages ([^;]*);", lambda m: "packages " + ", ".join(p.split(" ")[0] + " <version>" for p in m.group(1).split(", ")) + ";", line)


def normalise(text: str) -> str:
    """The paper with its ids, durations and machine facts replaced (see the module docstring)."""
    text = PROJECT_ID.sub("<project>", text)
    jobs: dict[str, str] = {}
    text = JOB_ID.sub(lambda m: jobs.setdefault(m.group(0), f"<job-{len(jobs) + 1}>"), text)
    text = WALL.sub("wall time <s> s", text)
    text = INTERPRETER.sub("interpreter <interpreter>", text)
    return ENV_LINE.sub(lambda m: _machine_facts(m.group(0)), text)


def test_normalise_keeps_behaviour_and_drops_only_ids_durations_and_machine_facts():
    md = (
        "- Runs jd1ae8011ace34665, j826e0b3ef11bb1ff: CPU AMD EPYC (2 cores); no GPU recorded; experiment device cpu; "
        "Python 3.11.7; platform Linux-6.18-x86_64-with-glibc2.36; packages numpy 2.4.6, torch 2.13.0+cpu; executor local.\n"
        "![Plot written by run j826e0b3ef11bb1ff (idea baseline): merging.png.](figures/figure-e.png)\n"
        "- `jd1ae8011ace34665`: idea `baseline`, succeeded, seeds 0, 1, 2, wall time 10.52 s\n"
        "Project model_merging-s0-4ee985; the CPU only; 0.8898 ± 0.0149; p = 0.03125\n"
        "| e1 | `jd1ae8011ace34665` | interpreter /usr/bin/python3 3.11.7, packages sha256 0a1b2c3d4e5f | `9f8e7d6c5b4a` | fresh |\n"
    )
    assert normalise(md) == (
        "- Runs <job-1>, <job-2>: CPU <cpu>; no GPU recorded; experiment device cpu; "
        "Python <python>; platform <platform>; packages numpy <version>, torch <version>; executor local.\n"
        "![Plot written by run <job-2> (idea baseline): merging.png.](figures/figure-e.png)\n"
        "- `<job-1>`: idea `baseline`, succeeded, seeds 0, 1, 2, wall time <s> s\n"
        "Project <project>; the CPU only; 0.8898 ± 0.0149; p = 0.03125\n"
        "| e1 | `<job-1>` | interpreter <interpreter> | `9f8e7d6c5b4a` | fresh |\n"
    )
    tex = r"\item Runs j6a95fd092b65a96b: CPU AMD EPYC (2 cores); Python 3.11.7; platform Linux-x86\_64; packages scikit-learn 1.9.1; executor local."
    assert normalise(tex) == r"\item Runs <job-1>: CPU <cpu>; Python <python>; platform <platform>; packages scikit-learn <version>; executor local."
    row = (r"e1 & \texttt{j6a95fd092b65a96b} & interpreter \allowbreak{}/\allowbreak{}usr/\allowbreak{}python3 \allowbreak{}3.11.7 & "
           r"\texttt{9f8e7d6c5b4a} & fresh \\")
    assert normalise(row) == r"e1 & \texttt{<job-1>} & interpreter <interpreter> & \texttt{9f8e7d6c5b4a} & fresh \\"


def _env_line(text: str) -> str:
    """The environment lines as printed, machine facts kept, job ids numbered."""
    jobs: dict[str, str] = {}
    lines = "\n".join(m.group(0) for m in ENV_LINE.finditer(text))
    return JOB_ID.sub(lambda m: jobs.setdefault(m.group(0), f"<job-{len(jobs) + 1}>"), lines)


def test_offline_fast_project_writes_the_golden_paper(lab_env, tmp_path):
    _home, env = lab_env
    # LAB_LIT_SOURCES stays as tests/conftest.py pins it (local, template): the references come from the
    # template's bib, and a machine with internet would otherwise find other papers than the golden one cites.
    for k in ("LAB_CONFIG", "LAB_TEMPLATES", "LAB_FAULT_DELAY_AFTER_STORE", "PYTHONHASHSEED"):
        env.pop(k, None)
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run(lab_cmd("run", *ARGS, "--out", str(out)), check=False, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=840)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    print(f"golden project took {time.monotonic() - t0:.1f} s")

    got = {name: normalise((out / name).read_text()) for name in FILES}
    raw_env = _env_line((out / "paper.md").read_text())
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        for name, suffix in FILES.items():
            (GOLDEN / f"{NAME}{suffix}").write_text(got[name])
        (GOLDEN / f"{NAME}.env.txt").write_text(raw_env + "\n")
        pytest.skip(f"LAB_UPDATE_GOLDEN=1: rewrote {GOLDEN}/{NAME}.* from this run; review `git diff tests/golden` before committing")

    new = tmp_path / "golden-new"
    diffs = []
    for name, suffix in FILES.items():
        golden = GOLDEN / f"{NAME}{suffix}"
        want = golden.read_text() if golden.exists() else ""
        if got[name] != want:
            new.mkdir(exist_ok=True)
            (new / f"{NAME}{suffix}").write_text(got[name])
            diffs.append("".join(difflib.unified_diff(
                want.splitlines(keepends=True), got[name].splitlines(keepends=True),
                fromfile=f"tests/golden/{NAME}{suffix}", tofile=str(new / f"{NAME}{suffix}"),
            )))
    if diffs:
        env_file = GOLDEN / f"{NAME}.env.txt"
        made_on = env_file.read_text().strip() if env_file.exists() else "(not recorded)"
        text = "\n".join(diffs)
        lines = text.splitlines()
        if len(lines) > 300:
            text = "\n".join(lines[:300]) + f"\n... {len(lines) - 300} more diff lines; see {new}"
        pytest.fail(
            f"the paper differs from the golden one (normalised outputs in {new}; raw project in {out}).\n"
            f"Golden made on:\n{made_on}\nThis run:\n{raw_env}\n"
            f"If the change is intended, rerun with LAB_UPDATE_GOLDEN=1 and commit tests/golden/.\n\n{text}",
            pytrace=False,
        )
