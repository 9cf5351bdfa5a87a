"""The deployments/probes/alerts routes, served by uvicorn on a Unix socket (like the daemon's
API) over real objects and a real DuckDB store."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from rules_helpers import RulesApi, Served, at, span_rows

from noops.observe.store import DuckDBStore

pytestmark = pytest.mark.observe


@pytest.fixture
def client(rules_api: RulesApi) -> httpx.Client:
    return rules_api.http


def test_deployments_post_dedup_list_and_compare(client: httpx.Client, tstore: DuckDBStore) -> None:
    tstore.insert_spans(span_rows("shop", at(-15), 30, 60, duration_ms=30))
    body = {"service": "shop", "version": "abc123", "description": "CI run 7",
            "fingerprint": "ci-7", "at": at(0).timestamp()}
    first = client.post("/api/deployments", json=body)
    assert first.status_code == 201 and first.json()["deduplicated"] is False
    again = client.post("/api/deployments", json={**body, "at": at(3).timestamp()})
    assert again.status_code == 200 and again.json()["deduplicated"] is True
    assert again.json()["id"] == first.json()["id"]
    listed = client.get("/api/deployments", params={"service": "shop", "compare": "1"}).json()
    assert [m["version"] for m in listed] == ["abc123"]
    assert listed[0]["kind"] == "external" and listed[0]["source"] == "api"
    cmp = listed[0]["comparison"]
    assert cmp["complete"] and cmp["before"]["count"] == 900 and cmp["after"]["count"] == 900
    one = client.get(f"/api/deployments/{first.json()['id']}", params={"window": "5m"}).json()
    assert one["comparison"]["window_s"] == 300 and one["comparison"]["after"]["count"] == 300


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", "/api/deployments", {"version": "1"}, 400, "needs a service"),
    ("POST", "/api/deployments", {"service": "a", "version": "1", "kind": "x"}, 400,
     "unknown marker kind"),
    ("POST", "/api/deployments", {"service": "a", "version": "1", "attributes": [1]}, 400,
     "attributes"),
    ("POST", "/api/deployments", [1, 2], 400, "JSON object"),
    ("GET", "/api/deployments/77", None, 404, "no deploy marker 77"),
    ("GET", "/api/deployments/x", None, 400, "whole number"),
    ("GET", "/api/deployments?since=yesterday", None, 400, "since"),
    ("POST", "/api/probes", {"url": "https://x.example/", "every": "1s"}, 400, "too short"),
    ("POST", "/api/probes", {"url": "gopher://x"}, 400, "bad probe URL"),
    ("POST", "/api/probes", {"url": "https://x.example/", "json_path": "$.a["}, 400,
     "bad JSON path"),
    ("DELETE", "/api/probes/5", None, 404, "no probe 5"),
    ("GET", "/api/probes/5/results", None, 404, "no probe 5"),
    ("POST", "/api/alerts", {"kind": "error_rate", "service": "a"}, 400, "needs a threshold"),
    ("POST", "/api/alerts", {"kind": "p95", "service": "a", "threshold": "300ms",
                             "webhooks": "http://x/"}, 400, "list of URLs"),
    ("DELETE", "/api/alerts/3", None, 404, "no alert 3"),
    ("GET", "/api/alerts/events?limit=0", None, 400, "limit"),
])
def test_errors_are_json_with_the_right_status(client: httpx.Client, method: str, path: str,
                                               body: object, status: int, message: str) -> None:
    resp = client.request(method, path, json=body)
    assert resp.status_code == status
    assert message in resp.json()["error"]


def test_probe_routes(client: httpx.Client, rules_api: RulesApi, app_server: Served) -> None:
    made = client.post("/api/probes", json={"url": app_server.url + "/health", "every": "10s",
                                            "json_path": "$.status", "json_expect": "ok",
                                            "app": "shop", "name": "shop health"})
    assert made.status_code == 201
    probe = made.json()
    assert (probe["kind"], probe["every_s"], probe["json_expect"]) == ("http", 10.0, "ok")
    assert client.get("/api/probes").json()[0]["last"] is None
    result = asyncio.run(rules_api.probes.check(probe["id"]))
    listed = client.get("/api/probes").json()
    assert listed[0]["last"]["ok"] is True and listed[0]["last"]["trace_id"] == result.trace_id
    results = client.get(f"/api/probes/{probe['id']}/results").json()
    assert [r["trace_id"] for r in results] == [result.trace_id]
    dup = client.post("/api/probes", json={"url": app_server.url, "name": "shop health"})
    assert dup.status_code == 400 and "exists already" in dup.json()["error"]
    assert client.delete(f"/api/probes/{probe['id']}").json() == {"removed": probe["id"]}
    assert client.get("/api/probes").json() == []


def test_alert_routes(client: httpx.Client, rules_api: RulesApi, tstore: DuckDBStore,
                      webhook: Served) -> None:
    tstore.insert_spans(span_rows("shop", at(0), 3, 60, error_every=2))
    hook = f"{webhook.url}/services/T0/B1/s3cr3t-token"
    made = client.post("/api/alerts", json={"kind": "error_rate", "service": "shop",
                                            "threshold": "5%", "for": "1m", "window": "2m",
                                            "webhook": hook})
    assert made.status_code == 201
    rule = made.json()
    assert (rule["threshold"], rule["unit"], rule["for_s"]) == (5.0, "%", 60.0)
    # a webhook URL is a credential (its path): shown with scheme, host and its last characters
    assert rule["webhooks"] == [f"{webhook.url}/…oken"]
    assert "s3cr3t" not in client.get("/api/alerts").text
    alerts = rules_api.alerts
    alerts.evaluate(at(2))
    assert client.get("/api/alerts").json()[0]["state"] == "pending"
    alerts.evaluate(at(3))
    alerts.deliver(at(3))
    state = client.get("/api/alerts").json()[0]
    assert state["state"] == "firing" and "error rate 50.00%" in state["message"]
    events = client.get("/api/alerts/events", params={"alert": str(rule["id"])}).json()
    assert [(e["status"], e["deliveries"][0]["status"]) for e in events] == [
        ("firing", "delivered")]
    assert client.delete(f"/api/alerts/{rule['id']}").json() == {"removed": rule["id"]}
    assert client.get("/api/alerts").json() == []
    assert len(client.get("/api/alerts/events").json()) == 1
