"""The policy enforcement point: what the front door asks about every request before forwarding.

Per request, in this order (all in memory on the event loop; nothing here waits for I/O on the
hot path):

1. **Who** — the TLS client certificate verified once per connection
   (:meth:`CertificateAuthority.verify_client`: chain, SPIFFE rules, EKU) and re-checked per
   request for revocation and expiry; the session named by the ``__Host-noops_session`` cookie
   (or ``Authorization: Bearer <session>`` for API clients), from a short cache that the
   revocation feed empties at once. Nothing a client *says* about itself (headers) counts.
2. **Signals** — authentication strength and age, the device certificate (only when it belongs
   to the session's user), the socket's address, the caller's request rate, recent failed
   logins, whether device and network are new for this user — each with its source; then the
   trust score (:mod:`noops.gate.trust`).
3. **Policy** — :meth:`Policy.decide` on the normalised path the proxy forwards.
4. **Audit** — one record per decision, same fields for allow and deny, written by a
   background thread in batches (one fsync per batch).
5. **Outcome** — allow (with a signed ``X-Noops-Assertion``), or a local answer: the login page
   (302) for a browser without a session, the authenticator page for a step-up, 401/403 with a
   message that says what is missing and nothing about the policy's internals.

The gateway's own pages live under ``/.noops/`` on every routed host (see :mod:`._pep_pages`);
they are answered by the gateway and never reach an app.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

from noops.gate._oidc_config import OidcWatcher
from noops.gate._pep_audit import DecisionRecorder
from noops.gate._pep_known import KnownPlaces
from noops.gate._pep_pages import Pages
from noops.gate._pep_refresh import IdpRefresher
from noops.gate._pep_sso import SingleSignOn
from noops.gate._pep_types import ConnIdentity, Request, Verdict, session_secret
from noops.gate.assertion import JWKS_PATH, AssertionSigner
from noops.gate.audit import AuditLog, RecordTemplate
from noops.gate.identity import IdentityStore, Session
from noops.gate.pki import CertificateAuthority, CertificateRejected, VerifiedIdentity
from noops.gate.policy import Decision, Identity, Policy, PolicyError, PolicyStore, RequestFacts
from noops.gate.trust import Signal, TrustConfig, TrustResult, score

__all__ = ["DEFAULT_POLICY", "Assessment", "ConnIdentity", "GateFiles", "Gatekeeper", "Request", "Verdict",
           "session_secret"]

log = logging.getLogger("noops.gate.pep")

DEFAULT_POLICY: Final = '''\
# noops default policy: every app on *.localhost needs a signed-in user who has verified with an
# authenticator (TOTP) in this session, or an equally strong set of signals; the platform's
# uptime prober (a workload with its own SVID) may call them too.
mode = "enforce"

[[route]]
id = "apps"
host = "*.localhost"
authenticated = true
min_score = 30
below = "step_up"
allow_spiffe = ["spiffe://noops.local/app/noops/probe"]

# the web console: administrators only, verified with an authenticator at a normal request rate
[[route]]
id = "console"
host = "console.localhost"
authenticated = true
groups = ["admin"]
min_score = 35
below = "step_up"

# public status pages (`noops status-page enable APP`): read-only, no sign-in; the console shows
# only pages that were published and nothing else under /status
[[route]]
id = "status-pages"
host = "console.localhost"
path = "/status"
methods = ["GET", "HEAD"]
authenticated = false
'''

_DECISION_TTL_S: Final = 1.0
"""An allow decision is reused for the same caller (session, certificate, address) and request
(host, path, method) for this long; any revocation, policy or trust change drops every reused
decision at once, and a revoked device is checked on every request regardless."""
_RAW: Final = "raw"  # marks a decision key made of the raw request (Gatekeeper.reuse)
_SESSION_TTL_S: Final = 2.0      # a cached session is re-read after this (slides its idle timer)
_ASSERTION_REUSE_S: Final = 60.0  # an assertion is re-signed after this (it lives 300 s)
_MFA_ORDER: Final = ("oidc_mfa", "totp", "oidc", "password")
_LOCAL_PREFIX: Final = "/.noops/"


@dataclass(frozen=True)
class GateFiles:
    """Where the gateway keeps its state, under ``<home>/gate``."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def identity_db(self) -> Path:
        return self.root / "identity.db"

    @property
    def policy(self) -> Path:
        return self.root / "policy"

    @property
    def trust(self) -> Path:
        return self.root / "trust.toml"

    @property
    def audit(self) -> Path:
        return self.root / "audit" / "decisions.jsonl"

    @property
    def assertion_key(self) -> Path:
        return self.root / "assertion.key"

    @property
    def oidc(self) -> Path:
        return self.root / "oidc.toml"

    @property
    def known(self) -> Path:
        return self.root / "known.json"


@dataclass(slots=True)
class _CachedSession:
    session: Session
    groups: frozenset[str]
    fetched: float
    cookie: str


@dataclass(frozen=True, slots=True)
class Assessment:
    """What :meth:`Gatekeeper.assess` found: the live session, the still-valid client
    certificate, the trust result and the identity the policy sees."""

    session: _CachedSession | None
    cert: VerifiedIdentity | None
    trust: TrustResult
    identity: Identity


@dataclass(slots=True)
class _Behaviour:
    """What the gateway has seen of one caller (user, or address when anonymous)."""

    minute: int = 0
    this_minute: int = 0
    last_minute: int = 0
    failed: list[float] = field(default_factory=list)


def _used_by(user: str, info: Any) -> bool:
    return bool(info.user == user)


class Gatekeeper:
    """Authenticates, scores, decides and audits; one per front door process."""

    def __init__(self, files: GateFiles, *, ca: CertificateAuthority, identities: IdentityStore,
                 port: int, trust_config: TrustConfig | None = None,
                 policy_store: PolicyStore | None = None, sso_host: str | None = None) -> None:
        self.files = files
        self.ca = ca
        self.identities = identities
        self.port = port
        self._decisions: dict[tuple[Any, ...], tuple[Verdict, RecordTemplate, float, str]] = {}
        self.recorder = DecisionRecorder(AuditLog(files.audit))
        self.policy_store = policy_store or PolicyStore(files.policy)
        self._policy = self._load_policy()
        self._policy_checked = 0.0
        self._trust_stamp: tuple[int, int] | None = None
        self.trust_config = trust_config or TrustConfig()
        self._trust_fixed = trust_config is not None
        self._reload_trust()
        self.signer = AssertionSigner(files.assertion_key)
        self._sessions: dict[str, _CachedSession] = {}
        self._by_sid: dict[str, str] = {}
        self._assertions: dict[tuple[Any, ...], tuple[bytes, float]] = {}
        self._behaviour: dict[str, _Behaviour] = {}
        self._revocation_cursor = self._latest_revocation()
        self._revoked_serials = self.ca.revoked_serials()
        self.known = KnownPlaces(files.known)
        self.close_tunnels: Callable[[Callable[[Any], bool]], int] = lambda _pred: 0
        self.knows_host: Callable[[str], bool] = lambda _host: False  # the front door's registry
        self.oidc = OidcWatcher(files.oidc)
        self._regrouped: list[str] = []  # users whose groups the IdP changed (see tick)
        self.refresher = IdpRefresher(identities, self.oidc, lambda record: self.recorder.from_thread(
            {**record, "policy_version": self._policy.version}), self._regrouped.append)
        self.pages = Pages(self)
        self.sso = SingleSignOn(self, sso_host) if sso_host else None

    # -- set-up ---------------------------------------------------------------------------------
    def _load_policy(self) -> Policy:
        try:
            return self.policy_store.current()
        except Exception:
            return Policy.load(DEFAULT_POLICY)

    def _reload_trust(self) -> None:
        if self._trust_fixed:
            return
        try:
            st = self.files.trust.stat()
        except FileNotFoundError:
            if self._trust_stamp is not None:
                self.trust_config, self._trust_stamp = TrustConfig(), None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._trust_stamp:
            text = self.files.trust.read_bytes()
            digest = "sha256:" + hashlib.sha256(text).hexdigest()
            try:
                self.trust_config = TrustConfig.from_toml(text.decode("utf-8", "replace"))
                outcome = "trust_config_applied"
                self._decisions.clear()
            except Exception:
                log.exception("trust config %s rejected; keeping the previous one", self.files.trust)
                outcome = "trust_config_rejected"
            self._trust_stamp = stamp
            self.recorder.record({"time": datetime.now(UTC), "outcome": outcome, "reasons": [digest],
                                  "policy_version": self._policy.version})

    def _latest_revocation(self) -> int:
        cursor = 0
        while True:
            items, nxt = self.identities.revocations_since(cursor)
            if not items:
                return cursor
            cursor = nxt

    @property
    def policy(self) -> Policy:
        return self._policy

    def close(self) -> None:
        self.refresher.close()
        self.recorder.close()

    # -- housekeeping (the front door calls tick() every ~50 ms on its loop) -------------------
    def tick(self, now: float | None = None) -> None:
        """Apply revocations (sessions, users, devices) and reload policy and trust config."""
        moment = time.time() if now is None else now
        items, self._revocation_cursor = self.identities.revocations_since(self._revocation_cursor)
        if items:
            self._decisions.clear()
            gone_sids = {r.session_id for r in items}
            for sid in gone_sids:
                cookie = self._by_sid.pop(sid, None)
                if cookie is not None:
                    self._sessions.pop(cookie, None)
            closed = self.close_tunnels(lambda info: info.session_id in gone_sids)
            if closed:
                log.info("closed %d websocket(s) of revoked sessions", closed)
        self.refresher.poll(moment)
        while self._regrouped:  # decided again with the new groups, websockets included
            user = self._regrouped.pop()
            self._decisions.clear()
            for cookie in [c for c, cached in self._sessions.items() if cached.session.user == user]:
                self._sessions.pop(cookie, None)
            self.close_tunnels(partial(_used_by, user))
        revoked = self.ca.revoked_serials()
        if revoked is not self._revoked_serials:
            fresh = revoked - self._revoked_serials
            self._revoked_serials = revoked
            self._decisions.clear()
            if fresh:
                self.close_tunnels(lambda info: info.device_serial in fresh)
        if moment - self._policy_checked >= 0.25:
            self._policy_checked = moment
            try:
                current = self.policy_store.refresh()
                if current.version != self._policy.version:
                    log.info("policy %s applied", current.version)
                    self.recorder.record({"time": datetime.now(UTC), "outcome": "policy_applied",
                                          "policy_version": current.version,
                                          "reasons": [f"previous={self._policy.version}"]})
                    self._decisions.clear()
                self._policy = current
            except PolicyError:
                pass  # none applied yet: the built-in default stays in force
            self._reload_trust()

    # -- connections ----------------------------------------------------------------------------
    def identify_connection(self, peer_der: bytes | None, sni: str | None) -> ConnIdentity:
        """Verify the client certificate of a new TLS connection (None: none was sent)."""
        if not peer_der:
            return ConnIdentity(sni=sni)
        try:
            return ConnIdentity(cert=self.ca.verify_client(peer_der), sni=sni)
        except CertificateRejected as exc:
            return ConnIdentity(rejected=exc.reason, sni=sni)

    # -- requests -------------------------------------------------------------------------------
    def check(self, conn: ConnIdentity, req: Request, raw: tuple[Any, ...] | None = None) -> Verdict:
        """Decide one request (see the module docstring). Never raises: an internal failure
        is a deny (fail closed), logged and audited.

        ``raw``: the request as the front door read it (see :meth:`reuse`); an allow decision is
        then also found by :meth:`reuse` for the next second.
        """
        if req.path.startswith(_LOCAL_PREFIX) or req.path == JWKS_PATH:
            return self.pages.route(conn, req)
        if self.sso is not None and req.host == self.sso.host:
            return Verdict(False, response=self.sso.home(req))
        try:
            return self._check(conn, req, raw)
        except Exception:
            log.exception("decision failed for %s; denied", req.request_id)
            self._record(req, None, None, None, None, "deny", ["pdp_error"], None)
            return self.pages.message(req, 500, "The gateway could not decide on this request.")

    def reuse(self, conn: ConnIdentity, client_ip: str, raw: tuple[Any, ...], request_id: str,
              ) -> Verdict | None:
        """The allow decision :meth:`check` made within the last second for the same connection
        identity, address and ``raw`` request, or None (then build the :class:`Request` and call
        :meth:`check` with the same ``raw``).

        ``raw`` holds everything of the request the decision rests on, as the front door read
        it: ``(cookie, authorization, host, normalised path, method, websocket)``; the raw
        credentials make the key finer than the session secret, never coarser. The rules are
        those of the reuse inside :meth:`check`: any revocation, policy or trust change has
        dropped the decision, the client certificate is checked for revocation here (a decision
        ends when its certificate expires), and the request is counted and audited as its own
        record.
        """
        presented = conn.cert
        hit = self._decisions.get((_RAW, *raw, presented.serial if presented is not None else 0,
                                   conn.rejected, client_ip))
        if hit is None:
            return None
        return self._reused(hit, presented, time.time(), request_id)

    def _reused(self, hit: tuple[Verdict, RecordTemplate, float, str], presented: VerifiedIdentity | None,
                now: float, request_id: str) -> Verdict | None:
        if hit[2] <= now or (presented is not None and presented.serial in self._revoked_serials):
            return None  # hit[2]: the decision's end, never after the certificate's
        # The same caller, request and signals within the last second: the same decision,
        # audited again as its own record (see _DECISION_TTL_S).
        self._seen(hit[3], now)
        self.recorder.repeat(hit[1], now, request_id)
        return hit[0]

    def _check(self, conn: ConnIdentity, req: Request, raw: tuple[Any, ...] | None = None) -> Verdict:
        now = time.time()
        secret = session_secret(req)
        presented = conn.cert
        key = (secret, presented.serial if presented is not None else 0, conn.rejected, req.client_ip,
               req.host, req.path, req.method, req.websocket)
        hit = self._decisions.get(key)
        if hit is not None:
            reused = self._reused(hit, presented, now, req.request_id)
            if reused is not None:
                return reused
        a = self.assess(conn, req, now, secret)
        session, cert, trust, identity = a.session, a.cert, a.trust, a.identity
        user, spiffe_id = identity.user, identity.spiffe_id
        decision = self._policy.decide(
            RequestFacts(req.host, req.path, req.method, req.client_ip, req.request_id), trust, identity)
        if decision.outcome == "read_only" and req.websocket:
            decision = replace(decision, outcome="deny", reasons=[*decision.reasons, "read_only_websocket"],
                               user_message=decision.user_message + "; live connections need full access")
        device = f"{cert.user}/{cert.device}" if cert is not None and cert.kind == "device" else None
        who = user or spiffe_id
        fragments = self._record(req, who, device, trust, decision, decision.outcome, decision.reasons,
                                 decision.shadow_outcome)
        serial = cert.serial if cert is not None else None
        sid = session.session.session_id if session is not None else None
        if decision.outcome in ("allow", "read_only"):
            token = self._assertion(req.app, who, identity, device, trust.score, decision.outcome, now)
            verdict = Verdict(True, extra=b"X-Noops-Assertion: " + token + b"\r\n", user=who,
                              session_id=sid, device_serial=serial)
            if len(self._decisions) > 50_000:
                self._decisions.clear()
            rate_key = user if user is not None else "ip:" + req.client_ip
            template = RecordTemplate(fragments, ("time", "request_id"))
            until = now + _DECISION_TTL_S
            if presented is not None:  # the key holds its serial: the same certificate
                until = min(until, presented.not_after.timestamp())
            entry = self._decisions[key] = (verdict, template, until, rate_key)
            if raw is not None:
                self._decisions[(_RAW, *raw, key[1], conn.rejected, req.client_ip)] = entry
            return verdict
        return self.pages.refusal(req, decision, session.session if session is not None else None)

    def assess(self, conn: ConnIdentity, req: Request, now: float,
               secret: str | None = None) -> Assessment:
        """Who is calling and how much the gateway trusts it (signals -> score), without
        deciding anything: the first half of every decision, and what ``/.noops/whoami`` shows."""
        session = self.session_for(secret if secret is not None else session_secret(req), now)
        cert = conn.cert
        revoked = conn.rejected == "revoked" or (cert is not None and cert.serial in self._revoked_serials)
        if cert is not None and cert.not_after.timestamp() <= now:
            cert = None  # expired while the connection stayed open
        user = session.session.user if session is not None else None
        spiffe_id = cert.spiffe_id if cert is not None and cert.kind == "workload" else None
        # a device certificate counts only for its own user, and never once revoked
        device_ok = (cert is not None and cert.kind == "device" and not revoked
                     and (user is None or cert.user == user))
        signals = self._signals(req, session, cert if device_ok else None, revoked, now)
        trust = score(signals, self.trust_config, datetime.fromtimestamp(now, UTC))
        identity = Identity(user=user, groups=session.groups if session is not None else frozenset(),
                            device_cert=device_ok and user is not None, spiffe_id=spiffe_id)
        return Assessment(session, cert, trust, identity)

    def _signals(self, req: Request, session: _CachedSession | None, cert: VerifiedIdentity | None,
                 device_revoked: bool, now: float) -> list[Signal]:
        signals = [Signal("client_ip", "observed", req.client_ip)]
        key = session.session.user if session is not None else "ip:" + req.client_ip
        seen = self._seen(key, now)
        signals.append(Signal("request_rate", "observed", seen.this_minute + seen.last_minute))
        if session is not None:
            s = session.session
            methods = s.auth_methods
            best = next((m for m in _MFA_ORDER if m in methods), None)
            if best is not None:
                signals.append(Signal("auth", "verified", best, max(0.0, now - s.auth_at)))
            failed = [t for t in seen.failed if now - t < 86400.0]
            seen.failed = failed
            signals.append(Signal("failed_logins", "observed", len(failed)))
            known = self.known
            signals.append(Signal("new_network", "observed", not known.network_known(s.user, req.client_ip)))
            if cert is not None:
                signals.append(Signal("new_device", "observed", not known.device_known(s.user, cert.serial)))
        if device_revoked:
            signals.append(Signal("device_cert", "verified", "revoked"))
        elif cert is not None:
            age = max(0.0, now - (cert.not_after.timestamp() - 90 * 86400.0))
            signals.append(Signal("device_cert", "verified", "enrolled", age))
        return signals

    def _seen(self, key: str, now: float) -> _Behaviour:
        seen = self._behaviour.get(key)
        if seen is None:
            if len(self._behaviour) > 100_000:
                self._behaviour.clear()
            seen = self._behaviour[key] = _Behaviour()
        minute = int(now // 60)
        if minute != seen.minute:
            seen.last_minute = seen.this_minute if minute == seen.minute + 1 else 0
            seen.this_minute, seen.minute = 0, minute
        seen.this_minute += 1
        return seen

    def failed_login(self, user: str, now: float | None = None) -> None:
        """Count a failed login of ``user`` (a penalty on that user's later requests)."""
        moment = time.time() if now is None else now
        self._seen(user, moment).failed.append(moment)

    def session_for(self, secret: str | None, now: float) -> _CachedSession | None:
        """The live session for a cookie/bearer secret, cached for a couple of seconds."""
        if not secret:
            return None
        cached = self._sessions.get(secret)
        if cached is not None and now - cached.fetched < _SESSION_TTL_S:
            return cached
        session = self.identities.get_session(secret, now)
        if session is None:
            if cached is not None:
                self._sessions.pop(secret, None)
                self._by_sid.pop(cached.session.session_id, None)
            return None
        user = self.identities.get_user(session.user)
        groups = frozenset(user.groups) if user is not None else frozenset()
        if len(self._sessions) > 100_000:
            self._sessions.clear()
            self._by_sid.clear()
        entry = _CachedSession(session, groups, now, secret)
        self._sessions[secret] = entry
        self._by_sid[session.session_id] = secret
        return entry

    def forget_session(self, secret: str) -> None:
        cached = self._sessions.pop(secret, None)
        if cached is not None:
            self._by_sid.pop(cached.session.session_id, None)

    def _assertion(self, app: str, who: str | None, identity: Identity, device: str | None,
                   points: int, outcome: str, now: float) -> bytes:
        key = (app, who, identity.groups, device, points, outcome)
        cached = self._assertions.get(key)
        if cached is not None and now - cached[1] < _ASSERTION_REUSE_S:
            return cached[0]
        claims = {"aud": app, "sub": who or "anonymous", "groups": sorted(identity.groups),
                  "device": device, "score": points, "outcome": outcome}
        if identity.spiffe_id is not None:
            claims["spiffe_id"] = identity.spiffe_id
        token = self.signer.sign(claims, now=now).encode("ascii")
        if len(self._assertions) > 50_000:
            self._assertions.clear()
        self._assertions[key] = (token, now)
        return token

    # -- audit ----------------------------------------------------------------------------------
    def _record(self, req: Request, who: str | None, device: str | None, trust: TrustResult | None,
                decision: Decision | None, outcome: str, reasons: list[str],
                shadow: str | None) -> dict[str, str]:
        record = {
            "time": datetime.now(UTC), "request_id": req.request_id, "user": who, "device": device,
            "route": decision.route_id if decision is not None else None, "host": req.host,
            "method": req.method, "path": req.path,
            "policy_version": self._policy.version,
            "contributions": [{"signal": c.signal, "source": c.source, "points": c.points, "reason": c.reason}
                              for c in trust.contributions] if trust is not None else [],
            "score": trust.score if trust is not None else None,
            "outcome": outcome, "shadow_outcome": shadow, "reasons": list(reasons),
            "client_ip": req.client_ip,
        }
        return self.recorder.record(record)

    def record_event(self, req: Request, who: str | None, outcome: str, reasons: list[str]) -> None:
        """Audit a gateway page event (login, step-up, logout) with the decision fields."""
        self._record(req, who, None, None, None, outcome, reasons, None)
