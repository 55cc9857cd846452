"""Account passwords, hashed with argon2id (RFC 9106) and never stored or logged in clear.

argon2 is deliberately slow and memory-hard (tens of milliseconds and 64 MiB
per hash with the library's defaults), so hashing and verifying run in a
worker thread: a sign-in must not stall the event loop that relays tokens.
An unknown account is "verified" against a fixed dummy hash, so a failed
sign-in takes as long whether or not the email exists (no account probing
by timing).
"""

from __future__ import annotations

import asyncio
from typing import Final

import argon2
import attrs

#: The least a password may be: long passphrases beat composition rules (NIST SP 800-63B).
MIN_PASSWORD_LENGTH: Final = 10
MAX_PASSWORD_LENGTH: Final = 1024


@attrs.define
class Passwords:
    """Hashes and checks passwords; ``hasher`` carries the argon2 parameters."""

    hasher: argon2.PasswordHasher = attrs.field(factory=argon2.PasswordHasher)
    _dummy: str | None = None

    async def hash(self, password: str) -> str:
        """The argon2id hash of ``password`` (salted: equal passwords hash differently)."""
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches ``password_hash`` (``None``: no account; always False)."""
        if password_hash is None or not password_hash:
            if self._dummy is None:
                self._dummy = await self.hash("not a password anyone has")
            await asyncio.to_thread(self._check, self._dummy, password)
            return False
        return await asyncio.to_thread(self._check, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with weaker parameters than the hasher's current ones."""
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except argon2.exceptions.InvalidHashError:
            return False

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False


def password_problem(password: str) -> str:
    """Why ``password`` is not acceptable ("" if it is); never quotes the password."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password must be at least {MIN_PASSWORD_LENGTH} characters long"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"the password must be at most {MAX_PASSWORD_LENGTH} characters long"
    if password.strip() != password or not password.isprintable():
        return "the password must not start or end with spaces or contain control characters"
    return ""
