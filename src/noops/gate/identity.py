"""Who is asking: local users (argon2id passwords, TOTP), browser sessions, and OIDC logins.

::

    store = IdentityStore(home / "gate" / "identity.db")
    store.add_user("ada", "correct horse battery staple", groups=["ops"])
    result = store.verify_password("ada", password, client_ip=ip)
    if result and result.user.totp_enabled:
        ...  # ask for the code: store.verify_totp("ada", code, client_ip=ip)
    sid, cookie = store.create_session("ada", auth_methods={"password", "totp"}, client_ip=ip,
                                       replaces=old_cookie)
    response.headers["Set-Cookie"] = session_cookie(cookie)
    session = store.get_session(session_cookie_from_header(request.headers["cookie"]) or "")

Storage is one SQLite file owned by this module (0600, WAL, a connection per thread), separate
from the platform state store. Implementation lives in ``_identity_*`` modules:
``_identity_users`` (passwords, lockout, TOTP), ``_identity_sessions`` (sessions and cookies),
``_identity_totp`` (RFC 6238), ``_identity_jose`` (ID token signatures), ``_identity_oidc``,
``_identity_idp`` (the provider's refresh tokens of OIDC sign-ins, stored sealed).

Errors: :class:`IdentityError` (a :class:`noops.gate.GateError`) for misuse, its subclasses
:class:`SessionError` (HTTP 401: log in again) and :class:`OIDCError` (HTTP 401: restart the
login). Failed logins are not errors; they are :class:`AuthResult` values.
"""

from __future__ import annotations

import os
import time

from argon2 import PasswordHasher

from noops.gate._identity_db import IdentityDb, IdentityError, OIDCError, SessionError
from noops.gate._identity_idp import IdpToken, IdpTokensMixin
from noops.gate._identity_oidc import OIDCIdentity, OIDCProvider, OIDCRefused, Refreshed
from noops.gate._identity_sessions import (
    AUTH_METHODS,
    COOKIE_NAME,
    Revocation,
    Session,
    SessionPolicy,
    SessionsMixin,
    clear_session_cookie,
    session_cookie,
    session_cookie_from_header,
)
from noops.gate._identity_users import (
    AuthOutcome,
    AuthResult,
    LoginPolicy,
    User,
    UsersMixin,
    UserSummary,
    default_hasher,
    new_dummy_hash,
    read_users,
)

__all__ = [
    "AUTH_METHODS",
    "COOKIE_NAME",
    "AuthOutcome",
    "AuthResult",
    "IdentityError",
    "IdentityStore",
    "IdpToken",
    "LoginPolicy",
    "OIDCError",
    "OIDCIdentity",
    "OIDCProvider",
    "OIDCRefused",
    "Refreshed",
    "Revocation",
    "Session",
    "SessionError",
    "SessionPolicy",
    "User",
    "UserSummary",
    "clear_session_cookie",
    "default_hasher",
    "read_users",
    "session_cookie",
    "session_cookie_from_header",
]


class IdentityStore(UsersMixin, SessionsMixin, IdpTokensMixin):
    """Users, their second factors and their sessions, in the SQLite file at ``path``.

    Every method taking ``now`` (Unix seconds) defaults it to ``time.time()``; tests pass it.
    Safe to share between threads.
    """

    def __init__(self, path: str | os.PathLike[str], *, hasher: PasswordHasher | None = None,
                 login_policy: LoginPolicy | None = None,
                 session_policy: SessionPolicy | None = None, totp_issuer: str = "noops") -> None:
        self._db = IdentityDb(path)
        self._hasher = hasher or default_hasher()
        self._policy = login_policy or LoginPolicy()
        self._session_policy = session_policy or SessionPolicy()
        self._totp_issuer = totp_issuer
        self._dummy_hash = new_dummy_hash(self._hasher)

    def close(self) -> None:
        self._db.close()

    def lock_user(self, name: str, *, now: float | None = None) -> None:
        """Lock an account: logins refused and every session revoked (closing its websockets
        through the revocation feed) until :meth:`unlock_user`."""
        now = time.time() if now is None else now
        self._set_disabled(name, True, now)
        self.revoke_user_sessions(name, now=now, reason="user locked")

    def provision_totp(self, name: str, *, now: float | None = None) -> tuple[str, str]:
        """Enrol *and* activate an authenticator that an admin hands to the user (CLI, demo);
        returns ``(secret_base32, otpauth_uri)``. Activated with the previous step's code, so
        the user's first code (this step's) is still accepted by the replay guard."""
        from noops.gate._identity_totp import totp_at

        moment = time.time() if now is None else now
        secret, uri = self.enroll_totp(name)
        if not self.confirm_totp(name, totp_at(secret, moment - 30), now=moment):
            raise IdentityError(f"could not activate the authenticator of {name}; try again")
        return secret, uri

    def unlock_user(self, name: str, *, now: float | None = None) -> None:
        """Lift an admin lock and any failed-login lockout of ``name``."""
        self._set_disabled(name, False, time.time() if now is None else now)
