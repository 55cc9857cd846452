"""Accounts, keys with policies, and nodes placed by region/trust/owner, on a ``v1_harness`` hub.

Keys are minted through the hub's own services (the same calls the admin API
makes); nodes are real agents over real WebSockets, enrolled for an owner
and placed by operator events — never by what the agent says.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

from v1_harness import FAST, Porten, sim_model

from porten.agent.connection import Agent
from porten.agent.engines.sim import SimProfile
from porten.agent.engines.sim_engine import SimEngine
from porten.agent.settings import AgentSettings
from porten.domain import events as ev
from porten.domain.values import KeyPolicy, TrustClass
from porten.services.accounts import Account
from porten.services.credentials import new_node_credential, token_hash

PASSWORD = "a long enough password"


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


async def account(porten: Porten, email: str, *, operator: bool = False) -> Account:
    """A new account on the hub."""
    return await porten.hub.accounts.create_user(email, PASSWORD, operator=operator,
                                                 actor="test")


async def key_for(porten: Porten, owner: Account, policy: KeyPolicy | None = None,
                  name: str = "test") -> str:
    """A new key of ``owner`` with ``policy``; its token."""
    minted = await porten.hub.keys.create(owner_id=owner.user_id, name=name,
                                          policy=policy or KeyPolicy(), actor="test")
    return minted.token


async def keyed_account(porten: Porten, email: str, policy: KeyPolicy | None = None,
                        *, operator: bool = False) -> tuple[Account, str]:
    """A new account and one key of it."""
    a = await account(porten, email, operator=operator)
    return a, await key_for(porten, a, policy)


async def enrol(porten: Porten, node_id: str, *, owner_id: str = "local", region: str = "",
                trust_class: TrustClass = "community") -> str:
    """Enrol ``node_id`` for ``owner_id`` in ``region`` with ``trust_class``; its credential."""
    credential = new_node_credential()
    position = await porten.hub.writer.append([ev.NodeEnrolled(
        at=time.time(), actor="test", node_id=node_id, owner_id=owner_id, name=node_id,
        region=region, trust_class=trust_class,
        credential_hash=token_hash(porten.hub.server_secret, credential),
    )])
    assert await porten.hub.projection.wait_until(position, 10.0)
    return credential


@contextlib.asynccontextmanager
async def placed_node(
    porten: Porten, node_id: str, models: Sequence[str], *, owner_id: str = "local",
    region: str = "", trust_class: TrustClass = "community", profile: SimProfile = FAST,
) -> AsyncIterator[SimEngine]:
    """A sim node enrolled for ``owner_id`` in ``region``/``trust_class``, serving ``models``."""
    credential = await enrol(porten, node_id, owner_id=owner_id, region=region,
                             trust_class=trust_class)
    engine = SimEngine(profile, preloaded=[sim_model(m) for m in models])
    agent = Agent(AgentSettings(hub_url=porten.url, credential=credential), engine)
    task = asyncio.create_task(agent.run(), name=f"agent-{node_id}")
    try:
        for model in models:
            await porten.until_serving(node_id, model)
        yield engine
    finally:
        await agent.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
