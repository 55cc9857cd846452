"""The wire contract between the hub and a node's agent, over one WebSocket.

Nodes sit behind NAT, so the agent dials out and keeps one connection open;
many requests are multiplexed over it by ``request_id``. Frames are binary
MessagePack, one message per frame, decoded by one typed decoder per
direction. Two families never mix: the agent sends **observations** (what it
saw: ``Agent…``), the hub sends **commands** (what it decided: ``Hub…``).

Authentication is the node credential in the upgrade request's
``Authorization: Bearer`` header, not in a message, so no message ever
carries a secret. Whatever an agent says about its own region, trust class
or owner is not even part of the schema: those come from the hub's log.

Flow control: an agent may have at most ``window`` response chunks of one
request unacknowledged; the hub returns credit (``HubCredit``) as it writes
chunks to the client. A slow client therefore stalls its own generation on
the node instead of growing a buffer in the hub.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from porten.domain.values import CatalogEntry, UnloadReason

#: Bumped on an incompatible change; the hub refuses agents of another major version.
PROTOCOL_VERSION: Final = 2
#: Frames larger than this are a protocol violation (the hub drops the connection).
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
#: Response chunks an agent may send per request before it needs more credit.
DEFAULT_WINDOW: Final = 64

# WebSocket close codes the hub uses beyond RFC 6455's (4000-4999 are the application's),
# so an agent can tell "upgrade me" from "reconnect" without parsing the reason text.
#: The agent speaks another major protocol version: reconnecting will not help, upgrading will.
CLOSE_VERSION_MISMATCH: Final = 4001
#: A newer connection of the same node took over this one.
CLOSE_REPLACED: Final = 4002
#: The agent sent nothing (not even a heartbeat) for three heartbeat intervals.
CLOSE_SILENT: Final = 4003


class Inventory(msgspec.Struct, frozen=True, kw_only=True):
    """What a node can do and holds right now."""

    engine: str
    provisionable: bool
    vram_total_mb: int
    vram_budget_mb: int
    disk_budget_mb: int
    models_on_disk: tuple[str, ...] = ()
    models_loaded: tuple[str, ...] = ()


# --- agent → hub: observations ------------------------------------------------------


class AgentMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", tag=True):
    """Base of everything an agent sends."""


class AgentHello(AgentMessage, frozen=True, kw_only=True):
    """First frame of every connection: versions and the node's inventory."""

    protocol: int = PROTOCOL_VERSION
    agent_version: str = ""
    inventory: Inventory


class AgentInventory(AgentMessage, frozen=True, kw_only=True):
    """The inventory changed (a model loaded or left, the disk filled)."""

    inventory: Inventory


class AgentHeartbeat(AgentMessage, frozen=True, kw_only=True):
    """Liveness and load, every few seconds."""

    in_flight: int = 0
    queued: int = 0
    vram_used_mb: int = 0


class AgentResponseStart(AgentMessage, frozen=True, kw_only=True):
    """The engine answered a request: its status, content type and first bytes.

    Every frame costs a write on the agent and a read, a decode and a wake-up
    on the hub, so the start carries the body's first piece (``data``, which
    counts as a chunk against the window) and, when the whole body fits
    (a typical non-streamed reply), ``end=True``: then this one frame is the
    entire response and no chunk or end follows.
    """

    request_id: str
    status: int
    content_type: str = "application/json"
    data: bytes = b""
    end: bool = False


class AgentResponseChunk(AgentMessage, frozen=True, kw_only=True):
    """Bytes of a response body, in order (SSE events for streams)."""

    request_id: str
    data: bytes


class AgentResponseEnd(AgentMessage, frozen=True, kw_only=True):
    """The response is complete, or failed with ``error`` (after or before its start)."""

    request_id: str
    error: str = ""


class AgentLoadProgress(AgentMessage, frozen=True, kw_only=True):
    """A load moved forward."""

    load_id: str
    model_id: str
    phase: Literal["downloading", "loading"]
    done_bytes: int = 0
    total_bytes: int = 0


class AgentLoadDone(AgentMessage, frozen=True, kw_only=True):
    """The model is loaded and serving."""

    load_id: str
    model_id: str


class AgentLoadFailed(AgentMessage, frozen=True, kw_only=True):
    """The load did not complete; ``error`` is for the operator to read."""

    load_id: str
    model_id: str
    error: str


class AgentUnloaded(AgentMessage, frozen=True, kw_only=True):
    """A model left memory (commanded, or the engine process died).

    ``commanded`` marks the answer to a :class:`HubUnload`: the hub recorded
    that decision (with its reason) when it made it, so it does not record it twice.
    """

    model_id: str
    reason: UnloadReason
    detail: str = ""
    commanded: bool = False


AnyAgentMessage = (
    AgentHello
    | AgentInventory
    | AgentHeartbeat
    | AgentResponseStart
    | AgentResponseChunk
    | AgentResponseEnd
    | AgentLoadProgress
    | AgentLoadDone
    | AgentLoadFailed
    | AgentUnloaded
)


# --- hub → agent: commands ---------------------------------------------------------


class HubMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", tag=True):
    """Base of everything the hub sends."""


class HubWelcome(HubMessage, frozen=True, kw_only=True):
    """Reply to hello: who the node is to the hub, and the session's parameters."""

    node_id: str
    session_id: str
    heartbeat_s: float = 5.0
    window: int = DEFAULT_WINDOW


class HubRequest(HubMessage, frozen=True, kw_only=True):
    """Run one inference request; ``body`` is the OpenAI JSON to send the engine."""

    request_id: str
    path: Literal["/v1/chat/completions", "/v1/embeddings"]
    model_id: str
    body: bytes
    stream: bool = False


class HubCancel(HubMessage, frozen=True, kw_only=True):
    """Stop generating for this request (the client went away or timed out)."""

    request_id: str


class HubCredit(HubMessage, frozen=True, kw_only=True):
    """The hub wrote ``chunks`` more of this request's chunks to its client."""

    request_id: str
    chunks: int


class HubLoad(HubMessage, frozen=True, kw_only=True):
    """Download (if needed) and load this catalog model."""

    load_id: str
    model: CatalogEntry


class HubUnload(HubMessage, frozen=True, kw_only=True):
    """Unload this model; its weights stay on disk."""

    model_id: str
    reason: UnloadReason


AnyHubMessage = HubWelcome | HubRequest | HubCancel | HubCredit | HubLoad | HubUnload

_AGENT_DECODER: Final = msgspec.msgpack.Decoder(AnyAgentMessage)
_HUB_DECODER: Final = msgspec.msgpack.Decoder(AnyHubMessage)
_ENCODER: Final = msgspec.msgpack.Encoder()


def encode(message: AgentMessage | HubMessage) -> bytes:
    """One frame's bytes."""
    return _ENCODER.encode(message)


def decode_agent_message(frame: bytes) -> AnyAgentMessage:
    """Decode a frame from an agent; ``msgspec.DecodeError`` if it is not one."""
    message: AnyAgentMessage = _AGENT_DECODER.decode(frame)
    return message


def decode_hub_message(frame: bytes) -> AnyHubMessage:
    """Decode a frame from the hub; ``msgspec.DecodeError`` if it is not one."""
    message: AnyHubMessage = _HUB_DECODER.decode(frame)
    return message
