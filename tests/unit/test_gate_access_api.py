"""noops.gate.api: the read-only access API over real gate stores in a temporary home (a real
audit log, identity database, CA and policy store), served by uvicorn on a Unix socket."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from noops.gate.api import CertificateInfo, access_routes, served_certificate
from noops.gate.audit import AuditLog
from noops.gate.identity import IdentityStore, LoginPolicy
from noops.gate.pep import GateFiles
from noops.gate.pki import CertificateAuthority
from noops.gate.policy import PolicyStore
from noops.gate.trust import Contribution

PASSWORD = "correct horse battery staple"
BEARER = "Bearer s3cr3t-bearer-value"
POLICY_V1 = '[[route]]\nid = "open"\nhost = "*.localhost"\nauthenticated = false\n'
POLICY_V2 = (POLICY_V1 + '\n[[route]]\nid = "admin"\nhost = "shop.localhost"\npath = "/admin"\n'
             'min_score = 50\nbelow = "step_up"\n')
ROUTES = ["/api/access/audit", "/api/access/audit/verify", "/api/access/scores",
          "/api/access/summary", "/api/access/users", "/api/access/devices",
          "/api/access/certificates", "/api/access/policy", "/api/access/policy/history"]


@contextmanager
def served(routes: list[BaseRoute], sock: Path) -> Iterator[httpx.Client]:
    """``routes`` served by uvicorn on ``sock`` (in a thread), and a client for them."""
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=routes), uds=str(sock),
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            time.sleep(0.025)
        assert server.started, "uvicorn did not start"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                          base_url="http://noops", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(15)


@dataclass
class Gate:
    files: GateFiles
    client: httpx.Client
    ca: CertificateAuthority
    totp_secret: str
    records: list[dict[str, Any]]   # as written, oldest first
    svid_not_after: datetime


def _decision(now: datetime, ago_s: float, host: str, route: str | None, outcome: str,
              score: int | None, user: str | None = "alice") -> dict[str, Any]:
    return {"time": now - timedelta(seconds=ago_s), "request_id": f"r{ago_s}", "user": user,
            "device": None, "route": route, "host": host, "method": "GET", "path": "/p?token=abc",
            "policy_version": "sha256:" + "ab" * 32,
            "contributions": [Contribution("auth", "verified", 30, "totp 1 min ago"),
                              Contribution("new_network", "observed", -10, "new network")],
            "score": score, "outcome": outcome, "shadow_outcome": None,
            "reasons": [] if outcome == "allow" else ["score_below_min"],
            "client_ip": "10.0.0.7", "authorization": BEARER}


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    files = GateFiles(tmp_path / "gate")
    ca = CertificateAuthority.create(files.ca)
    store = IdentityStore(files.identity_db, hasher=PasswordHasher(time_cost=1, memory_cost=8,
                                                                   parallelism=1),
                          login_policy=LoginPolicy(max_failures=2))
    try:
        store.add_user("alice", PASSWORD, ["admin", "ops"])
        secret, _ = store.provision_totp("alice")
        store.create_session("alice", auth_methods={"password", "totp"}, client_ip="10.0.0.7")
        store.add_user("bob", PASSWORD)
        store.lock_user("bob")
        store.add_user("carol", PASSWORD)
        for _ in range(2):
            assert not store.verify_password("carol", "wrong", client_ip="10.0.0.8")
    finally:
        store.close()
    ca.enroll_device("laptop", "alice", password="bundle-password")
    ca.enroll_device("phone", "alice", password="bundle-password")
    ca.revoke("alice/phone", "lost")
    policies = PolicyStore(files.policy)
    policies.apply(POLICY_V1, "ops")
    policies.apply(POLICY_V2, "ada")
    now = datetime.now(UTC)
    records = [
        _decision(now, 7200, "shop.localhost", "open", "deny", 5),          # outside 1h
        _decision(now, 600, "shop.localhost", "open", "allow", 100),
        _decision(now, 500, "shop.localhost", "admin", "step_up", 15),
        _decision(now, 400, "shop.localhost", "admin", "deny", 0, user=None),
        _decision(now, 300, "blog.localhost", "open", "allow", 45),
        _decision(now, 200, "shop.localhost", "admin", "allow", 55, user="bob"),
        {"time": now - timedelta(seconds=100), "outcome": "policy_applied",
         "policy_version": "sha256:" + "cd" * 32, "reasons": ["previous=sha256:ab"]},
        _decision(now, 50, "shop.localhost", None, "login", None),
    ]
    with AuditLog(files.audit) as log:
        for r in records:
            log.append(r)
    svid = ca.issue_svid("shop", "web", ttl_s=3600)
    other = ca.issue_svid("shop", "worker", ttl_s=1800)
    workloads = [CertificateInfo("workload", "shop-web-1", svid.spiffe_id or "", svid.serial,
                                 svid.not_after, "shop"),
                 CertificateInfo("workload", "shop-worker-1", other.spiffe_id or "", other.serial,
                                 other.not_after, "shop", other.not_after - timedelta(hours=0.5)),
                 # 50 of its 60 minutes gone: its renewal at half-life is overdue
                 CertificateInfo("workload", "blog-web-1", "spiffe://noops.local/app/blog/web", 7,
                                 now + timedelta(minutes=10), "blog", now - timedelta(minutes=50))]
    routes = access_routes(files, workloads=lambda: workloads,
                           hosts=lambda: {"shop": ["shop.localhost"], "idle": []})
    with served(routes, tmp_path / "api.sock") as client:
        yield Gate(files, client, ca, secret, records, other.not_after)


def get(gate: Gate, path: str, **params: Any) -> Any:
    resp = gate.client.get(path, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_audit_newest_first_with_every_decision_field(gate: Gate) -> None:
    rows = get(gate, "/api/access/audit")
    assert [r["seq"] for r in rows] == list(range(len(gate.records) - 1, -1, -1))
    step_up = next(r for r in rows if r["outcome"] == "step_up")
    assert step_up["host"] == "shop.localhost" and step_up["route"] == "admin"
    assert step_up["score"] == 15 and step_up["policy_version"] == "sha256:" + "ab" * 32
    assert step_up["reasons"] == ["score_below_min"]
    assert step_up["contributions"] == [
        {"signal": "auth", "source": "verified", "points": 30, "reason": "totp 1 min ago"},
        {"signal": "new_network", "source": "observed", "points": -10, "reason": "new network"}]
    assert step_up["path"] == "/p?[redacted]"
    assert step_up["extra"]["authorization"] == "[redacted]"


def test_audit_filters_and_bounds(gate: Gate) -> None:
    def seqs(**params: Any) -> list[int]:
        return [r["seq"] for r in get(gate, "/api/access/audit", **params)]

    assert seqs(limit=3) == [7, 6, 5]
    assert seqs(user="bob") == [5]
    assert seqs(outcome="deny") == [3, 0]
    assert seqs(outcome="deny", since="1h") == [3]
    assert seqs(route="admin") == [5, 3, 2]
    assert seqs(app="shop", since="1h") == [7, 5, 3, 2, 1]
    assert seqs(app="blog") == [4]           # not in the route table: its host's first label
    assert seqs(host="BLOG.localhost") == [4]
    assert seqs(since="1h") == [7, 6, 5, 4, 3, 2, 1]
    assert seqs(user="nobody") == []


@pytest.mark.parametrize(("params", "says"), [
    ({"limit": "0"}, "use 1 to 1000"), ({"limit": "1001"}, "use 1 to 1000"),
    ({"limit": "ten"}, "whole number"), ({"since": "yesterday"}, "use e.g. 30s"),
    ({"since": "-5m"}, "use e.g. 30s"), ({"outcome": "maybe"}, "use one of allow, deny"),
])
def test_bad_query_values_get_400_saying_what_to_do(gate: Gate, params: dict[str, str],
                                                    says: str) -> None:
    resp = gate.client.get("/api/access/audit", params=params)
    assert resp.status_code == 400
    assert says in resp.json()["error"] and resp.json()["kind"] == "UsageError"
    for path in ("/api/access/scores", "/api/access/summary"):
        if "since" in params:
            assert gate.client.get(path, params=params).status_code == 400


def test_verify_reports_the_chain_and_the_first_bad_record(gate: Gate) -> None:
    assert get(gate, "/api/access/audit/verify") == {
        "ok": True, "records": len(gate.records), "first_bad_index": None, "reason": ""}
    lines = gate.files.audit.read_text().splitlines()
    lines[2] = lines[2].replace('"score":15', '"score":95')
    gate.files.audit.write_text("\n".join(lines) + "\n")
    result = get(gate, "/api/access/audit/verify")
    assert result["ok"] is False and result["first_bad_index"] == 2
    assert "edited" in result["reason"]


def test_score_distribution_per_route(gate: Gate) -> None:
    rows = get(gate, "/api/access/scores", since="1h")
    assert [r["route"] for r in rows] == ["admin", "open"]   # most decisions first
    routes = {r["route"]: r for r in rows}
    assert set(routes) == {"admin", "open"}   # the login and policy events carry no score
    admin = routes["admin"]
    assert admin["decisions"] == 3 == sum(admin["buckets"])
    assert admin["buckets"][0] == 1 and admin["buckets"][1] == 1 and admin["buckets"][5] == 1
    assert admin["outcomes"] == {"allow": 1, "deny": 1, "step_up": 1}
    assert admin["mean_score"] == round((15 + 0 + 55) / 3, 1)
    open_ = routes["open"]
    assert open_["buckets"][9] == 1 and open_["buckets"][4] == 1   # 100 is in the last bucket
    assert open_["outcomes"] == {"allow": 2}                        # the deny is 2 h old
    longer = {r["route"]: r for r in get(gate, "/api/access/scores", since="3h")}
    assert longer["open"]["outcomes"] == {"allow": 2, "deny": 1} and longer["open"]["buckets"][0] == 1


def test_summary_per_app(gate: Gate) -> None:
    summary = get(gate, "/api/access/summary", since="1h")
    shop = summary["shop"]
    assert shop["hosts"] == ["shop.localhost"]
    assert (shop["decisions"], shop["deny"], shop["step_up"]) == (5, 1, 1)
    assert shop["cert_not_after"] == gate.svid_not_after.isoformat()   # the earlier of the two
    assert 0 < shop["cert_days_left"] <= round(1800 / 86400, 2)
    assert shop["cert_expiring"] is False   # 7 days are not left, but it is fresh
    blog = summary["blog"]
    assert blog["decisions"] == 1 and blog["cert_expiring"] is True
    assert blog["cert_days_left"] == round(10 / 1440, 2)
    assert summary["idle"] == {"hosts": [], "decisions": 0, "deny": 0, "step_up": 0,
                               "cert_not_after": None, "cert_days_left": None,
                               "cert_expiring": False}
    assert get(gate, "/api/access/summary", since="3h")["shop"]["deny"] == 2


def test_users_devices_certificates_policy(gate: Gate) -> None:
    users = {u["name"]: u for u in get(gate, "/api/access/users")}
    assert users["alice"]["groups"] == ["admin", "ops"] and users["alice"]["totp_enrolled"]
    assert users["alice"]["last_login"] is not None and not users["alice"]["locked"]
    assert users["bob"]["locked"] and users["bob"]["last_login"] is None
    assert users["carol"]["locked_out_until"] is not None and not users["carol"]["locked"]
    assert set(users["alice"]) == {"name", "groups", "totp_enrolled", "locked",
                                   "locked_out_until", "created_at", "last_login"}

    devices = {d["name"]: d for d in get(gate, "/api/access/devices")}
    assert devices["phone"]["revoked"] and devices["phone"]["revoked_reason"] == "lost"
    assert not devices["laptop"]["revoked"] and devices["laptop"]["revoked_reason"] is None
    assert 89 < devices["laptop"]["days_left"] <= 90 and devices["laptop"]["user"] == "alice"

    certs = get(gate, "/api/access/certificates")
    assert certs["trust_domain"] == "noops.local"
    kinds = [c["kind"] for c in certs["certificates"]]
    assert kinds == ["root", "intermediate", "workload", "workload", "workload"]
    root = certs["certificates"][0]
    assert root["serial"] == f"{gate.ca.root.serial_number:x}" and root["days_left"] > 3600
    by_name = {c["name"]: c for c in certs["certificates"]}
    assert by_name["shop-web-1"]["spiffe_id"] == "spiffe://noops.local/app/shop/web"
    # blog-web-1 is past half its life; shop-web-1's lifetime is unknown: 7 days alone decide
    assert [c["name"] for c in certs["certificates"] if c["expiring"]] == ["blog-web-1",
                                                                           "shop-web-1"]
    assert not by_name["shop-worker-1"]["expiring"] and not root["expiring"]

    policy = get(gate, "/api/access/policy")
    assert policy["source"] == POLICY_V2 and not policy["default"]
    assert policy["routes"] == ["open", "admin"] and policy["mode"] == "enforce"
    history = get(gate, "/api/access/policy/history")
    assert [h["actor"] for h in history] == ["ada", "ops"]
    assert history[0]["version"] == policy["version"] and history[0]["previous"] == history[1]["version"]


def test_no_secret_in_any_response(gate: Gate) -> None:
    key_pem = (gate.files.ca / "intermediate.key").read_text()
    for path in ROUTES:
        text = gate.client.get(path).text
        for secret in (PASSWORD, gate.totp_secret, BEARER.split()[1], "bundle-password",
                       "argon2", "password_hash", "PRIVATE KEY", key_pem[40:80]):
            assert secret not in text, (path, secret)


def test_an_empty_home_answers_empty_and_stays_untouched(tmp_path: Path) -> None:
    files = GateFiles(tmp_path / "gate")
    with served(access_routes(files), tmp_path / "api.sock") as client:
        answers = {path: client.get(path) for path in ROUTES}
    assert all(r.status_code == 200 for r in answers.values()), {
        p: r.text for p, r in answers.items()}
    assert answers["/api/access/audit"].json() == []
    assert answers["/api/access/audit/verify"].json()["records"] == 0
    assert answers["/api/access/users"].json() == [] == answers["/api/access/devices"].json()
    assert answers["/api/access/certificates"].json() == {"trust_domain": None, "certificates": []}
    policy = answers["/api/access/policy"].json()
    assert policy["default"] and "console" in policy["routes"]
    assert not files.root.exists()   # a reader creates nothing


def test_the_front_doors_serving_certificate_is_read_by_a_handshake(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    issued = ca.issue_gateway_cert(["localhost"], ttl_s=7 * 86400)
    cert, key = issued.write(tmp_path, "serving")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        files = GateFiles(tmp_path / "gate")
        with served(access_routes(files, ca=ca, frontdoor=("127.0.0.1", port)),
                    tmp_path / "api.sock") as client:
            certs = client.get("/api/access/certificates").json()["certificates"]
    finally:
        thread.join(10)
        listener.close()
    serving = next(c for c in certs if c["kind"] == "serving")
    assert serving["serial"] == f"{issued.serial:x}" and "localhost" in serving["name"]
    assert 6.9 < serving["days_left"] <= 7
    # nothing listening: left out, not an error
    free = socket.create_server(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    assert served_certificate("127.0.0.1", closed_port, timeout_s=0.5) is None



def test_calls_between_workloads_by_caller_and_app(tmp_path: Path) -> None:
    files = GateFiles(tmp_path / "gate")
    files.audit.parent.mkdir(parents=True)
    now = datetime.now(UTC)
    front, probe = "spiffe://noops.local/app/shop-frontend/web", "spiffe://noops.local/app/noops/probe"
    with AuditLog(files.audit) as log:
        for ago, user, host, outcome in (
                (7200, front, "billing.localhost", "deny"),               # outside the window
                (30, front, "shop-inventory.localhost", "allow"),
                (20, front, "shop-inventory.localhost", "allow"),
                (10, front, "billing.localhost", "deny"),
                (9, probe, "shop-frontend.localhost", "allow"),
                (8, "alice", "shop-inventory.localhost", "deny")):        # a user, not a call
            log.append(_decision(now, ago, host, "apps", outcome, 50, user=user))
    with served(access_routes(files), tmp_path / "api.sock") as client:
        calls = client.get("/api/access/calls", params={"since": "1h"}).json()
    assert [(c["caller"], c["app"], c["allow"], c["deny"]) for c in calls] == [
        ("noops", "shop-frontend", 1, 0),
        ("shop-frontend", "billing", 0, 1),
        ("shop-frontend", "shop-inventory", 2, 0)]
    assert calls[1]["caller_spiffe_id"] == front
