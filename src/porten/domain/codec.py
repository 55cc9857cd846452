"""One encoder and one decoder for events, shared by every store and file format.

JSON is the durable format: Postgres holds it as ``jsonb`` so operators can
query the log with SQL, and ``porten events export`` writes it as JSONL.
"""

from __future__ import annotations

from typing import Final

import msgspec

from porten.domain.events import EVENT_TAGS, AnyEvent


class UndecodableEvent(Exception):
    """An event in the log that this version of porten cannot read.

    Raised rather than skipped: a fold that silently drops an event would
    produce a fleet state that never existed.
    """

    def __init__(self, position: int, type_: str, problem: str) -> None:
        self.position = position
        self.type = type_
        self.problem = problem
        known = "an unknown event type" if type_ not in EVENT_TAGS else "a malformed event"
        super().__init__(
            f"event at position {position} (type {type_!r}) is {known}: {problem}. "
            "It may have been written by a newer porten: upgrade this one. If the log was "
            "edited by hand, inspect it with `porten events list --raw` and restore it from a "
            "backup or an export; porten will not skip it."
        )


_ENCODER: Final = msgspec.json.Encoder(order="deterministic")
_DECODER: Final = msgspec.json.Decoder(AnyEvent)


def encode_event(event: AnyEvent) -> bytes:
    """Canonical JSON bytes for ``event`` (deterministic key order)."""
    return _ENCODER.encode(event)


def decode_event(data: bytes | str, *, position: int = -1) -> AnyEvent:
    """Decode one event; :class:`UndecodableEvent` names the position if it fails."""
    try:
        event: AnyEvent = _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raw = data.encode() if isinstance(data, str) else data
        try:
            obj = msgspec.json.decode(raw)
            type_ = str(obj.get("type", "?")) if isinstance(obj, dict) else "?"
        except msgspec.DecodeError:
            type_ = "?"
        raise UndecodableEvent(position, type_, str(exc)) from exc
    return event
