"""From request bytes to validated ``/v1`` requests, and what a model must support.

The body is parsed once into plain JSON values, kept whole for forwarding to the
engine (unknown parameters included), and converted to a typed Struct for
validation. A :class:`msgspec.ValidationError` names a path such as
``$.messages[0].role``; it becomes an :class:`ApiError` whose ``param`` is
OpenAI's spelling of that path (``messages[0].role``) and whose message says
what was expected and what arrived. Parameters that would change the result but
cannot be honoured are refused (``n > 1``, remote images);
a top-level ``null`` means "not given", as with OpenAI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, TypeVar, get_args

import msgspec

from porten.adapters.http.errors import (
    ApiError,
    invalid_image_url,
    invalid_json,
    invalid_type,
    invalid_value,
    missing_parameter,
    model_lacks_capability,
    unsupported_parameter,
)
from porten.adapters.http.openai_types import (
    AssistantMessage,
    ChatRequest,
    Decoded,
    EmbeddingsRequest,
    ImagePart,
    NamedToolChoice,
    Role,
    UserMessage,
    request_has_images,
    request_uses_tools,
)
from porten.domain.values import CatalogEntry

T = TypeVar("T")

_DECODER: Final = msgspec.json.Decoder()
_ENCODER: Final = msgspec.json.Encoder()

# msgspec's messages are parsed for their parts; if a future wording stops matching,
# the error degrades to a generic ``invalid_value`` quoting msgspec, never to a 500.
_LOCATION: Final = re.compile(r" - at (?P<key>`key` in )?`(?P<path>\$[^`]*)`$")
_MISSING: Final = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_WRONG_TYPE: Final = re.compile(r"^Expected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`$")
_BAD_CHOICE: Final = re.compile(r"^Invalid (?:enum )?value (?P<value>.+)$")
_TYPE_NAME: Final = re.compile(r"`([^`]+)`")
_SEGMENT: Final = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_INDEX: Final = re.compile(r"\[\d+\]")

_TYPE_WORDS: Final[Mapping[str, str]] = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}
_PREVIEW_CHARS: Final = 40

#: Accepted values for params whose msgspec error does not list them.
_HINTS: Final = {
    "messages[].role": ", ".join(get_args(Role)),
    "messages[].content[].type": "text, image_url (images only in user messages)",
    "messages[].content[].image_url.detail": "auto, low, high",
    "response_format.type": "text, json_object, json_schema",
    "tool_choice": 'none, auto, required, {"type": "function", "function": {"name": ...}}',
    "tools[].type": "function",
    "encoding_format": "float",
}


def decode_chat_request(body: bytes) -> Decoded[ChatRequest]:
    """Parse and validate a chat body, keeping the raw object for forwarding."""
    raw = decode_object(body)
    request = convert(raw, ChatRequest, _HINTS)
    _check_chat(request)
    return Decoded(request, raw)


def parse_chat_request(body: bytes) -> ChatRequest:
    """Parse and validate a chat body; raises a 400 :class:`ApiError` when it is unusable."""
    return decode_chat_request(body).request


def decode_embeddings_request(body: bytes) -> Decoded[EmbeddingsRequest]:
    """Parse and validate an embeddings body, keeping the raw object for forwarding."""
    raw = decode_object(body)
    request = convert(raw, EmbeddingsRequest, _HINTS)
    _check_embeddings(request)
    return Decoded(request, raw)


def parse_embeddings_request(body: bytes) -> EmbeddingsRequest:
    """Parse and validate an embeddings body; raises a 400 :class:`ApiError` when unusable."""
    return decode_embeddings_request(body).request


def forward_body(raw: dict[str, Any], **overrides: Any) -> bytes:
    """The engine's request body: the client's object with ``overrides`` applied.

    Typically ``model=`` the engine's own name for the model; everything else,
    unknown parameters included, passes through untouched.
    """
    return encode({**raw, **overrides})


def _check_chat(request: ChatRequest) -> None:
    """Rules across fields that a type cannot express."""
    if request.n is not None and request.n > 1:
        raise unsupported_parameter(
            "n",
            f"Only n=1 is supported, got n={request.n}: Porten returns one choice per "
            "request. Omit 'n' and send separate requests for more choices.",
        )
    for i, message in enumerate(request.messages):
        if isinstance(message, AssistantMessage) and message.content is None:
            if not message.tool_calls:
                raise invalid_value(
                    f"messages[{i}].content",
                    f"Invalid value for 'messages[{i}].content': an assistant message needs "
                    "'content' unless it carries 'tool_calls'.",
                )
        elif isinstance(message, UserMessage) and isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if isinstance(part, ImagePart) and not is_inline_image(part.image_url.url):
                    raise invalid_image_url(f"messages[{i}].content[{j}].image_url.url")
    _check_tool_choice(request)


def _check_tool_choice(request: ChatRequest) -> None:
    """A forced tool choice must name tools the request actually offers."""
    choice = request.tool_choice
    if choice is None or choice in ("none", "auto"):
        return
    names = {tool.function.name for tool in request.tools or ()}
    if not names:
        raise invalid_value(
            "tool_choice",
            "Invalid value for 'tool_choice': forcing a tool call requires 'tools'.",
        )
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise invalid_value(
            "tool_choice",
            f"Invalid value for 'tool_choice': the function {choice.function.name!r} is "
            "not among 'tools'.",
        )


def _check_embeddings(request: EmbeddingsRequest) -> None:
    """Inputs are uniform lists. ``base64`` (the OpenAI SDK's default) goes to the engine as is."""
    items = request.input
    if isinstance(items, list):
        kinds = {list if isinstance(item, list) else type(item) for item in items}
        if len(kinds) > 1:
            raise invalid_value(
                "input",
                "Invalid value for 'input': send a list of strings, one token array, or "
                "a list of token arrays, not a mixture.",
            )
        if any(isinstance(item, list) and not item for item in items):
            raise invalid_value("input", "Invalid value for 'input': a token array is empty.")


def check_capabilities(request: ChatRequest | EmbeddingsRequest, entry: CatalogEntry) -> None:
    """Refuse, with a 400 rather than a capacity error, what ``entry`` cannot serve.

    JSON mode is not checked: the spec forwards it best-effort to any engine.
    """
    if isinstance(request, EmbeddingsRequest):
        _check_embedding_model(request, entry)
        return
    if entry.type != "chat":
        raise model_lacks_capability(
            "chat",
            f"The model '{entry.id}' is an embedding model; it cannot serve chat completions. "
            "Use POST /v1/embeddings, or pick a chat model from GET /v1/models.",
            param="model",
        )
    if request_uses_tools(request) and "tools" not in entry.capabilities:
        raise model_lacks_capability(
            "tools",
            f"The model '{entry.id}' does not support tools (function calling). Pick a model "
            "whose GET /v1/models entry lists the 'tools' capability, or drop the tools.",
            param="tools" if request.tools else "messages",
        )
    if request_has_images(request) and "vision" not in entry.capabilities:
        raise model_lacks_capability(
            "vision",
            f"The model '{entry.id}' does not accept images. Pick a model whose GET /v1/models "
            "entry lists the 'vision' capability, or send text only.",
            param="messages",
        )


def _check_embedding_model(request: EmbeddingsRequest, entry: CatalogEntry) -> None:
    """Embeddings need an embedding model, and no more dimensions than it produces."""
    if entry.type != "embedding" and "embeddings" not in entry.capabilities:
        raise model_lacks_capability(
            "embeddings",
            f"The model '{entry.id}' is not an embedding model. Use POST /v1/chat/completions, "
            "or pick an embedding model from GET /v1/models.",
            param="model",
        )
    if request.dimensions is not None and 0 < entry.embedding_dim < request.dimensions:
        raise invalid_value(
            "dimensions",
            f"Invalid value for 'dimensions': the model '{entry.id}' produces "
            f"{entry.embedding_dim} dimensions, fewer than the {request.dimensions} requested.",
        )


# -- machinery ---------------------------------------------------------------------------


def decode_object(body: bytes) -> dict[str, Any]:
    """Parse ``body`` as one JSON object, or raise a 400 that says why not."""
    if not body or body.isspace():
        raise invalid_json("The request body is empty. Send a JSON object.")
    try:
        value = _DECODER.decode(body)
    except msgspec.ValidationError as exc:  # e.g. a number beyond float range
        raise _translate(exc, None, {}) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise invalid_json(
            f"We could not parse the JSON body of your request ({_reason(exc)}). "
            "Send a JSON object with 'Content-Type: application/json'."
        ) from None
    if not isinstance(value, dict):
        raise invalid_type(
            None, f"The request body must be a JSON object, got {_json_type(value)}."
        )
    return value


def convert(raw: dict[str, Any], type_: type[T], hints: Mapping[str, str]) -> T:
    """Validate ``raw`` as ``type_``; a top-level ``null`` means "not given", as in OpenAI.

    ``hints`` maps a param with indices elided (``messages[].role``) to the
    values it accepts, which msgspec's own message does not list.
    """
    given = {k: v for k, v in raw.items() if v is not None}
    try:
        return msgspec.convert(given, type_)
    except msgspec.ValidationError as exc:
        raise _translate(exc, raw, hints) from None


def encode(value: object) -> bytes:
    """JSON bytes for plain values or Structs, via msgspec."""
    return _ENCODER.encode(value)


def is_inline_image(url: str) -> bool:
    """Whether ``url`` is a base64 ``data:image/...`` URL: the only images accepted.

    The scheme is case-insensitive (RFC 2397); the payload is not decoded here,
    the engine reports a corrupt image.
    """
    head = url[:256].lower()
    return head.startswith("data:image/") and ";base64," in head


def _translate(exc: msgspec.ValidationError, raw: object, hints: Mapping[str, str]) -> ApiError:
    """One msgspec validation message as an OpenAI-shaped 400."""
    text = str(exc)
    located = _LOCATION.search(text)
    detail = text[: located.start()] if located else text
    path = located["path"] if located else "$"
    param = _param(path)
    if missing := _MISSING.match(detail):
        return missing_parameter(f"{param}.{missing['field']}" if param else missing["field"])
    name = f"'{param}'" if param else "the request body"
    hint = hints.get(_INDEX.sub("[]", param or ""))
    accepted = f" Accepted values: {hint}." if hint else ""
    if wrong := _WRONG_TYPE.match(detail):
        expected = _phrase_types(wrong["expected"])
        got = _TYPE_WORDS.get(wrong["got"], wrong["got"])
        return invalid_type(
            param, f"Invalid type for {name}: expected {expected}, got {got}.{accepted}"
        )
    if choice := _BAD_CHOICE.match(detail):
        return invalid_value(
            param, f"Invalid value for {name}: {choice['value']} is not supported.{accepted}"
        )
    got = "" if located and located["key"] else _preview(raw, path)
    return invalid_value(param, f"Invalid value for {name}: {_phrase(detail)}{got}.{accepted}")


def _param(path: str) -> str | None:
    """``$.messages[0].role`` -> ``messages[0].role``; dict keys (``[...]``) elided."""
    param = path.removeprefix("$").removeprefix(".").replace("[...]", "")
    return param or None


def _phrase(detail: str) -> str:
    """msgspec's ``Expected `int` >= 1`` as ``expected an integer >= 1``."""
    words = _TYPE_NAME.sub(lambda m: _phrase_types(m[1]), detail)
    return words[:1].lower() + words[1:]


def _phrase_types(union: str) -> str:
    """``float | null`` -> ``a number``: null is never the fix, so it is left out."""
    names = [n for n in union.split(" | ") if n != "null"] or ["null"]
    words = [_TYPE_WORDS.get(n, f"`{n}`") for n in names]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _preview(raw: object, path: str) -> str:
    """``, got <value>`` for the value at ``path`` in ``raw``; empty if it cannot be found."""
    if raw is None or "[...]" in path:
        return ""
    node = raw
    for key, index in _SEGMENT.findall(path):
        try:
            node = node[int(index)] if index else node[key]  # type: ignore[index]
        except (LookupError, TypeError):
            return ""
    if isinstance(node, str):
        node = node[: _PREVIEW_CHARS + 1]  # never encode a megabyte to show forty characters
    shown = encode(node).decode()
    if len(shown) > _PREVIEW_CHARS:
        shown = shown[:_PREVIEW_CHARS] + "..."
    return f", got {shown}"


def _json_type(value: object) -> str:
    """The JSON name of a decoded value, as a phrase (``an array``)."""
    for python_type, name in ((bool, "bool"), (str, "str"), (int, "int"), (float, "float")):
        if isinstance(value, python_type):
            return _TYPE_WORDS[name]
    if isinstance(value, list):
        return _TYPE_WORDS["array"]
    return _TYPE_WORDS["null"] if value is None else _TYPE_WORDS["object"]


def _reason(exc: Exception) -> str:
    """A short, safe description of why parsing failed (never echoes the body)."""
    if isinstance(exc, UnicodeDecodeError):
        return "the body is not valid UTF-8"
    if isinstance(exc, RecursionError):
        return "the JSON is nested too deeply"
    return str(exc)
