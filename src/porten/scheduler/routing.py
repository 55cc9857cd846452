"""Which node serves this request: a pure choice among ready, eligible, online nodes.

The router ranks candidates; the caller tries them in order and moves to
the next only if a node fails before the first byte reached the client.
Ranking is by load (requests open on the hub's link plus the queue the node
reported), then — when the request carries an affinity key (the OpenAI
``user`` field, or a prompt prefix) — the node that key hashes to among the
least-loaded comes first, so a conversation keeps hitting the node whose KV
cache already holds its prefix. Ties break on node id, so the same inputs
always give the same order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import msgspec

from porten.domain.state import FleetState, NodeState
from porten.scheduler.eligibility import Requester, node_admits


class NodeLoad(msgspec.Struct, frozen=True, kw_only=True):
    """What the shell knows about a node's current load."""

    in_flight: int = 0
    queued: int = 0


#: Extra requests a node may carry over the least-loaded one and still keep its affinity.
AFFINITY_SLACK = 2


def _affinity_score(key: str, node_id: str) -> int:
    """Rendezvous hash: each (key, node) pair gets a stable pseudo-random weight."""
    digest = hashlib.blake2b(f"{key}\x00{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def candidates(
    state: FleetState,
    model_id: str,
    requester: Requester,
    loads: Mapping[str, NodeLoad],
    *,
    affinity: str | None = None,
    exclude: frozenset[str] = frozenset(),
) -> list[NodeState]:
    """Online nodes with ``model_id`` ready (not draining) that the requester may use, best first.

    ``loads`` holds only nodes with a live connection: a node the hub has no
    link to is not a candidate whatever the log says. ``exclude`` drops nodes
    already tried for this request.
    """
    ready: list[NodeState] = []
    for node in state.nodes.values():
        if not node.online or node.node_id in exclude or node.node_id not in loads:
            continue
        p = node.placements.get(model_id)
        if p is None or not p.serving or not node_admits(requester, node):
            continue
        ready.append(node)
    if not ready:
        return []

    def load_of(n: NodeState) -> int:
        nl = loads[n.node_id]
        return nl.in_flight + nl.queued

    ready.sort(key=lambda n: (load_of(n), n.node_id))
    if affinity is None or len(ready) == 1:
        return ready
    floor = load_of(ready[0])
    near = [n for n in ready if load_of(n) <= floor + AFFINITY_SLACK]
    preferred = max(near, key=lambda n: (_affinity_score(affinity, n.node_id), n.node_id))
    return [preferred, *(n for n in ready if n is not preferred)]
