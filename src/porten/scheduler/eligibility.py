"""Which nodes a key's request may ever touch: the one filter both router and placer use.

Fail-closed by construction: every candidate node for serving *or* loading
passes through :func:`node_admits`, and a node that fails any constraint is
simply absent from the candidates — there is no "fall back to everyone"
branch anywhere. Region and trust class come from the log (operator-set),
never from what an agent reports.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from porten.domain.state import FleetState, NodeState, trust_admits
from porten.domain.values import KeyPolicy


class Requester(msgspec.Struct, frozen=True, kw_only=True):
    """Who is asking: the key's owner and its policy (an empty policy admits everything)."""

    owner_id: str
    policy: KeyPolicy = KeyPolicy()


def model_allowed(requester: Requester, model_id: str) -> bool:
    """Whether the key may use ``model_id`` at all (its allowed-models list)."""
    allowed = requester.policy.models
    return not allowed or model_id in allowed


def node_admits(requester: Requester, node: NodeState) -> bool:
    """Whether ``node`` satisfies every node constraint of the requester's policy."""
    policy = requester.policy
    if policy.regions and node.region not in policy.regions:
        return False
    if not trust_admits(policy.min_trust, node.trust_class):
        return False
    return not (policy.fleet == "own" and node.owner_id != requester.owner_id)


def why_not(requester: Requester, node: NodeState) -> str:
    """The first constraint ``node`` fails, in words ("" if it satisfies them all)."""
    policy = requester.policy
    if policy.regions and node.region not in policy.regions:
        return f"node {node.node_id} is in region {node.region or '(none)'}"
    if not trust_admits(policy.min_trust, node.trust_class):
        return f"node {node.node_id} is {node.trust_class}, below {policy.min_trust}"
    if policy.fleet == "own" and node.owner_id != requester.owner_id:
        return f"node {node.node_id} belongs to another account"
    return ""


def eligible_nodes(state: FleetState, requester: Requester) -> list[NodeState]:
    """Every node the requester may use (online or not), sorted by node id."""
    return sorted(
        (n for n in state.nodes.values() if node_admits(requester, n)),
        key=lambda n: n.node_id,
    )


def admitted(requester: Requester, nodes: Iterable[NodeState]) -> list[NodeState]:
    """``nodes`` filtered by the requester's policy, order kept."""
    return [n for n in nodes if node_admits(requester, n)]
