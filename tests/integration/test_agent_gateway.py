"""The agent connection's lifecycle: who may connect, what is recorded, who gets dropped."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from structlog.testing import capture_logs

from porten.agent.engines.sim import SimModel
from porten.agent.engines.sim_engine import SimEngine
from porten.domain import events as ev
from porten.protocol import (
    CLOSE_REPLACED,
    CLOSE_SILENT,
    CLOSE_VERSION_MISMATCH,
    PROTOCOL_VERSION,
    HubCancel,
    encode,
)
from porten.services.credentials import new_node_credential

sys.path.insert(0, str(Path(__file__).parent))
from agent_harness import (
    CHAT,
    FAST,
    Hub,
    chat_request,
    content_of,
    eventually,
    exchange_body,
    expected_content,
    hello_frame,
    raw_session,
    running_agent,
    running_hub,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
async def hub(database_url: str) -> AsyncIterator[Hub]:
    """A gateway with default settings on a fresh log."""
    async with running_hub(database_url) as h:
        yield h


def sim_engine(*models: str) -> SimEngine:
    """A fast sim engine serving ``models``."""
    return SimEngine(FAST, preloaded=[SimModel(id=m) for m in models], vram_budget_mb=8000)


async def test_connect_records_the_session_and_opens_a_link(hub: Hub) -> None:
    """A connecting agent learns its node id; NodeConnected and its inventory are logged."""
    credential = await hub.enrol("n1")
    async with running_agent(hub, credential, sim_engine(CHAT.id)) as agent:
        link = await hub.live_link("n1")
        assert (agent.node_id, agent.session_id) == ("n1", link.session_id)
        connected = await hub.events(ev.NodeConnected)
        caps = await hub.events(ev.NodeCapabilitiesReported)
        assert [(e.node_id, e.session_id, e.actor) for e in connected] == [
            ("n1", link.session_id, "node:n1")
        ]
        assert caps[0].engine == "sim"
        assert caps[0].provisionable
        assert caps[0].models_loaded == (CHAT.id,)
        node = hub.projection.state.nodes["n1"]
        await eventually(lambda: hub.projection.state.nodes["n1"].online, what="node online")
        assert node.region == "eu-west"


async def test_bad_credentials_get_401_before_upgrade_and_leave_no_trace(hub: Hub) -> None:
    """Bad or unknown credentials get a JSON 401; no event, and no log line holds them."""
    await hub.enrol("n1")
    unknown = "pn-node-" + "A" * 38  # malformed: the checksum does not match
    well_formed_unknown = new_node_credential()
    async with aiohttp.ClientSession() as http:
        for credential in (unknown, well_formed_unknown, ""):
            with capture_logs() as logs:
                headers = {"Authorization": f"Bearer {credential}"}
                async with http.get(hub.url + "/agent/v1/connect", headers=headers) as resp:
                    assert resp.status == 401
                    body = await resp.json()
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(hub.connect_url, headers=headers)
                assert refused.value.status == 401
            assert body["error"]["code"] == "invalid_node_credential"
            assert logs
            assert all(credential not in str(entry) for entry in logs if credential)
    assert [type(e) for e in await hub.events(ev.Event)] == [ev.NodeEnrolled]


async def test_reconnect_is_the_same_node_in_a_new_session(hub: Hub) -> None:
    """After a drop the agent reconnects by itself: same node, new session, one live link."""
    credential = await hub.enrol("n1")
    async with running_agent(hub, credential, sim_engine(CHAT.id)) as agent:
        first = await hub.live_link("n1")
        await first.close("simulated network drop")
        second = await hub.live_link("n1", not_session=first.session_id)
        await eventually(lambda: agent.session_id == second.session_id, what="agent welcomed")
        assert list(hub.gateway.links()) == ["n1"]
        status, body = await exchange_body(second, request := chat_request("hi", stream=False))
        assert status == 200
        assert content_of(body, stream=False) == expected_content(request, FAST)
        assert await hub.sessions() == [
            ("connected", first.session_id),
            ("disconnected", first.session_id),
            ("connected", second.session_id),
        ]
        await hub.projection.wait_until(await hub.store.head(), 5.0)
        node = hub.projection.state.nodes["n1"]
        assert node.online
        assert node.session_id == second.session_id


async def test_a_second_connection_replaces_the_first(hub: Hub) -> None:
    """A second connection replaces the first, whose end is recorded before the new start."""
    credential = await hub.enrol("n1")
    async with (
        raw_session(hub, credential) as (old_ws, old),
        raw_session(hub, credential) as (_, new),
    ):
        msg = await old_ws.receive(timeout=5.0)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == CLOSE_REPLACED
        assert new.node_id == old.node_id == "n1"
        assert new.session_id != old.session_id
        link = hub.gateway.link("n1")
        assert link is not None
        assert link.session_id == new.session_id
        assert await hub.sessions() == [
            ("connected", old.session_id),
            ("disconnected", old.session_id),
            ("connected", new.session_id),
        ]


async def test_hello_claims_of_identity_region_and_trust_are_ignored(hub: Hub) -> None:
    """Region, trust class, owner or node id in a hello change nothing: the log decides."""
    credential = await hub.enrol("n1", region="eu-west")
    inventory = msgspec.msgpack.decode(hello_frame())["inventory"]
    forged = msgspec.msgpack.encode(
        {
            "t": "AgentHello",
            "protocol": PROTOCOL_VERSION,
            "agent_version": "forged",
            "inventory": {**inventory, "region": "us-east", "trust_class": "confidential"},
            "node_id": "someone-else",
            "region": "us-east",
            "trust_class": "confidential",
            "owner_id": "mallory",
        }
    )
    async with raw_session(hub, credential, forged) as (_, welcome):
        assert welcome.node_id == "n1"
        await eventually(lambda: hub.projection.state.nodes["n1"].online, what="online")
        node = hub.projection.state.nodes["n1"]
        assert (node.region, node.trust_class, node.owner_id) == ("eu-west", "community", "owner-1")
        assert set(hub.projection.state.nodes) == {"n1"}


async def test_another_protocol_version_is_refused_with_its_own_close_code(hub: Hub) -> None:
    """An agent of another major version is closed with a clear reason and never recorded."""
    credential = await hub.enrol("n1")
    hello = msgspec.msgpack.decode(hello_frame())
    headers = {"Authorization": f"Bearer {credential}"}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(hub.connect_url, headers=headers) as ws,
    ):
        await ws.send_bytes(msgspec.msgpack.encode({**hello, "protocol": PROTOCOL_VERSION + 1}))
        msg = await ws.receive(timeout=5.0)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == CLOSE_VERSION_MISMATCH
    assert "unsupported" in (msg.extra or "")
    assert await hub.events(ev.NodeConnected) == []


async def test_a_connection_without_a_hello_is_closed(database_url: str) -> None:
    """An upgrade followed by silence is closed once the hello deadline passes, unrecorded."""
    async with running_hub(database_url, hello_timeout_s=0.2) as hub:
        credential = await hub.enrol("n1")
        headers = {"Authorization": f"Bearer {credential}"}
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(hub.connect_url, headers=headers) as ws,
        ):
            msg = await ws.receive(timeout=5.0)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.POLICY_VIOLATION
        assert "no hello" in (msg.extra or "")
        assert await hub.events(ev.NodeConnected) == []


@pytest.mark.parametrize(
    ("kind", "frame"),
    [
        pytest.param("not msgpack", b"\xc1\xc1 not msgpack", id="not-msgpack"),
        pytest.param("foreign", encode(HubCancel(request_id="r1")), id="not-an-agent-message"),
        pytest.param("text", "a text frame", id="text"),
        pytest.param("oversized", b"\x00" * (64 * 1024 + 1), id="oversized"),
    ],
)
async def test_a_bad_frame_drops_only_that_connection(
    database_url: str, kind: str, frame: bytes | str
) -> None:
    """Malformed, foreign, text or oversized frames drop the sender; other nodes keep serving."""
    async with running_hub(database_url, max_frame_bytes=64 * 1024) as hub:
        bad, good = await hub.enrol("bad"), await hub.enrol("good")
        async with running_agent(hub, good, sim_engine(CHAT.id)):
            async with raw_session(hub, bad) as (ws, _):
                await (ws.send_str(frame) if isinstance(frame, str) else ws.send_bytes(frame))
                msg = await ws.receive(timeout=5.0)
                assert msg.type is aiohttp.WSMsgType.CLOSE, (kind, msg)
            [gone] = await hub.await_events(ev.NodeDisconnected, node_id="bad")
            assert hub.gateway.link("bad") is None
            assert gone.reason, kind
            link = hub.gateway.link("good")
            assert link is not None
            status, body = await exchange_body(link, request := chat_request("ok?", stream=True))
            assert status == 200
            assert content_of(body, stream=True) == expected_content(request, FAST)


async def test_a_silent_agent_is_closed_after_three_heartbeats(database_url: str) -> None:
    """An agent that answers pings but sends nothing is closed with the silence code."""
    async with running_hub(database_url, heartbeat_s=0.2) as hub:
        credential = await hub.enrol("n1")
        async with raw_session(hub, credential) as (ws, welcome):
            assert welcome.heartbeat_s == 0.2
            msg = await ws.receive(timeout=5.0)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == CLOSE_SILENT
        [gone] = await hub.await_events(ev.NodeDisconnected)
        assert hub.gateway.link("n1") is None
        assert "sent nothing" in gone.reason


async def test_hub_shutdown_closes_and_records_every_link(database_url: str) -> None:
    """``aclose`` closes each agent's link and records a NodeDisconnected for it."""
    async with running_hub(database_url) as hub:
        credentials = [await hub.enrol(n) for n in ("n1", "n2")]
        async with (
            running_agent(hub, credentials[0], sim_engine()),
            running_agent(hub, credentials[1], sim_engine()),
        ):
            await hub.gateway.aclose()
            assert hub.gateway.links() == {}
            gone = await hub.events(ev.NodeDisconnected)
            assert sorted((e.node_id, e.reason) for e in gone) == [
                ("n1", "the hub is shutting down"),
                ("n2", "the hub is shutting down"),
            ]
