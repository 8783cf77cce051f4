"""One role's line to a model: autogen's AssistantAgent with structured output, made safe for a lab.

``MindClient.conversation(step, system, schema)`` gives a ``Conversation``
whose ``ask(prompt, check)`` returns a validated pydantic answer. Underneath:

- ``AssistantAgent(output_content_type=schema)`` over a ``GuardedClient``
  that wraps the real ``ChatCompletionClient`` (autogen-ext's
  ``OpenAIChatCompletionClient`` on any OpenAI-compatible endpoint, or a
  ``ReplayChatCompletionClient`` in tests).
- The guard sends the schema as ``response_format`` itself (json_schema,
  json_object or nothing, per model), so the raw answer comes back through
  the plain completions call with its ``usage``; openai's client-side parse
  would raise before the tokens were counted and hide the bad answer from
  the retry.
- 429/5xx/connection errors/timeouts: the lab's ``RetryPolicy`` (bus/retry),
  bounded; each call under ``asyncio.wait_for`` so a hung endpoint cannot
  hang the lab, and through the endpoint's ``CircuitBreaker``, shared by
  every role and step in the process: after ``retries.breaker_after``
  timeouts in a row the calls fail at once for ``retries.breaker_cooldown_s``,
  so a dead endpoint ends a project in about two timeouts, not in
  timeout × retries × every step.
- Invalid JSON, a schema mismatch or a broken rule (``check`` raising
  ``InvalidAnswer``): the error goes back to the model in the same
  conversation, bounded; then ``MindFailed(role, step, reason)``.
- Tokens come from each response's ``usage`` and cost from the config's price
  table. Nothing here calls ``count_tokens``/``remaining_tokens`` (tiktoken,
  which downloads its files at run time): the agent's model context is
  unbounded, and the guard's own ``count_tokens`` is a character estimate.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

import openai
import structlog
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import StructuredMessage, TextMessage
from autogen_core import CancellationToken
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import ChatCompletionClient, CreateResult, LLMMessage, ModelCapabilities, ModelInfo, RequestUsage
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, ValidationError

from agents.minds.llm.config import MindConfig, ModelSettings
from agents.minds.llm.errors import EndpointDown, InvalidAnswer, MindConfigError, MindFailed
from agents.minds.meter import charge
from bus import metrics
from bus.retry import CircuitBreaker, CircuitOpen, RetryPolicy, breaker_for
from bus.schema import Usage
from bus.schema.kinds import OutputMode

T = TypeVar("T", bound=BaseModel)
log = structlog.get_logger()


class TransportFailed(Exception):
    """The endpoint did not answer usably within the transport retries."""


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, (TimeoutError, asyncio.TimeoutError, openai.APIConnectionError, openai.RateLimitError)):
        return True
    return isinstance(e, openai.APIStatusError) and e.status_code >= 500


def _describe(e: BaseException) -> str:
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(e, openai.APIStatusError):
        return f"HTTP {e.status_code}: {e.message}"
    return f"{type(e).__name__}: {e}"


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> str:
    """The JSON object in an answer that wrapped it in a code fence or prose (local models do)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        return stripped
    fenced = _FENCE.search(stripped)
    if fenced:
        return fenced.group(1).strip()
    start, end = stripped.find("{"), stripped.rfind("}")
    return stripped[start : end + 1] if 0 <= start < end else stripped


# Bounds OpenAI's strict mode has rejected at times; pydantic still checks them on our side and feeds errors back.
_UNSUPPORTED = {"minLength", "maxLength", "minItems", "maxItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "default"}


def wire_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """The answer's JSON schema as strict json_schema mode wants it: all fields required, closed objects."""
    from openai.lib._pydantic import to_strict_json_schema

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in _UNSUPPORTED or not isinstance(v, (int, float, str, list))}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(to_strict_json_schema(schema))  # type: ignore[no-any-return]


def response_format(schema: type[BaseModel], mode: OutputMode, strict: bool) -> dict[str, Any] | None:
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": wire_schema(schema), "strict": strict}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


class GuardedClient(ChatCompletionClient):
    """Wraps a ChatCompletionClient with the lab's wire format, retries, timeouts and metering."""

    def __init__(
        self,
        inner: ChatCompletionClient,
        *,
        mode: OutputMode,
        strict: bool,
        timeout_s: float,
        transport_retries: int,
        backoff_s: float,
        backoff_max_s: float,
        on_usage: Callable[[int, int], None],
        extra: dict[str, Any] | None = None,
        breaker: CircuitBreaker | None = None,
        role: str = "",
    ) -> None:
        self._inner = inner
        self._role = role  # the label of its calls in the lab's metrics (bus/metrics)
        self._extra = extra or {}  # fixed create args, e.g. a per-reviewer seed
        self._mode = mode
        self._strict = strict
        self._timeout_s = timeout_s
        self._retries = transport_retries
        self._policy = RetryPolicy(
            attempts=transport_retries + 1, budget_s=None, base_wait_s=backoff_s, max_wait_s=backoff_max_s, event="llm_retry", describe=_describe
        )
        self._breaker = breaker
        self._on_usage = on_usage
        self._total = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._last = RequestUsage(prompt_tokens=0, completion_tokens=0)

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        args = {**self._extra, **dict(extra_create_args)}
        if isinstance(json_output, type):
            fmt = response_format(json_output, self._mode, self._strict)
            if fmt is not None:
                args["response_format"] = fmt
        elif json_output is True and self._mode != "prompt":
            args["response_format"] = {"type": "json_object"}
        result = await self._send(messages, tools, args, cancellation_token)
        self._last = result.usage
        self._total = RequestUsage(
            prompt_tokens=self._total.prompt_tokens + result.usage.prompt_tokens,
            completion_tokens=self._total.completion_tokens + result.usage.completion_tokens,
        )
        self._on_usage(result.usage.prompt_tokens, result.usage.completion_tokens)
        if isinstance(result.content, str) and json_output:
            result = result.model_copy(update={"content": extract_json(result.content)})
        return result

    async def _send(
        self, messages: Sequence[LLMMessage], tools: Sequence[Tool | ToolSchema], args: dict[str, Any], token: CancellationToken | None,
    ) -> CreateResult:
        async def once() -> CreateResult:
            return await asyncio.wait_for(
                self._inner.create(messages, tools=tools, extra_create_args=args, cancellation_token=token), timeout=self._timeout_s
            )

        started, failed = time.monotonic(), True
        try:
            result = await self._policy.run(once, _is_transient, breaker=self._breaker)
            failed = False
            return result
        except CircuitOpen as e:  # not retried: the endpoint is dead for now, and the step should say so
            raise TransportFailed(f"LLM endpoint {e}") from e
        except (openai.APIError, TimeoutError) as e:
            tries = "" if not _is_transient(e) else f" after {self._retries + 1} tries"
            raise TransportFailed(f"{_describe(e)}{tries}") from e
        finally:
            metrics.llm_call(self._role, time.monotonic() - started, failed)

    def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        async def one() -> AsyncGenerator[str | CreateResult, None]:
            yield await self.create(messages, tools=tools, json_output=json_output, extra_create_args=extra_create_args, cancellation_token=cancellation_token)

        return one()

    async def close(self) -> None:
        await self._inner.close()

    def actual_usage(self) -> RequestUsage:
        return self._last

    def total_usage(self) -> RequestUsage:
        return self._total

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        # Deliberately not the inner client's (tiktoken downloads encodings at run time): ~4 characters a token.
        return sum(len(str(m.content)) for m in messages) // 4 + 1

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return 1_000_000 - self.count_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> ModelCapabilities:
        return self._inner.model_info

    @property
    def model_info(self) -> ModelInfo:
        return self._inner.model_info


def openai_client(settings: ModelSettings, role: str) -> ChatCompletionClient:
    """autogen-ext's OpenAI client for any OpenAI-compatible endpoint; its own retries off (tenacity's instead)."""
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    kwargs: dict[str, Any] = {
        "model": settings.model,
        "api_key": settings.api_key(),
        "timeout": settings.timeout_s,
        "max_retries": 0,
        "temperature": settings.temperature,
        # Lets a shared endpoint (a proxy, the tests' fake server) tell the roles apart.
        "default_headers": {"X-Lab-Role": role},
    }
    if settings.base_url:
        kwargs["base_url"] = settings.base_url
    if settings.max_tokens:
        kwargs["max_tokens"] = settings.max_tokens
    if settings.model_info is not None or settings.family or settings.base_url:
        kwargs["model_info"] = ModelInfo(**settings.capabilities().model_dump())  # type: ignore[typeddict-item]
    try:
        return OpenAIChatCompletionClient(**kwargs)
    except ValueError as e:
        raise MindConfigError(f"model {settings.model!r}: {str(e).splitlines()[0]} (set mind.model_info)") from None


def explain(e: ValidationError | InvalidAnswer) -> str:
    """A validation error as short lines the model can act on."""
    if isinstance(e, InvalidAnswer):
        return str(e)
    parts = []
    for err in e.errors()[:6]:
        where = ".".join(str(p) for p in err["loc"]) or "(answer)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class Conversation(Generic[T]):
    """One AssistantAgent for one step; its context keeps the exchange so feedback and reflection build on it."""

    def __init__(self, owner: MindClient, step: str, system: str, schema: type[T], extra: dict[str, Any]) -> None:
        self._owner = owner
        self.step = step
        self.schema = schema
        mode = owner.settings.resolved_output_mode()
        if mode != "json_schema":  # the wire does not carry the schema, so the prompt must
            system = f"{system}\n\nAnswer with one JSON object only, matching this JSON schema:\n{json.dumps(schema.model_json_schema())}"
        self._client = owner.guarded(extra)
        self._agent = AssistantAgent(
            name=re.sub(r"\W", "_", f"{owner.role}_{step}"),
            model_client=self._client,
            system_message=system,
            output_content_type=schema,
            model_context=UnboundedChatCompletionContext(),
        )

    async def ask(self, prompt: str, check: Callable[[T], None] | None = None) -> T:
        retries = self._owner.config.retries.invalid_output
        message, reason = prompt, ""
        for attempt in range(retries + 1):
            try:
                response = await self._agent.on_messages([TextMessage(content=message, source="lab")], CancellationToken())
                reply = response.chat_message
                if not isinstance(reply, StructuredMessage):
                    raise InvalidAnswer("expected one JSON object")
                answer: T = reply.content
                if check is not None:
                    check(answer)
                return answer
            except (ValidationError, InvalidAnswer) as e:
                reason = explain(e)
                log.info("llm_invalid_answer", role=self._owner.role, step=self.step, attempt=attempt + 1, reason=reason)
                message = f"Your answer was rejected: {reason}\nReply again with one corrected JSON object."
            except TransportFailed as e:
                down = isinstance(e.__cause__, CircuitOpen)
                raise (EndpointDown if down else MindFailed)(self._owner.role, self.step, str(e)) from e
        raise MindFailed(self._owner.role, self.step, f"no valid answer after {retries + 1} tries: {reason}")


class MindClient:
    """What every llm mind holds: its settings, its model client and what it spent."""

    def __init__(self, role: str, config: MindConfig, model_client: ChatCompletionClient | None = None, seed: int = 0) -> None:
        self.role = role
        self.config = config
        self.settings = config.for_role(role)
        self.seed = seed
        self.usage = Usage()
        self._price = config.price(self.settings.model)
        self._inner = model_client or openai_client(self.settings, role)

    def _add_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        self.usage.cost_usd += self._price.cost(prompt_tokens, completion_tokens)
        charge(prompt_tokens, completion_tokens, self._price.cost(prompt_tokens, completion_tokens))

    def breaker(self) -> CircuitBreaker:
        """The process's breaker for this role's endpoint (OpenAI itself when no base_url is set)."""
        retries = self.config.retries
        endpoint = self.settings.base_url or "https://api.openai.com/v1"
        return breaker_for(endpoint, threshold=retries.breaker_after, cooldown_s=retries.breaker_cooldown_s)

    def guarded(self, extra: dict[str, Any] | None = None) -> ChatCompletionClient:
        retries = self.config.retries
        return GuardedClient(
            self._inner,
            mode=self.settings.resolved_output_mode(),
            strict=self.settings.strict_schema,
            timeout_s=self.settings.timeout_s,
            transport_retries=retries.transport,
            backoff_s=retries.backoff_s,
            backoff_max_s=retries.backoff_max_s,
            on_usage=self._add_usage,
            extra=extra,
            breaker=self.breaker(),
            role=self.role,
        )

    def conversation(self, step: str, system: str, schema: type[T], **extra: Any) -> Conversation[T]:
        return Conversation(self, step, system, schema, extra)

    async def ask(self, step: str, system: str, prompt: str, schema: type[T], check: Callable[[T], None] | None = None, **extra: Any) -> T:
        return await self.conversation(step, system, schema, **extra).ask(prompt, check)

    async def close(self) -> None:
        await self._inner.close()
