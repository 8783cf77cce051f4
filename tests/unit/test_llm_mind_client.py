"""The llm mind over real HTTP: a local fake OpenAI server, autogen's OpenAI client, our guard.

Every test here runs with tiktoken made unusable: autogen's OpenAI client
counts tokens with it, and tiktoken downloads its encodings at run time,
which a lab without network cannot do.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import tiktoken

from agents.minds import make_mind
from agents.minds.llm.errors import EndpointDown, MindFailed
from agents.minds.llm.schemas import SummaryAnswer
from tests.fake_openai import FakeOpenAI, Reply
from tests.llm_helpers import clean_env, report

__all__ = ["clean_env"]
pytestmark = pytest.mark.usefixtures("clean_env", "no_tiktoken")

GOOD = {"summary": "Weight decay lowered val_loss by 0.08 (p=0.01)."}


@pytest.fixture
def no_tiktoken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    used: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        used.append(str(args))
        raise RuntimeError("tiktoken would download its encoding files at run time")

    monkeypatch.setattr(tiktoken, "get_encoding", refuse)
    monkeypatch.setattr(tiktoken, "encoding_for_model", refuse)
    return used


def analyst(fake: FakeOpenAI, **config: object):
    base = {"model": "local-model", "base_url": fake.base_url, "timeout_s": 5, "retries": {"backoff_s": 0.01, "backoff_max_s": 0.05},
            "prices": {"local-model": {"prompt": 2.0, "completion": 8.0}}}
    return make_mind("llm", "analyst", seed=0, config={**base, **config})


async def test_happy_path_sends_schema_and_role_and_counts_usage(no_tiktoken: list[str]) -> None:
    with FakeOpenAI([Reply.json(GOOD, prompt_tokens=1000, completion_tokens=250)]) as fake:
        mind = analyst(fake)
        assert await mind.summarize(report()) == GOOD["summary"]
    (req,) = fake.requests
    assert req.role == "analyst" and req.body["model"] == "local-model" and req.path.endswith("/chat/completions")
    fmt = req.body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "SummaryAnswer"
    assert fmt["json_schema"]["schema"]["required"] == ["summary"]
    assert (mind.usage.prompt_tokens, mind.usage.completion_tokens) == (1000, 250)
    assert mind.usage.cost_usd == pytest.approx((1000 * 2.0 + 250 * 8.0) / 1e6)
    assert no_tiktoken == []


async def test_invalid_json_then_schema_mismatch_are_fed_back_and_all_tokens_counted() -> None:
    script = [Reply.text("Sure! The summary is good."), Reply.json({"summary": 42, "extra": 1}), Reply.json(GOOD)]
    with FakeOpenAI(script) as fake:
        mind = analyst(fake)
        assert await mind.summarize(report()) == GOOD["summary"]
    assert len(fake.requests) == 3
    second, third = fake.requests[1].messages, fake.requests[2].messages
    assert second[-2] == {"role": "assistant", "content": "Sure! The summary is good."}  # the bad answer stays in context
    assert "Invalid JSON" in second[-1]["content"]
    assert "summary: Input should be a valid string" in third[-1]["content"] and "extra" in third[-1]["content"]
    assert mind.usage.prompt_tokens == 3 * 11 and mind.usage.completion_tokens == 3 * 7  # failed answers cost too


async def test_429_and_500_are_retried_with_backoff() -> None:
    with FakeOpenAI([Reply.error(429, "slow down"), Reply.error(503), Reply.json(GOOD)]) as fake:
        mind = analyst(fake)
        assert await mind.summarize(report()) == GOOD["summary"]
    assert len(fake.requests) == 3
    assert mind.usage.prompt_tokens == 11  # only the answer that came back carried usage


async def test_rate_limit_that_never_ends_fails_with_one_line() -> None:
    with FakeOpenAI([Reply.error(429, "slow down")] * 3) as fake:
        mind = analyst(fake, retries={"transport": 2, "backoff_s": 0.01})
        with pytest.raises(MindFailed) as e:
            await mind.summarize(report())
    assert len(fake.requests) == 3
    assert e.value.role == "analyst" and "HTTP 429" in e.value.reason and "after 3 tries" in e.value.reason


async def test_a_hung_endpoint_times_out_then_recovers() -> None:
    with FakeOpenAI([Reply.hang(60), Reply.json(GOOD)]) as fake:
        mind = analyst(fake, timeout_s=0.5)
        start = time.monotonic()
        assert await mind.summarize(report()) == GOOD["summary"]
        assert time.monotonic() - start < 10
    assert len(fake.requests) == 2


async def test_an_endpoint_that_always_hangs_never_hangs_the_lab() -> None:
    with FakeOpenAI([Reply.hang(60)] * 3) as fake:
        mind = analyst(fake, timeout_s=0.3, retries={"transport": 1, "backoff_s": 0.01})
        start = time.monotonic()
        with pytest.raises(MindFailed, match="timed out after 2 tries"):
            await asyncio.wait_for(mind.summarize(report()), timeout=20)
        assert time.monotonic() - start < 10


async def test_a_dead_endpoint_opens_its_breaker_and_every_later_step_fails_fast() -> None:
    with FakeOpenAI([Reply.hang(60)] * 10) as fake:
        mind = analyst(fake, timeout_s=0.3, retries={"transport": 4, "backoff_s": 0.01})
        start = time.monotonic()
        with pytest.raises(EndpointDown) as e:
            await mind.summarize(report())
        assert e.value.reason == f"LLM endpoint {fake.base_url} is not answering (2 timeouts in a row); failing fast for 60 s"
        assert len(fake.requests) == 2  # the third try met the open breaker, not the endpoint
        other = analyst(fake)  # another project's mind in this process, with a roomy timeout: no request at all
        with pytest.raises(EndpointDown):
            await other.summarize(report())
        assert len(fake.requests) == 2 and time.monotonic() - start < 5


async def test_client_errors_are_not_retried() -> None:
    with FakeOpenAI([]) as fake:  # nothing scripted: the server answers 400
        mind = analyst(fake)
        with pytest.raises(MindFailed, match="HTTP 400.*script exhausted"):
            await mind.summarize(report())
    assert len(fake.requests) == 1


async def test_json_object_mode_puts_the_schema_in_the_prompt() -> None:
    with FakeOpenAI({"analyst": [Reply.json(GOOD)]}) as fake:
        mind = analyst(fake, model_info={"json_output": True, "structured_output": False})
        await mind.summarize(report())
    body = fake.requests[0].body
    assert body["response_format"] == {"type": "json_object"}
    assert '"summary"' in body["messages"][0]["content"] and "JSON schema" in body["messages"][0]["content"]


async def test_per_role_model_and_temperature_reach_the_wire() -> None:
    review = {"summary": "A small but careful study.", "strengths": ["s"], "weaknesses": ["w"], "questions": [], "limitations": "l",
              "ethics": "none", "decision": "accept",
              "scores": {"originality": 3, "quality": 3, "clarity": 3, "significance": 2, "soundness": 3, "presentation": 3,
                         "contribution": 2, "overall": 6, "confidence": 4}}
    with FakeOpenAI({"reviewer": [Reply.json(review)]}) as fake:
        config = {"model": "small", "base_url": fake.base_url, "roles": {"reviewer": {"model": "big", "temperature": 0.9}},
                  "review_reflections": 0}  # one scripted answer: the draft review, no reflection rounds
        reviewer = make_mind("llm", "reviewer", seed=3, config=config)
        await reviewer.review("# paper", report(), [], index=2)
    body = fake.requests[0].body
    assert (body["model"], body["temperature"], body["seed"]) == ("big", 0.9, 3002)


def test_every_answer_schema_is_strict_compatible() -> None:
    from pydantic import BaseModel

    from agents.minds.llm import schemas
    from agents.minds.llm.client import wire_schema

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            assert node.get("additionalProperties") in (None, False), path
            assert "default" not in node or isinstance(node["default"], dict), path
            if node.get("type") == "object" and "properties" in node:
                assert sorted(node["required"]) == sorted(node["properties"]), path
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    answers = [
        v for v in vars(schemas).values()
        if isinstance(v, type) and issubclass(v, BaseModel) and v is not schemas.Answer and v.__module__ == schemas.__name__
    ]
    assert SummaryAnswer in answers and len(answers) >= 12
    for model in answers:
        walk(wire_schema(model), model.__name__)
