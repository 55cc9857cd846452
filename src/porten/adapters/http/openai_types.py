"""The OpenAI-compatible ``/v1`` wire types, and what a request asks of a model.

Requests are immutable msgspec Structs that declare only the parameters the hub
validates or acts on; anything else a client sends is ignored by them and kept
in :attr:`Decoded.raw` for the engine. Parsing and the rules that span fields
live in :mod:`porten.adapters.http.openai_validation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from porten.domain.values import CatalogEntry, ModelType

R = TypeVar("R")

Role = Literal["system", "developer", "user", "assistant", "tool"]
ModelId = Annotated[str, Meta(min_length=1, max_length=256)]
TokenCount = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
NonEmptyStr = Annotated[str, Meta(min_length=1)]
TokenId = Annotated[int, Meta(ge=0, le=2**31 - 1)]


# -- messages ----------------------------------------------------------------------------


class TextPart(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="text"):
    text: str


class ImageUrl(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="image_url"):
    image_url: ImageUrl


ContentPart = TextPart | ImagePart


class FunctionCall(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="role", tag="system"):
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="role", tag="developer"
):
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="role", tag="user"):
    content: str | list[ContentPart]
    name: str | None = None


class AssistantMessage(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="role", tag="assistant"
):
    """``content`` may be null only when the turn is a set of ``tool_calls``."""

    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="role", tag="tool"):
    content: str | list[TextPart]
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


# -- tools and formats -------------------------------------------------------------------


class FunctionDef(msgspec.Struct, frozen=True, kw_only=True):
    name: NonEmptyStr
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, frozen=True, kw_only=True):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(msgspec.Struct, frozen=True, kw_only=True):
    name: NonEmptyStr


class NamedToolChoice(msgspec.Struct, frozen=True, kw_only=True):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="json_object"
):
    pass


class JsonSchema(msgspec.Struct, frozen=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class JsonSchemaFormat(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="json_schema"
):
    json_schema: JsonSchema


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat


class StreamOptions(msgspec.Struct, frozen=True, kw_only=True):
    include_usage: bool = False


# -- requests ----------------------------------------------------------------------------

#: Metadata is logged for usage and abuse review, so it is bounded like OpenAI's.
Metadata = Annotated[
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]],
    Meta(max_length=16),
]


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/chat/completions``: the parameters the hub validates or acts on."""

    model: ModelId
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: Int64 | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Meta(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    n: Annotated[int, Meta(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    metadata: Metadata | None = None


EmbeddingsInput = (
    NonEmptyStr
    | Annotated[list[NonEmptyStr | TokenId | list[TokenId]], Meta(min_length=1, max_length=2048)]
)


class EmbeddingsRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/embeddings``: text, a list of texts, or token-id arrays."""

    model: ModelId
    input: EmbeddingsInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None


@dataclass(frozen=True, slots=True)
class Decoded(Generic[R]):
    """A validated request and the JSON object it came from.

    ``raw`` is what the engine receives (see ``openai_validation.forward_body``): every
    parameter the client sent, including ones this hub does not know.
    """

    request: R
    raw: dict[str, Any]


# -- what a request asks of a model ------------------------------------------------------


def request_uses_tools(request: ChatRequest) -> bool:
    """Whether serving this needs a tool-capable chat template.

    True for offered tools and for a history that already holds tool calls or
    tool results, which a template without tool support cannot render.
    """
    if request.tools:
        return True
    return any(
        isinstance(m, ToolMessage) or (isinstance(m, AssistantMessage) and m.tool_calls)
        for m in request.messages
    )


def request_has_images(request: ChatRequest) -> bool:
    """Whether any message carries an image part (which needs a vision model)."""
    return any(
        isinstance(m, UserMessage)
        and isinstance(m.content, list)
        and any(isinstance(part, ImagePart) for part in m.content)
        for m in request.messages
    )


def wants_json(request: ChatRequest) -> bool:
    """Whether the client asked for JSON mode or a JSON schema."""
    return isinstance(request.response_format, JsonObjectFormat | JsonSchemaFormat)


def completion_cap(request: ChatRequest) -> int | None:
    """The completion token limit: ``max_completion_tokens`` wins over ``max_tokens``."""
    if request.max_completion_tokens is not None:
        return request.max_completion_tokens
    return request.max_tokens


# -- responses ---------------------------------------------------------------------------


class PortenModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The ``x_porten`` block: whether a node serves the model this instant."""

    ready: bool
    type: ModelType
    ctx: int
    capabilities: list[str]


class ModelCard(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "porten"
    x_porten: PortenModelInfo


class ModelList(msgspec.Struct, frozen=True, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def model_card(entry: CatalogEntry, *, ready: bool) -> ModelCard:
    """A ``GET /v1/models`` entry; capabilities sorted so the listing is stable."""
    info = PortenModelInfo(
        ready=ready, type=entry.type, ctx=entry.ctx, capabilities=sorted(entry.capabilities)
    )
    return ModelCard(id=entry.id, x_porten=info)
