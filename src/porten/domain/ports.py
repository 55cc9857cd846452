"""The ports the domain needs from the outside world, as Protocols.

An adapter implements each port once per technology: Postgres for the
product, memory for unit tests and ``simulations/``. One contract test suite
(``tests/contract``) runs against every implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Protocol

import msgspec

from porten.domain.events import AnyEvent

#: Expected version meaning "this stream must not exist yet".
NO_STREAM: Final = -1


class RecordedEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event as the log holds it: its global position and stream version.

    ``position`` is gapless and strictly increasing in commit order, so a
    follower that has seen position ``p`` has seen everything before it.
    """

    position: int
    stream: str
    version: int
    recorded_at: float
    event: AnyEvent


class WrongExpectedVersion(Exception):
    """An append's expected stream version did not match; nothing was written."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        want = "no stream" if expected == NO_STREAM else f"version {expected}"
        have = "no stream" if actual == NO_STREAM else f"version {actual}"
        super().__init__(
            f"stream {stream!r} is at {have}, the append expected {want}; nothing was written. "
            "Re-read the state and decide again."
        )


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A folded state as bytes, and the log position it covers."""

    position: int
    schema: int
    data: bytes


class AppendRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One atomic append inside a group commit (see :meth:`EventStore.append_many`)."""

    events: tuple[AnyEvent, ...]
    expected: dict[str, int] = {}


class EventStore(Protocol):
    """An append-only log with per-stream optimistic concurrency and a global order."""

    async def append(
        self, events: Sequence[AnyEvent], expected: Mapping[str, int] | None = None
    ) -> int:
        """Append atomically; return the position of the last event written.

        ``expected`` maps a stream to the version it must be at (or
        :data:`NO_STREAM`); streams not named accept any version. On a
        mismatch raise :class:`WrongExpectedVersion` and write nothing.
        """
        ...

    async def append_many(
        self, requests: Sequence[AppendRequest]
    ) -> list[int | WrongExpectedVersion]:
        """Commit many appends in one transaction (group commit).

        Each request is atomic on its own: one whose expected versions do not
        match gets its :class:`WrongExpectedVersion` in the result list (at its
        index) and writes nothing, while the others are written. Requests are
        applied in order, so a later request sees the versions an earlier one
        produced. Success entries are the position of the request's last event.
        """
        ...

    async def read(self, after: int = 0, limit: int = 10_000) -> list[RecordedEvent]:
        """Events with ``position > after`` in position order, at most ``limit``."""
        ...

    async def read_events(self, after: int = 0, limit: int = 10_000) -> tuple[int, list[AnyEvent]]:
        """Like :meth:`read` without envelopes: (position of the last event, the events).

        The fold's bulk path: it skips building a :class:`RecordedEvent` per row.
        """
        ...

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        """All events of one stream in version order."""
        ...

    async def stream_version(self, stream: str, at: int | None = None) -> int:
        """The stream's version (as of log position ``at``, if given), or :data:`NO_STREAM`.

        A decision made on the state folded up to position ``p`` is appended with
        ``expected={stream: await stream_version(stream, at=p)}``: if the node's
        stream moved since, the append conflicts and the decision is made again.
        """
        ...

    async def head(self) -> int:
        """The position of the newest committed event (0 for an empty log)."""
        ...

    async def wait_for_append(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Return once the head is past ``after`` (True) or ``timeout`` passes (False)."""
        ...

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep a folded state; older snapshots may be discarded."""
        ...

    async def latest_snapshot(self, schema: int) -> Snapshot | None:
        """The newest snapshot written with this state ``schema``, if any."""
        ...
