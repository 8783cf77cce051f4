"""The llm mind's config: YAML, env and code in that order; per-role overrides; keys from env or a mounted file."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.minds.llm.client import openai_client
from agents.minds.llm.config import load_config
from agents.minds.llm.errors import MindConfigError


def test_defaults_need_only_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = load_config(env={})
    assert cfg.model and cfg.base_url is None and cfg.retries.invalid_output == 3
    with pytest.raises(MindConfigError, match=r"no API key for .*\$OPENAI_API_KEY"):
        cfg.for_role("pi").api_key()
    monkeypatch.setenv("LAB_TEST_KEY", "sk-1")  # read when the client is made, so a rotated secret is picked up
    assert load_config({"api_key_env": "LAB_TEST_KEY"}, env={}).api_key() == "sk-1"


def test_file_then_env_then_code(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "mind:\n  model: qwen2.5:7b\n  base_url: http://localhost:11434/v1\n  temperature: 0.1\n"
        "  roles:\n    reviewer: {model: gpt-4o, base_url: null, temperature: 0.8}\n  prices:\n    gpt-4o: {prompt: 1, completion: 2}\n"
    )
    env = {"LAB_HOME": str(tmp_path), "LAB_LLM_TEMPERATURE": "0.3", "LAB_LLM_TIMEOUT_S": "9"}
    cfg = load_config({"timeout_s": 20}, env=env)
    pi, reviewer = cfg.for_role("pi"), cfg.for_role("reviewer")
    assert (pi.model, pi.base_url, pi.temperature, pi.timeout_s) == ("qwen2.5:7b", "http://localhost:11434/v1", 0.3, 20)
    assert (reviewer.model, reviewer.base_url, reviewer.temperature) == ("gpt-4o", None, 0.8)
    assert cfg.price("gpt-4o").cost(1_000_000, 1_000_000) == 3.0 and cfg.price("qwen2.5:7b").cost(10**6, 10**6) == 0.0
    assert pi.api_key() == "unused"  # a local server takes any key


def test_lab_mind_config_file_wins_over_lab_home(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("mind: {model: from-home}\n")
    (tmp_path / "mind.yaml").write_text("model: from-file\n")
    assert load_config(env={"LAB_HOME": str(tmp_path), "LAB_MIND_CONFIG": str(tmp_path / "mind.yaml")}).model == "from-file"


def test_reviewer_defaults_to_a_sampling_temperature() -> None:
    cfg = load_config({"temperature": 0.0}, env={})
    assert cfg.for_role("reviewer").temperature > 0 and cfg.for_role("writer").temperature == 0.0


def test_api_key_from_a_mounted_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    (tmp_path / "key").write_text("sk-from-file\n")
    cfg = load_config({"api_key_file": str(tmp_path / "key")}, env={"OPENAI_API_KEY": "sk-env"})
    assert cfg.api_key() == "sk-from-file"
    with pytest.raises(MindConfigError, match="api_key_file .*missing"):
        load_config({"api_key_file": str(tmp_path / "missing")}, env={}).api_key()


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"temprature": 0.2}, "temprature: Extra inputs are not permitted"),
        ({"timeout_s": -1}, "timeout_s: Input should be greater than 0"),
        ({"output_mode": "xml"}, "output_mode"),
    ],
)
def test_bad_config_is_one_line(overrides: dict, match: str) -> None:
    with pytest.raises(MindConfigError, match=match) as e:
        load_config(overrides, env={})
    assert "\n" not in str(e.value)


def test_bad_role_override_names_the_role() -> None:
    with pytest.raises(MindConfigError, match="mind.roles.reviewer: modle"):
        load_config({"roles": {"reviewer": {"modle": "x"}}}, env={}).for_role("reviewer")


def test_bad_yaml_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("model: [unclosed\n")
    with pytest.raises(MindConfigError, match="not valid YAML"):
        load_config(env={"LAB_MIND_CONFIG": str(tmp_path / "m.yaml")})


def test_output_mode_follows_capabilities() -> None:
    assert load_config(env={}).resolved_output_mode() == "json_schema"
    assert load_config({"model_info": {"structured_output": False}}, env={}).resolved_output_mode() == "json_object"
    assert load_config({"model_info": {"structured_output": False, "json_output": False}}, env={}).resolved_output_mode() == "prompt"


def test_unknown_models_get_model_info_for_autogen() -> None:
    cfg = load_config({"model": "llama3.1:8b", "base_url": "http://127.0.0.1:9/v1", "family": "llama3"}, env={})
    client = openai_client(cfg.for_role("pi"), "pi")
    assert client.model_info["family"] == "llama3" and client.model_info["structured_output"] is True
