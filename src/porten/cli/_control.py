"""The log as admin commands see it: opened, folded, and committed to directly.

Admin commands run where the log's database is reachable (the same
``--data-dir``/``--database-url`` as the hub): access to the log *is* the
operator's authority, as ``psql`` access would be. A running hub follows the
log and picks every change up within moments. Each command's actor is
``cli:<login>``.
"""

from __future__ import annotations

import contextlib
import getpass
import time
from collections.abc import AsyncIterator

import attrs

from porten.bootstrap import open_event_store
from porten.config import Settings
from porten.services.accounts import Accounts
from porten.services.control import ControlLog
from porten.services.credentials import load_server_secret
from porten.services.projection import FleetProjection


def cli_actor() -> str:
    """``cli:<login>``: who ran the command, as the audit trail records it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


@attrs.frozen
class CliControl:
    """The folded log, its accounts, and the server secret keys are hashed with."""

    log: ControlLog
    accounts: Accounts
    server_secret: bytes = attrs.field(repr=False)


@contextlib.asynccontextmanager
async def control(settings: Settings) -> AsyncIterator[CliControl]:
    """Open the log named by ``settings``, fold it, and yield what admin commands need."""
    async with open_event_store(settings) as store:
        projection = FleetProjection(store, snapshot_every=1 << 62)  # never writes snapshots
        await projection.catch_up()
        log = ControlLog(projection=projection, append=store.append)
        yield CliControl(
            log=log,
            accounts=Accounts(log=log, clock=time.time),
            server_secret=load_server_secret(settings.data_dir, settings.secret),
        )
