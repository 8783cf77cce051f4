"""`lab export` and `lab run --attach`: a project's outputs from the store, while it runs and once it has decided.

One project on the sleep template (tests/sleep_template: jobs of a second; the test is about the outputs, not
the science, which the grokking runs of tests/e2e/test_lab_run.py check) on a detached lab serves every check: exported
mid-run (marked unfinished), followed by `lab run --attach` to its end,
exported again once finished, and compared with what `lab run` itself wrote.
The delivered paper.tex must then compile where it lies.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import lab_cmd
from tests.e2e.test_lab_run import SLEEP, finish, live_log, start_run, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def lab(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_and_attach_on_a_running_and_a_finished_project(lab_env, tmp_path):
    home, env = lab_env
    up = lab(env, "up", "--detach", timeout=180)
    assert up.returncode == 0, up.stderr
    try:
        out = tmp_path / "run-out"
        proc = start_run(env, out, "--max-ideas", "1", "--max-rounds", "0", template=SLEEP)
        planned = wait_for(lambda: [m for m in live_log(env) if m["body"]["type"] == "experiment_planned"], timeout=600)
        project = planned[0]["project"]

        # Mid-run: what exists so far, marked as unfinished.
        partial = tmp_path / "partial"
        r = lab(env, "export", project, "--out", str(partial))
        assert r.returncode == 0, r.stderr
        manifest = json.loads((partial / "export.json").read_text())
        assert manifest["status"] == "unfinished" and manifest["accepted"] is None and "had not decided" in manifest["note"]
        assert "not finished" in r.stdout
        convo = [json.loads(line) for line in (partial / "conversation.jsonl").read_text().splitlines()]
        assert convo[0]["body"]["type"] == "start_project" and all(m["project"] == project for m in convo)
        assert not (partial / "paper.tex").exists()

        # Attach to the running project: it returns when the project decides, with the outputs written.
        attached = tmp_path / "attached"
        a = lab(env, "run", "--attach", project, "--out", str(attached), "--quiet", timeout=900)
        assert a.returncode == 0, a.stdout[-3000:] + a.stderr
        assert f"attached to project {project}" in a.stdout and "ACCEPTED" in a.stdout
        finish(proc, out)

        # Finished: `lab export`, `lab run` and `lab run --attach` wrote the same outputs, from the same code.
        exported = tmp_path / "exported"
        r = lab(env, "export", project, "--out", str(exported))
        assert r.returncode == 0, r.stderr
        manifest = json.loads((exported / "export.json").read_text())
        assert manifest["status"] == "finished" and manifest["accepted"] in (True, False) and manifest["reason"]
        for name in ("paper.tex", "paper.md", "paper.pdf", "references.bib", "review.json", "analysis.json", "conversation.jsonl"):
            assert (exported / name).is_file() and (exported / name).stat().st_size > 0, name
        assert list((exported / "results").glob("*/final_info.json")) and list((exported / "figures").glob("*.png"))
        # Each analysed run traced to its job: the job's env.json agrees, and the paper's provenance table lists it.
        chain, paper = manifest["provenance"], (exported / "paper.md").read_text()
        folders = {r["job_id"]: folder for folder, r in manifest["results"].items()}
        assert chain and len({r["job_id"] for r in chain}) == len(chain)
        for r in chain:
            recorded = json.loads((exported / "results" / folders[r["job_id"]] / "env.json").read_text())
            assert (r["executor"], r["node"], r["image"], r["reused"]) == ("local", recorded["node"], "", "fresh")
            assert r["code_sha256"] == recorded["code_sha256"] and re.fullmatch(r"[0-9a-f]{64}", r["code_sha256"])
            assert r["interpreter"] == recorded["interpreter"] and r["packages_sha256"] == recorded["packages_sha256"]
            path, version = r["interpreter"].rsplit(" ", 1)
            cell = f"interpreter Python {version}, packages sha256 {r['packages_sha256'][:12]}"
            assert f"| `{r['job_id']}` | {cell} | `{r['code_sha256'][:12]}` | fresh |" in paper
            assert path not in paper  # the paper names the interpreter's version, never its path on the lab's machine
            assert r["cpu_s"] > 0 and r["gpu_s"] == 0  # measured by the local runner; a CPU job holds no GPU
        # What the project's jobs and minds spent: every job counted (analysed or not), its CPU time measured.
        spent = manifest["spend"]
        assert spent["jobs"] >= len(chain) and spent["cpu_measured"] == spent["jobs"] and spent["cpu_s"] > 0 and spent["gpu_hours"] == 0
        assert spent["wall_s"] > 0 and set(spent["llm"]) == {"prompt_tokens", "completion_tokens", "tokens", "cost_usd"}
        assert "cpu_s" not in paper and "GPU-h" not in paper  # the paper's provenance table is unchanged
        mine, run_out, attach_out = tree(exported), tree(out), tree(attached)
        assert set(mine) == set(run_out) == set(attach_out)
        for name in mine:
            if name != "export.json":  # its time of export differs
                assert mine[name] == run_out[name] == attach_out[name], name

        # Attaching to a finished project writes its outputs at once.
        again = lab(env, "run", "--attach", project, "--out", str(tmp_path / "again"), "--quiet", timeout=120)
        assert again.returncode == 0 and (tmp_path / "again" / "paper.tex").is_file(), again.stderr

        # `lab status` lists it as finished, with its decision and how to export it.
        st = lab(env, "status")
        assert st.returncode == 0 and f"lab export {project}" in st.stdout, st.stdout

        # The delivered paper.tex compiles where it lies: figures found, bibliography included.
        if shutil.which("pdflatex") is None or shutil.which("bibtex") is None:
            pytest.skip("pdflatex/bibtex not installed; the rest of the export was checked")
        build = tmp_path / "build"
        shutil.copytree(exported, build)
        (build / "paper.pdf").unlink()
        latex = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"]
        for step in (latex, ["bibtex", "paper"], latex, latex):
            c = subprocess.run(step, cwd=build, capture_output=True, text=True, timeout=120)
            assert c.returncode in ((0, 1) if step[0] == "bibtex" else (0,)), c.stdout[-2000:]
        log = (build / "paper.log").read_text(errors="replace").replace("\n", "")  # TeX wraps its log at 79 columns
        assert "undefined" not in log, log[-2000:]  # every citation resolved from references.bib
        assert (build / "paper.pdf").read_bytes().startswith(b"%PDF")
        figures = sorted(p.name for p in (build / "figures").glob("*.png"))
        assert figures and all(re.search(rf"<use figures/+{re.escape(f)}>", log) for f in figures), "every figure was included from figures/"
        assert "\\bibitem" in (build / "paper.bbl").read_text()
    finally:
        lab(env, "down", timeout=120)
