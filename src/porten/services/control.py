"""What a service that changes the fleet needs: the folded state, and a commit that waits for it.

Accounts, keys and admin actions all follow one pattern: read the state,
decide, append events (with expected stream versions where a decision must
not race another), then wait until the projection has folded them, so the
caller reads its own write. :class:`ControlLog` is that pattern over a
:class:`~porten.services.projection.FleetProjection` and any append
function: the hub passes its batching writer's, the CLI the store's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import attrs

from porten.domain.events import AdminActionTaken, AnyEvent
from porten.domain.state import FleetState
from porten.services.projection import FleetProjection

#: How long a commit waits for the projection to fold what it appended.
COMMIT_WAIT_S = 30.0

Append = Callable[[Sequence[AnyEvent], Mapping[str, int] | None], Awaitable[int]]


class Log(Protocol):
    """Reads the folded fleet state and commits events to the log."""

    @property
    def state(self) -> FleetState:
        """The fleet state as folded so far."""
        ...

    async def commit(
        self, events: Sequence[AnyEvent], expected: Mapping[str, int] | None = None
    ) -> FleetState:
        """Append ``events`` atomically and return the state once it includes them."""
        ...


class CommitTimedOut(RuntimeError):
    """The events were appended but the projection did not fold them in time."""


@attrs.define
class ControlLog:
    """:class:`Log` over a projection and an append function."""

    projection: FleetProjection
    append: Append

    @property
    def state(self) -> FleetState:
        """The projection's state."""
        return self.projection.state

    async def commit(
        self, events: Sequence[AnyEvent], expected: Mapping[str, int] | None = None
    ) -> FleetState:
        """Append, then wait for the fold (raises the store's ``WrongExpectedVersion``)."""
        position = await self.append(list(events), expected)
        if not await self.projection.wait_until(position, timeout=COMMIT_WAIT_S):
            raise CommitTimedOut(
                f"appended up to position {position} but the state did not reach it in "
                f"{COMMIT_WAIT_S:g} s"
            )
        return self.projection.state


def audited(
    events: Sequence[AnyEvent], *, at: float, actor: str, action: str, target: str,
    **detail: str,
) -> list[AnyEvent]:
    """``events`` preceded by the ``admin_action_taken`` that records who did it and why.

    Both are appended in one transaction, so the audit trail
    (``porten events list --type admin``) has exactly the changes that happened.
    ``detail`` must never hold a secret: names, ids, policies and reasons only.
    """
    return [
        AdminActionTaken(at=at, actor=actor, action=action, target=target, detail=dict(detail)),
        *events,
    ]
