"""What ``porten up`` needs on a fresh data dir: a catalog, a local node and an API key.

Idempotent: a second ``porten up`` on the same data dir reuses the node and
the key it made the first time (kept in ``<data_dir>/local/``, readable only
by the user), so an exported ``PORTEN_API_KEY`` keeps working across
restarts. Everything it changes is an event with actor ``porten-up``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs

from porten.domain import events as ev
from porten.domain.values import CatalogEntry, KeyPolicy
from porten.services.credentials import (
    API_KEY_PREFIX,
    NODE_CREDENTIAL_PREFIX,
    display_prefix,
    new_api_key,
    new_node_credential,
    token_hash,
    well_formed,
)
from porten.services.projection import FleetProjection
from porten.services.writer import BatchingWriter

ACTOR: Final = "porten-up"
LOCAL_OWNER: Final = "local"
LOCAL_NODE: Final = "local"
LOCAL_REGION: Final = "local"


@attrs.frozen
class LocalSetup:
    """The local node's credential and the API key ``porten up`` prints."""

    node_id: str
    node_credential: str = attrs.field(repr=False)
    api_key: str = attrs.field(repr=False)


def _read_secret(path: Path, prefix: str) -> str | None:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    return token if well_formed(token, prefix) else None


def _write_secret(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    tmp.replace(path)


async def ensure_local_setup(
    *,
    data_dir: Path,
    server_secret: bytes,
    writer: BatchingWriter,
    projection: FleetProjection,
    catalog: Sequence[CatalogEntry],
    refresh: Sequence[CatalogEntry] = (),
) -> LocalSetup:
    """Offer ``catalog``, enrol the local node and mint the local key, as needed.

    Entries of ``refresh`` are also offered, and updated when the log holds
    another version of them (their ``download_ref`` names this run's port);
    ``catalog`` entries an operator changed are left as the operator left them.
    """
    state = projection.state
    now = time.time()
    todo: list[ev.AnyEvent] = [
        ev.ModelOffered(at=now, actor=ACTOR, model=entry)
        for entry in [*catalog, *refresh]
        if (c := state.catalog.get(entry.id)) is None or not c.offered
    ]
    todo += [
        ev.ModelUpdated(at=now, actor=ACTOR, model=entry)
        for entry in refresh
        if (c := state.catalog.get(entry.id)) is not None and c.offered and c.entry != entry
    ]

    cred_path = data_dir / "local" / "node-credential"
    credential = _read_secret(cred_path, NODE_CREDENTIAL_PREFIX)
    node = state.nodes.get(LOCAL_NODE)
    if credential is None or node is None or (
        node.credential_hash != token_hash(server_secret, credential)
    ):
        credential = new_node_credential()
        _write_secret(cred_path, credential)
        todo.append(ev.NodeEnrolled(
            at=now, actor=ACTOR, node_id=LOCAL_NODE, owner_id=LOCAL_OWNER, name="this machine",
            region=LOCAL_REGION, trust_class="trusted",
            credential_hash=token_hash(server_secret, credential),
        ))

    key_path = data_dir / "local" / "api-key"
    api_key = _read_secret(key_path, API_KEY_PREFIX)
    key_id = state.keys_by_hash.get(token_hash(server_secret, api_key)) if api_key else None
    if api_key is None or key_id is None:
        api_key = new_api_key()
        _write_secret(key_path, api_key)
        todo.append(ev.KeyCreated(
            at=now, actor=ACTOR, key_id=f"key_{uuid.uuid4().hex[:16]}", owner_id=LOCAL_OWNER,
            name="porten up", secret_hash=token_hash(server_secret, api_key),
            prefix=display_prefix(api_key, API_KEY_PREFIX), policy=KeyPolicy(),
        ))

    if todo:
        position = await writer.append(todo)
        await projection.wait_until(position, timeout=30.0)
    return LocalSetup(node_id=LOCAL_NODE, node_credential=credential, api_key=api_key)
