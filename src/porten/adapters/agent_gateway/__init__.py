"""The hub's end of the agent connection: one WebSocket per node, many requests on it.

A node's agent dials ``GET /agent/v1/connect`` with its credential and
keeps the connection open (nodes sit behind NAT; the hub cannot dial them).
:class:`AgentGateway` authenticates it against the fleet state, records its
connection and what it reports as events, and keeps a :class:`NodeLink` per
node for the rest of the hub: the router opens an :class:`Exchange` per
request on a link, the planner sends load and unload commands through it.

The wire contract is :mod:`porten.protocol`; this package adds the hub's
rules: the node's identity comes from the log (never from the hello), a
node has at most one live link, a misbehaving agent loses only its own
connection, and every end of a connection is recorded.
"""

from porten.adapters.agent_gateway._exchange import EngineFailed, Exchange, NodeGone
from porten.adapters.agent_gateway._gateway import HELLO_TIMEOUT_S, AgentGateway, GatewayDeps
from porten.adapters.agent_gateway._link import NodeLink

__all__ = [
    "HELLO_TIMEOUT_S",
    "AgentGateway",
    "EngineFailed",
    "Exchange",
    "GatewayDeps",
    "NodeGone",
    "NodeLink",
]
