"""The gateway's own pages, under ``/.noops/`` on every routed host, and its refusals.

==========================  ========================================================
``GET  /.noops/login``      sign-in form (user name + password; OIDC button when set up)
``POST /.noops/login``      check the password: a new session, then back to ``rd``
``GET  /.noops/verify``     authenticator form (step-up)
``POST /.noops/verify``     check the TOTP code: the session gains ``totp``, new cookie
``POST /.noops/logout``     revoke the session (its websockets close), clear the cookie
``GET  /.noops/oidc/start`` redirect to the identity provider (code + PKCE, state, nonce)
``GET  /.noops/oidc/callback``  finish the OIDC login
``GET  /.noops/whoami``     JSON: who you are and how your trust score is made up
``GET  /.well-known/noops/jwks.json``  the keys apps verify ``X-Noops-Assertion`` with
==========================  ========================================================

Rules that keep these pages from being the weak spot:

* Every redirect is a same-host relative path checked by :func:`safe_redirect`; an unsafe
  ``rd`` is refused *before* any credential is checked, so it can never yield a session.
* Forms carry a CSRF token that must equal the ``__Host-noops_csrf`` cookie (double submit),
  and the pages send ``frame-ancestors 'none'``, ``no-store`` and ``no-referrer``.
* Failures say "wrong user name, password or code" whatever failed, and are audited.
* Password and TOTP checks (argon2) run on a worker thread, not on the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from noops.gate._pep_types import ConnIdentity, Reply, Request, Verdict, session_secret
from noops.gate.assertion import JWKS_PATH
from noops.gate.identity import OIDCProvider, Session, clear_session_cookie, session_cookie
from noops.gate.policy import Decision, normalize_path

if TYPE_CHECKING:
    from noops.gate.pep import Gatekeeper

__all__ = ["Pages", "safe_redirect"]

Answer = Reply

CSRF_COOKIE: Final = "__Host-noops_csrf"
OIDC_COOKIE: Final = "__Host-noops_oidc"
_MAX_FORM: Final = 16 * 1024
_SECURITY_HEADERS: Final = [
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
]
_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}"
    "main{max-width:26em;margin:10vh auto;background:#fff;border-radius:10px;padding:2em 2.2em;"
    "box-shadow:0 2px 12px rgba(0,0,0,.08)}h1{font-size:1.35em;margin:0 0 .2em}"
    "p.sub{color:#5b6475;margin:0 0 1.4em}label{display:block;font-size:.9em;margin:.9em 0 .3em}"
    "input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.6em;"
    "border:1px solid #c8cdd6;border-radius:6px;font-size:1em}button{margin-top:1.3em;width:100%;"
    "padding:.7em;border:0;border-radius:6px;background:#2456d3;color:#fff;font-size:1em}"
    "button.alt,a.button{background:#fff;color:#2456d3;border:1px solid #2456d3}"
    "a.button{display:block;text-align:center;margin-top:1.3em;padding:.7em;border-radius:6px;"
    "text-decoration:none}"
    ".err{background:#fdecec;color:#8a1c1c;padding:.7em;border-radius:6px}"
    "small{color:#8a93a3}code{background:#eef0f4;padding:.1em .3em;border-radius:4px}")


def safe_redirect(raw: str) -> str | None:
    """``raw`` if it is a safe same-host redirect target (a normalised absolute path with an
    optional query), else None. Refuses everything a browser could read as another origin:
    ``//evil``, ``/\\evil``, tabs/newlines/CR-LF (browsers strip them: ``/\\t/evil`` is
    ``//evil``), schemes (``javascript:``, ``https://good@evil``), fragments and non-ASCII."""
    if not raw or len(raw) > 2048 or not raw.startswith("/") or raw.startswith("//"):
        return None
    if any(c in raw for c in "\\#") or not raw.isascii() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw):
        return None
    path, _, query = raw.partition("?")
    normal = normalize_path(path)
    if normal is None or normal.startswith("//"):
        return None
    return normal + ("?" + query if query else "")


_BAD_RD: Final = "<p class='err'>The page to return to is not allowed.</p>"


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{name}" value="{html.escape(value)}">'


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name not in out:
            out[name] = value.strip()
    return out


def _form(body: bytes) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v for k, v in pairs}


def _page(title: str, inner: str) -> bytes:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)} · noops</title><style>{_STYLE}</style></head>"
            f"<body><main>{inner}</main></body></html>\n").encode()


def _html(status: int, title: str, inner: str, headers: list[tuple[str, str]] | None = None) -> Answer:
    return status, [("Content-Type", "text/html; charset=utf-8"), *_SECURITY_HEADERS, *(headers or [])], \
        _page(title, inner)


def _json(status: int, data: Any, headers: list[tuple[str, str]] | None = None) -> Answer:
    return status, [("Content-Type", "application/json"), *_SECURITY_HEADERS, *(headers or [])], \
        json.dumps(data).encode()


def _redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Answer:
    return 303, [("Location", location), *_SECURITY_HEADERS, *(headers or [])], b""


class Pages:
    """The gateway's pages for one :class:`~noops.gate.pep.Gatekeeper`."""

    def __init__(self, gate: Gatekeeper) -> None:
        self.gate = gate
        self._oidc = gate.oidc
        self._providers: dict[str, OIDCProvider] = {}
        self._providers_of = self._oidc.changes

    # -- dispatch -------------------------------------------------------------------------------
    def route(self, conn: ConnIdentity, req: Request) -> Verdict:
        path, method = req.path, req.method
        if path == JWKS_PATH and method in ("GET", "HEAD"):
            return Verdict(False, response=_json(200, self.gate.signer.jwks()))
        handlers: dict[tuple[str, str], Callable[[Request, bytes], Awaitable[Answer]]] = {
            ("POST", "/.noops/login"): self._login,
            ("POST", "/.noops/verify"): self._verify,
            ("POST", "/.noops/logout"): self._logout,
            ("GET", "/.noops/oidc/start"): self._oidc_start,
            ("GET", "/.noops/oidc/callback"): self._oidc_callback,
        }
        handler = handlers.get((method, path))
        if handler is not None:
            return Verdict(False, handler=lambda body: handler(req, body))
        sso = self.gate.sso
        if sso is not None and method == "GET":
            from noops.gate._pep_sso import CALLBACK_PATH, SSO_PATH

            if path == SSO_PATH and req.host == sso.host:
                return Verdict(False, response=sso.issue(req))
            if path == CALLBACK_PATH and req.host != sso.host:
                return Verdict(False, response=sso.redeem(req))
        if method in ("GET", "HEAD"):
            if path == "/.noops/login":
                return Verdict(False, response=self._login_form(req, ""))
            if path == "/.noops/verify":
                return Verdict(False, response=self._verify_form(req, ""))
            if path == "/.noops/logout":
                return Verdict(False, response=self._logout_form(req))
            if path == "/.noops/whoami":
                return Verdict(False, response=self._whoami(conn, req))
        return Verdict(False, response=_json(404, {"error": "no such gateway page"}))

    def refusal(self, req: Request, decision: Decision, session: Session | None) -> Verdict:
        """The answer for a request the policy did not allow (``session``: the caller's)."""
        back = safe_redirect(req.path + ("?" + req.query if req.query else "")) or "/"
        rd = urllib.parse.quote(back, safe="/")
        signed_in = session is not None
        sso = self.gate.sso
        if sso is not None and req.browser and req.host != sso.host:
            # Sign in on the sign-in host; step up there too when this host's session came from
            # it (a session made on this host's own sign-in form steps up here, as without SSO).
            if decision.outcome == "deny" and "unauthenticated" in decision.reasons and not signed_in:
                return Verdict(False, response=sso.start(req, back, mfa=False))
            if decision.outcome == "step_up" and session is not None and session.family != session.session_id:
                if sso.just_verified(session):
                    # the code was just shown and the score is still short: say why, don't loop
                    return self.message(req, 403, decision.user_message or "access denied", signed_in=True)
                return Verdict(False, response=sso.start(req, back, mfa=True))
        if decision.outcome == "deny" and "unauthenticated" in decision.reasons and not signed_in:
            if req.browser:
                return Verdict(False, response=_redirect(f"/.noops/login?rd={rd}"))
            return Verdict(False, response=_json(401, {"error": "unauthenticated",
                                                        "message": f"sign in first: /.noops/login?rd={rd}"},
                                                  [("WWW-Authenticate", 'Bearer realm="noops"')]))
        if decision.outcome == "step_up":
            if req.browser:
                return Verdict(False, response=_redirect(f"/.noops/verify?rd={rd}"))
            return Verdict(False, response=_json(401, {"error": "step_up_required",
                                                        "message": decision.user_message}))
        return self.message(req, 403, decision.user_message or "access denied", signed_in=signed_in)

    def message(self, req: Request, status: int, message: str, *, signed_in: bool = False) -> Verdict:
        if not req.browser:
            return Verdict(False, response=_json(status, {"error": "denied" if status == 403 else "error",
                                                           "message": message,
                                                           "request_id": req.request_id}))
        extra = ('<form method="post" action="/.noops/logout"><button class="alt">Sign out</button></form>'
                 if signed_in else '<p><a href="/.noops/login">Sign in as someone else</a></p>')
        inner = (f"<h1>Access denied</h1><p class='sub'>{html.escape(req.host)}</p>"
                 f"<p class='err'>{html.escape(message)}</p>{extra}"
                 f"<p><small>request id {html.escape(req.request_id)}</small></p>")
        return Verdict(False, response=_html(status, "Access denied", inner))

    # -- forms ------------------------------------------------------------------------------------
    def _csrf(self, req: Request) -> tuple[str, list[tuple[str, str]]]:
        token = _cookies(req.cookie_header).get(CSRF_COOKIE) or ""
        if len(token) != 43:
            token = secrets.token_urlsafe(32)
        return token, [("Set-Cookie", f"{CSRF_COOKIE}={token}; Secure; HttpOnly; SameSite=Strict; "
                                      "Path=/; Max-Age=1800")]

    def _csrf_ok(self, req: Request, form: dict[str, str]) -> bool:
        cookie = _cookies(req.cookie_header).get(CSRF_COOKIE, "")
        sent = form.get("csrf", "")
        return len(cookie) == 43 and hmac.compare_digest(cookie.encode(), sent.encode())

    def _login_form(self, req: Request, error: str, status: int = 200) -> Answer:
        rd = safe_redirect(dict(urllib.parse.parse_qsl(req.query)).get("rd", "/")) or "/"
        token, headers = self._csrf(req)
        oidc = ""
        config = self._oidc.current()
        if config is not None:
            # a link, not a form: the provider is another origin, which form-action 'self' forbids
            start = html.escape("/.noops/oidc/start?" + urllib.parse.urlencode({"rd": rd}))
            oidc = (f'<p><a class="button alt" href="{start}">Sign in with '
                    f'{html.escape(config.name)}</a></p>')
        err = f"<p class='err'>{html.escape(error)}</p>" if error else ""
        inner = (f"<h1>Sign in</h1><p class='sub'>to {html.escape(req.host)}</p>{err}"
                 f'<form method="post" action="/.noops/login">'
                 f"{_hidden('csrf', token)}{_hidden('rd', rd)}"
                 '<label for="user">User name</label><input type="text" id="user" name="user" '
                 'autocomplete="username" autofocus required>'
                 '<label for="password">Password</label><input type="password" id="password" '
                 'name="password" autocomplete="current-password" required>'
                 f"<button>Sign in</button></form>{oidc}")
        return _html(status, "Sign in", inner, headers)

    def _verify_form(self, req: Request, error: str, status: int = 200) -> Answer:
        rd = safe_redirect(dict(urllib.parse.parse_qsl(req.query)).get("rd", "/")) or "/"
        token, headers = self._csrf(req)
        err = f"<p class='err'>{html.escape(error)}</p>" if error else ""
        inner = (f"<h1>Verify it's you</h1><p class='sub'>{html.escape(req.host)} needs a stronger sign-in. "
                 f"Enter the 6-digit code from your authenticator app.</p>{err}"
                 f'<form method="post" action="/.noops/verify">'
                 f"{_hidden('csrf', token)}{_hidden('rd', rd)}"
                 '<label for="code">Code</label><input type="text" id="code" name="code" '
                 'inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" '
                 "autofocus required>"
                 f"<button>Verify</button></form>")
        return _html(status, "Verify", inner, headers)

    def _logout_form(self, req: Request) -> Answer:
        token, headers = self._csrf(req)
        inner = (f"<h1>Sign out</h1><p class='sub'>of {html.escape(req.host)}</p>"
                 f'<form method="post" action="/.noops/logout">{_hidden("csrf", token)}'
                 f"<button>Sign out</button></form>")
        return _html(200, "Sign out", inner, headers)

    def _whoami(self, conn: ConnIdentity, req: Request) -> Answer:
        a = self.gate.assess(conn, req, time.time())
        cached, cert, trust = a.session, a.cert, a.trust
        return _json(200, {
            "user": cached.session.user if cached else None,
            "groups": sorted(cached.groups) if cached else [],
            "auth_methods": sorted(cached.session.auth_methods) if cached else [],
            "device": f"{cert.user}/{cert.device}" if cert is not None and cert.kind == "device" else None,
            "score": trust.score,
            "contributions": [str(c) for c in trust.contributions],
        })

    def _after_form(self, req: Request, rd: str, headers: list[tuple[str, str]]) -> Answer:
        """Where a signed-in form sends the browser: a redirect to ``rd``. On the sign-in host,
        when ``rd`` goes on to an app host, a page that moves on by itself instead: browsers apply
        the form's ``form-action 'self'`` to every redirect that follows a form submission, and
        the hand-over ends on another origin."""
        sso = self.gate.sso
        if sso is None or req.host != sso.host or not rd.startswith("/.noops/sso?"):
            return _redirect(rd, headers)
        to = html.escape(rd)
        return _html(200, "Signed in", f'<h1>Signed in</h1><p class="sub">Taking you back to the app…</p>'
                                       f'<p><a href="{to}">Continue</a></p>',
                     [*headers, ("Refresh", f"0;url={rd}")])

    # -- POST handlers ------------------------------------------------------------------------------
    async def _login(self, req: Request, body: bytes) -> Answer:
        gate = self.gate
        form = _form(body[:_MAX_FORM])
        rd = safe_redirect(form.get("rd", "/"))
        if rd is None:
            gate.record_event(req, None, "deny", ["login_bad_redirect"])
            return _html(400, "Sign in", "<h1>Sign in</h1><p class='err'>The page to return to is not "
                                         "allowed. Start again from the app's address.</p>")
        if not self._csrf_ok(req, form):
            return self._login_form(req, "The sign-in form expired. Please try again.", 403)
        name, password = form.get("user", "").strip(), form.get("password", "")
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: gate.identities.verify_password(name, password, client_ip=req.client_ip))
        if not result.ok:
            gate.failed_login(name)
            gate.record_event(req, name, "deny", ["login_failed", str(result.outcome)])
            status = 429 if result.outcome == "rate_limited" else 401
            return self._login_form(req, "Wrong user name or password, or too many attempts.", status)
        _sid, secret = gate.identities.create_session(name, auth_methods={"password"},
                                                      client_ip=req.client_ip,
                                                      replaces=session_secret(req))
        gate.record_event(req, name, "login", ["password"])
        return self._after_form(req, rd, [("Set-Cookie", session_cookie(secret))])

    async def _verify(self, req: Request, body: bytes) -> Answer:
        gate = self.gate
        form = _form(body[:_MAX_FORM])
        rd = safe_redirect(form.get("rd", "/"))
        if rd is None:
            return _html(400, "Verify", f"<h1>Verify</h1>{_BAD_RD}")
        secret = session_secret(req)
        session = gate.session_for(secret, time.time())
        if secret is None or session is None:
            return _redirect(f"/.noops/login?rd={urllib.parse.quote(rd, safe='/')}")
        if not self._csrf_ok(req, form):
            return self._verify_form(req, "The form expired. Please try again.", 403)
        user = session.session.user
        code = form.get("code", "").strip()
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: gate.identities.verify_totp(user, code, client_ip=req.client_ip))
        if not result.ok:
            gate.failed_login(user)
            gate.record_event(req, user, "deny", ["step_up_failed", str(result.outcome)])
            return self._verify_form(req, "That code is not valid. Wait for the next one and try again.", 401)
        stepped = gate.identities.step_up(secret, "totp")
        gate.forget_session(secret)
        if stepped is None:
            return _redirect(f"/.noops/login?rd={urllib.parse.quote(rd, safe='/')}")
        _session, new_secret = stepped
        gate.known.learn(user, req.client_ip, None)
        gate.record_event(req, user, "step_up", ["totp"])
        return self._after_form(req, rd, [("Set-Cookie", session_cookie(new_secret))])

    async def _logout(self, req: Request, body: bytes) -> Answer:
        gate = self.gate
        form = _form(body[:_MAX_FORM])
        secret = session_secret(req)
        if secret is not None and self._csrf_ok(req, form):
            gate.identities.revoke_cookie(secret, reason="logout")
            gate.forget_session(secret)
            gate.tick()  # close this session's websockets now, not on the next tick
            gate.record_event(req, None, "logout", [])
        return _redirect("/.noops/login", [("Set-Cookie", clear_session_cookie())])

    # -- OIDC ---------------------------------------------------------------------------------------
    def _provider(self, host: str) -> OIDCProvider | None:
        config = self._oidc.current()
        if config is None:
            return None
        if self._providers_of != self._oidc.changes:  # `noops oidc set` changed the provider
            # (not closed: a login thread may still use one; sign-ins begun before the change
            # are refused at the callback and start again)
            self._providers, self._providers_of = {}, self._oidc.changes
        provider = self._providers.get(host)
        if provider is None:
            # The redirect URI is built from the routed host (a configured app host, never a
            # client header) and the configured port.
            redirect = f"https://{host}:{self.gate.port}/.noops/oidc/callback"
            provider = self._providers[host] = OIDCProvider(
                config.issuer, config.client_id, config.client_secret, redirect, scopes=config.scopes)
        return provider

    async def _oidc_start(self, req: Request, _body: bytes) -> Answer:
        provider = self._provider(req.host)
        if provider is None:
            return _json(404, {"error": "no identity provider is configured"})
        rd = safe_redirect(dict(urllib.parse.parse_qsl(req.query)).get("rd", "/"))
        if rd is None:
            return _html(400, "Sign in", f"<h1>Sign in</h1>{_BAD_RD}")
        url, handle = await asyncio.get_running_loop().run_in_executor(None, provider.begin_login)
        value = urllib.parse.quote(f"{handle}|{rd}", safe="")
        return _redirect(url, [("Set-Cookie", f"{OIDC_COOKIE}={value}; Secure; HttpOnly; SameSite=Lax; "
                                              "Path=/; Max-Age=600")])

    async def _oidc_callback(self, req: Request, _body: bytes) -> Answer:
        from noops.gate._identity_db import OIDCError

        provider = self._provider(req.host)
        if provider is None:
            return _json(404, {"error": "no identity provider is configured"})
        handle, _, rd = urllib.parse.unquote(_cookies(req.cookie_header).get(OIDC_COOKIE, "")).partition("|")
        clear = ("Set-Cookie", f"{OIDC_COOKIE}=; Secure; HttpOnly; SameSite=Lax; Path=/; Max-Age=0")
        try:
            who = await asyncio.get_running_loop().run_in_executor(
                None, lambda: provider.finish_login(req.query, handle))
        except OIDCError as exc:
            self.gate.record_event(req, None, "deny", ["oidc_failed"])
            return _html(401, "Sign in", f"<h1>Sign in failed</h1><p class='err'>{html.escape(str(exc))}</p>"
                                         f'<p><a href="/.noops/login">Try again</a></p>', [clear])
        name = who.account
        gate = self.gate
        if gate.identities.get_user(name) is None:
            gate.identities.add_user(name, secrets.token_urlsafe(32), list(who.groups))
        else:
            gate.identities.set_groups(name, list(who.groups))
        method = "oidc_mfa" if who.mfa else "oidc"
        sid, secret = gate.identities.create_session(name, auth_methods={method}, client_ip=req.client_ip)
        gate.refresher.keep(sid, name, who)  # the provider is asked again every refresh_s
        if who.mfa:
            gate.known.learn(name, req.client_ip, None)
        gate.record_event(req, name, "login", [method])
        return _redirect(safe_redirect(rd) or "/", [("Set-Cookie", session_cookie(secret)), clear])
