"""Secrets the hub hands out — API keys and node credentials — and how it recognises them.

A token is ``<prefix><32 base62 characters of randomness (~190 bits)><6-character
checksum>``. The checksum (CRC-32 of the body, base62) lets secret scanners
and the hub reject mistyped or made-up tokens offline, before any lookup.
The hub stores only ``HMAC-SHA256(server secret, token)``: a leaked database
does not yield usable keys, and the lookup by hash compares digests in
constant time. Tokens are never logged, put in an error, or put in an event.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import zlib
from hashlib import sha256
from pathlib import Path
from typing import Final

API_KEY_PREFIX: Final = "sk-porten-"
NODE_CREDENTIAL_PREFIX: Final = "pn-node-"
_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN: Final = 32
_CHECK_LEN: Final = 6


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def new_token(prefix: str) -> str:
    """A fresh token with ``prefix``, ~190 bits of randomness and a checksum."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LEN))
    return f"{prefix}{body}{_checksum(body)}"


def new_api_key() -> str:
    """A fresh ``sk-porten-…`` key."""
    return new_token(API_KEY_PREFIX)


def new_node_credential() -> str:
    """A fresh node credential."""
    return new_token(NODE_CREDENTIAL_PREFIX)


_SHAPE: Final = re.compile(f"[0-9A-Za-z]{{{_BODY_LEN + _CHECK_LEN}}}")


def well_formed(token: str, prefix: str) -> bool:
    """Whether ``token`` has the prefix, length, alphabet and a matching checksum."""
    if not token.startswith(prefix):
        return False
    rest = token[len(prefix) :]
    if not _SHAPE.fullmatch(rest):
        return False
    body, check = rest[:_BODY_LEN], rest[_BODY_LEN:]
    return hmac.compare_digest(_checksum(body), check)


def display_prefix(token: str, prefix: str) -> str:
    """What a listing may show of a token: its prefix and four characters."""
    return token[: len(prefix) + 4] + "…"


def token_hash(server_secret: bytes, token: str) -> str:
    """The keyed hash under which a token is stored and looked up."""
    return hmac.new(server_secret, token.encode(), sha256).hexdigest()


def load_server_secret(data_dir: Path, env_value: str | None = None) -> bytes:
    """The hub's HMAC secret: ``PORTEN_SECRET`` if set, else ``<data_dir>/secret`` (created).

    Hub processes that share one database must share this secret.
    """
    if env_value:
        return env_value.encode()
    path = data_dir / "secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret)
    finally:
        os.close(fd)
    return secret
