"""``porten agent login`` and ``porten agent enroll``: make this machine a node of an account.

``login`` runs the device-authorisation flow (RFC 8628): it asks the hub
for a code, prints the short user code and the URL to approve it at, and
polls at the interval the hub gave — slower after each ``slow_down`` —
until the owner approves (or denies, or the code expires). ``enroll`` does
the same in one step with a single-use enrolment token minted by the owner.

Either way the node's credential is written to ``<data-dir>/agent/node.json``
(mode 0600, never printed), where ``porten agent run`` finds it when
``PORTEN_NODE_CREDENTIAL`` is not set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
import msgspec

from porten.cli._common import CommandError, data_options, json_option, print_json, run
from porten.config import Settings

DEVICE_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP_S: Final = 5
HTTP_TIMEOUT_S: Final = 30.0
#: ``porten agent enroll -`` reads the token from stdin (it then never shows in ``ps``).
FROM_STDIN: Final = "-"


class StoredNode(msgspec.Struct, frozen=True, kw_only=True):
    """What an enrolled machine keeps: where its hub is and how to prove who it is."""

    hub_url: str
    node_id: str
    name: str = ""
    owner_id: str = ""
    credential: str


def node_file(data_dir: Path) -> Path:
    """Where the enrolled node's credential lives."""
    return data_dir / "agent" / "node.json"


def load_stored_node(data_dir: Path) -> StoredNode | None:
    """The node this machine enrolled as, if any (a damaged file is an error, not ``None``)."""
    path = node_file(data_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(raw, type=StoredNode)
    except msgspec.DecodeError as exc:
        raise CommandError(f"{path} is damaged ({exc}); run `porten agent login` again") from None


def store_node(data_dir: Path, node: StoredNode) -> Path:
    """Write ``node`` readable by this user only, atomically."""
    path = node_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, msgspec.json.encode(node))
    finally:
        os.close(fd)
    tmp.replace(path)
    return path


def register(asub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agent login`` and ``agent enroll``."""
    parents = [data_options(), json_option()]
    login = asub.add_parser("login", parents=parents,
                            help="enrol this machine by approving a code in the portal")
    enroll = asub.add_parser("enroll", parents=parents,
                             help="enrol this machine with a single-use enrolment token")
    enroll.add_argument("token", help="the pn-enrol-… token, or - to read it from stdin")
    for p in (login, enroll):
        p.add_argument("--hub-url", help="the hub (env PORTEN_HUB_URL)")
        p.add_argument("--name", help="what to call this machine (default: its host name)")
        p.add_argument("--force", action="store_true",
                       help="enrol again even if this machine is already a node")
    login.set_defaults(func=cmd_login)
    enroll.set_defaults(func=cmd_enroll)


@attrs.frozen
class _Context:
    settings: Settings
    hub_url: str
    name: str
    as_json: bool


def _context(args: argparse.Namespace) -> _Context:
    from porten.agent.settings import DEFAULT_HUB_URL
    from porten.cli._common import settings_from

    settings = settings_from(args)
    existing = load_stored_node(settings.data_dir)
    if existing is not None and not args.force:
        raise CommandError(f"this machine is already enrolled as node {existing.node_id} "
                           f"({node_file(settings.data_dir)}); pass --force to enrol it again")
    hub_url = (args.hub_url or os.environ.get("PORTEN_HUB_URL") or DEFAULT_HUB_URL).rstrip("/")
    if not hub_url.startswith(("http://", "https://")):
        raise CommandError(f"--hub-url {hub_url!r} must be an http:// or https:// URL")
    return _Context(settings=settings, hub_url=hub_url, as_json=args.json,
                    name=(args.name or socket.gethostname())[:64])


async def _post(http: aiohttp.ClientSession, url: str, form: dict[str, str]) -> tuple[int, Any]:
    try:
        async with http.post(url, data=form) as resp:
            return resp.status, await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CommandError(f"cannot reach the hub at {url}: {exc or type(exc).__name__}") from None
    except ValueError:
        raise CommandError(f"the hub at {url} did not answer with JSON; is that a Porten "
                           "hub?") from None


def _finish(ctx: _Context, status: int, body: Any) -> int:
    if status != 200 or not isinstance(body, dict) or "credential" not in body:
        raise CommandError(f"unexpected answer from the hub (HTTP {status})")
    node = StoredNode(hub_url=ctx.hub_url, node_id=body["node_id"], name=body.get("name", ""),
                      owner_id=body.get("owner_id", ""), credential=body["credential"])
    path = store_node(ctx.settings.data_dir, node)
    if ctx.as_json:
        print_json({"node_id": node.node_id, "name": node.name, "owner_id": node.owner_id,
                    "hub_url": node.hub_url, "stored_at": str(path)})
    else:
        sys.stdout.write(f"Enrolled: this machine is node {node.node_id} ({node.name}).\n"
                         f"Its credential is in {path}. Start serving with: porten agent run\n")
    return 0


def _refused(body: Any) -> CommandError:
    error = body.get("error", "") if isinstance(body, dict) else ""
    description = body.get("error_description", "") if isinstance(body, dict) else ""
    if error == "access_denied":
        return CommandError("the owner denied this machine's enrolment in the portal")
    if error == "expired_token":
        return CommandError("the code expired before anyone approved it; run "
                            "`porten agent login` again")
    return CommandError(description or error or "the hub refused the enrolment")


async def _login(ctx: _Context) -> int:
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        status, start = await _post(http, ctx.hub_url + "/agent/v1/device/code",
                                    {"name": ctx.name})
        if status != 200:
            raise _refused(start)
        _announce(ctx, start)
        interval = int(start.get("interval", 5))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + int(start.get("expires_in", 600)) + 60
        while loop.time() < deadline:
            await asyncio.sleep(interval)
            status, body = await _post(http, ctx.hub_url + "/agent/v1/device/token", {
                "grant_type": DEVICE_GRANT_TYPE, "device_code": start["device_code"]})
            error = body.get("error") if isinstance(body, dict) else None
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval = int(body.get("interval", interval + SLOW_DOWN_STEP_S))
                continue
            if error is not None:
                raise _refused(body)
            return _finish(ctx, status, body)
    raise _refused({"error": "expired_token"})


def _announce(ctx: _Context, start: dict[str, Any]) -> None:
    if ctx.as_json:
        print_json({key: start[key] for key in ("user_code", "verification_uri",
                                                "verification_uri_complete", "expires_in")})
        return
    minutes = max(1, int(start["expires_in"]) // 60)
    sys.stdout.write(
        f"To make this machine a node of your account, open\n\n"
        f"    {start['verification_uri']}\n\n"
        f"sign in, and enter the code\n\n    {start['user_code']}\n\n"
        f"(or open {start['verification_uri_complete']}). The code expires in {minutes} "
        "minutes. Waiting for approval…\n"
    )
    sys.stdout.flush()


def cmd_login(args: argparse.Namespace) -> int:
    """Enrol through the browser (RFC 8628 device authorisation)."""
    return run(_login(_context(args)))


async def _enroll(ctx: _Context, token: str) -> int:
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        status, body = await _post(http, ctx.hub_url + "/agent/v1/enrol",
                                   {"token": token, "name": ctx.name})
    if status != 200:
        raise _refused(body)
    return _finish(ctx, status, body)


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enrol with a single-use enrolment token."""
    ctx = _context(args)
    token = sys.stdin.readline().strip() if args.token == FROM_STDIN else args.token.strip()
    if not token:
        raise CommandError("no enrolment token given")
    return run(_enroll(ctx, token))
