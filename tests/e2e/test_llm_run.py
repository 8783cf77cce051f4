"""A whole `lab run --mind llm` against a local fake OpenAI-compatible server, with faults injected mid-project.

Every agent thinks through the llm mind (autogen over the real openai client)
and reaches the model over HTTP; only the model is scripted (tests/llm_script.py).
In the same run the script answers invalid JSON, a schema mismatch, a 429, a
hang past the mind's timeout, a code edit that adds ``signal.alarm`` and one
that breaks the experiment at import; the project must still finish, and each
fault must leave its trace: a retry in the server's log, the reason in the
agents' logs or the conversation, a failed job and a second attempt that ran.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.conftest import lab_cmd
from tests.fake_openai import FakeOpenAI, Request
from tests.llm_script import ALARM_REASON, BROKEN_MARK, COMPLETION_TOKENS, PAPER_MARK, PROMPT_TOKENS, LabScript, first_user, schema_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# The reviewer's per-call timeout (it gets the scripted hang, which lasts far longer); the other roles keep a
# roomy one, so a busy CI machine cannot turn a slow answer into an unscripted retry.
TIMEOUT_S = 4.0
BACKOFF_S = 0.2  # the first wait before a transport retry
PRICE = {"prompt": 1.0, "completion": 2.0}  # USD per 1M tokens, so cost accounting is exercised too
MIND_ROLES = ("pi", "literature", "engineer", "analyst", "writer", "reviewer")


def mind_config(path: Path, base_url: str) -> Path:
    path.write_text(yaml.safe_dump({"mind": {
        "model": "fake-model",
        "base_url": base_url,
        "api_key_env": "LAB_E2E_NO_SUCH_KEY",
        "timeout_s": 60,
        "roles": {"reviewer": {"timeout_s": TIMEOUT_S}},
        "prices": {"fake-model": PRICE},
        "retries": {"invalid_output": 3, "transport": 3, "backoff_s": BACKOFF_S, "backoff_max_s": 1.0},
        "reflection_rounds": 1,
    }}))
    return path


def llm_env(env: dict, config: Path, tiktoken_cache: Path) -> dict:
    env = {k: v for k, v in env.items() if not k.startswith("LAB_LLM_") and k != "LAB_MIND_CONFIG"}
    return {
        **env,
        "LAB_MIND_CONFIG": str(config),
        # Anything that tried to fetch tiktoken's encodings would fail at once here (and leave its name in a log):
        # an empty cache, and HTTPS only through a port nobody listens on. The fake server is plain HTTP on 127.0.0.1.
        "TIKTOKEN_CACHE_DIR": str(tiktoken_cache),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def run_llm_project(
    env: dict, tmp_path: Path, script: LabScript, template: str, timeout: float, fast: bool = True,
) -> tuple[subprocess.CompletedProcess, list[Request]]:
    """`lab run --mind llm` of one idea and one round on ``template`` into ``tmp_path/out``, every role's model
    ``script`` behind a fake server: the finished run, and the requests the server got. ``fast``: with ``--fast``
    (a template without a fast profile, such as an AI Scientist template, is refused it)."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    with FakeOpenAI(script) as fake:
        env = llm_env(env, mind_config(tmp_path / "mind.yaml", fake.base_url), cache)
        args = lab_cmd("run", "--template", template, *(["--fast"] if fast else []), "--mind", "llm", "--seed", "0",
                       "--max-ideas", "1", "--max-rounds", "1", "--out", str(tmp_path / "out"))
        run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return run, list(fake.requests)


def log_events(home: Path, role: str) -> list[dict]:
    out = []
    for line in (home / "logs" / f"{role}.log").read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def test_llm_mind_project_end_to_end_with_faults(lab_env, tmp_path):
    home, env = lab_env
    out = tmp_path / "out"
    cache = tmp_path / "tiktoken-cache"  # run_llm_project's, empty it must stay
    script = LabScript()
    run, requests = run_llm_project(env, tmp_path, script, "grokking", timeout=900)
    text = run.stdout + run.stderr
    logs = {role: (home / "logs" / f"{role}.log").read_text(errors="replace") for role in MIND_ROLES}
    assert run.returncode == 0, text[-4000:] + "\n" + "\n".join(f"--- {r}\n{t[-1500:]}" for r, t in logs.items())
    assert not script.unknown, f"steps the script cannot answer: {script.unknown}"

    # Every agent thought through the model, each under its own role header.
    assert {r.role for r in requests} == set(MIND_ROLES)
    assert all(r.body["model"] == "fake-model" and r.path.endswith("/chat/completions") for r in requests)
    fired = {fault for _, _, fault in script.fired}
    assert fired == set(LabScript.FAULTS.values()), script.fired

    # The deliverables, and the decision, came out of the scripted answers.
    convo = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
    kinds = [m["body"]["type"] for m in convo]
    assert kinds.count("decision") == 1
    decision = next(m["body"] for m in convo if m["body"]["type"] == "decision")
    # The scripted paper is fixed text, not true to this run's evidence (grokking --fast: nothing grokked, so the
    # positive control could not separate and conclusions are withheld); the reviewer's own checks refuse it,
    # whatever the model's meta-review says.
    assert decision["accepted"] is False and "the reviewer's checks" in decision["reason"], decision
    for name in ("paper.md", "paper.tex", "review.json", "references.bib"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    paper = (out / "paper.md").read_text()
    assert PAPER_MARK in paper
    reviews = json.loads((out / "review.json").read_text())
    assert [r["meta"]["decision"] for r in reviews] == ["revise", "reject"]
    assert all(rv["reviewer"].startswith("llm-") for r in reviews for rv in r["reviews"])
    rebuttal = next(m["body"] for m in convo if m["body"]["type"] == "rebuttal")
    assert [r["item_id"] for r in rebuttal["responses"]][0] == "r1"  # the model's item first, then the reviewer's own checks

    by_schema: dict[str, list] = {}
    for r in requests:
        by_schema.setdefault(schema_of(r), []).append(r)

    # Invalid JSON and a schema mismatch: the same conversation goes on with the reason, and the next answer is used.
    for schema, words in (("IdeaBatch", "Invalid JSON"), ("SummaryAnswer", "summary")):
        retry = by_schema[schema][1]
        assert retry.last_user.startswith("Your answer was rejected:") and words.lower() in retry.last_user.lower(), retry.last_user
        assert len(retry.messages) == len(by_schema[schema][0].messages) + 2  # the bad answer and the feedback
    idea_checks = [m for m in convo if m["body"]["type"] == "novelty_check"]
    assert [m["body"]["idea"]["changes"] for m in idea_checks] == [{"weight_decay": 0.3}]

    # A 429 and a hang: the same request is sent again (a transport retry, not a new question), after the timeout for the hang.
    for schema, wait in (("QueryList", BACKOFF_S), ("ReviewDraft", TIMEOUT_S)):
        first, again = by_schema[schema][:2]
        assert again.messages == first.messages, schema
        arrived = script.times[schema]
        assert arrived[1] - arrived[0] >= wait * 0.9, (schema, arrived[:2])
    assert any(e.get("event") == "llm_retry" and "429" in e.get("after", "") for e in log_events(home, "literature"))
    assert any(e.get("event") == "llm_retry" and "timed out" in e.get("after", "").lower() for e in log_events(home, "reviewer"))

    # The signal.alarm edit was refused by the guard; the reason went back to the model and into the engineer's log.
    plans = by_schema["PlanAnswer"]
    assert ALARM_REASON in plans[1].last_user, plans[1].last_user
    assert any(e.get("event") == "llm_invalid_answer" and ALARM_REASON in e.get("reason", "") for e in log_events(home, "engineer"))

    # The edit that raised at import failed its job; the engineer showed the error to the model, and attempt 2 ran.
    fix = plans[2]
    assert "The previous attempt failed" in first_user(fix) and BROKEN_MARK in first_user(fix)
    idea_exp = next(m["body"]["experiment_id"] for m in convo if m["body"]["type"] == "experiment_request" and m["body"]["idea"]
                    and m["body"]["idea"]["id"] != "positive-control")  # the testbed check runs first, planned without a model
    planned = [j for m in convo if m["body"]["type"] == "experiment_planned" and m["body"]["experiment_id"] == idea_exp for j in m["body"]["job_ids"]]
    assert len(planned) == 2, planned
    first_job, second_job = planned
    first_log = (home / "jobs" / first_job / "log.txt").read_text(errors="replace")
    assert BROKEN_MARK in first_log
    (result,) = [m["body"] for m in convo if m["body"]["type"] == "experiment_result" and m["body"]["experiment_id"] == idea_exp]
    (run_record,) = result["runs"]
    assert run_record["job_id"] == second_job and run_record["status"] == "succeeded", run_record
    assert run_record["overrides"]["weight_decay"] == 0.3
    assert not (home / "jobs" / second_job / "log.txt").read_text(errors="replace").count(BROKEN_MARK)
    engineer_events = log_events(home, "engineer")
    assert any(e.get("event") == "job finished" and e.get("job") == first_job and e.get("state") == "failed" for e in engineer_events)
    assert any(e.get("event", "").startswith("job planned (attempt 2") and e.get("job") == second_job for e in engineer_events)

    # Tokens: each role's last usage report is exactly what the server billed it (no estimate, no tiktoken); the
    # paper's appendix lists them with their cost.
    reports = {}
    for m in convo:
        if m["body"]["type"] == "usage_report":
            assert m["recipient"] == "pi"
            reports[m["sender"]] = m["body"]["usage"]
    # Every role's mind is metered into the project, the PI's own included.
    for role in MIND_ROLES:
        billed = script.billed[role]
        assert billed and reports[role]["prompt_tokens"] == billed * PROMPT_TOKENS, (role, reports[role], billed)
        assert reports[role]["completion_tokens"] == billed * COMPLETION_TOKENS
        assert reports[role]["cost_usd"] == pytest.approx(billed * (PROMPT_TOKENS * PRICE["prompt"] + COMPLETION_TOKENS * PRICE["completion"]) / 1e6)
    # The paper's appendix shows what the PI had been told when it asked for the last draft.
    last_draft = [m["body"] for m in convo if m["body"]["type"] == "draft_request"][-1]
    appendix = paper.split("Token and cost usage", 1)[1]
    rows = {role: int(n) for role, n in re.findall(r"^\| (\w+) \| (\d+) \|", appendix, flags=re.M)}
    assert rows == {role: u["prompt_tokens"] for role, u in last_draft["usage"].items()}, appendix[:800]
    assert set(MIND_ROLES) <= set(rows)

    # Nothing reached for tiktoken: no agent or job log names it, and its cache stayed empty.
    assert not list(cache.iterdir())
    for path in [*(home / "logs").glob("*.log"), *(home / "jobs").glob("*/work/log.txt")]:
        assert "tiktoken" not in path.read_text(errors="replace").lower(), path
    counts = Counter(kinds)
    assert counts["review_done"] == 2 and counts["draft_ready"] == 2, counts
