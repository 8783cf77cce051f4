"""Whole projects through `lab run`, as a user starts them: real agents, real bus, real experiments.

Each test runs the grokking template's fast profile on the CPU (a few minutes
on two cores). Nothing is faked: the six agents are separate processes on an
embedded nats-server, jobs run through the local executor.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import lab_cmd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROLES = {"pi", "literature", "engineer", "analyst", "writer", "reviewer"}
NUMBER = re.compile(r"(?<![\w.\-/])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.]*\d)")


# The orchestration tests (the server killed, a second run on one LAB_HOME) test the lab, not an experiment: they
# run the sleep template, whose jobs take a second. Killing agents keeps grokking: its jobs run long enough for a
# kill to land while they run, which the test's job-folder checks are about.
SLEEP = str(Path(__file__).resolve().parents[1] / "sleep_template")


def start_run(env: dict, out: Path, *extra: str, template: str = "grokking") -> subprocess.Popen:
    args = lab_cmd("run", "--template", template, "--fast", "--seed", "0", "--out", str(out), *extra)
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def finish(proc: subprocess.Popen, out: Path, timeout: float = 900) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    text = (out.parent / f"{out.name}.log").read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def conversation(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]


def live_log(env: dict, project: str | None = None) -> list[dict]:
    args = ["logs", "--json"] + (["--project", project] if project else [])
    r = subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=60)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def wait_for(predicate, timeout: float, every: float = 1.0, what: str = ""):
    """The first true value of ``predicate()``, polled every ``every`` seconds; an AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting" + (f" for {what}" if what else ""))


def numbers_in(obj, out: set[float]) -> None:
    """Every number in a JSON document, including those quoted inside its strings."""
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        out.add(float(obj))
    elif isinstance(obj, str):
        out.update(float(t) for t in NUMBER.findall(obj))
    elif isinstance(obj, dict):
        for v in obj.values():
            numbers_in(v, out)
    elif isinstance(obj, list):
        out.add(float(len(obj)))
        for v in obj:
            numbers_in(v, out)


def matches(token: str, evidence: set[float]) -> bool:
    value = float(token)
    if "e" in token.lower():
        mantissa = token.lower().split("e")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        tol = 0.5 * 10 ** (-decimals) * 10 ** math.floor(math.log10(abs(value))) if value else 0
    else:
        decimals = len(token.split(".")[1]) if "." in token else 0
        tol = 0.5 * 10 ** (-decimals)
    return any(abs(value - v) <= tol * (1 + 1e-9) + 1e-12 for v in evidence)


def check_deliverables(out: Path, convo: list[dict]) -> None:
    for name in ("paper.tex", "paper.md", "paper.pdf", "references.bib", "review.json", "conversation.jsonl"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "paper.pdf").read_bytes().startswith(b"%PDF")

    # Every run's final_info agrees with its per-seed values; every arm has at least three seeds in all (a review's
    # seeds ask tops an arm up to the number it names, so one experiment may add only the seeds missing).
    infos = sorted((out / "results").glob("*/final_info.json"))
    assert infos
    evidence: set[float] = set()
    for path in infos:
        info = json.loads(path.read_text())
        assert info["seeds"], path
        for metric, stat in info["metrics"].items():
            assert len(stat["values"]) == len(info["seeds"]), (path, metric)
            assert abs(sum(stat["values"]) / len(stat["values"]) - stat["mean"]) < 1e-9
        numbers_in(info, evidence)
    for path in (out / "results").glob("*/env.json"):
        numbers_in(json.loads(path.read_text()), evidence)
    runs = [(m["body"]["idea_id"], r) for m in convo if m["body"]["type"] == "experiment_result" for r in m["body"]["runs"]]
    pooled: dict[str, set[int]] = {}
    for idea, r in runs:
        pooled.setdefault(idea, set()).update(r["seeds"])
    assert runs and all(len(seeds) >= 3 for seeds in pooled.values()), pooled

    # Every number in the paper is in the results: the runs, the analysis of them, or the quoted
    # inputs (template spec, ideas, review items) — nothing else.
    for m in convo:
        if m["body"]["type"] in ("start_project", "analysis_done", "review_done", "novelty_verdict", "experiment_request", "rebuttal", "draft_request"):
            numbers_in(m["body"], evidence)
    md = (out / "paper.md").read_text()
    md = re.sub(r"`[^`]*`", " ", md)  # identifiers: idea and job ids
    md = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", md)  # figure lines (file names)
    md = re.sub(r"\*\*Hardware and software\.\*\*.*?\n\n(?:- .*\n)*", " ", md, flags=re.S)  # version strings, CPU model
    unsupported = [t for t in NUMBER.findall(md) if not matches(t, evidence)]
    assert not unsupported, f"numbers in paper.md with no source: {unsupported[:20]}"

    # The paper's hardware is the recorded one.
    env = json.loads(next((out / "results").glob("*/env.json")).read_text())
    paper = (out / "paper.md").read_text()
    assert env["cpu"] and env["cpu"] in paper
    assert f"torch {env['packages']['torch']}" in paper

    # Traceability: analysis.json is exported, every decimal of the paper is in it (as printed, or raw)
    # or in a run's final_info.json; the paper names the mind that wrote it and the correction used.
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["correction"] == "holm" and analysis["report"]["comparisons"]
    shown = set(analysis["display"])
    traced: set[float] = set()
    numbers_in(analysis, traced)
    for path in infos:
        numbers_in(json.loads(path.read_text()), traced)
    decimals = [t for t in NUMBER.findall(md) if "." in t]
    assert decimals, "the paper prints measurements"
    untraced = [t for t in decimals if t not in shown and float(t) not in traced]
    assert not untraced, f"decimals in paper.md not in analysis.json or final_info.json: {untraced[:20]}"
    assert "Written by the offline mind" in paper and "Holm's correction" in paper
    # Title and abstract claim a gain only when it survived the correction and replicated on fresh seeds.
    report = analysis["report"]
    claimed = [c for c in report["comparisons"] if c["metric"] == report["primary_metric"] and c["verdict"] == "better" and c["replicated"]]
    title = paper.splitlines()[0]
    if not claimed:
        assert "a significant, replicated gain" not in title, title

    reviews = json.loads((out / "review.json").read_text())
    assert reviews and all(len(r["reviews"]) >= 1 and "meta" in r for r in reviews)
    for r in reviews[0]["reviews"]:
        assert set(r["scores"]) >= {"originality", "quality", "clarity", "significance", "soundness", "presentation", "contribution", "overall", "confidence"}


def check_nothing_lost(convo: list[dict]) -> None:
    """Each request was answered exactly once, and no message was duplicated."""
    ids = Counter(m["id"] for m in convo)
    assert all(n == 1 for n in ids.values())
    by_kind = Counter(m["body"]["type"] for m in convo)
    answers = {"novelty_check": "novelty_verdict", "analysis_request": "analysis_done", "draft_request": "draft_ready", "review_request": "review_done"}
    for ask, answer in answers.items():
        assert by_kind[ask] == by_kind[answer], (ask, by_kind)
    requested = [m["body"]["experiment_id"] for m in convo if m["body"]["type"] == "experiment_request"]
    results = [m["body"]["experiment_id"] for m in convo if m["body"]["type"] == "experiment_result"]
    assert sorted(requested) == sorted(results) and len(set(results)) == len(results)
    assert by_kind["decision"] == 1


def check_note_restricts_later_ideas(out: Path, convo: list[dict]) -> None:
    """The PI acknowledged the note with its constraint; the ideas after it vary weight decay only; the paper quotes it."""
    kinds = [m["body"]["type"] for m in convo]
    ack_at = kinds.index("note_ack")
    ack = convo[ack_at]
    assert ack["sender"] == "pi" and ack["body"]["constraints"] == {"allowed_knobs": ["weight_decay"]}
    before = [m["body"]["idea"] for m in convo[:ack_at] if m["body"]["type"] == "novelty_check"]
    after = [m["body"]["idea"] for m in convo[ack_at:] if m["body"]["type"] == "novelty_check"]
    assert before, "the note came mid-run, after the first ideas"
    assert after, "ideas were proposed after the note"
    assert all(set(i["changes"]) == {"weight_decay"} for i in after), [i["changes"] for i in after]
    # The note is in the paper's appendix.
    assert "only vary weight decay" in (out / "paper.md").read_text()


@pytest.mark.tex
def test_grokking_project_end_to_end(lab_env, tmp_path):
    """One grokking project through review and a revision, with a co-PI note mid-run that restricts the later ideas.

    The note rides on this run rather than a project of its own (a second whole project cost CI two minutes): three
    ideas are a wave of two (IDEAS_PER_WAVE) and a wave of one, the note comes after the first wave's ideas, and the
    second wave's idea must vary weight decay alone, which unconstrained it need not. (Four ideas, a second wave of
    two, cost CI half a minute more and checked nothing more.)
    """
    home, env = lab_env
    out = tmp_path / "out"
    proc = start_run(env, out, "--max-ideas", "3", "--max-rounds", "1")
    # Polled until the first ideas, or until `lab run` ends early (then finish() fails with its log, at once).
    first_ideas = wait_for(lambda: proc.poll() is not None or [m for m in live_log(env) if m["body"]["type"] == "novelty_check"], timeout=300)
    if proc.poll() is None:
        r = subprocess.run(lab_cmd("say", "--project", first_ideas[0]["project"], "only vary weight decay from now on"),
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    text = finish(proc, out)
    assert "paper.pdf" in text and "conversation.jsonl" in text
    convo = conversation(out)
    check_note_restricts_later_ideas(out, convo)
    assert {m["sender"] for m in convo} >= ROLES | {"copi"}
    kinds = [m["body"]["type"] for m in convo]
    # At least one review ⇄ revision exchange: a review asking for changes, the PI's answer, a second review.
    first_review = kinds.index("review_done")
    assert convo[first_review]["body"]["meta"]["decision"] == "revise"
    assert "rebuttal" in kinds[first_review:] and kinds.count("review_done") >= 2
    rebuttal = next(m for m in convo if m["body"]["type"] == "rebuttal")
    asked = {i["id"] for i in convo[first_review]["body"]["meta"]["revision_items"]}
    assert {r["item_id"] for r in rebuttal["body"]["responses"]} == asked, "the PI answers every item"
    check_deliverables(out, convo)
    check_nothing_lost(convo)
    assert not (home / "lab.json").exists(), "the embedded lab stops after the run"
    # Every runner connected as its own job's NATS user, admitted by the auth service, and every object it
    # wrote was committed under its project (services/auth/callout.py): nothing was refused.
    auth_log = (home / "logs" / "auth.log").read_text()
    assert "runner admitted" in auth_log and "user=job." in auth_log
    assert "refused" not in auth_log, auth_log[-2000:]


@pytest.mark.tex
def test_chaos_sigkill_agents_mid_project(lab_env, tmp_path):
    """SIGKILL a random agent during the experiments and another during the analysis: the project still finishes.

    One idea, no revision round: both kills land before the review, so more ideas or a revision round only made
    the project longer after them.
    """
    home, env = lab_env
    out = tmp_path / "out"
    proc = start_run(env, out, "--max-ideas", "1", "--max-rounds", "0")
    rng = random.Random(os.environ.get("LAB_CHAOS_SEED", str(time.time_ns())))
    killed = []

    def kill_one(stage_kind: str) -> None:
        wait_for(lambda: any(m["body"]["type"] == stage_kind for m in live_log(env)), timeout=600)
        info = json.loads((home / "lab.json").read_text())
        role = rng.choice(sorted(info["agents"]))
        os.kill(info["agents"][role], signal.SIGKILL)
        killed.append((stage_kind, role))

    kill_one("experiment_planned")
    kill_one("analysis_request")
    finish(proc, out)
    print("killed:", killed)
    convo = conversation(out)
    check_nothing_lost(convo)
    check_deliverables(out, convo)
    # No experiment ran twice: one job directory per planned job, each run started once.
    planned = {j for m in convo if m["body"]["type"] == "experiment_planned" for j in m["body"]["job_ids"]}
    dirs = {d.name for d in (home / "jobs").iterdir()}
    assert dirs == planned
    for d in (home / "jobs").iterdir():
        log = (d / "log.txt").read_text()  # the runner's log, kept when work/ goes
        assert log.count("[runner] starting job") == 1, d.name
        assert (d / "result.json").is_file()
    supervisor_log = (out.parent / f"{out.name}.log").read_text()
    assert all(f"agent {role} exited" in supervisor_log for _, role in killed), supervisor_log[-3000:]


@pytest.mark.tex
def test_chaos_nats_server_killed_mid_project(lab_env, tmp_path):
    """SIGKILL the nats-server during the experiments: the supervisor restarts it on its store, agents reconnect."""
    home, env = lab_env
    out = tmp_path / "out"
    proc = start_run(env, out, "--max-ideas", "1", "--max-rounds", "0", template=SLEEP)
    wait_for(lambda: any(m["body"]["type"] == "experiment_planned" for m in live_log(env)), timeout=300)
    info = json.loads((home / "lab.json").read_text())
    os.kill(info["server_pid"], signal.SIGKILL)
    text = finish(proc, out)
    assert re.search(r"nats-server \S* ?exited; restarting it", text)
    convo = conversation(out)
    check_nothing_lost(convo)
    check_deliverables(out, convo)


def test_the_same_run_twice_on_one_lab_home(lab_env, tmp_path):
    """README command 1 run again on the same LAB_HOME: the second project is its own, and what it asks that the first
    already ran (same code, configuration, seeds and runtime) is served by the result cache, named as reused, never re-run.
    """
    home, env = lab_env
    outs = [tmp_path / "first", tmp_path / "second"]
    for out in outs:
        finish(start_run(env, out, "--max-ideas", "1", "--max-rounds", "0", template=SLEEP), out)
    convos = [conversation(out) for out in outs]
    projects = [{m["project"] for m in c} for c in convos]
    assert len(projects[0]) == len(projects[1]) == 1 and projects[0] != projects[1]
    [first] = projects[0]
    jobs = [{j for m in c if m["body"]["type"] == "experiment_planned" for j in m["body"]["job_ids"]} for c in convos]
    assert jobs[0] and jobs[1] and not jobs[0] & jobs[1], jobs
    runs = [[r for m in c if m["body"]["type"] == "experiment_result" for r in m["body"]["runs"]] for c in convos]
    for c, mine, ran in zip(convos, jobs, runs, strict=True):
        check_nothing_lost(c)
        assert {r["job_id"] for r in ran} == mine
        assert ran and all(r["status"] == "succeeded" for r in ran)
    assert all(r["reused_from"] == "" for r in runs[0])  # a fresh LAB_HOME: nothing to reuse
    reused = [r for r in runs[1] if r["reused_from"]]
    assert reused and all(r["reused_from"].startswith(f"{first}/") for r in reused), [r["reused_from"] for r in runs[1]]
    # Only what ran has a job folder: the served runs never started a job.
    ran_fresh = jobs[0] | {r["job_id"] for r in runs[1] if not r["reused_from"]}
    assert {d.name for d in (home / "jobs").iterdir()} == ran_fresh
    # results/<experiment-id>/ for people; the job each folder holds, in export.json, is each project's own run.
    held = [{r["job_id"] for r in json.loads((out / "export.json").read_text())["results"].values()} for out in outs]
    assert held[0] == jobs[0] and held[1] == jobs[1]
    # A served run's files are exported with the project that reused them: the same results as the run it reused.
    by_job = [{j: e for e, v in json.loads((out / "export.json").read_text())["results"].items() for j in [v["job_id"]]} for out in outs]
    for r in reused:
        owner_job = r["reused_from"].rsplit("/", 1)[1]
        mine, theirs = outs[1] / "results" / by_job[1][r["job_id"]], outs[0] / "results" / by_job[0][owner_job]
        assert (mine / "final_info.json").read_bytes() == (theirs / "final_info.json").read_bytes()
    second = json.loads((outs[1] / "export.json").read_text())
    assert second["spend"]["reused"] == len(reused)
    assert {row["reused"] for row in second["provenance"] if row["job_id"] in {r["job_id"] for r in reused}} == {
        f"reused from {r['reused_from'].rsplit('/', 1)[0]}" for r in reused}
