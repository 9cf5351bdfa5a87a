"""The identity provider's word on OIDC sign-ins: their refresh tokens, kept to ask again.

A sign-in made with OIDC keeps the provider's refresh token (sealed by the caller: this module
stores opaque bytes) under its session family. :mod:`noops.gate._pep_refresh` asks the
provider every ``refresh_s`` whether the sign-in still holds and ends the family when it does
not. A family with no live session left (logout, lock, revocation, expiry) gives its token
up (:meth:`IdpTokensMixin.take_dead_idp_tokens`) to be revoked at the provider.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from noops.gate._identity_db import IdentityDb

__all__ = ["IdpToken", "IdpTokensMixin"]

_LIVE = ("EXISTS (SELECT 1 FROM sessions s WHERE s.family = idp_tokens.family "
         "AND s.revoked_at IS NULL AND s.absolute_exp > ?)")


@dataclass(frozen=True)
class IdpToken:
    family: str
    user: str
    sub: str
    sealed: bytes
    ok_at: float


class IdpTokensMixin:
    """Refresh-token operations of :class:`noops.gate.identity.IdentityStore`."""

    _db: IdentityDb

    def keep_idp_token(self, family: str, user: str, sub: str, sealed: bytes, *, next_at: float,
                       now: float | None = None) -> None:
        """Keep a sign-in's sealed refresh token, to be checked at ``next_at``."""
        now = time.time() if now is None else now
        with self._db.write() as conn:
            conn.execute("INSERT OR REPLACE INTO idp_tokens(family, user, sub, sealed, next_at, ok_at)"
                         " VALUES (?,?,?,?,?,?)", (family, user, sub, sealed, next_at, now))

    def due_idp_tokens(self, *, now: float | None = None, limit: int = 20) -> list[IdpToken]:
        """Sign-ins to check now (oldest due first); those whose sessions all ended are left to
        :meth:`take_dead_idp_tokens`."""
        now = time.time() if now is None else now
        rows = self._db.conn().execute(
            f"SELECT family, user, sub, sealed, ok_at FROM idp_tokens WHERE next_at <= ? AND {_LIVE} "  # noqa: S608
            "ORDER BY next_at LIMIT ?", (now, now, limit)).fetchall()
        return [IdpToken(f, u, sub, bytes(sealed), ok) for f, u, sub, sealed, ok in rows]

    def take_dead_idp_tokens(self, *, now: float | None = None, limit: int = 20) -> list[IdpToken]:
        """Remove and return the tokens of sign-ins with no live session left (to give them back
        to the provider): taken once, whoever asks."""
        now = time.time() if now is None else now
        with self._db.write() as conn:
            rows = conn.execute(
                f"SELECT family, user, sub, sealed, ok_at FROM idp_tokens WHERE NOT {_LIVE} LIMIT ?",  # noqa: S608
                (now, limit)).fetchall()
            conn.executemany("DELETE FROM idp_tokens WHERE family=?", [(row[0],) for row in rows])
        return [IdpToken(f, u, sub, bytes(sealed), ok) for f, u, sub, sealed, ok in rows]

    def idp_token_checked(self, family: str, *, next_at: float, sealed: bytes | None = None,
                          now: float | None = None) -> None:
        """Record a check: ``sealed`` (the token to use next) when the provider said yes,
        ``None`` when it could not be asked (``ok_at`` stays)."""
        now = time.time() if now is None else now
        with self._db.write() as conn:
            if sealed is None:
                conn.execute("UPDATE idp_tokens SET next_at=? WHERE family=?", (next_at, family))
            else:
                conn.execute("UPDATE idp_tokens SET sealed=?, next_at=?, ok_at=? WHERE family=?",
                             (sealed, next_at, now, family))

    def forget_idp_token(self, family: str) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM idp_tokens WHERE family=?", (family,))
