"""The fold's promises, for any history: replay, snapshots, codecs and the state's invariants.

The invariants below are what the router and planner rely on without checking:
an authenticated key is an active key, a node that cannot be reached has no
load in flight, a node's region and trust class move only by operator events.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import immutables
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from msgspec.structs import replace

from porten.domain import events as ev
from porten.domain.codec import decode_event, encode_event
from porten.domain.fold import evolve, fold
from porten.domain.snapshot import decode_state, encode_state
from porten.domain.state import DEMAND_HISTORY, EMPTY, FleetState, NodeState
from porten.domain.values import CatalogEntry, KeyPolicy

# tests/ holds the shared strategies module; put it on the path however pytest was started.
_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import strategies as gen  # noqa: E402

#: Properties of single events: cheap to generate, so many examples.
CHEAP = settings(max_examples=200, deadline=None)
#: Properties of whole histories: each example draws dozens of events.
HISTORY = settings(max_examples=75, deadline=None)
_OPERATOR_EVENTS: frozenset[type[ev.Event]] = frozenset(
    {ev.NodeEnrolled, ev.NodeRegionSet, ev.NodeTrustClassSet}
)


# --- invariants (shared by the properties and the state machine) ------------------------------


def assert_keys_index_consistent(state: FleetState) -> None:
    """``keys_by_hash`` indexes exactly the active keys, each under its own hash."""
    for secret_hash, key_id in state.keys_by_hash.items():
        key = state.keys.get(key_id)
        assert key is not None, f"hash {secret_hash!r} points at unknown key {key_id!r}"
        assert key.active, f"hash {secret_hash!r} points at revoked key {key_id!r}"
        assert key.secret_hash == secret_hash, f"key {key_id!r} indexed under a foreign hash"
    for key in state.keys.values():
        if key.active:
            found = state.keys_by_hash.get(key.secret_hash)
            assert found == key.key_id, f"active key {key.key_id!r} authenticates as {found!r}"


def assert_credentials_index_consistent(state: FleetState) -> None:
    """``nodes_by_credential`` indexes exactly the enrolled nodes that have a credential."""
    for credential_hash, node_id in state.nodes_by_credential.items():
        node = state.nodes.get(node_id)
        assert node is not None, f"credential {credential_hash!r} points at unknown {node_id!r}"
        assert node.credential_hash == credential_hash, f"{node_id!r} under a foreign credential"
    for node in state.nodes.values():
        if node.credential_hash:
            found = state.nodes_by_credential.get(node.credential_hash)
            assert found == node.node_id, f"node {node.node_id!r} authenticates as {found!r}"


def assert_no_pending_load_offline(state: FleetState) -> None:
    """An offline node holds only ready placements: loads in flight die with the connection."""
    for node in state.nodes.values():
        if not node.online:
            pending = {m: p.phase for m, p in node.placements.items() if p.phase != "ready"}
            assert not pending, f"offline node {node.node_id!r} has loads in flight: {pending}"


def assert_placements_keyed_by_model(state: FleetState) -> None:
    """Each placement is stored under its own model id."""
    for node in state.nodes.values():
        for model_id, p in node.placements.items():
            assert p.model_id == model_id


def assert_demand_bounded(state: FleetState) -> None:
    """Each model keeps at most ``DEMAND_HISTORY`` demand windows."""
    for d in state.demand.values():
        assert len(d.windows) <= DEMAND_HISTORY


def assert_users_index_consistent(state: FleetState) -> None:
    """``users_by_email`` indexes every account exactly once, under its lower-cased email."""
    for email, user_id in state.users_by_email.items():
        user = state.users.get(user_id)
        assert user is not None, f"email {email!r} points at unknown user {user_id!r}"
        assert user.email == email == email.lower(), f"{user_id!r} indexed under a foreign email"
    for user in state.users.values():
        assert state.users_by_email.get(user.email) == user.user_id, user.user_id


def assert_invariants(state: FleetState) -> None:
    """Every invariant of a folded state."""
    assert_keys_index_consistent(state)
    assert_users_index_consistent(state)
    assert_credentials_index_consistent(state)
    assert_no_pending_load_offline(state)
    assert_placements_keyed_by_model(state)
    assert_demand_bounded(state)


def assert_region_trust_change_explained(
    before: FleetState, after: FleetState, event: ev.AnyEvent
) -> None:
    """A node's region/trust class changed only through an operator event about that node."""
    for node_id, old in before.nodes.items():
        new = after.nodes.get(node_id)
        if new is None or (new.region, new.trust_class) == (old.region, old.trust_class):
            continue
        assert type(event) in _OPERATOR_EVENTS, (
            f"{type(event).__name__} moved node {node_id!r} from "
            f"{(old.region, old.trust_class)} to {(new.region, new.trust_class)}"
        )
        assert getattr(event, "node_id", None) == node_id


# --- the strategies module covers the schema --------------------------------------------------


def test_every_event_type_has_a_strategy() -> None:
    """Adding an event type without a strategy in tests/strategies.py fails here."""
    assert set(gen.EVENT_STRATEGIES) == set(ev.EVENT_TYPES)


@pytest.mark.parametrize(
    "cls", [*ev.EVENT_TYPES, CatalogEntry, KeyPolicy], ids=lambda c: c.__name__
)
def test_every_field_is_generated(cls: type[Any]) -> None:
    """Adding a field to an event or value without generating it in tests/strategies.py fails."""
    gen.any_event()  # builds (and so registers) every strategy
    assert gen.FIELDS_GENERATED.get(cls) == frozenset(cls.__struct_fields__)


@HISTORY
@given(events=gen.event_sequences())
def test_generated_histories_are_ordered_in_time(events: list[ev.AnyEvent]) -> None:
    """Generated histories never go back in time and stay in the sane window."""
    times = [e.at for e in events]
    assert times == sorted(times)
    assert all(gen.T0 <= t < gen.T0 + 1e7 for t in times)


# --- replay -----------------------------------------------------------------------------------


@HISTORY
@given(events=gen.event_sequences(), data=st.data())
def test_fold_in_two_halves_equals_fold_in_one_go(events: list[ev.AnyEvent], data: Any) -> None:
    """Folding a prefix and then the rest onto it gives the state of the whole fold."""
    cut = data.draw(st.integers(0, len(events)), label="cut")
    assert fold(events[cut:], fold(events[:cut])) == fold(events)


@HISTORY
@given(events=gen.event_sequences(), data=st.data())
def test_snapshot_plus_tail_equals_full_fold(events: list[ev.AnyEvent], data: Any) -> None:
    """Restoring a snapshot of a prefix and folding the tail onto it equals the full fold."""
    cut = data.draw(st.integers(0, len(events)), label="cut")
    restored = decode_state(encode_state(fold(events[:cut])))
    assert fold(events[cut:], restored) == fold(events)


@HISTORY
@given(events=gen.event_sequences())
def test_fold_is_deterministic(events: list[ev.AnyEvent]) -> None:
    """Folding the same history twice gives equal states and equal snapshot bytes."""
    first, second = fold(events), fold(list(events))
    assert first == second
    assert encode_state(first) == encode_state(second)


@HISTORY
@given(events=gen.event_sequences(), extra=gen.event_sequences(max_size=10))
def test_events_folded_counts_every_event(
    events: list[ev.AnyEvent], extra: list[ev.AnyEvent]
) -> None:
    """``events_folded`` is the number of events folded, unknown-entity ones included."""
    state = fold(events)
    assert state.events_folded == len(events)
    assert fold(extra, state).events_folded == len(events) + len(extra)


@HISTORY
@given(events=gen.event_sequences(), event=gen.any_event())
def test_evolve_is_total(events: list[ev.AnyEvent], event: ev.AnyEvent) -> None:
    """``evolve`` accepts any event on any reachable state, even out of order or unknown."""
    state = fold(events)
    after = evolve(state, event)
    assert isinstance(after, FleetState)
    assert after.events_folded == state.events_folded + 1


@CHEAP
@given(event=gen.any_event())
def test_evolve_is_total_on_the_empty_state(event: ev.AnyEvent) -> None:
    """An event about entities that do not exist changes nothing but the count (or creates them)."""
    after = evolve(EMPTY, event)
    assert after.events_folded == 1
    assert_invariants(after)


# --- codecs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ev.EVENT_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_event_codec_round_trips(cls: type[ev.Event], data: Any) -> None:
    """Every event type decodes to an equal event, and re-encodes to the same bytes."""
    make = gen.EVENT_STRATEGIES.get(cls)
    assert make is not None, f"no strategy for {cls.__name__}"
    event = data.draw(make(), label="event")
    raw = encode_event(event)
    back = decode_event(raw)
    assert type(back) is cls
    assert back == event
    assert encode_event(back) == raw
    assert json.loads(raw)["type"] == ev.event_type(event)


@HISTORY
@given(events=gen.event_sequences())
def test_state_snapshot_round_trips(events: list[ev.AnyEvent]) -> None:
    """``decode_state(encode_state(s)) == s``, and encoding the copy gives the same bytes."""
    state = fold(events)
    raw = encode_state(state)
    back = decode_state(raw)
    assert back == state
    assert encode_state(back) == raw


def _shuffled_map(m: immutables.Map[str, Any], rnd: random.Random) -> immutables.Map[str, Any]:
    items = list(m.items())
    rnd.shuffle(items)
    out: immutables.Map[str, Any] = immutables.Map()
    for k, v in items:
        out = out.set(k, v)
    return out


def _rebuilt(state: FleetState, rnd: random.Random) -> FleetState:
    """An equal state whose maps and sets were built in another order."""

    def node(n: NodeState) -> NodeState:
        on_disk = list(n.on_disk)
        rnd.shuffle(on_disk)
        return replace(
            n,
            placements=_shuffled_map(n.placements, rnd),
            failures=_shuffled_map(n.failures, rnd),
            on_disk=frozenset(on_disk),
        )

    maps = {
        name: _shuffled_map(value, rnd)
        for name in state.__struct_fields__
        if isinstance(value := getattr(state, name), immutables.Map)
    }
    nodes = immutables.Map({k: node(v) for k, v in state.nodes.items()})
    return replace(state, **{**maps, "nodes": _shuffled_map(nodes, rnd)})


@HISTORY
@given(events=gen.event_sequences(), rnd=st.randoms(use_true_random=False))
def test_equal_states_encode_to_equal_bytes(events: list[ev.AnyEvent], rnd: random.Random) -> None:
    """Two equal states built in different orders snapshot to the same bytes."""
    state = fold(events)
    other = _rebuilt(state, rnd)
    assert other == state
    assert encode_state(other) == encode_state(state)


_FIXED_HISTORY = (
    [
        ev.NodeEnrolled(at=1.0, actor="hub", node_id=f"node-{i}", owner_id="u1", region="eu")
        for i in range(12)
    ]
    + [
        ev.ModelOffered(
            at=2.0,
            actor="user:u1",
            model=CatalogEntry(
                id=f"model-{i}", vram_mb=100 * i + 1, disk_mb=10, engine_hints={"b": "1", "a": "2"}
            ),
        )
        for i in range(12)
    ]
    + [
        ev.NodeCapabilitiesReported(
            at=3.0,
            actor="node:node-1",
            node_id="node-1",
            engine="sim",
            provisionable=True,
            vram_total_mb=1000,
            vram_budget_mb=900,
            disk_budget_mb=5000,
            models_on_disk=tuple(f"model-{i}" for i in range(12)),
            models_loaded=("model-3", "model-1", "model-2"),
        ),
        ev.KeyCreated(at=4.0, actor="user:u1", key_id="k1", owner_id="u1", secret_hash="h1"),
        ev.KeyCreated(at=4.0, actor="user:u1", key_id="k2", owner_id="u1", secret_hash="h2"),
    ]
)

_SNAPSHOT_IN_SUBPROCESS = """
import sys
from porten.domain.codec import decode_event
from porten.domain.fold import fold
from porten.domain.snapshot import encode_state
events = [decode_event(line) for line in sys.stdin.read().splitlines()]
sys.stdout.write(encode_state(fold(events)).hex())
"""


def test_snapshot_bytes_do_not_depend_on_the_hash_seed() -> None:
    """Processes with different string-hash seeds write identical snapshot bytes."""
    lines = "\n".join(encode_event(e).decode() for e in _FIXED_HISTORY)
    here = encode_state(fold(_FIXED_HISTORY)).hex()
    for seed in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-c", _SNAPSHOT_IN_SUBPROCESS],
            input=lines,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.stdout == here, f"snapshot differs under PYTHONHASHSEED={seed}"


# --- invariants after any history -------------------------------------------------------------


@HISTORY
@given(events=gen.event_sequences())
def test_invariants_hold_after_any_history(events: list[ev.AnyEvent]) -> None:
    """Every invariant holds after any plausible history."""
    assert_invariants(fold(events))


@HISTORY
@given(events=gen.event_sequences())
def test_region_and_trust_change_only_by_operator_events(events: list[ev.AnyEvent]) -> None:
    """No event but NodeEnrolled/NodeRegionSet/NodeTrustClassSet moves a node's region or trust."""
    state = EMPTY
    for e in events:
        after = evolve(state, e)
        assert_region_trust_change_explained(state, after, e)
        state = after


@HISTORY
@given(events=gen.event_sequences(), report=gen.node_capabilities_reported())
def test_capabilities_report_never_moves_region_or_trust(
    events: list[ev.AnyEvent], report: ev.NodeCapabilitiesReported
) -> None:
    """A capabilities report leaves every node's region and trust class as they were."""
    state = fold(events)
    after = evolve(state, report)
    for node_id, old in state.nodes.items():
        assert (after.nodes[node_id].region, after.nodes[node_id].trust_class) == (
            old.region,
            old.trust_class,
        )


@settings(max_examples=30, deadline=None)
@given(
    windows=st.lists(
        gen.demand_observed(), min_size=DEMAND_HISTORY - 5, max_size=2 * DEMAND_HISTORY
    )
)
def test_demand_keeps_only_the_newest_windows(windows: list[ev.DemandObserved]) -> None:
    """A model keeps at most ``DEMAND_HISTORY`` windows, and they are the newest ones."""
    events = [replace(e, model_id="m1") for e in windows]
    state = fold(events)
    kept = state.demand["m1"].windows
    assert len(kept) == min(len(events), DEMAND_HISTORY)
    assert [w.start for w in kept] == [e.window_start for e in events[-DEMAND_HISTORY:]]


# --- the stateful machine (raiden-style) ------------------------------------------------------


class FoldMachine(RuleBasedStateMachine):
    """Applies events one at a time; the incremental state must always equal the full fold."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[ev.AnyEvent] = []
        self.state: FleetState = EMPTY
        self.clock = gen.T0

    def _apply(self, event: ev.AnyEvent, gap: float) -> None:
        self.clock += gap
        event = replace(event, at=self.clock)
        before = self.state
        self.state = evolve(before, event)
        self.events.append(event)
        assert_region_trust_change_explained(before, self.state, event)

    @rule(event=gen.any_event(), gap=gen.gaps())
    def apply_any(self, event: ev.AnyEvent, gap: float) -> None:
        """Any event at all."""
        self._apply(event, gap)

    @rule(event=gen.setup_event(), gap=gen.gaps())
    def apply_setup(self, event: ev.AnyEvent, gap: float) -> None:
        """Enrol or connect a node, offer a model, create a key."""
        self._apply(event, gap)

    @rule(data=st.data(), gap=gen.gaps())
    def apply_follow_up(self, data: Any, gap: float) -> None:
        """An event about what the state holds: a current session, a load in flight, a key."""
        self._apply(data.draw(gen.follow_ups(self.state), label="follow-up"), gap)

    @precondition(lambda self: bool(self.events))
    @rule()
    def restart_from_snapshot(self) -> None:
        """The hub restarts from a snapshot of its current state."""
        self.state = decode_state(encode_state(self.state))

    @invariant()
    def incremental_equals_full_fold(self) -> None:
        """Folding one event at a time equals folding the whole log."""
        assert self.state == fold(self.events)

    @invariant()
    def counts_every_event(self) -> None:
        """``events_folded`` is the length of the log."""
        assert self.state.events_folded == len(self.events)

    @invariant()
    def state_invariants(self) -> None:
        """Key and credential indexes, no pending load offline, bounded demand."""
        assert_invariants(self.state)


FoldMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestFoldMachine = FoldMachine.TestCase
