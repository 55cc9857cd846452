"""The sim engine's promises: deterministic plans, honest usage, valid structured output."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porten.agent.engines.sim import (
    ChatPlan,
    SimModel,
    SimProfile,
    SimRequestError,
    count_tokens,
    download_time_s,
    embed,
    generation_time_s,
    load_time_s,
    plan_chat,
    split_tokens,
    token_delay_s,
    ttft_s,
)
from porten.domain.values import CatalogEntry

PROFILE = SimProfile()
CHAT = SimModel(id="sim-chat", capabilities=frozenset({"chat", "tools", "json"}))
THINKER = SimModel(id="sim-r1", capabilities=frozenset({"chat", "reasoning", "tools"}))
EMBEDDER = SimModel(id="sim-embed", type="embedding", capabilities=frozenset({"embeddings"}))

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "hourly": {"type": "boolean"},
            },
            "required": ["city", "unit"],
        },
    },
}
SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


def chat(text: str, **extra: Any) -> dict[str, Any]:
    """A one-turn chat request asking ``text``."""
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def generated(plan: ChatPlan) -> int:
    """Tokens in the plan as a client would count them on the wire."""
    arguments = (call["function"]["arguments"] for call in plan.tool_calls or [])
    return (
        len(plan.reasoning_tokens)
        + len(plan.content_tokens)
        + sum(len(split_tokens(a)) for a in arguments)
    )


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """A small JSON-schema check covering the keywords the sim promises to honour."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties", {})
        return (
            isinstance(value, dict)
            and all(key in value for key in schema.get("required", []))
            and all(conforms(value[k], sub) for k, sub in props.items() if k in value)
        )
    if kind == "array":
        return isinstance(value, list) and all(conforms(v, schema.get("items", {})) for v in value)
    if kind == "integer":
        low, high = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if kind == "number":
        low, high = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
        return isinstance(value, int | float) and low <= value <= high
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    return isinstance(value, str) and len(value) >= schema.get("minLength", 0)


messages_strategy = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=200)}
    ),
    min_size=1,
    max_size=6,
)

leaf_schemas = st.one_of(
    st.just({"type": "string"}),
    st.builds(lambda n: {"type": "string", "minLength": n}, st.integers(0, 20)),
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-50, 50),
        st.integers(0, 10),
    ),
    st.builds(
        lambda lo, span: {"type": "number", "minimum": lo, "maximum": lo + span},
        st.floats(-50, 50, allow_nan=False),
        st.floats(0, 10, allow_nan=False),
    ),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(st.text(max_size=5), min_size=1, max_size=4).map(lambda e: {"enum": e}),
)
schemas = st.recursive(
    leaf_schemas,
    lambda inner: st.one_of(
        st.builds(lambda items: {"type": "array", "items": items}, inner),
        st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4).flatmap(
            lambda props: st.builds(
                lambda required: {"type": "object", "properties": props, "required": required},
                st.lists(st.sampled_from(sorted(props)), unique=True) if props else st.just([]),
            )
        ),
    ),
    max_leaves=12,
)


@given(messages=messages_strategy, cap=st.none() | st.integers(1, 80))
@settings(max_examples=150)
def test_any_request_gives_the_same_plan_within_the_cap(
    messages: list[dict[str, str]], cap: int | None
) -> None:
    """Planning is a pure function and never exceeds max_tokens."""
    request: dict[str, Any] = {"model": "m", "messages": messages}
    if cap is not None:
        request["max_tokens"] = cap
    first = plan_chat(THINKER, request, PROFILE)
    assert plan_chat(THINKER, json.loads(json.dumps(request)), PROFILE) == first
    assert first.completion_tokens == generated(first)
    if cap is not None:
        assert first.completion_tokens <= cap
    if first.finish_reason == "length":  # cut off exactly at the cap...
        assert first.completion_tokens == cap
    elif cap is not None:  # ...while a natural end may land anywhere up to it
        assert first.completion_tokens <= cap


def test_seed_changes_the_text() -> None:
    """A different request seed or profile seed gives a different answer."""
    base = plan_chat(CHAT, chat("tell me about GPUs"), PROFILE).content
    assert plan_chat(CHAT, chat("tell me about GPUs", seed=7), PROFILE).content != base
    assert plan_chat(CHAT, chat("tell me about GPUs"), SimProfile(seed=1)).content != base


def test_default_answer_is_words_that_echo_the_prompt() -> None:
    """A plain answer is a sentence of 8-64 words, some taken from the last user message."""
    plan = plan_chat(CHAT, chat("Explain quantization of transformer weights"), PROFILE)
    words = plan.content.rstrip(".").lower().split()
    assert 8 <= len(words) <= 64
    assert {"explain", "quantization", "of", "transformer", "weights"} & set(words)
    assert plan.finish_reason == "stop"
    assert plan.tool_calls is None


def test_usage_counts_every_generated_token() -> None:
    """completion_tokens is the number of streamed tokens; prompt_tokens counts all messages."""
    request = chat("hello there", tools=[WEATHER_TOOL])
    plan = plan_chat(THINKER, request, PROFILE)
    assert plan.completion_tokens == generated(plan) > 0
    longer = {
        **request,
        "messages": [{"role": "system", "content": "be brief"}, *request["messages"]],
    }
    assert plan_chat(THINKER, longer, PROFILE).prompt_tokens > plan.prompt_tokens


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
def test_cap_finishes_with_length(key: str) -> None:
    """Hitting max_tokens or max_completion_tokens truncates and reports finish_reason length."""
    plan = plan_chat(CHAT, chat("write a long story", **{key: 3}), PROFILE)
    assert plan.completion_tokens == len(plan.content_tokens) == 3
    assert plan.finish_reason == "length"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    """When both caps are given, the newer max_completion_tokens applies."""
    plan = plan_chat(CHAT, chat("hi", max_tokens=100, max_completion_tokens=2), PROFILE)
    assert plan.completion_tokens == 2


def test_context_window_caps_the_answer() -> None:
    """A prompt that fills the context leaves no room: zero tokens, finish_reason length."""
    tiny = SimModel(id="tiny", ctx=8)
    plan = plan_chat(tiny, chat("one two three four five six seven eight"), PROFILE)
    assert (plan.completion_tokens, plan.finish_reason) == (0, "length")


@pytest.mark.parametrize("cap", [0, -1, "10", True])
def test_invalid_cap_is_rejected(cap: object) -> None:
    """A non-positive or non-integer max_tokens is a request error naming the parameter."""
    with pytest.raises(SimRequestError) as caught:
        plan_chat(CHAT, chat("hi", max_tokens=cap), PROFILE)
    assert caught.value.param == "max_tokens"


@pytest.mark.parametrize("messages", [None, [], ["hi"]])
def test_malformed_messages_are_rejected(messages: object) -> None:
    """Missing, empty or non-object messages are a request error naming messages."""
    with pytest.raises(SimRequestError) as caught:
        plan_chat(CHAT, {"model": "m", "messages": messages}, PROFILE)
    assert caught.value.param == "messages"


def test_reasoning_model_thinks_before_answering() -> None:
    """A reasoning model emits reasoning tokens kept apart from its content."""
    plan = plan_chat(THINKER, chat("why is the sky blue"), PROFILE)
    assert plan.reasoning_tokens
    assert plan.content_tokens
    assert plan.reasoning_content.startswith("Okay")
    assert plan.reasoning_content not in plan.content
    assert not plan_chat(CHAT, chat("why is the sky blue"), PROFILE).reasoning_tokens


def test_reasoning_counts_against_the_cap() -> None:
    """With a small cap a reasoning model can spend it all thinking: empty content, length."""
    plan = plan_chat(THINKER, chat("why is the sky blue", max_tokens=4), PROFILE)
    assert len(plan.reasoning_tokens) == 4
    assert plan.content == ""
    assert plan.finish_reason == "length"


def test_tools_give_a_tool_call_with_valid_arguments() -> None:
    """Given tools, the plan calls one with JSON arguments that satisfy its parameters."""
    plan = plan_chat(CHAT, chat("weather in Paris?", tools=[WEATHER_TOOL]), PROFILE)
    assert plan.finish_reason == "tool_calls"
    assert plan.content_tokens == []
    assert plan.tool_calls is not None
    (call,) = plan.tool_calls
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert conforms(arguments, WEATHER_TOOL["function"]["parameters"])


def test_tool_choice_names_the_tool() -> None:
    """tool_choice naming a function forces that function."""
    choice = {"type": "function", "function": {"name": "search"}}
    request = chat("weather?", tools=[WEATHER_TOOL, SEARCH_TOOL], tool_choice=choice)
    plan = plan_chat(CHAT, request, PROFILE)
    assert plan.tool_calls is not None
    assert plan.tool_calls[0]["function"]["name"] == "search"


def test_tool_choice_none_answers_in_text() -> None:
    """tool_choice none gives a text answer even when tools are offered."""
    plan = plan_chat(CHAT, chat("weather?", tools=[WEATHER_TOOL], tool_choice="none"), PROFILE)
    assert plan.tool_calls is None
    assert plan.finish_reason == "stop"


def test_auto_answers_in_text_after_a_tool_result() -> None:
    """Under tool_choice auto, the turn after a tool result is text, so agent loops end."""
    first = plan_chat(CHAT, chat("weather?", tools=[WEATHER_TOOL]), PROFILE)
    assert first.tool_calls is not None
    call = first.tool_calls[0]
    followup = chat("weather?", tools=[WEATHER_TOOL])
    followup["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"},
    ]
    plan = plan_chat(CHAT, followup, PROFILE)
    assert (plan.tool_calls, plan.finish_reason) == (None, "stop")
    forced = plan_chat(CHAT, {**followup, "tool_choice": "required"}, PROFILE)
    assert forced.finish_reason == "tool_calls"


def test_truncated_tool_call_keeps_an_argument_prefix() -> None:
    """A cap inside a tool call's arguments keeps their prefix and finishes with length."""
    full = plan_chat(CHAT, chat("weather?", tools=[WEATHER_TOOL]), PROFILE)
    cut = plan_chat(CHAT, chat("weather?", tools=[WEATHER_TOOL], max_tokens=3), PROFILE)
    assert full.tool_calls is not None
    assert cut.tool_calls is not None
    assert cut.finish_reason == "length"
    assert cut.completion_tokens == 3
    whole = full.tool_calls[0]["function"]["arguments"]
    assert whole.startswith(cut.tool_calls[0]["function"]["arguments"])


def test_unknown_tool_choice_and_toolless_model_are_rejected() -> None:
    """Naming a missing tool, or offering tools to a model without them, is a request error."""
    choice = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(SimRequestError) as caught:
        plan_chat(CHAT, chat("x", tools=[WEATHER_TOOL], tool_choice=choice), PROFILE)
    assert caught.value.param == "tool_choice"
    plain = SimModel(id="plain")
    with pytest.raises(SimRequestError) as caught:
        plan_chat(plain, chat("x", tools=[WEATHER_TOOL]), PROFILE)
    assert caught.value.param == "tools"


def test_json_object_mode_gives_a_json_object() -> None:
    """response_format json_object makes the content a JSON object."""
    plan = plan_chat(CHAT, chat("list facts", response_format={"type": "json_object"}), PROFILE)
    assert isinstance(json.loads(plan.content), dict)


@given(schema=schemas)
@settings(max_examples=200)
def test_json_schema_mode_conforms_to_the_schema(schema: dict[str, Any]) -> None:
    """response_format json_schema makes the content JSON that satisfies the schema."""
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    plan = plan_chat(CHAT, chat("fill it in", response_format=fmt), PROFILE)
    assert conforms(json.loads(plan.content), schema)


def test_stop_sequence_ends_the_answer_before_it() -> None:
    """A stop sequence present in the answer truncates it there and is not emitted."""
    full = plan_chat(CHAT, chat("hello"), PROFILE).content
    stop = full.split()[2]
    plan = plan_chat(CHAT, chat("hello", stop=[stop]), PROFILE)
    assert plan.content == full[: full.find(stop)]
    assert plan.finish_reason == "stop"


@given(text=st.text(max_size=300), cut=st.integers(0, 300))
def test_tokens_concatenate_to_the_text_and_prefixes_retokenise(text: str, cut: int) -> None:
    """Tokens join back to the text, and a joined prefix of tokens splits into that prefix."""
    tokens = split_tokens(text)
    assert "".join(tokens) == text
    assert count_tokens(text) == len(tokens)
    assert split_tokens("".join(tokens[:cut])) == tokens[:cut]


def test_embeddings_are_deterministic_unit_vectors() -> None:
    """Embeddings have the model's dimension, unit norm, and repeat exactly for the same text."""
    texts = ["the cat sat on the mat", "", "GPU scheduling"]
    vectors = embed(EMBEDDER, texts, PROFILE)
    assert [len(v) for v in vectors] == [384, 384, 384]
    for vector in vectors:
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-9)
    assert embed(EMBEDDER, texts, PROFILE) == vectors
    assert vectors[0] != vectors[2]


def test_embeddings_rank_shared_words_closer() -> None:
    """Texts sharing words are more similar than unrelated texts, so retrieval demos work."""
    query, near, far = embed(
        EMBEDDER, ["cheap gpu nodes", "cheap gpu nodes in europe", "banana bread"], PROFILE
    )

    def cosine(a: list[float], b: list[float]) -> float:
        return math.fsum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(query, near) > cosine(query, far)


def test_model_from_catalog_defaults_the_embedding_dimension() -> None:
    """A catalog entry without embedding_dim becomes a 384-dimension sim model."""
    entry = CatalogEntry(
        id="nomic-embed-text",
        type="embedding",
        capabilities=frozenset({"embeddings"}),
        vram_mb=600,
        disk_mb=300,
        ctx=2048,
    )
    model = SimModel.from_catalog(entry)
    assert (model.id, model.type, model.ctx, model.embedding_dim) == (
        "nomic-embed-text",
        "embedding",
        2048,
        384,
    )
    assert (
        SimModel.from_catalog(
            CatalogEntry(id="e", vram_mb=1, disk_mb=1, embedding_dim=768)
        ).embedding_dim
        == 768
    )


def test_timing_helpers_are_plain_arithmetic() -> None:
    """Timing helpers turn the profile into seconds without touching a clock."""
    profile = SimProfile(ttft_ms=100, tokens_per_s=50, load_s_per_gb=3.0, download_mb_per_s=250)
    assert ttft_s(profile) == pytest.approx(0.1)
    assert token_delay_s(profile) == pytest.approx(0.02)
    assert generation_time_s(profile, 11) == pytest.approx(0.1 + 10 * 0.02)
    assert load_time_s(profile, 2048) == pytest.approx(6.0)
    assert download_time_s(profile, 1000) == pytest.approx(4.0)
