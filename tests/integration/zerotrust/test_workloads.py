"""Service-to-service calls through the gateway: a workload presents its SVID on the workload
socket; the policy must name the caller's SPIFFE ID (default deny)."""

from __future__ import annotations

import ssl

from zt_harness import Gateway, workload_call

from noops.gate.pki import Issued

POLICY = '''
[[route]]
id = "apps"
host = "*.localhost"
authenticated = true

[[route]]
id = "other-api"
host = "other.localhost"
path = "/api"
allow_spiffe = ["spiffe://noops.local/app/echo/web"]
'''


def _call(gw: Gateway, issued: Issued | None, host: str, path: str) -> bytes:
    return workload_call(gw, issued, host, path)


def test_allowed_workload_reaches_the_other_app_with_an_assertion(gw: Gateway) -> None:
    gw.apply_policy(POLICY)
    caller = gw.ca.issue_svid("echo", "web")
    reply = _call(gw, caller, "other.localhost", "/api/items")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    seen = gw.apps["other"].seen[-1]
    assert seen["target"] == "/api/items"
    assert any(k.lower() == "x-noops-assertion" for k, _ in seen["headers"])


def test_workload_not_named_by_the_policy_gets_403(gw: Gateway) -> None:
    gw.apply_policy(POLICY)
    before = len(gw.apps["other"].seen)
    stranger = gw.ca.issue_svid("third", "web")
    reply = _call(gw, stranger, "other.localhost", "/api/items")
    assert reply.startswith(b"HTTP/1.1 403"), reply[:300]
    # and an allowed caller only where the policy names it
    caller = gw.ca.issue_svid("echo", "web")
    assert _call(gw, caller, "other.localhost", "/").startswith(b"HTTP/1.1 403")
    assert len(gw.apps["other"].seen) == before
    records = [r for r in gw.audit_records() if r.get("user") == "spiffe://noops.local/app/third/web"]
    assert records and records[-1]["outcome"] == "deny" and "spiffe_not_allowed" in records[-1]["reasons"]


def test_workload_socket_requires_a_certificate(gw: Gateway) -> None:
    try:
        reply = _call(gw, None, "other.localhost", "/api/items")
    except (ssl.SSLError, OSError):
        return
    assert not reply.startswith(b"HTTP/1.1 200")
