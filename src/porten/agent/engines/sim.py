"""A deterministic stand-in for an LLM: the same request always gets the same answer.

The sim engine lets the agent, the hub and trace simulations run the whole
request path without a GPU. Everything here is pure: an answer is a function
of the model, the request and the profile's seed (no clock, no global random),
so a failing test or a replayed trace reproduces byte-identical tokens.
Timing lives in :class:`SimProfile` as plain numbers; only the HTTP server
(:mod:`porten.agent.engines.sim_server`) turns them into sleeps.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, Literal, TypeGuard

import msgspec

from porten.domain.values import Capability, CatalogEntry, ModelType

FinishReason = Literal["stop", "length", "tool_calls"]

DEFAULT_EMBEDDING_DIM: Final = 384

# A token is optional leading whitespace plus one punctuation mark or a run of at
# most six word characters: roughly a BPE token, and tokenising any prefix of a
# tokenised text gives back exactly that prefix of tokens, so truncated output and
# streamed fragments count the same as the whole.
_TOKEN_RE: Final = re.compile(r"\s*[^\s\w]|\s*\w{1,6}|\s+")
_WORD_RE: Final = re.compile(r"\w+")
_MESSAGE_OVERHEAD: Final = 4  # role and separators, as in OpenAI's chat format
_REPLY_PRIMING: Final = 3  # the assistant header every reply starts with
_IMAGE_TOKENS: Final = 85  # OpenAI's flat cost of a low-detail image
_EMBED_SPARSE_HITS: Final = 4  # dimensions one word touches in an embedding
_MAX_SCHEMA_DEPTH: Final = 8

_LEXICON: Final = (
    "the", "model", "answer", "is", "a", "simple", "clear", "result", "of", "this",
    "request", "and", "it", "shows", "how", "tokens", "flow", "through", "each",
    "node", "with", "care", "so", "that", "we", "can", "see", "every", "step", "in",
    "order", "here",
)  # fmt: skip
_THOUGHTS: Final = (
    "first", "consider", "what", "the", "user", "wants", "then", "check", "each",
    "part", "maybe", "wait", "so", "the", "answer", "should", "be", "short", "and",
    "clear", "let", "me", "verify", "that", "again",
)  # fmt: skip


class SimRequestError(ValueError):
    """A request the sim engine refuses, as a real engine would with a 400.

    ``param`` names the offending request field (OpenAI's ``error.param``).
    """

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class SimProfile(msgspec.Struct, frozen=True, kw_only=True):
    """How fast the simulated hardware is; the caller turns these into waits."""

    ttft_ms: Annotated[float, msgspec.Meta(ge=0)] = 50.0
    tokens_per_s: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    load_s_per_gb: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    download_mb_per_s: Annotated[float, msgspec.Meta(gt=0)] = 500.0
    seed: int = 0


class SimModel(msgspec.Struct, frozen=True, kw_only=True):
    """The part of a catalog entry that shapes a simulated answer."""

    id: str
    type: ModelType = "chat"
    capabilities: frozenset[Capability] = frozenset({"chat"})
    embedding_dim: Annotated[int, msgspec.Meta(gt=0)] = DEFAULT_EMBEDDING_DIM
    ctx: Annotated[int, msgspec.Meta(gt=0)] = 8192

    @classmethod
    def from_catalog(cls, entry: CatalogEntry) -> SimModel:
        """The sim twin of ``entry``; an unset embedding dimension becomes 384."""
        return cls(
            id=entry.id,
            type=entry.type,
            capabilities=entry.capabilities,
            embedding_dim=entry.embedding_dim or DEFAULT_EMBEDDING_DIM,
            ctx=entry.ctx,
        )


class ChatPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The whole answer to one chat request, decided before the first token is sent.

    ``completion_tokens`` always equals the reasoning tokens plus the content
    tokens plus the tokens of every tool call's ``arguments`` (by
    :func:`split_tokens`), so usage agrees with what a client counts on the wire.
    """

    reasoning_tokens: list[str]
    content_tokens: list[str]
    tool_calls: list[dict[str, Any]] | None
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int

    @property
    def content(self) -> str:
        """The answer text, as a non-streaming response carries it."""
        return "".join(self.content_tokens)

    @property
    def reasoning_content(self) -> str:
        """The thinking text, kept apart from the answer."""
        return "".join(self.reasoning_tokens)


def split_tokens(text: str) -> list[str]:
    """Cut ``text`` into tokens whose concatenation is ``text`` exactly."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """The sim's token count of ``text``, used for usage everywhere."""
    return len(split_tokens(text))


def plan_chat(model: SimModel, request: Mapping[str, Any], profile: SimProfile) -> ChatPlan:
    """Decide the answer to a decoded OpenAI chat request; same inputs, same plan.

    Raises :class:`SimRequestError` for requests a real engine would reject.
    """
    messages = _messages(request)
    seed = _seed(model.id, messages, request.get("seed"), profile.seed)
    draw = _Draw(seed, _words(_last_user_text(messages)))
    prompt = _prompt_tokens(messages, request.get("tools"))
    cap = _cap(request, room=max(model.ctx - prompt, 0))
    reasoning = _reasoning(draw) if "reasoning" in model.capabilities else []
    tool = _chosen_tool(model, request, messages, draw)
    if tool is not None:
        calls, content = [_tool_call(draw, tool)], []
    else:
        calls, content = [], split_tokens(_content_text(draw, request))
    return _fit(reasoning, content, calls, prompt=prompt, cap=cap)


def embed(model: SimModel, inputs: Sequence[str], profile: SimProfile) -> list[list[float]]:
    """Deterministic unit vectors of ``model.embedding_dim`` dimensions, one per input.

    Each word adds to a few hashed dimensions, so texts that share words point
    in similar directions and a retrieval demo ranks sensibly; a small dense
    component seeded by the whole text keeps distinct texts distinct.
    """
    return [_embed_one(model, text, profile.seed) for text in inputs]


def ttft_s(profile: SimProfile) -> float:
    """Seconds from request to first token."""
    return profile.ttft_ms / 1000.0


def token_delay_s(profile: SimProfile) -> float:
    """Seconds between consecutive tokens of one stream."""
    return 1.0 / profile.tokens_per_s


def generation_time_s(profile: SimProfile, tokens: int) -> float:
    """Seconds to produce ``tokens`` tokens, first-token latency included."""
    return ttft_s(profile) + max(tokens - 1, 0) * token_delay_s(profile)


def load_time_s(profile: SimProfile, vram_mb: int) -> float:
    """Seconds to load weights of ``vram_mb`` MiB into GPU memory."""
    return vram_mb / 1024.0 * profile.load_s_per_gb


def download_time_s(profile: SimProfile, disk_mb: int) -> float:
    """Seconds to download weights of ``disk_mb`` MiB."""
    return disk_mb / profile.download_mb_per_s


# --- request reading --------------------------------------------------------------


def _seed(*parts: object) -> int:
    """A 64-bit seed from JSON-able parts; key order in dicts does not matter."""
    digest = hashlib.blake2b(msgspec.json.encode(parts, order="deterministic"), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def _messages(request: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SimRequestError("messages must be a non-empty list", "messages")
    if not all(isinstance(message, Mapping) for message in messages):
        raise SimRequestError("every message must be an object", "messages")
    return messages


def _text_of(content: object) -> str:
    """The text of a message's ``content``: a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, Mapping))
        return " ".join(part for part in parts if isinstance(part, str))
    return ""


def _image_count(content: object) -> int:
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, Mapping) and p.get("type") == "image_url")


def _prompt_tokens(messages: Sequence[Mapping[str, Any]], tools: object) -> int:
    total = _REPLY_PRIMING
    for message in messages:
        content = message.get("content")
        total += _MESSAGE_OVERHEAD + count_tokens(_text_of(content))
        total += _IMAGE_TOKENS * _image_count(content)
        calls = message.get("tool_calls")
        if calls:
            total += count_tokens(json.dumps(calls, sort_keys=True))
    if tools:
        total += count_tokens(json.dumps(tools, sort_keys=True))
    return total


def _cap(request: Mapping[str, Any], *, room: int) -> int:
    """The completion budget: the request's cap (the newer name wins), within the context."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SimRequestError(f"{key} must be a positive integer", key)
        return min(value, room)
    return room


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _words(text: str) -> list[str]:
    return [word.lower() for word in _WORD_RE.findall(text)]


# --- generation --------------------------------------------------------------------


class _Draw(random.Random):
    """One seeded stream of choices that echoes the prompt's words.

    Every draw comes from this one stream in a fixed order, so the seed alone
    decides the whole answer.
    """

    def __init__(self, seed: int, words: Sequence[str]) -> None:
        super().__init__(seed)
        self.words = tuple(words)

    def sentence(self, n: int, lexicon: Sequence[str] = _LEXICON) -> str:
        """``n`` words, about a third echoing the prompt, capitalised and full-stopped."""
        echo = self.words
        text = " ".join(
            self.choice(echo) if echo and self.random() < 0.35 else self.choice(lexicon)
            for _ in range(n)
        )
        return text[:1].upper() + text[1:] + "."

    def json_value(self, schema: Mapping[str, Any], depth: int = 0) -> Any:
        """A value valid against ``schema``'s types, enums, bounds and required keys."""
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.choice(enum)
        options = [o for o in schema.get("anyOf") or schema.get("oneOf") or [] if _is_map(o)]
        if options:
            usable = [o for o in options if o.get("type") != "null"] or options
            return self.json_value(usable[0], depth + 1)
        kind = _schema_type(schema) if depth <= _MAX_SCHEMA_DEPTH else "null"
        make = {
            "object": self._object, "array": self._array, "integer": self._integer,
            "number": self._number, "boolean": self._boolean, "null": self._null,
        }.get(kind, self._string)  # fmt: skip
        return make(schema, depth)

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties")
        value = {
            str(name): self.json_value(sub if _is_map(sub) else {}, depth + 1)
            for name, sub in (props.items() if _is_map(props) else ())
        }
        for name in schema.get("required") or []:
            value.setdefault(str(name), self._string({}, depth))
        return value

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        items = schema.get("items")
        most = int(schema.get("maxItems", 3))
        least = int(schema.get("minItems", min(1, most)))
        count = self.randint(least, max(least, min(most, least + 2)))
        return [self.json_value(items if _is_map(items) else {}, depth + 1) for _ in range(count)]

    def _integer(self, schema: Mapping[str, Any], _depth: int) -> int:
        low = math.ceil(schema.get("minimum", 0))
        return self.randint(low, max(low, math.floor(schema.get("maximum", low + 100))))

    def _number(self, schema: Mapping[str, Any], _depth: int) -> float:
        low = float(schema.get("minimum", 0))
        high = float(schema.get("maximum", low + 100))
        return min(max(round(self.uniform(low, high), 2), low), high)

    def _boolean(self, _schema: Mapping[str, Any], _depth: int) -> bool:
        return self.random() < 0.5

    def _null(self, _schema: Mapping[str, Any], _depth: int) -> None:
        return None

    def _string(self, schema: Mapping[str, Any], _depth: int) -> str:
        pool = self.words or _LEXICON
        text = " ".join(self.choice(pool) for _ in range(self.randint(1, 4)))
        while len(text) < int(schema.get("minLength", 0)):
            text += " " + self.choice(pool)
        most = schema.get("maxLength")
        return text[:most] if isinstance(most, int) else text


def _is_map(value: object) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(value, Mapping)


def _schema_type(schema: Mapping[str, Any]) -> str:
    """The schema's type, inferred from its keywords when ``type`` is absent."""
    kind = schema.get("type")
    if isinstance(kind, list):
        return next((str(k) for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    return "object" if "properties" in schema else "array" if "items" in schema else "string"


def _reasoning(draw: _Draw) -> list[str]:
    topic = " ".join(draw.words[:3]) or "this"
    thoughts = draw.sentence(draw.randint(8, 48), _THOUGHTS)
    return split_tokens(f"Okay, the user asks about {topic}. {thoughts}")


def _content_text(draw: _Draw, request: Mapping[str, Any]) -> str:
    fmt = request.get("response_format")
    fmt = fmt if isinstance(fmt, Mapping) else {}
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if fmt.get("type") == "json_schema" and isinstance(schema, Mapping):
        return json.dumps(draw.json_value(schema), ensure_ascii=False)
    if fmt.get("type") in ("json_object", "json_schema"):
        return json.dumps({"answer": draw.sentence(draw.randint(4, 16))}, ensure_ascii=False)
    return _before_stop(draw.sentence(draw.randint(8, 64)), request.get("stop"))


def _before_stop(text: str, stop: object) -> str:
    """``text`` cut at the earliest stop sequence, which is not itself emitted."""
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    cuts = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
    return text[: min(cuts)] if cuts else text


def _chosen_tool(
    model: SimModel, request: Mapping[str, Any], messages: Sequence[Mapping[str, Any]], draw: _Draw
) -> Mapping[str, Any] | None:
    """The function to call, or ``None`` for a text answer.

    Under ``"auto"`` a turn that follows a tool result answers in text, so an
    agent loop driven by the sim ends instead of calling tools forever.
    """
    tools = request.get("tools")
    choice = request.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if "tools" not in model.capabilities:
        raise SimRequestError(f"model {model.id!r} does not support tools", "tools")
    functions = [_function_of(tool) for tool in (tools if isinstance(tools, list) else [tools])]
    if isinstance(choice, Mapping):
        named = choice.get("function")
        name = named.get("name") if isinstance(named, Mapping) else None
        for function in functions:
            if function["name"] == name:
                return function
        raise SimRequestError(f"tool_choice names {name!r}, which is not in tools", "tool_choice")
    if choice == "auto" and messages[-1].get("role") == "tool":
        return None
    return draw.choice(functions)


def _function_of(tool: object) -> Mapping[str, Any]:
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise SimRequestError("each tool must be {type: function, function: {name, ...}}", "tools")
    return function


def _tool_call(draw: _Draw, function: Mapping[str, Any]) -> dict[str, Any]:
    schema = function.get("parameters")
    args = draw.json_value(schema if isinstance(schema, Mapping) else {"type": "object"})
    arguments = json.dumps(args if isinstance(args, dict) else {}, ensure_ascii=False)
    return {
        "id": f"call_{draw.getrandbits(96):024x}",
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def _fit(
    reasoning: list[str], content: list[str], calls: list[dict[str, Any]], *, prompt: int, cap: int
) -> ChatPlan:
    """Spend the budget in generation order: reasoning, then the answer or tool calls.

    Hitting the cap truncates where generation stood (a tool call keeps the
    prefix of its arguments, as real engines do) and finishes with ``length``.
    """
    kept_reasoning = reasoning[:cap]
    kept_content = content[: cap - len(kept_reasoning)]
    budget = cap - len(kept_reasoning) - len(kept_content)
    kept_calls: list[dict[str, Any]] = []
    natural = len(reasoning) + len(content)
    for call in calls:
        arguments = split_tokens(call["function"]["arguments"])
        natural += len(arguments)
        if kept := arguments[:budget]:
            budget -= len(kept)
            kept_calls.append(
                {**call, "function": {**call["function"], "arguments": "".join(kept)}}
            )
    finish: FinishReason = "length" if natural > cap else "tool_calls" if calls else "stop"
    return ChatPlan(
        reasoning_tokens=kept_reasoning,
        content_tokens=kept_content,
        tool_calls=kept_calls or None,
        finish_reason=finish,
        prompt_tokens=prompt,
        completion_tokens=cap - budget,
    )


def _embed_one(model: SimModel, text: str, seed: int) -> list[float]:
    dim = model.embedding_dim
    noise = random.Random(_seed(model.id, text, seed))  # noqa: S311 -- reproducible, not secret
    vector = [0.1 * noise.gauss(0.0, 1.0) for _ in range(dim)]
    for word in _words(text):
        digest = hashlib.blake2b(f"{model.id}\0{word}".encode(), digest_size=16).digest()
        for hit in range(_EMBED_SPARSE_HITS):
            chunk = digest[hit * 4 : hit * 4 + 4]
            vector[int.from_bytes(chunk[:3], "big") % dim] += 1.0 if chunk[3] & 1 else -1.0
    norm = math.sqrt(math.fsum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
