"""The /v1 request types: what is accepted, what is refused, and how refusals read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from porten.adapters.http import errors
from porten.adapters.http.errors import ApiError, error_body, sse_error_event
from porten.adapters.http.openai_types import (
    AssistantMessage,
    ChatRequest,
    ImagePart,
    ImageUrl,
    JsonSchemaFormat,
    Message,
    NamedToolChoice,
    Role,
    StreamOptions,
    ToolMessage,
    UserMessage,
    completion_cap,
    model_card,
    request_has_images,
    request_uses_tools,
    wants_json,
)
from porten.adapters.http.openai_validation import (
    check_capabilities,
    decode_chat_request,
    decode_embeddings_request,
    forward_body,
    parse_chat_request,
    parse_embeddings_request,
)
from porten.domain.values import Capability, CatalogEntry, ModelType

Parser = Callable[[bytes], object]

USER = {"role": "user", "content": "hi"}
PNG = "data:image/png;base64,iVBORw0KGgo="


def chat(**fields: Any) -> bytes:
    """A minimal valid chat body with ``fields`` merged over it."""
    return msgspec.json.encode({"model": "m", "messages": [USER], **fields})


def embed(**fields: Any) -> bytes:
    """A minimal valid embeddings body with ``fields`` merged over it."""
    return msgspec.json.encode({"model": "e", "input": "text", **fields})


def with_image(url: str) -> bytes:
    """A chat body whose second message's second part is an image at ``url``."""
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return chat(messages=[USER, {"role": "user", "content": parts}])


def refusal(body: bytes, parse: Parser = parse_chat_request) -> ApiError:
    """The ApiError that parsing ``body`` raises."""
    with pytest.raises(ApiError) as info:
        parse(body)
    return info.value


def entry(*caps: Capability, type_: ModelType = "chat", dim: int = 0) -> CatalogEntry:
    """A catalog entry with exactly the capabilities ``caps``."""
    return CatalogEntry(
        id="m", type=type_, capabilities=frozenset(caps), vram_mb=1, disk_mb=1, embedding_dim=dim
    )


# -- refused chat bodies -----------------------------------------------------------------

Expected = tuple[int, str, str, str | None]
INVALID_JSON: Expected = (400, "invalid_request_error", "invalid_json", None)
NOT_OBJECT: Expected = (400, "invalid_request_error", "invalid_type", None)


def missing(param: str) -> Expected:
    """A required parameter is absent."""
    return (400, "invalid_request_error", "missing_required_parameter", param)


def bad_type(param: str) -> Expected:
    """A parameter has the wrong JSON type."""
    return (400, "invalid_request_error", "invalid_type", param)


def bad_value(param: str | None) -> Expected:
    """A parameter has the right type but an unacceptable value."""
    return (400, "invalid_request_error", "invalid_value", param)


def unsupported(param: str) -> Expected:
    """A parameter would change the result and cannot be honoured."""
    return (400, "invalid_request_error", "unsupported_parameter", param)


BAD_CHAT: list[tuple[str, bytes, Expected, str]] = [
    ("empty body", b"", INVALID_JSON, "The request body is empty. Send a JSON object."),
    ("whitespace body", b"  \n", INVALID_JSON, "The request body is empty"),
    ("truncated JSON", b'{"model": ', INVALID_JSON, "could not parse the JSON body"),
    ("not JSON", b"model=m", INVALID_JSON, "JSON is malformed"),
    ("trailing garbage", b"{} {}", INVALID_JSON, "JSON is malformed"),
    ("invalid UTF-8", b'{"model": "\xff"}', INVALID_JSON, "not valid UTF-8"),
    ("nested too deeply", b"[" * 100_000, INVALID_JSON, "nested too deeply"),
    ("a string", b'"x"', NOT_OBJECT, "The request body must be a JSON object, got a string."),
    ("an array", b"[]", NOT_OBJECT, "must be a JSON object, got an array."),
    ("a number", b"42", NOT_OBJECT, "must be a JSON object, got an integer."),
    ("null", b"null", NOT_OBJECT, "must be a JSON object, got null."),
    ("number overflow", b'{"x": 1e400}', bad_value(None), "number out of range"),
    (
        "no model",
        b'{"messages": [{"role": "user", "content": "hi"}]}',
        missing("model"),
        "Missing required parameter: 'model'.",
    ),
    ("empty model", chat(model=""), bad_value("model"), 'string of length >= 1, got "".'),
    (
        "no messages",
        b'{"model": "m"}',
        missing("messages"),
        "Missing required parameter: 'messages'.",
    ),
    ("null messages", chat(messages=None), missing("messages"), "'messages'"),
    ("empty messages", chat(messages=[]), bad_value("messages"), "array of length >= 1, got []."),
    (
        "message not object",
        chat(messages=["hi"]),
        bad_type("messages[0]"),
        "expected an object, got a string.",
    ),
    (
        "role 123",
        chat(messages=[{"role": 123, "content": "x"}]),
        bad_type("messages[0].role"),
        "Invalid type for 'messages[0].role': expected a string, got an integer. "
        "Accepted values: system, developer, user, assistant, tool.",
    ),
    (
        "unknown role",
        chat(messages=[{"role": "bot", "content": "x"}]),
        bad_value("messages[0].role"),
        "Invalid value for 'messages[0].role': 'bot' is not supported. Accepted values: system,",
    ),
    (
        "no role",
        chat(messages=[{"content": "x"}]),
        missing("messages[0].role"),
        "'messages[0].role'",
    ),
    (
        "content a number",
        chat(messages=[{"role": "user", "content": 5}]),
        bad_type("messages[0].content"),
        "Invalid type for 'messages[0].content': expected a string or an array, got an integer.",
    ),
    (
        "no user content",
        chat(messages=[{"role": "user"}]),
        missing("messages[0].content"),
        "'messages[0].content'",
    ),
    (
        "assistant null content",
        chat(messages=[{"role": "assistant", "content": None}]),
        bad_value("messages[0].content"),
        "needs 'content' unless it carries 'tool_calls'",
    ),
    (
        "tool without id",
        chat(messages=[{"role": "tool", "content": "42"}]),
        missing("messages[0].tool_call_id"),
        "'messages[0].tool_call_id'",
    ),
    (
        "audio part",
        chat(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]),
        bad_value("messages[0].content[0].type"),
        "'input_audio' is not supported. Accepted values: text, image_url",
    ),
    (
        "image in system",
        chat(
            messages=[
                {"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}
            ]
        ),
        bad_value("messages[0].content[0].type"),
        "'image_url' is not supported",
    ),
    (
        "max_tokens -1",
        chat(max_tokens=-1),
        bad_value("max_tokens"),
        "Invalid value for 'max_tokens': expected an integer >= 1, got -1.",
    ),
    ("max_tokens 0", chat(max_tokens=0), bad_value("max_tokens"), "got 0."),
    (
        "max_tokens text",
        chat(max_tokens="10"),
        bad_type("max_tokens"),
        "expected an integer, got a string.",
    ),
    ("max_tokens bool", chat(max_tokens=True), bad_type("max_tokens"), "got a boolean."),
    (
        "max_completion_tokens -1",
        chat(max_completion_tokens=-1),
        bad_value("max_completion_tokens"),
        "got -1.",
    ),
    (
        "temperature hot",
        chat(temperature="hot"),
        bad_type("temperature"),
        "Invalid type for 'temperature': expected a number, got a string.",
    ),
    (
        "temperature 2.5",
        chat(temperature=2.5),
        bad_value("temperature"),
        "expected a number <= 2.0, got 2.5.",
    ),
    ("top_p 1.5", chat(top_p=1.5), bad_value("top_p"), "<= 1.0, got 1.5."),
    (
        "presence_penalty -3",
        chat(presence_penalty=-3),
        bad_value("presence_penalty"),
        ">= -2.0, got -3.",
    ),
    (
        "frequency_penalty 3",
        chat(frequency_penalty=3),
        bad_value("frequency_penalty"),
        "<= 2.0, got 3.",
    ),
    ("five stops", chat(stop=list("abcde")), bad_value("stop"), "array of length <= 4"),
    (
        "stop a number",
        chat(stop=7),
        bad_type("stop"),
        "expected a string or an array, got an integer.",
    ),
    ("seed past int64", chat(seed=2**64), bad_value("seed"), "got 18446744073709551616."),
    ("stream yes", chat(stream="yes"), bad_type("stream"), "expected a boolean, got a string."),
    ("n 2", chat(n=2), unsupported("n"), "Only n=1 is supported, got n=2"),
    ("n 0", chat(n=0), bad_value("n"), "expected an integer >= 1, got 0."),
    (
        "response_format xml",
        chat(response_format={"type": "xml"}),
        bad_value("response_format.type"),
        "'xml' is not supported. Accepted values: text, json_object, json_schema.",
    ),
    (
        "json_schema missing",
        chat(response_format={"type": "json_schema"}),
        missing("response_format.json_schema"),
        "'response_format.json_schema'",
    ),
    (
        "tool type retrieval",
        chat(tools=[{"type": "retrieval", "function": {"name": "f"}}]),
        bad_value("tools[0].type"),
        "'retrieval' is not supported. Accepted values: function.",
    ),
    (
        "tool without name",
        chat(tools=[{"type": "function", "function": {}}]),
        missing("tools[0].function.name"),
        "'tools[0].function.name'",
    ),
    (
        "tool_choice sometimes",
        chat(tool_choice="sometimes"),
        bad_value("tool_choice"),
        "'sometimes' is not supported. Accepted values: none, auto, required",
    ),
    (
        "required without tools",
        chat(tool_choice="required"),
        bad_value("tool_choice"),
        "forcing a tool call requires 'tools'",
    ),
    (
        "named tool absent",
        chat(
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        ),
        bad_value("tool_choice"),
        "the function 'g' is not among 'tools'",
    ),
    (
        "metadata value int",
        chat(metadata={"k": 1}),
        bad_type("metadata"),
        "expected a string, got an integer.",
    ),
    (
        "metadata 17 keys",
        chat(metadata={str(i): "v" for i in range(17)}),
        bad_value("metadata"),
        "object of length <= 16",
    ),
    (
        "metadata long key",
        chat(metadata={"k" * 65: "v"}),
        bad_value("metadata"),
        "string of length <= 64.",
    ),
]


@pytest.mark.parametrize(
    ("body", "expected", "message"), [c[1:] for c in BAD_CHAT], ids=[c[0] for c in BAD_CHAT]
)
def test_bad_chat_body_is_refused_with_openai_fields(
    body: bytes, expected: Expected, message: str
) -> None:
    """Each malformed chat body gets exactly its status, type, code and param, and says why."""
    err = refusal(body)
    assert (err.status, err.type, err.code, err.param) == expected
    assert message in err.message


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/cat.png",
        "https://example.com/cat.png",
        "HTTPS://EXAMPLE.COM/cat.png",
        "file:///etc/passwd",
        "ftp://example.com/cat.png",
        "gopher://127.0.0.1:6379/_INFO",
        "//example.com/cat.png",
        "cat.png",
        "",
        "data:text/plain;base64,aGk=",
        "data:image/png,not-base64",
    ],
)
def test_image_url_that_is_not_inline_is_refused(url: str) -> None:
    """Only base64 data:image URLs are accepted; nothing is ever fetched."""
    err = refusal(with_image(url))
    assert (err.status, err.type, err.code) == (400, "invalid_request_error", "invalid_image_url")
    assert err.param == "messages[1].content[1].image_url.url"
    assert "never fetches remote images" in err.message
    assert "data:image/png;base64," in err.message


# -- accepted chat bodies ----------------------------------------------------------------

SDK_REQUEST: dict[str, Any] = {
    "model": "qwen2.5-coder-32b",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Prefer Go."}]},
        {"role": "user", "content": "Weather in Oslo?", "name": "ada"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": -3}'},
    ],
    "stream": True,
    "stream_options": {"include_usage": True},
    "max_tokens": 256,
    "max_completion_tokens": 512,
    "temperature": 0.7,
    "top_p": 1,
    "stop": ["\n\n"],
    "seed": -42,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": True,
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "weather"}},
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": {"type": "object"}, "strict": True},
    },
    "n": 1,
    "logprobs": False,
    "user": "user-1",
    "metadata": {"team": "infra"},
}


def test_role_literal_matches_the_message_union() -> None:
    """The roles listed in error messages are exactly the roles the decoder accepts."""
    assert {cls.__struct_config__.tag for cls in get_args(Message)} == set(get_args(Role))


def test_sdk_shaped_request_is_accepted_with_every_field_typed() -> None:
    """A full OpenAI-SDK-style request parses, tools, history and json_schema included."""
    req = parse_chat_request(msgspec.json.encode(SDK_REQUEST))
    assert req.model == "qwen2.5-coder-32b"
    assert [type(m).__name__ for m in req.messages] == [
        "SystemMessage",
        "DeveloperMessage",
        "UserMessage",
        "AssistantMessage",
        "ToolMessage",
    ]
    assistant = req.messages[3]
    assert isinstance(assistant, AssistantMessage)
    assert assistant.tool_calls is not None
    assert assistant.tool_calls[0].function.arguments == '{"city": "Oslo"}'
    assert isinstance(req.messages[4], ToolMessage)
    assert req.messages[4].tool_call_id == "call_1"
    assert req.stream
    assert req.stream_options == StreamOptions(include_usage=True)
    assert isinstance(req.tool_choice, NamedToolChoice)
    assert isinstance(req.response_format, JsonSchemaFormat)
    assert req.response_format.json_schema.schema == {"type": "object"}
    assert (req.seed, req.stop, req.metadata) == (-42, ["\n\n"], {"team": "infra"})


def test_inline_image_is_accepted() -> None:
    """A base64 data:image URL (scheme in any case) with a detail level is accepted."""
    for url in (PNG, "DATA:image/jpeg;base64,/9j/4AAQ"):
        req = parse_chat_request(with_image(url))
        part = req.messages[1]
        assert isinstance(part, UserMessage)
        assert isinstance(part.content, list)
        assert part.content[1] == ImagePart(image_url=ImageUrl(url=url))


def test_unknown_parameters_are_ignored_but_kept_for_the_engine() -> None:
    """Unknown params pass validation and reach the engine untouched; only model changes."""
    extras = {"foo": 1, "reasoning_effort": "low", "chat_template_kwargs": {"thinking": [1, None]}}
    decoded = decode_chat_request(chat(**extras))
    assert decoded.raw == {"model": "m", "messages": [USER], **extras}
    forwarded = msgspec.json.decode(forward_body(decoded.raw, model="engine-name"))
    assert forwarded == {**decoded.raw, "model": "engine-name"}
    assert decoded.raw["model"] == "m"


def test_top_level_null_means_not_given_and_is_still_forwarded() -> None:
    """``"stream": null`` and friends read as defaults, and the raw body keeps them."""
    decoded = decode_chat_request(chat(stream=None, temperature=None, tools=None, n=None))
    assert (decoded.request.stream, decoded.request.temperature, decoded.request.tools) == (
        False,
        None,
        None,
    )
    assert decoded.raw["stream"] is None


def test_boundary_values_are_accepted() -> None:
    """Limits are inclusive: temperature 0 and 2, top_p 1, four stops, n 1."""
    for fields in (
        {"temperature": 0},
        {"temperature": 2},
        {"top_p": 1},
        {"stop": list("abcd")},
        {"n": 1},
        {"max_tokens": 1},
        {"stop": "END"},
        {"tool_choice": "auto"},
    ):
        assert isinstance(parse_chat_request(chat(**fields)), ChatRequest)


def test_completion_cap_prefers_max_completion_tokens() -> None:
    """max_completion_tokens wins; max_tokens is the fallback; neither means no cap."""
    assert completion_cap(parse_chat_request(chat(max_tokens=10, max_completion_tokens=20))) == 20
    assert completion_cap(parse_chat_request(chat(max_tokens=10))) == 10
    assert completion_cap(parse_chat_request(chat())) is None


def test_request_uses_tools_covers_offered_tools_and_tool_history() -> None:
    """Tools count when offered, or when the history holds tool calls or results."""
    assert request_uses_tools(parse_chat_request(msgspec.json.encode(SDK_REQUEST)))
    history = [m for m in SDK_REQUEST["messages"] if m["role"] in ("assistant", "tool")]
    assert request_uses_tools(parse_chat_request(chat(messages=[USER, *history])))
    assert not request_uses_tools(parse_chat_request(chat(tools=[])))


def test_request_has_images_and_wants_json() -> None:
    """Image parts and JSON response formats are detected; plain text is not."""
    plain = parse_chat_request(chat(response_format={"type": "text"}))
    assert not request_has_images(plain)
    assert not wants_json(plain)
    assert request_has_images(parse_chat_request(with_image(PNG)))
    assert wants_json(parse_chat_request(chat(response_format={"type": "json_object"})))
    assert wants_json(parse_chat_request(msgspec.json.encode(SDK_REQUEST)))


# -- embeddings --------------------------------------------------------------------------

BAD_EMBEDDINGS: list[tuple[str, bytes, Expected, str]] = [
    ("not JSON", b"{", INVALID_JSON, "could not parse the JSON body"),
    ("an array", b'["a"]', NOT_OBJECT, "must be a JSON object"),
    ("no input", b'{"model": "e"}', missing("input"), "Missing required parameter: 'input'."),
    ("empty string", embed(input=""), bad_value("input"), 'string of length >= 1, got "".'),
    ("empty list", embed(input=[]), bad_value("input"), "array of length >= 1, got []."),
    ("empty item", embed(input=["a", ""]), bad_value("input[1]"), 'got "".'),
    (
        "a number",
        embed(input=5),
        bad_type("input"),
        "expected a string or an array, got an integer.",
    ),
    ("negative token", embed(input=[-1]), bad_value("input[0]"), ">= 0, got -1."),
    ("mixture", embed(input=["a", 1]), bad_value("input"), "not a mixture"),
    ("empty token array", embed(input=[[1], []]), bad_value("input"), "a token array is empty"),
    (
        "int8",
        embed(encoding_format="int8"),
        bad_value("encoding_format"),
        "'int8' is not supported",
    ),
    ("dimensions 0", embed(dimensions=0), bad_value("dimensions"), ">= 1, got 0."),
]


@pytest.mark.parametrize(
    ("body", "expected", "message"),
    [c[1:] for c in BAD_EMBEDDINGS],
    ids=[c[0] for c in BAD_EMBEDDINGS],
)
def test_bad_embeddings_body_is_refused_with_openai_fields(
    body: bytes, expected: Expected, message: str
) -> None:
    """Each malformed embeddings body gets exactly its status, type, code and param."""
    err = refusal(body, parse_embeddings_request)
    assert (err.status, err.type, err.code, err.param) == expected
    assert message in err.message


@pytest.mark.parametrize("value", ["one text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_embeddings_input_shapes_are_accepted(value: object) -> None:
    """A string, a list of strings, a token array or token arrays all parse and forward."""
    decoded = decode_embeddings_request(embed(input=value, dimensions=64, extra=True))
    assert decoded.request.input == value
    assert decoded.request.encoding_format == "float"
    assert decoded.raw["extra"] is True


# -- capabilities ------------------------------------------------------------------------


def test_tools_on_a_model_without_tools_is_a_clear_400() -> None:
    """Tools need the 'tools' capability; the error blames 'tools', not capacity."""
    err = refusal(
        msgspec.json.encode(SDK_REQUEST),
        lambda b: check_capabilities(parse_chat_request(b), entry("chat", "json")),
    )
    assert (err.status, err.code, err.param) == (400, "model_does_not_support_tools", "tools")
    assert "does not support tools" in err.message
    assert "'tools' capability" in err.message


def test_tool_history_on_a_model_without_tools_blames_messages() -> None:
    """A tool-call history without offered tools still needs the capability."""
    history = [m for m in SDK_REQUEST["messages"] if m["role"] in ("assistant", "tool")]
    err = refusal(
        chat(messages=[USER, *history]),
        lambda b: check_capabilities(parse_chat_request(b), entry("chat")),
    )
    assert (err.code, err.param) == ("model_does_not_support_tools", "messages")


def test_images_on_a_model_without_vision_is_a_clear_400() -> None:
    """Image parts need the 'vision' capability."""
    err = refusal(
        with_image(PNG), lambda b: check_capabilities(parse_chat_request(b), entry("chat"))
    )
    assert (err.status, err.type, err.code, err.param) == (
        400,
        "invalid_request_error",
        "model_does_not_support_vision",
        "messages",
    )
    assert "does not accept images" in err.message


def test_json_mode_is_forwarded_best_effort_without_the_json_capability() -> None:
    """JSON mode is never refused: the engine does what it can."""
    check_capabilities(
        parse_chat_request(chat(response_format={"type": "json_object"})), entry("chat")
    )


def test_capable_model_accepts_tools_and_images() -> None:
    """A model declaring tools and vision takes a request using both."""
    body = msgspec.json.encode(
        {
            **SDK_REQUEST,
            "messages": [
                *SDK_REQUEST["messages"],
                msgspec.json.decode(with_image(PNG))["messages"][1],
            ],
        }
    )
    check_capabilities(parse_chat_request(body), entry("chat", "tools", "vision"))


def test_chat_on_an_embedding_model_and_embeddings_on_a_chat_model_are_refused() -> None:
    """Each endpoint refuses the other kind of model, naming 'model'."""
    chat_err = refusal(
        chat(),
        lambda b: check_capabilities(parse_chat_request(b), entry("embeddings", type_="embedding")),
    )
    assert (chat_err.status, chat_err.code, chat_err.param) == (
        400,
        "model_does_not_support_chat",
        "model",
    )
    assert "embedding model" in chat_err.message
    emb_err = refusal(
        embed(), lambda b: check_capabilities(parse_embeddings_request(b), entry("chat"))
    )
    assert (emb_err.status, emb_err.code, emb_err.param) == (
        400,
        "model_does_not_support_embeddings",
        "model",
    )
    check_capabilities(parse_embeddings_request(embed()), entry("embeddings", type_="embedding"))


def test_more_dimensions_than_the_model_produces_are_refused() -> None:
    """``dimensions`` may shorten an embedding, never lengthen it."""
    model = entry("embeddings", type_="embedding", dim=768)
    check_capabilities(parse_embeddings_request(embed(dimensions=768)), model)
    err = refusal(
        embed(dimensions=1024), lambda b: check_capabilities(parse_embeddings_request(b), model)
    )
    assert (err.code, err.param) == ("invalid_value", "dimensions")


def test_model_card_carries_x_porten() -> None:
    """A /v1/models entry has OpenAI's fields plus readiness, type, ctx and capabilities."""
    card = msgspec.json.decode(msgspec.json.encode(model_card(entry("tools", "chat"), ready=True)))
    assert card == {
        "id": "m",
        "object": "model",
        "created": 0,
        "owned_by": "porten",
        "x_porten": {"ready": True, "type": "chat", "ctx": 8192, "capabilities": ["chat", "tools"]},
    }


# -- the error table ---------------------------------------------------------------------

ERROR_TABLE: list[tuple[ApiError, int, str, str, int | None]] = [
    (errors.invalid_api_key(), 401, "invalid_request_error", "invalid_api_key", None),
    (
        errors.model_not_allowed("m", "EU only."),
        403,
        "invalid_request_error",
        "model_not_allowed",
        None,
    ),
    (errors.model_not_found("m"), 404, "invalid_request_error", "model_not_found", None),
    (errors.route_not_found("GET", "/v1/x"), 404, "invalid_request_error", "not_found", None),
    (
        errors.method_not_allowed("PUT", ["POST"]),
        405,
        "invalid_request_error",
        "method_not_allowed",
        None,
    ),
    (errors.request_too_large(1024), 413, "invalid_request_error", "request_too_large", None),
    (errors.rate_limit_exceeded(2.1), 429, "rate_limit_error", "rate_limit_exceeded", 3),
    (errors.internal_error("req_1"), 500, "server_error", "internal_error", None),
    (errors.node_error(), 502, "server_error", "node_error", None),
    (errors.no_available_node("m", 0.0), 503, "service_unavailable", "no_available_node", 1),
    (errors.model_warming("m", 30), 503, "service_unavailable", "model_warming", 30),
    (errors.gateway_timeout(), 504, "server_error", "gateway_timeout", None),
]


@pytest.mark.parametrize(
    ("err", "status", "type_", "code", "retry_after"),
    ERROR_TABLE,
    ids=[row[0].code or "" for row in ERROR_TABLE],
)
def test_every_error_table_row_has_its_status_type_code_and_retry_after(
    err: ApiError, status: int, type_: str, code: str, retry_after: int | None
) -> None:
    """Each factory matches the spec's error table; 429/503 carry Retry-After >= 1."""
    assert (err.status, err.type, err.code, err.retry_after) == (status, type_, code, retry_after)


def test_retry_after_is_whole_seconds_never_below_one() -> None:
    """Fractions round up, zero and garbage become one: clients never retry in a loop."""
    assert [errors.retry_after_seconds(s) for s in (0, -5, 0.2, 1.0, 1.5, float("nan"))] == [
        1,
        1,
        1,
        1,
        2,
        1,
    ]
    with pytest.raises(ValueError, match="at least 1"):
        ApiError(429, "x", retry_after=0)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        ApiError(302, "x")


def test_401_names_no_key_and_challenges_bearer() -> None:
    """A bad key is reported without echoing it, with a Bearer challenge."""
    err = errors.invalid_api_key()
    assert err.headers == {"WWW-Authenticate": 'Bearer realm="porten"'}
    assert "sk-porten-..." in err.message


def test_sse_error_event_is_one_data_line_with_the_error_object() -> None:
    """A failed stream ends with ``data: {"error": ...}`` and a blank line."""
    event = sse_error_event(errors.node_error())
    assert event.startswith(b"data: {")
    assert event.endswith(b"}\n\n")
    assert event.count(b"\n") == 2
    assert msgspec.json.decode(event[6:])["error"]["code"] == "node_error"


# -- properties --------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=24,
)
FIELDS = st.sampled_from(
    [
        "model",
        "messages",
        "stream",
        "max_tokens",
        "temperature",
        "stop",
        "tools",
        "tool_choice",
        "response_format",
        "n",
        "metadata",
        "input",
        "encoding_format",
        "dimensions",
        "seed",
    ]
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system", 1])},
    optional={"content": JSON, "tool_calls": JSON, "tool_call_id": JSON},
)
NEAR_VALID = st.builds(
    lambda base, extra: {**base, **extra},
    st.fixed_dictionaries(
        {"model": st.text(max_size=4), "messages": st.lists(MESSAGE, max_size=3), "input": JSON}
    ),
    st.dictionaries(FIELDS, JSON, max_size=4),
)


def assert_only_api_errors(body: bytes) -> None:
    """Both parsers either accept ``body`` or raise a 4xx ApiError, never anything else."""
    refusals: list[ApiError] = []
    for parse in (parse_chat_request, parse_embeddings_request):
        try:
            parse(body)
        except ApiError as err:
            refusals.append(err)
    for refused in refusals:
        assert (refused.status, refused.type) == (400, "invalid_request_error")
        assert refused.message


@given(JSON)
def test_any_json_value_yields_a_request_or_a_400(value: object) -> None:
    """Arbitrary JSON never escapes as anything but a 400 ApiError (no 500s)."""
    assert_only_api_errors(msgspec.json.encode(value))


@given(NEAR_VALID)
def test_nearly_valid_bodies_yield_a_request_or_a_400(value: dict[str, Any]) -> None:
    """Bodies shaped like requests, with arbitrary values inside, never cause a 500."""
    assert_only_api_errors(msgspec.json.encode(value))


@given(st.binary(max_size=64))
def test_any_bytes_yield_a_request_or_a_400(body: bytes) -> None:
    """Arbitrary bytes never escape as anything but a 400 ApiError."""
    assert_only_api_errors(body)


@given(
    status=st.integers(400, 599),
    message=st.text(),
    type_=st.text(min_size=1),
    code=st.none() | st.text(),
    param=st.none() | st.text(),
)
def test_every_error_body_is_the_openai_shape(
    status: int, message: str, type_: str, code: str | None, param: str | None
) -> None:
    """Any ApiError encodes to exactly {"error": {message, type, param, code}}."""
    err = ApiError(status, message, error_type=type_, code=code, param=param)
    body = msgspec.json.decode(error_body(err))
    assert body == {"error": {"message": message, "type": type_, "param": param, "code": code}}
