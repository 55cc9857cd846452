"""What both ways of enrolling a node share: the node's events, the errors, a rate window."""

from __future__ import annotations

import uuid
from collections import deque

import attrs

from porten.domain import events as ev
from porten.services.accounts import Accounts
from porten.services.credentials import new_node_credential, token_hash

MAX_CLIENT_NAME = 64


class DeviceFlowError(Exception):
    """An OAuth-style error for the agent: ``error`` is the RFC 6749/8628 code it acts on.

    ``description`` is safe to print on the owner's terminal; ``interval`` is
    the new polling interval after a ``slow_down``.
    """

    def __init__(self, error: str, description: str, *, status: int = 400,
                 interval: int | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.interval = interval


@attrs.frozen
class Enrolled:
    """A node just bound to its owner, and the credential only the agent will ever see."""

    node_id: str
    owner_id: str
    name: str
    credential: str = attrs.field(repr=False)


def clean_client_name(name: str) -> str:
    """A machine's self-chosen name, made safe to keep: printable, trimmed, bounded."""
    printable = "".join(c for c in name if c.isprintable()).strip()
    return printable[:MAX_CLIENT_NAME]


def enrol_events(
    accounts: Accounts, server_secret: bytes, *, owner_id: str, name: str, at: float
) -> tuple[Enrolled, list[ev.AnyEvent]]:
    """A new node of ``owner_id``: its credential and its ``node_enrolled`` event.

    Region and trust class come from the owner's account (operator-set
    defaults), never from the agent.
    """
    region, trust = accounts.node_defaults(owner_id)
    node_id = f"node_{uuid.uuid4().hex[:12]}"
    credential = new_node_credential()
    event = ev.NodeEnrolled(
        at=at, actor=f"user:{owner_id}", node_id=node_id, owner_id=owner_id,
        name=name or node_id, region=region, trust_class=trust,
        credential_hash=token_hash(server_secret, credential),
    )
    return Enrolled(node_id=node_id, owner_id=owner_id, name=event.name,
                    credential=credential), [event]


@attrs.define
class RateWindow:
    """At most ``limit`` hits per key in any ``window_s``: a sliding log, in memory."""

    limit: int
    window_s: float
    _hits: dict[str, deque[float]] = attrs.field(factory=dict)

    def blocked(self, key: str, now: float) -> float:
        """Seconds until ``key`` may hit again (0 when it may now)."""
        hits = self._hits.get(key)
        if hits is None:
            return 0.0
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return 0.0
        return hits[0] + self.window_s - now if len(hits) >= self.limit else 0.0

    def hit(self, key: str, now: float) -> float:
        """Record a hit unless blocked; returns the wait when blocked (0 when recorded)."""
        wait = self.blocked(key, now)
        if wait:
            return wait
        self._hits.setdefault(key, deque()).append(now)
        return 0.0
