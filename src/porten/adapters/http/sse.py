"""Reading an engine's SSE stream as it passes: event boundaries, and the tokens in it.

The hub forwards each event the moment it is complete (never a whole
generation), and meters as it goes: it counts generated tokens from the
deltas, takes the engine's own ``usage`` when the engine reports one, and
remembers the stream's id/model/created so it can write its own usage chunk
(``stream_options.include_usage``) when the engine did not.
"""

from __future__ import annotations

from typing import Final

import msgspec

DONE: Final = b"[DONE]"


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[msgspec.Raw] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class Usage(msgspec.Struct, frozen=True):
    """Token counts as OpenAI reports them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _Chunk(msgspec.Struct):
    id: str = ""
    model: str = ""
    created: int = 0
    choices: list[_Choice] = []
    usage: Usage | None = None
    error: msgspec.Raw | None = None


_CHUNK: Final = msgspec.json.Decoder(_Chunk)


class SseSplitter:
    """Bytes in, complete SSE events out (each without its blank-line terminator)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The events completed by ``data``."""
        buf = self._buffer + data.replace(b"\r\n", b"\n")
        *events, self._buffer = buf.split(b"\n\n")
        return [e for e in events if e.strip()]

    def rest(self) -> bytes:
        """Whatever arrived after the last complete event."""
        return self._buffer


def event_data(event: bytes) -> bytes | None:
    """The payload of an event's ``data:`` lines (joined), or None for comments/other fields."""
    parts = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(parts) if parts else None


class StreamMeter:
    """What one chat stream generated, counted from the events the hub relays."""

    def __init__(self) -> None:
        self.chunks_with_tokens = 0
        self.engine_usage: Usage | None = None
        self.id = ""
        self.model = ""
        self.created = 0
        self.error = False

    def observe(self, data: bytes) -> bool:
        """Record one event's payload; True if it is a usage-only chunk (no choices)."""
        try:
            chunk = _CHUNK.decode(data)
        except msgspec.DecodeError:
            return False
        if chunk.error is not None:
            self.error = True
        self.id = self.id or chunk.id
        self.model = self.model or chunk.model
        self.created = self.created or chunk.created
        for choice in chunk.choices:
            d = choice.delta
            if d is not None and (d.content or d.reasoning_content or d.tool_calls):
                self.chunks_with_tokens += 1
        if chunk.usage is not None:
            self.engine_usage = chunk.usage
        return chunk.usage is not None and not chunk.choices

    def usage(self, prompt_estimate: int) -> Usage:
        """The engine's usage if it reported one, else the hub's own count."""
        if self.engine_usage is not None:
            return self.engine_usage
        completion = self.chunks_with_tokens
        return Usage(prompt_estimate, completion, prompt_estimate + completion)

    def usage_event(self, prompt_estimate: int) -> bytes:
        """A ``data:`` event carrying the usage, in the shape ``include_usage`` promises."""
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage(prompt_estimate),
        }
        return b"data: " + msgspec.json.encode(body) + b"\n\n"


class _Response(msgspec.Struct):
    usage: Usage | None = None


_RESPONSE: Final = msgspec.json.Decoder(_Response)


def response_usage(body: bytes) -> Usage | None:
    """The ``usage`` of a non-streamed completion or embeddings body, if it has one."""
    try:
        return _RESPONSE.decode(body).usage
    except msgspec.DecodeError:
        return None


def estimate_tokens(text_bytes: int) -> int:
    """A rough token count (4 bytes per token) for when no engine reported one."""
    return max(1, text_bytes // 4)
