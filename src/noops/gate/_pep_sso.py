"""Single sign-on across app hosts: sign in once on the gateway's sign-in host, then every app
host gets a session of its own from it (Pomerium's authenticate service, in the front door).

Session cookies are ``__Host-`` cookies, so a browser shows each host only its own. A browser
that needs to sign in on an app host ``H`` goes through the sign-in host ``S`` instead:

1. ``H`` sets a random ``state`` in its ``__Host-noops_sso`` cookie and redirects to
   ``https://S/.noops/sso?host=H&rd=/path&state=…`` (``&mfa=1`` for a step-up).
2. ``S`` signs the browser in on its own pages if it has no session there (or no second factor
   when ``mfa=1``), then issues a one-time code and redirects to
   ``https://H/.noops/sso/callback?code=…&rd=/path``. ``H`` must be a host the gateway routes:
   the sign-in host never redirects anywhere else.
3. ``H`` redeems the code: it is used once (it is gone even when the redemption fails), within
   :data:`CODE_TTL_S`, only on the host it was issued for and only by the browser holding the
   matching ``state`` (no login CSRF: a code fetched by an attacker for their own account
   cannot be planted in someone else's browser). ``H`` then makes a session of the same sign-in
   family: logging out anywhere, or revoking any of them, ends all of them.

Codes live in this front door's memory only; a restart invalidates the few in flight (the
browser is simply sent round again).
"""

from __future__ import annotations

import hmac
import html
import logging
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from noops.gate._identity_db import SessionError
from noops.gate._identity_sessions import Session
from noops.gate._pep_pages import _cookies, _html, _redirect, safe_redirect
from noops.gate._pep_types import Reply, Request, session_secret
from noops.gate.identity import session_cookie

if TYPE_CHECKING:
    from noops.gate.pep import Gatekeeper

__all__ = ["CALLBACK_PATH", "CODE_TTL_S", "SSO_PATH", "STATE_COOKIE", "SingleSignOn"]

SSO_PATH: Final = "/.noops/sso"
CALLBACK_PATH: Final = "/.noops/sso/callback"
STATE_COOKIE: Final = "__Host-noops_sso"
CODE_TTL_S: Final = 60.0
FRESH_S: Final = 60.0  # a step-up asked through the sign-in host wants a code shown this recently
_MAX_CODES: Final = 10_000
_MAX_CODES_PER_SESSION: Final = 20
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")

log = logging.getLogger("noops.gate")


@dataclass(frozen=True, slots=True)
class _Code:
    session: Session  # the sign-in host's session the code was issued from
    host: str  # the only host that may redeem it
    state: str  # the state cookie value the redeeming browser must hold
    expires: float


def _state_cookie(value: str, max_age_s: int) -> tuple[str, str]:
    # Lax: the browser comes back to the callback by a top-level GET from the sign-in host.
    return ("Set-Cookie", f"{STATE_COOKIE}={value}; Secure; HttpOnly; SameSite=Lax; Path=/; "
                          f"Max-Age={max_age_s}")


def _invalid(message: str, *, clear_state: bool = True) -> Reply:
    # A code that did not match this browser's state leaves the state alone: a planted code
    # must not end the sign-in the browser itself has under way.
    return _html(400, "Sign in", f"<h1>Sign in</h1><p class='err'>{html.escape(message)}</p>"
                                 "<p>Go back to the app's address and sign in again.</p>",
                 [_state_cookie("", 0)] if clear_state else [])


class SingleSignOn:
    """The sign-in host ``host`` of one :class:`~noops.gate.pep.Gatekeeper`."""

    def __init__(self, gate: Gatekeeper, host: str) -> None:
        self.gate = gate
        self.host = host.lower().rstrip(".")
        self._codes: dict[str, _Code] = {}
        self._warned = False

    def _origin(self, host: str) -> str:
        port = self.gate.port
        return f"https://{host}" + ("" if port == 443 else f":{port}")

    @staticmethod
    def just_verified(session: Session, now: float | None = None) -> bool:
        """True when ``session``'s sign-in showed a second factor within :data:`FRESH_S`."""
        return session.mfa and (time.time() if now is None else now) - session.auth_at < FRESH_S

    # -- on an app host ---------------------------------------------------------------------
    def start(self, req: Request, rd: str, *, mfa: bool) -> Reply:
        """The answer for a browser that must sign in (or verify) on app host ``req.host``."""
        state = _cookies(req.cookie_header).get(STATE_COOKIE, "")
        if not _TOKEN.fullmatch(state):  # kept when valid: two tabs signing in share it
            state = secrets.token_urlsafe(32)
        query = {"host": req.host, "rd": rd, "state": state}
        if mfa:
            query["mfa"] = "1"
        return _redirect(f"{self._origin(self.host)}{SSO_PATH}?{urllib.parse.urlencode(query)}",
                         [_state_cookie(state, 600)])

    def redeem(self, req: Request) -> Reply:
        """``GET /.noops/sso/callback`` on an app host: the code becomes this host's session."""
        gate = self.gate
        params = dict(urllib.parse.parse_qsl(req.query))
        rd = safe_redirect(params.get("rd", "/")) or "/"
        entry = self._codes.pop(params.get("code", ""), None)  # once, whatever happens next
        state = _cookies(req.cookie_header).get(STATE_COOKIE, "")
        if (entry is None or entry.expires <= time.time() or entry.host != req.host
                or not hmac.compare_digest(entry.state.encode(), state.encode())):
            gate.record_event(req, entry.session.user if entry else None, "deny", ["sso_code_invalid"])
            return _invalid("This sign-in link has expired, was already used or was meant for "
                            "another browser or app.", clear_state=False)
        parent = entry.session
        try:
            _sid, secret = gate.identities.create_session(
                parent.user, auth_methods=parent.auth_methods, client_ip=req.client_ip,
                replaces=session_secret(req), family_of=parent)
        except SessionError:
            gate.record_event(req, parent.user, "deny", ["sso_session_ended"])
            return _invalid("You were signed out while signing in.")
        old = session_secret(req)
        if old is not None:
            gate.forget_session(old)
        gate.record_event(req, parent.user, "login", ["sso", *sorted(parent.auth_methods)])
        return _redirect(rd, [("Set-Cookie", session_cookie(secret)), _state_cookie("", 0)])

    # -- on the sign-in host ----------------------------------------------------------------
    def issue(self, req: Request) -> Reply:
        """``GET /.noops/sso`` on the sign-in host: sign in here if needed, then send the browser
        back to the app host with a one-time code."""
        gate = self.gate
        params = dict(urllib.parse.parse_qsl(req.query))
        host, state = params.get("host", ""), params.get("state", "")
        rd = safe_redirect(params.get("rd", "/"))
        if host == self.host or not gate.knows_host(host) or rd is None or not _TOKEN.fullmatch(state):
            gate.record_event(req, None, "deny", ["sso_bad_request"])
            return _invalid("This sign-in link is not valid.")
        mfa = params.get("mfa") == "1"
        here = urllib.parse.quote(f"{SSO_PATH}?{req.query}", safe="")
        cached = gate.session_for(session_secret(req), time.time())
        if cached is None:
            return _redirect(f"/.noops/login?rd={here}")
        session = cached.session
        now = time.time()
        if mfa and not self.just_verified(session, now):
            # The app asked for a step-up: what it had was not enough, so the code is shown
            # again (which also refreshes the time of authentication and the known networks).
            return _redirect(f"/.noops/verify?rd={here}")
        if len(self._codes) >= _MAX_CODES:
            self._codes = {c: e for c, e in self._codes.items() if e.expires > now}
            while len(self._codes) >= _MAX_CODES:  # a flood costs the oldest codes, not the service
                del self._codes[next(iter(self._codes))]
        mine = [c for c, e in self._codes.items() if e.session.session_id == session.session_id]
        for old in mine[:max(0, len(mine) - _MAX_CODES_PER_SESSION + 1)]:
            del self._codes[old]  # one sign-in cannot crowd out the others' codes
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(session, host, state, now + CODE_TTL_S)
        gate.record_event(req, session.user, "sso_code", [host])
        query = urllib.parse.urlencode({"code": code, "rd": rd})
        return _redirect(f"{self._origin(host)}{CALLBACK_PATH}?{query}")

    def home(self, req: Request) -> Reply:
        """Any other page of the sign-in host: who is signed in here, or the sign-in form."""
        if not self._warned and self.gate.knows_host(self.host):
            self._warned = True
            log.warning("an app is routed on %s, the gateway's sign-in host: it gets no requests; "
                        "rename the app or start the front door with another --sso-host", self.host)
        cached = self.gate.session_for(session_secret(req), time.time())
        if cached is None:
            return _redirect("/.noops/login?rd=/")
        user = html.escape(cached.session.user)
        return _html(200, "Signed in", f"<h1>Signed in</h1><p class='sub'>as {user}</p>"
                                       '<p>Open any app; it will not ask you to sign in again.</p>'
                                       '<form method="get" action="/.noops/logout">'
                                       '<button class="alt">Sign out everywhere</button></form>')
