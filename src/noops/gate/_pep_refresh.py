"""Continuous verification of OIDC sign-ins: the identity provider is asked again, in the
background, whether each sign-in still holds.

An OIDC sign-in whose provider issued a refresh token keeps it, sealed with the gateway's key
(``gate/secret.key``, bound to the sign-in's session family and to the provider's issuer and
client id) in the identity store. Every ``refresh_s`` (``noops oidc set --refresh-every``,
300 s by default) the token is redeemed at the provider's token endpoint (RFC 6749 section 6)
on a worker thread:

* the provider answers with tokens (the ID token, if any, verified and of the same subject):
  the sign-in holds; a rotated refresh token replaces the old one; when the ID token carries a
  ``groups`` claim, those become the user's groups (a user removed from a group at the provider
  loses the routes it gave, and the websockets the user has open are closed to be decided
  again; audited as ``groups_changed`` with what was added and removed). Only when the ID
  token still names the same account (a verified e-mail now given to another subject does
  not carry another sign-in's groups);
* the provider refuses (``invalid_grant``: a user signed out, disabled or deprovisioned there):
  every session of the sign-in ends (on every host, websockets closed on the next tick) and
  the audit log says why (``idp_refresh_refused``);
* the provider cannot be asked (down, unreachable, 5xx): asked again in ``min(refresh_s, 30)``
  seconds; once it has not confirmed the sign-in for ``3 * refresh_s`` (15 minutes by default)
  the sessions end (``idp_unreachable``): a sign-in nobody can vouch for does not go on.
  Only ``invalid_grant`` is a refusal: ``invalid_client`` and other errors are about noops'
  registration at the provider, not the user, and are logged as errors and retried like an
  unreachable provider;
* the provider was replaced (``noops oidc set`` with another issuer or client): the token is
  never sent to the new one (it cannot be opened for it) and the sign-in ends
  (``idp_token_unreadable``).

A round handles at most 20 due sign-ins; each HTTP step to the provider has a 10 s timeout.
A new refresh token the provider sent is lost if the gateway dies before storing it: the next
check sends the old one, providers that detect reuse refuse it, and the sign-in ends (fail
closed). The e-mail stays that of the sign-in.

A sign-in with no live session left (logout, ``noops users lock``, any revocation, expiry)
gives its refresh token back to the provider on the next round (RFC 7009 revocation, when the
discovery document names a ``revocation_endpoint``; within about a second, and after a restart
for tokens left over). Some providers revoke the whole grant of the user and client, which
ends the user's other sign-ins at their next check.

Sign-ins whose provider issued no refresh token (or made before this) are not re-checked; their
sessions end at their own limits or on revocation. Removing the provider (``noops oidc
remove``) stops the checks.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from noops.gate._errors import GateError
from noops.gate._oidc_config import OidcConfig, OidcWatcher, secret_key_path
from noops.gate.identity import IdentityStore, IdpToken, OIDCError, OIDCIdentity, OIDCProvider, OIDCRefused
from noops.state.errors import StateError
from noops.state.secrets import SecretBox

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["IdpRefresher"]

log = logging.getLogger("noops.gate")

POLL_S: Final = 1.0  # how often the loop looks for due sign-ins
RETRY_S: Final = 30.0  # at most this long between attempts while the provider cannot be asked
_SEAL_APP: Final = "gate"


def _log_failure(done: Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("checking sign-ins with the identity provider failed",
                  exc_info=done.exception())


class IdpRefresher:
    """See the module docstring. :meth:`poll` is called on the loop; the work runs on one
    worker thread. ``audit`` takes an audit record (a dict) from that thread."""

    def __init__(self, identities: IdentityStore, oidc: OidcWatcher,
                 audit: Callable[[dict[str, Any]], None],
                 groups_changed: Callable[[str], None] = lambda _user: None) -> None:
        self.identities = identities
        self.oidc = oidc
        self.audit = audit
        self.groups_changed = groups_changed  # told (from the worker thread) after a change
        self._box: SecretBox | None = None
        self._provider: tuple[int, OIDCProvider] | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idp-refresh")
        self._running: Future[None] | None = None
        self._polled = 0.0
        self._closing = False
        self._warned_no_token = False

    @staticmethod
    def _seal_key(config: OidcConfig, family: str) -> str:
        return f"idp.refresh:{config.issuer}|{config.client_id}|{family}"

    def _sealer(self) -> SecretBox:
        if self._box is None:
            self._box = SecretBox(secret_key_path(self.oidc.path))
        return self._box

    def keep(self, family: str, user: str, who: OIDCIdentity, *, now: float | None = None) -> None:
        """After an OIDC sign-in: keep its refresh token (sealed) to ask the provider again."""
        config = self.oidc.current()
        if config is None:
            return
        if who.refresh_token is None:
            if not self._warned_no_token:
                self._warned_no_token = True
                log.warning("the identity provider issued no refresh token: its sign-ins are not "
                            "checked again (some want the scope offline_access: noops oidc set "
                            "--scope offline_access)")
            return
        now = time.time() if now is None else now
        sealed = self._sealer().seal(_SEAL_APP, self._seal_key(config, family), who.refresh_token)
        self.identities.keep_idp_token(family, user, who.sub, sealed, next_at=now + config.refresh_s,
                                       now=now)

    def poll(self, now: float) -> None:
        """Start a round on the worker thread if one is due and none is running."""
        if self._closing or now - self._polled < POLL_S or (
                self._running is not None and not self._running.done()):
            return
        self._polled = now
        self._running = self._pool.submit(self.run_due)
        self._running.add_done_callback(_log_failure)

    def run_due(self, now: float | None = None) -> None:
        """Check every sign-in that is due (blocking: HTTP to the provider)."""
        config = self.oidc.current()
        if config is None:
            return
        provider = self._current_provider(config)
        for token in self.identities.take_dead_idp_tokens(now=now):
            if self._closing:
                return
            self._give_back(token, provider, config)
        for token in self.identities.due_idp_tokens(now=now):
            if self._closing:
                return
            try:
                self._check(token, provider, config, now)
            except Exception:  # one bad row must not stop the others, nor come back every second
                log.exception("checking a sign-in of %s with the identity provider failed", token.user)
                moment = time.time() if now is None else now
                self.identities.idp_token_checked(token.family, next_at=moment + RETRY_S, now=moment)

    def _current_provider(self, config: OidcConfig) -> OIDCProvider:
        with self._lock:
            if self._provider is None or self._provider[0] != self.oidc.changes:
                if self._provider is not None:
                    self._provider[1].close()  # only this thread uses it
                # the redirect URI is only used by logins, never by a refresh
                self._provider = (self.oidc.changes, OIDCProvider(
                    config.issuer, config.client_id, config.client_secret, "", scopes=config.scopes))
            return self._provider[1]

    def _check(self, token: IdpToken, provider: OIDCProvider, config: OidcConfig,
               now: float | None) -> None:
        moment = time.time() if now is None else now
        refresh_s = config.refresh_s
        box = self._sealer()
        key = self._seal_key(config, token.family)
        try:
            current = box.open(_SEAL_APP, key, token.sealed)
        except StateError:  # tampered, another key, or a token of another provider
            self._end(token, "idp_token_unreadable", "its stored refresh token cannot be opened "
                      "for the configured provider")
            return
        try:
            fresh = provider.refresh(current, token.sub, now=moment)
        except OIDCRefused as exc:
            self._end(token, "idp_refresh_refused", str(exc))
            return
        except (OIDCError, GateError) as exc:
            if moment - token.ok_at > 3 * refresh_s:
                self._end(token, "idp_unreachable", str(exc))
            else:
                log.error("identity provider not asked about %s's sign-in (%s); trying again",  # noqa: TRY400
                          token.user, exc)  # the reason is the message: no traceback
                self.identities.idp_token_checked(token.family, next_at=moment + min(refresh_s, RETRY_S),
                                                  now=moment)
            return
        self.identities.idp_token_checked(token.family, sealed=box.seal(_SEAL_APP, key, fresh.refresh_token),
                                          next_at=moment + refresh_s, now=moment)
        if fresh.groups is not None:
            if fresh.account == token.user:
                self._apply_groups(token, fresh.groups)
            else:  # the provider's e-mail for this subject moved: not this account's to change
                log.warning("the identity provider now names %s's sign-in %s; its groups are not "
                            "applied", token.user, fresh.account)

    def _apply_groups(self, token: IdpToken, groups: tuple[str, ...]) -> None:
        """The provider's groups now are the user's groups: a user removed from a group there
        loses what it gave here within one refresh period."""
        user = self.identities.get_user(token.user)
        if user is None or set(user.groups) == set(groups):
            return
        if not self.identities.replace_groups(token.user, user.groups, groups):
            return  # changed meanwhile (a new sign-in): the next refresh looks again
        added, removed = sorted(set(groups) - set(user.groups)), sorted(set(user.groups) - set(groups))
        log.info("groups of %s changed at the identity provider: +%s -%s", token.user, added, removed)
        self.audit({"time": datetime.now(UTC), "outcome": "groups_changed", "user": token.user,
                    "reasons": ["idp_refresh"], "groups_added": added, "groups_removed": removed})
        self.groups_changed(token.user)

    def _give_back(self, token: IdpToken, provider: OIDCProvider, config: OidcConfig) -> None:
        """A sign-in with no live session left (logout, lock, revocation, expiry): revoke its
        refresh token at the provider (RFC 7009), so that nobody can use it any more."""
        try:
            refresh_token = self._sealer().open(_SEAL_APP, self._seal_key(config, token.family), token.sealed)
        except StateError:
            return  # sealed for another provider: not one to send anywhere
        try:
            revoked = provider.revoke(refresh_token)
        except (OIDCError, GateError) as exc:
            log.warning("the identity provider did not revoke the refresh token of %s's ended sign-in: %s",
                        token.user, exc)
            return
        if revoked:
            log.info("refresh token of %s's ended sign-in revoked at the identity provider", token.user)

    def _end(self, token: IdpToken, reason: str, detail: str) -> None:
        """End every session of the sign-in (websockets close on the gateway's next tick)."""
        log.warning("ending the sign-in of %s: %s (%s)", token.user, reason, detail)
        self.identities.revoke_family(token.family, reason=reason)
        self.identities.forget_idp_token(token.family)
        self.audit({"time": datetime.now(UTC), "outcome": "session_ended", "user": token.user,
                    "reasons": [reason]})

    def close(self) -> None:
        """Stop: a round under way ends after its current sign-in (not waited for, so a slow
        provider never holds the gateway's shutdown)."""
        self._closing = True
        self._pool.shutdown(wait=False, cancel_futures=True)
