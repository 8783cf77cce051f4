"""bus/schema/formats.py and kinds.py: the bytes between processes, each one model, old documents still loading."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import get_args

import pytest

from bus.schema import (
    EXECUTOR_KINDS,
    MIND_KINDS,
    OUTPUT_MODES,
    ExecutorKind,
    FormatError,
    JobLogLine,
    JobStatus,
    LabConfig,
    LabFile,
    MindChoice,
    MindKind,
    RoleDocument,
    Usage,
    dump_result,
    read_result,
)
from bus.settings import ConfigError

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- lab.json


def _lab_file() -> LabFile:
    return LabFile(
        url="nats://127.0.0.1:4222", home="/h", supervisor_pid=10, server_pid=11, server_pids=[11], cluster=1,
        agents={"pi": 12, "engineer": 13}, credentials={"copi": "pw"}, max_store_bytes=10 << 30, mind="llm",
        executor="docker", runner_user="job", started=1.5,
    )


def test_lab_file_round_trips_with_the_keys_the_supervisor_always_wrote() -> None:
    info = _lab_file()
    assert LabFile.parse(info.dump()) == info
    assert set(json.loads(info.dump())) == {
        "url", "home", "supervisor_pid", "server_pid", "server_pids", "cluster", "agents", "credentials", "max_store_bytes",
        "mind", "executor", "runner_user", "started",
    }


def test_an_old_lab_file_loads() -> None:
    # What the supervisor wrote with json.dumps(dict, indent=2) before the model, and a hand-made minimal one.
    old = json.dumps({"url": "nats://x:1", "home": "/h", "supervisor_pid": 1, "server_pid": None, "server_pids": [], "cluster": 3,
                      "agents": {}, "credentials": {}, "max_store_bytes": None, "mind": "offline", "executor": "local",
                      "runner_user": None, "started": time.time(), "note": "a key a newer lab may add"}, indent=2)
    assert LabFile.parse(old).cluster == 3
    minimal = LabFile.parse('{"url": "nats://x:1", "credentials": {"copi": "pw"}}')
    assert (minimal.credentials["copi"], minimal.executor, minimal.cluster, minimal.serves("nats://x:1"), minimal.serves(None)) == (
        "pw", "local", 1, True, False,
    )


def test_a_malformed_lab_file_is_one_line_and_a_half_written_one_is_no_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.config import read_local_lab, write_lab_file

    with pytest.raises(FormatError, match=r"^lab\.json: cluster: Input should be a valid integer"):
        LabFile.parse('{"url": "nats://x:1", "cluster": "three"}')
    monkeypatch.setenv("LAB_HOME", str(tmp_path))
    write_lab_file(_lab_file())
    assert (tmp_path / "lab.json").stat().st_mode & 0o777 == 0o600  # it holds the co-PI's credential
    assert read_local_lab() == _lab_file()
    (tmp_path / "lab.json").write_text('{"url": "nats:')  # the supervisor is mid-write
    assert read_local_lab() is None
    (tmp_path / "lab.json").write_text('{"agents": ["pi"]}')
    with pytest.raises(ConfigError, match=r"lab\.json: agents: Input should be an object$") as e:
        read_local_lab()
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- config.yaml


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("[dk]*/**/config.yaml")))
def test_every_config_file_in_the_repository_loads(path: str) -> None:
    config = LabConfig.parse((ROOT / path).read_text(), where=path)
    assert config.executor and all(kind in EXECUTOR_KINDS for kind in config.executor)


def test_config_sections_and_their_empty_forms() -> None:
    config = LabConfig.parse("executor:\n  local:\n    capacity: 2\n  docker:\nmind:\n  model: m\nliterature:\n")
    assert config.executor_options("local") == {"capacity": 2} and config.executor_options("docker") == {}
    assert config.executor_options("kubernetes") == {} and config.mind == {"model": "m"} and config.literature == {}
    assert LabConfig.parse("") == LabConfig() == LabConfig.parse("# only a comment\n")
    assert LabConfig.model_validate(config.model_dump()) == config  # round trip


@pytest.mark.parametrize(
    "text, message",
    [
        ("executr:\n  local: {}\n", "config.yaml: executr: Extra inputs are not permitted"),
        ("executor:\n  slurm: {}\n", "config.yaml: executor.slurm"),
        ("executor: [local]\n", "config.yaml: executor: Input should be a valid dictionary"),
        ("- executor\n", "config.yaml: expected a mapping at the top level"),
        ("executor: {local: [\n", r"config.yaml: not valid YAML \("),
    ],
)
def test_a_malformed_config_is_one_line(text: str, message: str) -> None:
    with pytest.raises(FormatError, match=f"^{message}") as e:
        LabConfig.parse(text)
    assert "\n" not in str(e.value)


def test_lab_config_reads_lab_config_or_the_home_and_says_which_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.config import lab_config

    monkeypatch.setenv("LAB_HOME", str(tmp_path))
    monkeypatch.delenv("LAB_CONFIG", raising=False)
    assert lab_config() == LabConfig()
    (tmp_path / "config.yaml").write_text("executor:\n  local:\n    capacity: 3\n")
    assert lab_config().executor_options("local") == {"capacity": 3}
    other = tmp_path / "other.yaml"
    other.write_text("literatur: {}\n")
    monkeypatch.setenv("LAB_CONFIG", str(other))
    with pytest.raises(ConfigError, match=f"^{other}: literatur: Extra inputs"):
        lab_config()


# ---------------------------------------------------------------- the role document in the state bucket


def test_role_document_round_trips_and_keeps_the_stored_keys() -> None:
    doc = RoleDocument(state={"stage": "ideas"}, outbox={"m1": ['{"id": "x"}']}, usage=Usage(prompt_tokens=3), mind=MindChoice(kind="llm", model="m"))
    stored = json.loads(json.dumps(doc.dump()))  # what bus.store.StateStore writes and reads back
    assert set(stored) == {"state", "outbox", "usage", "mind"}
    assert RoleDocument.parse(stored, "pi.p") == doc


def test_an_old_role_document_loads() -> None:
    # The host wrote usage with model_dump() and mind None; older documents lack usage and mind entirely.
    old = {"state": {"jobs": {}}, "outbox": {}, "usage": {"prompt_tokens": 1, "completion_tokens": 2, "cost_usd": 0.5}, "mind": None}
    assert RoleDocument.parse(old, "engineer.p").usage.completion_tokens == 2
    older = RoleDocument.parse({"state": None, "outbox": {"m": []}}, "pi.p")
    assert (older.state, older.usage, older.mind) == (None, Usage(), None)
    assert RoleDocument.parse(None, "pi.p") == RoleDocument()  # no document yet


def test_a_malformed_role_document_names_its_key() -> None:
    with pytest.raises(FormatError, match=r"^state engineer\.p: outbox: Input should be a valid dictionary"):
        RoleDocument.parse({"state": {}, "outbox": ["m1"]}, "engineer.p")


# ---------------------------------------------------------------- the runner's log line and result.json


def test_a_log_line_round_trips_and_an_old_runners_bytes_parse() -> None:
    line = JobLogLine(job="j1", line="step 1 loss 0.5 ✓", t=12.5)
    assert JobLogLine.parse(line.dump()) == line
    old = json.dumps({"job": "j1", "line": "step 1 loss 0.5 \u2713", "t": 12.5}).encode()  # json.dumps escapes non-ASCII
    assert JobLogLine.parse(old) == line


def test_a_malformed_log_line_is_an_error_and_the_web_view_shows_it_raw() -> None:
    from bus.replay import Entry
    from services.web.views import job_activity

    with pytest.raises(FormatError, match="^job log line: not valid JSON$"):
        JobLogLine.parse(b"plain text")
    with pytest.raises(FormatError, match="^job log line: line: Field required"):
        JobLogLine.parse(b'{"job": "j1", "t": 1}')
    entries = [Entry(seq=1, subject="lab.jobs.p.j1.log", data=JobLogLine(job="j1", line="ok", t=1).dump(), envelope=None),
               Entry(seq=2, subject="lab.jobs.p.j1.log", data=b"not json", envelope=None)]
    assert list(job_activity(entries)["j1"].lines) == ["ok", "not json"]


def test_result_json_is_the_final_status_and_an_old_one_loads() -> None:
    status = JobStatus(job_id="j1", experiment_id="baseline", state="failed", reason="oom: used 9 MiB", exit_code=-9, wall_s=2.0)
    assert read_result(dump_result(status)) == status
    old = json.dumps({"type": "job_status", "job_id": "j1", "experiment_id": "baseline", "state": "succeeded"})
    assert read_result(old).state == "succeeded"
    with pytest.raises(FormatError, match="^result.json: state: Input should be"):
        read_result('{"job_id": "j1", "experiment_id": "x", "state": "exploded"}')


async def test_the_local_executor_reads_the_runners_result(tmp_path: Path) -> None:
    from services.executors.local import LocalExecutor

    executor = LocalExecutor(jobs_dir=str(tmp_path), capacity=1)
    (tmp_path / "j1" / "work").mkdir(parents=True)
    (tmp_path / "j1" / "work" / "result.json").write_text(dump_result(JobStatus(job_id="j1", experiment_id="x", state="failed", reason="crashed")))
    phase = await executor.poll("j1")
    assert (phase.state, phase.reason) == ("failed", "crashed")
    assert not (tmp_path / "j1" / "work").exists()  # the runner is gone: work/ swept, its result kept in the job folder
    (tmp_path / "j1" / "result.json").write_text("{")
    assert (await executor.poll("j1")).reason == "result.json: not valid JSON"
    await executor.close()


# ---------------------------------------------------------------- the closed choices


def test_kinds_are_declared_once_and_the_cli_accepts_the_same_values() -> None:
    from services.executors import _MODULES

    assert MIND_KINDS == get_args(MindKind) == ("offline", "llm")
    assert EXECUTOR_KINDS == get_args(ExecutorKind) == ("local", "docker", "kubernetes") == tuple(_MODULES)
    assert "json_schema" in OUTPUT_MODES


def test_the_cli_takes_its_default_mind_and_executor_from_the_environment_when_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.cli import app

    monkeypatch.setenv("LAB_MIND", "llm")
    monkeypatch.setenv("LAB_EXECUTOR", "kubernetes")
    assert (app._mind(None), app._executor(None), app._mind("offline")) == ("llm", "kubernetes", "offline")
    monkeypatch.delenv("LAB_MIND")
    assert app._mind(None) == "offline"
    monkeypatch.setenv("LAB_MIND", "psychic")
    with pytest.raises(ConfigError, match="^LAB_MIND='psychic': expected one of 'offline' or 'llm'$"):
        app._mind(None)
