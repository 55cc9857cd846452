"""The event log in a Python list: a first-class :class:`EventStore` for tests and simulations.

Same promises as the Postgres store (gapless positions from 1, versions
from 0 per stream, nothing written on a conflict, per-request atomicity in
a group commit), checked by the same contract suite, so code that works on
it works on the product. It never awaits anything but its own condition, so
a simulation driving it stays deterministic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from porten.domain.events import AnyEvent, stream_of
from porten.domain.ports import (
    NO_STREAM,
    AppendRequest,
    EventStore,
    RecordedEvent,
    Snapshot,
    WrongExpectedVersion,
)

#: Snapshots kept per state schema, as in the Postgres store.
SNAPSHOTS_KEPT: Final = 3


class InMemoryEventStore:
    """An append-only log in memory; ``clock`` stamps ``recorded_at`` (simulations pass theirs)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._events: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._snapshots: dict[int, list[Snapshot]] = {}
        self._appended = asyncio.Condition()

    async def append(
        self, events: Sequence[AnyEvent], expected: Mapping[str, int] | None = None
    ) -> int:
        """Append atomically; return the last event's position (see :class:`EventStore`)."""
        [result] = await self.append_many(
            [AppendRequest(events=tuple(events), expected=dict(expected or {}))]
        )
        if isinstance(result, WrongExpectedVersion):
            raise result
        return result

    async def append_many(
        self, requests: Sequence[AppendRequest]
    ) -> list[int | WrongExpectedVersion]:
        """Apply each request in order; a conflict fails only its own request."""
        results = [self._apply(request) for request in requests]
        if any(not isinstance(r, WrongExpectedVersion) for r in results):
            async with self._appended:
                self._appended.notify_all()
        return results

    def _apply(self, request: AppendRequest) -> int | WrongExpectedVersion:
        for stream, want in request.expected.items():
            have = self._version(stream)
            if have != want:
                return WrongExpectedVersion(stream, want, have)
        recorded_at = self._clock()
        for event in request.events:
            stream = stream_of(event)
            history = self._streams.setdefault(stream, [])
            recorded = RecordedEvent(
                position=len(self._events) + 1,
                stream=stream,
                version=len(history),
                recorded_at=recorded_at,
                event=event,
            )
            self._events.append(recorded)
            history.append(recorded)
        return len(self._events)

    def _version(self, stream: str) -> int:
        history = self._streams.get(stream)
        return NO_STREAM if history is None else len(history) - 1

    async def read(self, after: int = 0, limit: int = 10_000) -> list[RecordedEvent]:
        """Events with ``position > after`` in position order, at most ``limit``."""
        start = max(after, 0)
        return self._events[start : start + max(limit, 0)]

    async def read_events(self, after: int = 0, limit: int = 10_000) -> tuple[int, list[AnyEvent]]:
        """The bare events of :meth:`read` and the position of the last one (``after`` if none)."""
        page = await self.read(after, limit)
        return (page[-1].position if page else after), [r.event for r in page]

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        """All events of one stream in version order."""
        return list(self._streams.get(stream, ()))

    async def stream_version(self, stream: str, at: int | None = None) -> int:
        """The stream's version (as of log position ``at``, if given), or :data:`NO_STREAM`."""
        if at is None:
            return self._version(stream)
        seen = [r.version for r in self._streams.get(stream, ()) if r.position <= at]
        return seen[-1] if seen else NO_STREAM

    async def head(self) -> int:
        """The position of the newest event (0 for an empty log)."""
        return len(self._events)

    async def wait_for_append(self, after: int, timeout: float) -> bool:  # noqa: ASYNC109 (the port's signature)
        """True as soon as the head is past ``after``, False once ``timeout`` passes."""
        async with self._appended:
            try:
                async with asyncio.timeout(timeout):
                    await self._appended.wait_for(lambda: len(self._events) > after)
            except TimeoutError:
                return len(self._events) > after
        return True

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot``; only the newest :data:`SNAPSHOTS_KEPT` of its schema survive."""
        old = self._snapshots.get(snapshot.schema, [])
        kept = [s for s in old if s.position != snapshot.position]
        kept.append(snapshot)
        kept.sort(key=lambda s: s.position)
        self._snapshots[snapshot.schema] = kept[-SNAPSHOTS_KEPT:]

    async def latest_snapshot(self, schema: int) -> Snapshot | None:
        """The newest snapshot written with this state ``schema``, if any."""
        kept = self._snapshots.get(schema)
        return kept[-1] if kept else None


_: type[EventStore] = InMemoryEventStore  # mypy checks the class against the port
