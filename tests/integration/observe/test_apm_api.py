"""The APM HTTP API over a real socket, a real DuckDB store and spans/logs recorded by the
OpenTelemetry SDK (``web`` calls ``shop`` through the egress endpoint; see sdk_traffic)."""

from __future__ import annotations

from typing import Any

import pytest
from store_harness import ApmApi

pytestmark = pytest.mark.observe
H = {"since": "1h"}


def test_services(apm_api: ApmApi) -> None:
    t = apm_api.traffic
    rows = apm_api.get("/api/apm/services", **H).json()
    by = {r["service"]: r for r in rows}
    assert sorted(by) == ["shop", "web"]
    assert by["shop"]["count"] == by["web"]["count"] == t.requests
    assert by["shop"]["error_pct"] == pytest.approx(100 * len(t.failed) / t.requests)
    assert by["web"]["error_pct"] == 0
    assert by["shop"]["p99_ms"] == pytest.approx(300.0)  # the slow provider
    assert by["shop"]["p50_ms"] < 30


def test_endpoints_and_cardinality_warning(apm_api: ApmApi) -> None:
    body = apm_api.get("/api/apm/services/web/endpoints", **H).json()
    assert body["warning"] is None
    assert sorted(e["endpoint"] for e in body["endpoints"]) == ["GET /", "GET /cart",
                                                                "GET /checkout"]
    folded = apm_api.get("/api/apm/services/web/endpoints", max="2", **H).json()
    assert [e["endpoint"] for e in folded["endpoints"]] == ["GET /checkout", "other"]
    assert folded["endpoints"][1]["folded"] == 2
    assert folded["endpoints"][1]["count"] == apm_api.traffic.requests - folded["endpoints"][0][
        "count"]
    assert "3 distinct span names" in folded["warning"]


def test_histogram_slowest_timeseries(apm_api: ApmApi) -> None:
    t = apm_api.traffic
    bins = apm_api.get("/api/apm/services/shop/histogram", endpoint="POST /pay", le="100",
                       **H).json()
    assert bins == [{"le_ms": 100.0, "count": t.requests - len(t.slow)},
                    {"le_ms": None, "count": len(t.slow)}]
    slowest = apm_api.get("/api/apm/services/shop/slowest", limit="3", **H).json()
    assert len(slowest) == 3
    assert all(s["duration_ms"] == pytest.approx(300.0) for s in slowest)
    assert {s["trace_id"] for s in slowest} <= {t.trace_ids[i] for i in t.slow}
    points = apm_api.get("/api/apm/services/shop/timeseries", **H).json()
    assert sum(p["count"] for p in points) == t.requests
    assert sum(p["errors"] for p in points) == len(t.failed)


def test_trace_search(apm_api: ApmApi) -> None:
    t = apm_api.traffic
    url = "/api/apm/services/shop/slowest"

    def ids(**params: Any) -> set[str]:
        return {s["trace_id"] for s in apm_api.get(url, limit="1000", **params, **H).json()}

    assert ids(status="error") == {t.trace_ids[i] for i in t.failed}
    assert ids(attr="payment.provider=slowpay") == {t.trace_ids[i] for i in t.slow}
    slow_failed = {t.trace_ids[i] for i in t.slow if i in t.failed}
    assert ids(attr="payment.provider=slowpay", status="error") == slow_failed
    assert ids(min_ms="250", endpoint="/PAY") == {t.trace_ids[i] for i in t.slow}
    assert ids(attr="service.name=web") == set()  # a resource attribute of the other service
    for bad in ({"status": "maybe"}, {"min_ms": "x"}, {"min_ms": "inf"}, {"attr": "no-equals"},
                {"attr": ["k=1", "k=2"]}):
        resp = apm_api.get(url, **bad, **H)
        assert resp.status_code == 400, bad
        assert resp.json()["error"]


def test_error_groups(apm_api: ApmApi) -> None:
    t = apm_api.traffic
    (group,) = apm_api.get("/api/apm/services/shop/errors", **H).json()
    assert (group["exception_type"], group["message"], group["count"]) == (
        "ValueError", "card <n> declined", len(t.failed))
    assert group["sample_trace_id"] == t.trace_ids[t.failed[-1]]
    assert group["sample_message"] == f"card {4000 + t.failed[-1]} declined"
    everywhere = apm_api.get("/api/apm/errors", **H).json()
    assert group in everywhere
    client = next(g for g in everywhere if g["service"] == "web")  # status Error, no exception
    assert (client["endpoint"], client["exception_type"], client["count"]) == (
        "POST shop", "", len(t.failed))


def test_correlations(apm_api: ApmApi) -> None:
    slow = apm_api.get("/api/apm/services/shop/correlations", endpoint="POST /pay",
                       slow_ms="250", **H).json()
    assert slow[0] == {"cohort": "slow", "source": "span", "key": "payment.provider",
                       "value": "slowpay", "cohort_pct": 100.0, "baseline_pct": 0.0, "score": 1.0}
    # Every 4th payment fails whatever its provider (slowpay: 20 % of failed and of the rest):
    # nothing stands out.
    assert apm_api.get("/api/apm/services/shop/correlations", failed="1", **H).json() == []
    # Both cohorts in one read: each the same as asked alone, slow first.
    both = apm_api.get("/api/apm/services/shop/correlations", endpoint="POST /pay",
                       failed="1", slow_ms="250", **H).json()
    alone = apm_api.get("/api/apm/services/shop/correlations", endpoint="POST /pay",
                        failed="1", **H).json()
    assert both == slow + alone
    neither = apm_api.get("/api/apm/services/shop/correlations", **H)
    assert neither.status_code == 400
    assert "at least one" in neither.json()["error"]


def test_service_map(apm_api: ApmApi) -> None:
    t = apm_api.traffic
    (edge,) = apm_api.get("/api/apm/map", **H).json()
    assert (edge["client"], edge["server"], edge["calls"], edge["errors"], edge["mtls"]) == (
        "web", "shop", t.requests, len(t.failed), True)


def test_trace_waterfall_with_logs(apm_api: ApmApi) -> None:
    t = apm_api.traffic
    i = t.failed[1]
    body = apm_api.get(f"/api/traces/{t.trace_ids[i].upper()}").json()
    assert body["trace_id"] == t.trace_ids[i]
    assert [(s["service"], s["kind"], s["depth"]) for s in body["spans"]] == [
        ("web", "Server", 0), ("web", "Client", 1), ("shop", "Server", 2)]
    root, client, pay = body["spans"]
    assert (client["parent_span_id"], pay["parent_span_id"]) == (root["span_id"],
                                                                 client["span_id"])
    assert [s["offset_ms"] for s in body["spans"]] == [0.0, 1.0, 2.0]
    assert body["duration_ms"] == root["duration_ms"]
    assert pay["status"] == "Error" and pay["events"][0]["name"] == "exception"
    assert [(r["service"], r["severity"]) for r in body["logs"]] == [("web", "INFO"),
                                                                     ("shop", "ERROR")]
    assert body["logs"][1]["span_id"] == pay["span_id"]
    assert body["logs"][1]["body"] == f"payment failed: card {4000 + i} declined"


def test_trace_errors(apm_api: ApmApi) -> None:
    missing = apm_api.get(f"/api/traces/{'ab' * 16}")
    assert missing.status_code == 404
    assert "not stored" in missing.json()["error"]
    assert apm_api.get("/api/traces/nothex").status_code == 400


def test_log_search(apm_api: ApmApi) -> None:
    t = apm_api.traffic
    found = apm_api.get("/api/logs", q="DECLINED", service="shop", **H).json()
    assert len(found) == len(t.failed)
    stamps = [r["Timestamp"] for r in found]
    assert stamps == sorted(stamps, reverse=True)
    assert len(apm_api.get("/api/logs", severity="error", **H).json()) == len(t.failed)
    one = apm_api.get("/api/logs", attr=f"order.id={t.failed[0]}", **H).json()
    assert {r["ServiceName"] for r in one} == {"web", "shop"}
    both = apm_api.get("/api/logs", **H,
                       attr=[f"order.id={t.failed[0]}", "service.name=shop"]).json()
    assert [r["ServiceName"] for r in both] == ["shop"]
    by_trace = apm_api.get("/api/logs", trace_id=t.trace_ids[0], **H).json()
    assert len(by_trace) == 2
    assert len(apm_api.get("/api/logs", limit="3", **H).json()) == 3


def test_gauge_series_by_instance(apm_api: ApmApi) -> None:
    import time

    now = int(time.time()) // 60 * 60 - 60  # the last whole minute: its points are all in window
    rows = [{"ServiceName": "shop", "MetricName": "container.memory.usage", "TimeUnix": (now + s)
             * 1_000_000_000, "Value": float(v), "Attributes": {"noops.instance.id": inst}}
            for inst, values in (("shop-1", (100, 300)), ("shop-2", (50, 50)))
            for s, v in zip((0, 30), values, strict=True)]
    apm_api.store.insert_metrics("gauge", rows)
    body = apm_api.get("/api/metrics/gauge/container.memory.usage", service="shop",
                       by="noops.instance.id", step="60", **H).json()
    assert [(p["group"], p["bucket_s"], p["avg"], p["max"], p["count"]) for p in body] == [
        ("shop-1", now, 200.0, 300.0, 2), ("shop-2", now, 50.0, 50.0, 2)]
    assert apm_api.get("/api/metrics/gauge/container.memory.usage", service="web", **H
                       ).json() == []


@pytest.mark.parametrize(("path", "params", "needle"), [
    ("/api/metrics/gauge/x", {"step": "0"}, "between"),
    ("/api/apm/services", {"since": "forever"}, "not a duration"),
    ("/api/logs", {"severity": "loud"}, "unknown severity"),
    ("/api/logs", {"attr": "novalue"}, "KEY=VALUE"),
    ("/api/logs", {"limit": "0"}, "between"),
    ("/api/apm/services/shop/histogram", {"le": "10,5"}, "ascending"),
    ("/api/apm/services/web/endpoints", {"max": "1"}, "between"),
])
def test_bad_input_is_400_with_a_message(apm_api: ApmApi, path: str, params: dict[str, str],
                                         needle: str) -> None:
    resp = apm_api.get(path, **params)
    assert resp.status_code == 400
    assert needle in resp.json()["error"]
