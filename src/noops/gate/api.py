"""The gateway's read-only HTTP API (JSON), mounted into the daemon's API by :func:`access_routes`.

Every route is ``GET``; every error is ``{"error": message, "kind": …}`` with the error's HTTP
status (bad input 400). ``since`` is a duration such as ``90s``, ``15m``, ``2h`` or ``7d``
ending now. Times are ISO 8601 in UTC; ``days_left`` is fractional days until ``not_after``
(negative once expired); ``expiring`` is true with less than 7 days left *and*, when the
lifetime is known, less than half of it (short-lived certificates renewed at half-life are
flagged only when their renewal is overdue). Nothing here ever returns a password hash, a TOTP
secret, a session secret or a private key: users come from :func:`noops.gate.identity.read_users`,
audit records were redacted when they were written (:mod:`noops.gate.audit`).

=========================================  =====================================================
/api/access/audit                          decisions, newest first: ``?user=&outcome=&route=
                                           &app=&host=&since=&limit=`` (``limit`` 1..1000,
                                           default 100); each record as the audit log stores it
                                           (``seq``, ``hash``, ``time``, ``user``, ``device``,
                                           ``route``, ``method``, ``path``, ``policy_version``,
                                           ``contributions``, ``score``, ``outcome``,
                                           ``shadow_outcome``, ``reasons``, ``client_ip``, …)
                                           with ``host`` lifted out of ``extra``
/api/access/audit/verify                   ``{ok, records, first_bad_index, reason}`` of the
                                           whole hash chain
/api/access/scores?since=1h                per route: ``{route, decisions, mean_score,
                                           buckets: [10 counts: 0-9 … 90-100], outcomes}``
/api/access/summary?since=1h               per app: ``{hosts, decisions, deny, step_up,
                                           cert_not_after, cert_days_left, cert_expiring}``
/api/access/calls?since=1h                 service-to-service decisions: ``[{caller,
                                           caller_spiffe_id, app, allow, deny, other}]`` per
                                           calling workload (its SVID) and called app
/api/access/users                          ``[{name, groups, totp_enrolled, locked,
                                           locked_out_until, created_at, last_login}]``
/api/access/devices                        ``[{user, name, serial, issued, not_after, days_left,
                                           expiring, revoked, revoked_reason, revoked_at}]``
/api/access/certificates                   ``{trust_domain, certificates: [{kind, name, subject,
                                           spiffe_id, serial, not_before, not_after, days_left,
                                           expiring, app}]}``
/api/access/policy                         ``{version, default, mode, routes, source}``
/api/access/policy/history                 ``[{time, actor, version, previous}]`` newest first
=========================================  =====================================================

``outcome`` is one the gateway records: ``allow``, ``deny``, ``step_up``, ``read_only``,
``login``, ``logout``, ``policy_applied``, ``trust_config_applied``, ``trust_config_rejected``.
``app`` matches the hosts the route table gives the app (or, for a host it does not list, the
host's first label); ``route`` is a policy route id.

The summary counts every audit record of the window by the app of its host: ``deny`` (requests
refused, failed logins and step-ups) and ``step_up`` (requests sent to verify with an
authenticator, and verifications done). ``cert_not_after`` is the earliest expiry among the
app's workload SVIDs (its running instances), when the caller passed ``workloads``.

Certificates are the CA's root and intermediate, the front door's serving certificate for
``localhost`` (read by a TLS handshake when ``frontdoor`` is given; left out when nothing
answers within a second) and whatever ``workloads`` returns (instance SVIDs, the gateway's
own SVID, the platform's workloads). Device certificates are listed by ``/devices``.

Every read (files, SQLite, the TLS handshake) runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cryptography import x509
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from noops.errors import UsageError
from noops.gate.audit import read_newest_first, verify
from noops.gate.identity import read_users
from noops.gate.pep import DEFAULT_POLICY, GateFiles
from noops.gate.pki import CertificateAuthority
from noops.gate.policy import Policy, PolicyError, PolicyStore
from noops.httpapi import json_errors, parse_since

__all__ = ["OUTCOMES", "CertificateInfo", "access_routes", "served_certificate"]

OUTCOMES: Final = ("allow", "deny", "step_up", "read_only", "login", "logout", "policy_applied",
                   "trust_config_applied", "trust_config_rejected")
MAX_LIMIT: Final = 1000
WARN_DAYS: Final = 7
BUCKETS: Final = 10
_NO_ROUTE: Final = "(no route)"
_REORDER: Final = timedelta(seconds=60)


@dataclass(frozen=True)
class CertificateInfo:
    """A certificate the CA issued that lives outside the CA directory (an instance's SVID, the
    gateway's SVID): what the daemon hands :func:`access_routes` through ``workloads``."""

    kind: str            # "workload" or "gateway"
    name: str            # e.g. the instance id, "probe", "gateway"
    spiffe_id: str
    serial: int
    not_after: datetime
    app: str | None = None
    not_before: datetime | None = None


def _iso(moment: datetime | float | None) -> str | None:
    if moment is None:
        return None
    if isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat()


def _days_left(not_after: datetime, now: datetime) -> float:
    return round((not_after - now).total_seconds() / 86400.0, 2)


def _expiring(not_before: datetime | None, not_after: datetime, now: datetime) -> bool:
    """Less than :data:`WARN_DAYS` left and, when the lifetime is known, past half of it: short
    lives renewed at half-life (SVIDs, serving certificates) are flagged only when a renewal is
    overdue, not all the time."""
    left = not_after - now
    if left >= timedelta(days=WARN_DAYS):
        return False
    return not_before is None or left < (not_after - not_before) / 2


def _limit(request: Request, default: int = 100) -> int:
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"limit={raw!r} must be a whole number between 1 and {MAX_LIMIT}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise UsageError(f"limit={value} is out of range: use 1 to {MAX_LIMIT}")
    return value


def _cutoff(request: Request, default: str | None) -> str | None:
    """The ``since`` window's start as the audit log's time text (None: the whole log)."""
    raw = request.query_params.get("since") or default
    if raw is None:
        return None
    start = datetime.now(UTC) - parse_since(raw)
    return start.isoformat(timespec="microseconds")


def served_certificate(host: str, port: int, server_name: str = "localhost",
                       timeout_s: float = 1.0) -> x509.Certificate | None:
    """The certificate a TLS server at ``host:port`` presents for ``server_name`` (not
    verified: only read), or None when nothing answers in ``timeout_s`` seconds."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


class _Reader:
    """The blocking reads behind the routes (each called in a worker thread)."""

    def __init__(self, files: GateFiles, ca: CertificateAuthority | None,
                 workloads: Callable[[], Iterable[CertificateInfo]] | None,
                 hosts: Callable[[], Mapping[str, Sequence[str]]] | None,
                 frontdoor: tuple[str, int] | None) -> None:
        self.files = files
        self._ca = ca
        self._workloads = workloads
        self._hosts = hosts
        self._frontdoor = frontdoor

    # -- shared --------------------------------------------------------------------------------
    def ca(self) -> CertificateAuthority | None:
        if self._ca is not None:
            return self._ca
        if not (self.files.ca / "ca.json").exists():
            return None
        return CertificateAuthority.load(self.files.ca)

    def app_of(self) -> Callable[[str | None], str | None]:
        """host -> app: the route table's hosts first, else the host's first label."""
        table: dict[str, str] = {}
        if self._hosts is not None:
            for app, hosts in self._hosts().items():
                for host in hosts:
                    table[host.lower()] = app

        def app_of(host: str | None) -> str | None:
            if not host:
                return None
            host = host.lower().split(":", 1)[0]
            return table.get(host) or host.split(".", 1)[0]
        return app_of

    def records(self, cutoff: str | None) -> Iterator[dict[str, Any]]:
        """Audit records newest first with ``host`` lifted out of ``extra``, down to ``cutoff``.

        Records are written in decision order, each stamped when it was decided, so times may
        step back a little between a batch's records: the scan ends only at a record more than
        a minute older than the cutoff, and skips the ones in between."""
        floor = None
        if cutoff is not None:
            floor = (datetime.fromisoformat(cutoff) - _REORDER).isoformat(timespec="microseconds")
        for entry in read_newest_first(self.files.audit):
            when = entry.get("time")
            if cutoff is not None and isinstance(when, str) and when < cutoff:
                if floor is not None and when < floor:
                    return
                continue
            extra = entry.get("extra")
            yield {**entry, "host": extra.get("host") if isinstance(extra, dict) else None}

    # -- routes --------------------------------------------------------------------------------
    def audit(self, *, user: str | None, outcome: str | None, route: str | None, app: str | None,
              host: str | None, cutoff: str | None, limit: int) -> list[dict[str, Any]]:
        app_of = self.app_of() if app else None
        out: list[dict[str, Any]] = []
        for r in self.records(cutoff):
            if user is not None and r.get("user") != user:
                continue
            if outcome is not None and r.get("outcome") != outcome:
                continue
            if route is not None and r.get("route") != route:
                continue
            if host is not None and (r.get("host") or "").lower() != host.lower():
                continue
            if app_of is not None and app_of(r.get("host")) != app:
                continue
            out.append(r)
            if len(out) >= limit:
                break
        return out

    def verify(self) -> dict[str, Any]:
        if not self.files.audit.exists() and not any(self.files.audit.parent.glob("*.jsonl.*")):
            return {"ok": True, "records": 0, "first_bad_index": None, "reason": ""}
        result = verify(self.files.audit)
        return {"ok": result.ok, "records": result.records,
                "first_bad_index": result.first_bad_index, "reason": result.reason}

    def scores(self, cutoff: str | None) -> list[dict[str, Any]]:
        routes: dict[str, dict[str, Any]] = {}
        for r in self.records(cutoff):
            score = r.get("score")
            if not isinstance(score, int | float) or isinstance(score, bool):
                continue   # gateway events (logins, policy changes) carry no score
            key = r.get("route") or _NO_ROUTE
            row = routes.setdefault(key, {"route": key, "decisions": 0, "total": 0.0,
                                          "buckets": [0] * BUCKETS, "outcomes": Counter()})
            row["decisions"] += 1
            row["total"] += score
            row["buckets"][min(BUCKETS - 1, max(0, int(score) // BUCKETS))] += 1
            row["outcomes"][str(r.get("outcome"))] += 1
        out = []
        for row in sorted(routes.values(), key=lambda x: (-x["decisions"], x["route"])):
            total = row.pop("total")
            row["mean_score"] = round(total / row["decisions"], 1)
            row["outcomes"] = dict(sorted(row["outcomes"].items()))
            out.append(row)
        return out

    def calls(self, cutoff: str | None) -> list[dict[str, Any]]:
        """Decisions on requests a workload made with its SVID, by caller and called app (the
        service map marks its edges allowed or denied with these)."""
        app_of = self.app_of()
        pairs: dict[tuple[str, str], dict[str, Any]] = {}
        for r in self.records(cutoff):
            who = r.get("user")
            if not isinstance(who, str) or not who.startswith("spiffe://"):
                continue
            target = app_of(r.get("host"))
            if target is None:
                continue
            path = who.split("/", 3)[3] if who.count("/") >= 3 else ""
            parts = path.split("/")
            caller = parts[1] if len(parts) >= 2 and parts[0] == "app" else who
            row = pairs.setdefault((who, target), {"caller": caller, "caller_spiffe_id": who,
                                                   "app": target, "allow": 0, "deny": 0,
                                                   "other": 0})
            outcome = r.get("outcome")
            row["allow" if outcome in ("allow", "read_only") else
                "deny" if outcome == "deny" else "other"] += 1
        return [pairs[k] for k in sorted(pairs)]

    def summary(self, cutoff: str | None) -> dict[str, dict[str, Any]]:
        now = datetime.now(UTC)
        apps: dict[str, dict[str, Any]] = {}

        def entry(app: str) -> dict[str, Any]:
            return apps.setdefault(app, {"hosts": [], "decisions": 0, "deny": 0, "step_up": 0,
                                         "cert_not_after": None, "cert_days_left": None,
                                         "cert_expiring": False})

        if self._hosts is not None:
            for name, hosts in self._hosts().items():
                entry(name)["hosts"] = sorted(hosts)
        app_of = self.app_of()
        for r in self.records(cutoff):
            owner = app_of(r.get("host"))
            if owner is None:
                continue
            row = entry(owner)
            row["decisions"] += 1
            if r.get("outcome") in ("deny", "step_up"):
                row[str(r["outcome"])] += 1
        earliest: dict[str, CertificateInfo] = {}
        for cert in self._workload_certs():
            if cert.kind == "workload" and cert.app is not None and (
                    cert.app not in earliest or cert.not_after < earliest[cert.app].not_after):
                earliest[cert.app] = cert
        for app, cert in earliest.items():
            row = entry(app)
            row["cert_not_after"] = _iso(cert.not_after)
            row["cert_days_left"] = _days_left(cert.not_after, now)
            row["cert_expiring"] = _expiring(cert.not_before, cert.not_after, now)
        return dict(sorted(apps.items()))

    def _workload_certs(self) -> list[CertificateInfo]:
        return list(self._workloads()) if self._workloads is not None else []

    def users(self) -> list[dict[str, Any]]:
        return [{"name": u.name, "groups": list(u.groups), "totp_enrolled": u.totp_enabled,
                 "locked": u.disabled, "locked_out_until": _iso(u.locked_until),
                 "created_at": _iso(u.created_at), "last_login": _iso(u.last_login)}
                for u in read_users(self.files.identity_db)]

    def devices(self) -> list[dict[str, Any]]:
        ca = self.ca()
        if ca is None:
            return []
        now = datetime.now(UTC)
        out = []
        for d in ca.devices():
            not_after = datetime.fromisoformat(d["not_after"])
            revocation = d.get("revocation") or {}
            issued = datetime.fromisoformat(d["issued"])
            out.append({"user": d["user"], "name": d["name"], "serial": d["serial"],
                        "issued": _iso(issued), "not_after": _iso(not_after),
                        "days_left": _days_left(not_after, now),
                        "expiring": _expiring(issued, not_after, now), "revoked": bool(d["revoked"]),
                        "revoked_reason": revocation.get("reason"),
                        "revoked_at": revocation.get("revoked_at")})
        return out

    def certificates(self) -> dict[str, Any]:
        ca = self.ca()
        now = datetime.now(UTC)
        out: list[dict[str, Any]] = []

        def add(kind: str, name: str, cert: x509.Certificate, app: str | None = None) -> None:
            uris = []
            with contextlib.suppress(x509.ExtensionNotFound):
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                uris = san.get_values_for_type(x509.UniformResourceIdentifier)
                dns = san.get_values_for_type(x509.DNSName)
                if dns and not uris:
                    name = f"{name} ({', '.join(dns)})"
            out.append({"kind": kind, "name": name, "subject": cert.subject.rfc4514_string(),
                        "spiffe_id": uris[0] if uris else None,
                        "serial": f"{cert.serial_number:x}",
                        "not_before": _iso(cert.not_valid_before_utc),
                        "not_after": _iso(cert.not_valid_after_utc),
                        "days_left": _days_left(cert.not_valid_after_utc, now),
                        "expiring": _expiring(cert.not_valid_before_utc, cert.not_valid_after_utc,
                                              now), "app": app})

        if ca is not None:
            add("root", "root CA", ca.root)
            add("intermediate", "intermediate CA", ca.intermediate)
        if self._frontdoor is not None:
            served = served_certificate(*self._frontdoor)
            if served is not None:
                add("serving", "front door", served)
        for info in sorted(self._workload_certs(), key=lambda c: (c.kind, c.app or "", c.name)):
            out.append({"kind": info.kind, "name": info.name, "subject": "",
                        "spiffe_id": info.spiffe_id, "serial": f"{info.serial:x}",
                        "not_before": _iso(info.not_before), "not_after": _iso(info.not_after),
                        "days_left": _days_left(info.not_after, now),
                        "expiring": _expiring(info.not_before, info.not_after, now),
                        "app": info.app})
        return {"trust_domain": ca.trust_domain if ca is not None else None, "certificates": out}

    def _store(self) -> PolicyStore | None:
        return PolicyStore(self.files.policy) if self.files.policy.exists() else None

    def policy(self) -> dict[str, Any]:
        store = self._store()
        text, default = DEFAULT_POLICY, True
        if store is not None:
            try:
                version = store.refresh().version
                text, default = store.source(version), False
            except PolicyError:
                pass   # none applied yet: the gateway enforces the built-in default
        policy = Policy.load(text)
        return {"version": policy.version, "default": default, "mode": policy.mode,
                "routes": [r.id for r in policy.routes], "source": text}

    def history(self) -> list[dict[str, Any]]:
        store = self._store()
        changes = store.history() if store is not None else []
        return [{"time": _iso(c.time), "actor": c.actor, "version": c.version,
                 "previous": c.previous} for c in reversed(changes)]


def access_routes(files: GateFiles, *, ca: CertificateAuthority | None = None,
                  workloads: Callable[[], Iterable[CertificateInfo]] | None = None,
                  hosts: Callable[[], Mapping[str, Sequence[str]]] | None = None,
                  frontdoor: tuple[str, int] | None = None) -> list[BaseRoute]:
    """The routes above over the gateway's files under ``files`` (``$NOOPS_HOME/gate``).

    ``ca``: the CA object to read (default: loaded from ``files.ca`` on each request, none when
    it does not exist); ``workloads``: the certificates issued outside the CA directory;
    ``hosts``: app -> hosts, the route table (default: an app is its host's first label);
    ``frontdoor``: ``(host, port)`` whose serving certificate is listed. Callables are called in
    a worker thread, per request."""
    reader = _Reader(files, ca, workloads, hosts, frontdoor)

    async def audit(request: Request) -> Response:
        q = request.query_params
        outcome = q.get("outcome") or None
        if outcome is not None and outcome not in OUTCOMES:
            raise UsageError(f"outcome={outcome!r} is not one the gateway records: use one of "
                             f"{', '.join(OUTCOMES)}")
        rows = await run_in_threadpool(
            reader.audit, user=q.get("user") or None, outcome=outcome, route=q.get("route") or None,
            app=q.get("app") or None, host=q.get("host") or None,
            cutoff=_cutoff(request, None), limit=_limit(request))
        return JSONResponse(rows)

    async def audit_verify(_: Request) -> Response:
        return JSONResponse(await run_in_threadpool(reader.verify))

    async def scores(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(reader.scores, _cutoff(request, "1h")))

    async def summary(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(reader.summary, _cutoff(request, "1h")))

    async def calls(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(reader.calls, _cutoff(request, "1h")))

    def read(fn: Callable[[], Any]) -> Callable[[Request], Any]:
        async def handler(_: Request) -> Response:
            return JSONResponse(await run_in_threadpool(fn))
        return handler

    return [
        Route("/api/access/audit", json_errors(audit), methods=["GET"]),
        Route("/api/access/audit/verify", json_errors(audit_verify), methods=["GET"]),
        Route("/api/access/scores", json_errors(scores), methods=["GET"]),
        Route("/api/access/summary", json_errors(summary), methods=["GET"]),
        Route("/api/access/calls", json_errors(calls), methods=["GET"]),
        Route("/api/access/users", json_errors(read(reader.users)), methods=["GET"]),
        Route("/api/access/devices", json_errors(read(reader.devices)), methods=["GET"]),
        Route("/api/access/certificates", json_errors(read(reader.certificates)), methods=["GET"]),
        Route("/api/access/policy", json_errors(read(reader.policy)), methods=["GET"]),
        Route("/api/access/policy/history", json_errors(read(reader.history)), methods=["GET"]),
    ]

