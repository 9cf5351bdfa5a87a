"""One conformance suite for every TelemetryStore backend (see store_harness.BACKENDS).

Every figure a query returns is recomputed here in Python from the same synthetic rows.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import pytest
from store_harness import (
    NS,
    T0,
    Dataset,
    describe,
    disk_bytes,
    expected_type,
    load,
    make_dataset,
    ns,
)

from noops.observe.store import StoreError, StoreUsageError, TelemetryStore, analysis, schema
from noops.observe.store.analysis import normalise
from noops.observe.store.edges import MINUTE_NS
from noops.observe.store.rollup import bucket_of, estimate_quantiles

START, END = T0, T0 + timedelta(minutes=10)
WINDOW_S = 600.0
ENTRY = {"Server", "Consumer"}


def q(values: list[float], p: float) -> float:
    """Linear-interpolation quantile (R-7), the definition both backends use."""
    v = sorted(values)
    h = (len(v) - 1) * p
    lo = math.floor(h)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (h - lo)


def entry(ds: Dataset, service: str | None = None) -> list[dict[str, Any]]:
    return [s for s in ds.spans if s["SpanKind"] in ENTRY
            and (service is None or s["ServiceName"] == service)]


def check_stats(got: dict[str, Any], spans: list[dict[str, Any]]) -> None:
    durs = [s["Duration"] / 1e6 for s in spans]
    assert got["count"] == len(spans)
    assert got["rate_per_s"] == pytest.approx(len(spans) / WINDOW_S)
    errors = sum(s["StatusCode"] == "Error" for s in spans)
    assert got["error_pct"] == pytest.approx(100 * errors / len(spans))
    for key, p in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        assert got[key] == pytest.approx(q(durs, p), rel=1e-6), key


def test_is_a_telemetry_store(loaded: tuple[str, TelemetryStore]) -> None:
    assert isinstance(loaded[1], TelemetryStore)


@pytest.mark.parametrize("table", sorted(schema.TABLES))
def test_columns_match_exporter_schema(loaded: tuple[str, TelemetryStore], table: str) -> None:
    backend, store = loaded
    got = describe(backend, store, table)
    want = {n: expected_type(backend)(t) for n, t in schema.TABLES[table]}
    if table.endswith("_1m") and backend == "chdb":
        # AggregatingMergeTree wraps the measures: SimpleAggregateFunction(sum, UInt64).
        got = {n: t.split(", ")[-1].rstrip(")") if t.startswith("Simple") else t
               for n, t in got.items()}
    assert got == want


def test_services(loaded: tuple[str, TelemetryStore], dataset: Dataset) -> None:
    got = loaded[1].services(START, END)
    assert [r["service"] for r in got] == ["api", "db", "frontend"]
    for row in got:
        assert row["estimated"] is False
        check_stats(dict(row), entry(dataset, row["service"]))


# A window that starts and ends inside a minute: its partial minutes come from the spans.
W_START, W_END = START + timedelta(seconds=37), END - timedelta(seconds=49)


def in_window(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if ns(W_START) <= s["Timestamp"] < ns(W_END)]


def test_services_exact_up_to_exact_max(loaded: tuple[str, TelemetryStore],
                                        dataset: Dataset) -> None:
    spans = in_window(entry(dataset))
    got = loaded[1].services(W_START, W_END, exact_max=len(spans))
    assert got and all(r["estimated"] is False for r in got)
    for row in got:
        durs = [s["Duration"] / 1e6 for s in spans if s["ServiceName"] == row["service"]]
        assert row["p95_ms"] == pytest.approx(q(durs, 0.95), rel=1e-6)


def test_services_estimated_above_exact_max(loaded: tuple[str, TelemetryStore],
                                            dataset: Dataset) -> None:
    """Above ``exact_max`` entry spans: exact count, rate and error %, percentiles from the
    log buckets of exactly the window's spans (whole minutes from the rollup, the partial ones
    from the spans), clamped to their min/max."""
    spans = in_window(entry(dataset))
    got = loaded[1].services(W_START, W_END, exact_max=len(spans) - 1)
    assert [r["service"] for r in got] == ["api", "db", "frontend"]
    window_s = (W_END - W_START).total_seconds()
    for row in got:
        mine = [s for s in spans if s["ServiceName"] == row["service"]]
        durs = [s["Duration"] for s in mine]
        assert row["estimated"] is True
        assert row["count"] == len(mine)
        assert row["rate_per_s"] == pytest.approx(len(mine) / window_s)
        errors = sum(s["StatusCode"] == "Error" for s in mine)
        assert row["error_pct"] == pytest.approx(100 * errors / len(mine))
        want = estimate_quantiles(Counter(bucket_of(d) for d in durs).items(), (0.5, 0.95, 0.99),
                                  min(durs), max(durs))
        assert [row["p50_ms"], row["p95_ms"], row["p99_ms"]] == pytest.approx(
            [w / 1e6 for w in want], rel=1e-9)
        for key, p in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            exact = q([d / 1e6 for d in durs], p)
            # the estimate's bound (±4.4 %) plus the rank vs interpolation difference
            assert row[key] == pytest.approx(exact, rel=0.25), key


def test_endpoints(loaded: tuple[str, TelemetryStore], dataset: Dataset) -> None:
    got = loaded[1].endpoints("frontend", START, END)
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in entry(dataset, "frontend"):
        by_name[s["SpanName"]].append(s)
    assert sorted(r["endpoint"] for r in got) == sorted(by_name)
    counts = [r["count"] for r in got]
    assert counts == sorted(counts, reverse=True)
    for row in got:
        check_stats(dict(row), by_name[row["endpoint"]])


def test_latency_histogram(loaded: tuple[str, TelemetryStore], dataset: Dataset) -> None:
    bounds = [5.0, 10.0, 25.0, 50.0, 100.0]
    got = loaded[1].latency_histogram("api", "GET /items", START, END, bounds)
    durs = [s["Duration"] / 1e6 for s in entry(dataset, "api") if s["SpanName"] == "GET /items"]
    want = [sum(lo < d <= hi for d in durs)
            for lo, hi in zip([-math.inf, *bounds], [*bounds, math.inf], strict=True)]
    assert [b["count"] for b in got] == want
    assert [b["le_ms"] for b in got] == [*bounds, math.inf]
    everything = loaded[1].latency_histogram("api", None, START, END, bounds)
    assert sum(b["count"] for b in everything) == len(entry(dataset, "api"))


@pytest.mark.parametrize("limit", [1, 5, 200, 100_000])
@pytest.mark.parametrize("edge_s", [0, 37])
def test_slowest_traces(loaded: tuple[str, TelemetryStore], dataset: Dataset, limit: int,
                        edge_s: int) -> None:
    """Exact whatever the limit (DuckDB narrows the read by the rollup's buckets of the
    window's whole minutes), also for a window that starts and ends inside a minute."""
    start, end = START + timedelta(seconds=edge_s), END - timedelta(seconds=edge_s)
    got = loaded[1].slowest_traces("api", start, end, limit=limit)
    inside = [s for s in entry(dataset, "api") if ns(start) <= s["Timestamp"] < ns(end)]
    want = sorted(inside, key=lambda s: (-s["Duration"], s["TraceId"]))[:limit]
    assert [(r["trace_id"], r["span_id"], r["duration_ms"]) for r in got] == [
        (s["TraceId"], s["SpanId"], s["Duration"] / 1e6) for s in want]
    assert got[0]["timestamp_ns"] == want[0]["Timestamp"]


@pytest.mark.parametrize("search", [
    {"endpoint": "{id}"}, {"endpoint": "get /ITEMS"}, {"status": "error"}, {"status": "ok"},
    {"min_ms": 40}, {"attributes": {"host.name": "node-2"}},
    {"attributes": {"http.route": "GET /items", "host.name": "node-1"}},
    {"attributes": {"host.name": "nowhere"}}, {"attributes": {"host.name": ""}},
    {"min_ms": 1e30},
    {"status": "error", "endpoint": "items", "min_ms": 5, "limit": 3},
    {"status": "ok", "limit": 7}, {"endpoint": "{id}", "limit": 4},
])
def test_slowest_traces_search(loaded: tuple[str, TelemetryStore], dataset: Dataset,
                               search: dict[str, Any]) -> None:
    """Each filter as the Protocol says, alone and together, with and without the rollup's
    narrowing (it knows span names and errors; attributes it does not)."""
    limit = search.pop("limit", 100_000)
    attributes = search.get("attributes", {})

    def keep(s: dict[str, Any]) -> bool:
        failed = s["StatusCode"] == "Error"
        return ((search.get("endpoint") or "").lower() in s["SpanName"].lower()
                and search.get("status") in (None, "error" if failed else "ok")
                and s["Duration"] >= search.get("min_ms", 0) * 1e6
                and all(s["SpanAttributes"].get(k) == v or s["ResourceAttributes"].get(k) == v
                        for k, v in attributes.items()))

    want = sorted(filter(keep, entry(dataset, "api")),
                  key=lambda s: (-s["Duration"], s["TraceId"]))[:limit]
    got = loaded[1].slowest_traces("api", START, END, limit=limit, **search)
    assert [r["span_id"] for r in got] == [s["SpanId"] for s in want]
    assert search.get("attributes", {}).get("host.name") in ("nowhere", "") \
        or search.get("min_ms") == 1e30 or got


def test_slowest_traces_search_refuses_bad_filters(loaded: tuple[str, TelemetryStore]) -> None:
    too_many = {"attributes": {f"k{i}": "v" for i in range(5)}}
    for bad in ({"status": "broken"}, {"min_ms": -1}, {"min_ms": float("nan")},
                {"min_ms": float("inf")}, too_many):
        with pytest.raises(StoreUsageError):
            loaded[1].slowest_traces("api", START, END, **bad)


def test_trace_by_id(loaded: tuple[str, TelemetryStore], dataset: Dataset) -> None:
    error_span = next(s for s in dataset.spans if s["Events.Name"])
    tid = error_span["TraceId"]
    got = loaded[1].trace(tid)
    want = sorted((s for s in dataset.spans if s["TraceId"] == tid),
                  key=lambda s: (s["Timestamp"], s["SpanId"]))
    assert [s["SpanId"] for s in got] == [s["SpanId"] for s in want]
    assert set(got[0]) == {n for n, _ in schema.TRACES}
    mine = next(s for s in got if s["SpanId"] == error_span["SpanId"])
    for key, value in error_span.items():
        assert mine[key] == value, key
    assert loaded[1].trace("0" * 32) == []


def test_logs_search(loaded: tuple[str, TelemetryStore], dataset: Dataset) -> None:
    store = loaded[1]
    refused = [r for r in dataset.logs if "connection refused" in r["Body"].lower()]
    got = store.logs(query="CONNECTION refused", limit=1000)
    assert sorted(r["Body"] for r in got) == sorted(r["Body"] for r in refused)
    stamps = [r["Timestamp"] for r in got]
    assert stamps == sorted(stamps, reverse=True)
    assert len(store.logs(severity="error", service="api", limit=1000)) == len(refused)
    assert len(store.logs(severity="info", limit=1000)) == sum(
        r["SeverityNumber"] >= 9 for r in dataset.logs)
    assert store.logs(service="frontend") == []
    tid = refused[0]["TraceId"]
    by_trace = store.logs(trace_id=tid, start=START, end=END)
    assert {r["Body"] for r in by_trace} == {r["Body"] for r in dataset.logs if r["TraceId"] == tid}
    assert by_trace[0]["LogAttributes"] == next(
        r for r in dataset.logs if r["Body"] == by_trace[0]["Body"])["LogAttributes"]
    assert len(store.logs(limit=7)) == 7
    assert [r["Body"] for r in store.logs(attributes={"i": "5"})] == [
        r["Body"] for r in sorted(dataset.logs, key=lambda r: -r["Timestamp"])
        if r["LogAttributes"]["i"] == "5"]
    assert len(store.logs(attributes={"host.name": "node-1", "i": "5"})) == 2  # resource + log
    assert store.logs(attributes={"host.name": "node-9"}) == []
    assert store.logs(attributes={"i": ""}) == []
    one = by_trace[0]
    assert [r["SpanId"] for r in store.logs(trace_id=tid, span_id=one["SpanId"])] == [
        one["SpanId"]] * sum(r["SpanId"] == one["SpanId"] for r in dataset.logs)
    with pytest.raises(StoreUsageError):
        store.logs(severity="loud")


def expected_edges(spans: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Client -> server pairs recomputed from the rows; mTLS by the documented rule."""
    by_id = {(s["TraceId"], s["SpanId"]): s for s in spans}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for s in spans:
        c = by_id.get((s["TraceId"], s["ParentSpanId"]))
        if s["SpanKind"] == "Server" and c and c["SpanKind"] == "Client" \
                and c["ServiceName"] != s["ServiceName"]:
            e = out.setdefault((c["ServiceName"], s["ServiceName"]),
                               {"calls": 0, "errors": 0, "mtls": 0, "durs": []})
            e["calls"] += 1
            e["errors"] += "Error" in (c["StatusCode"], s["StatusCode"])
            e["mtls"] += ("127.0.0.1:15001" in c["SpanAttributes"].get("url.full", "")
                          or s["SpanAttributes"].get("noops.mtls") == "true")
            e["durs"].append(c["Duration"] / 1e6)
    return out


def test_service_map(loaded: tuple[str, TelemetryStore], dataset: Dataset) -> None:
    want = expected_edges(dataset.spans)
    got = loaded[1].service_map(START, END)
    assert [(e["client"], e["server"]) for e in got] == sorted(want)
    assert len(want) == 2
    for e in got:
        w = want[(e["client"], e["server"])]
        assert (e["calls"], e["errors"], e["mtls_calls"]) == (w["calls"], w["errors"], w["mtls"])
        assert e["rate_per_s"] == pytest.approx(w["calls"] / WINDOW_S)
        assert e["mtls"] == (w["mtls"] == w["calls"])
        # Log buckets of width 2^(1/8): the estimate is the bucket of the exact rank.
        rank = sorted(w["durs"])[math.ceil(0.95 * len(w["durs"])) - 1]
        assert e["p95_ms"] == pytest.approx(rank, rel=0.05)
    mtls = {(e["client"], e["server"]): e["mtls"] for e in got}
    assert mtls == {("api", "db"): False, ("frontend", "api"): True}


def _span(trace: str, sid: str, parent: str, service: str, kind: str, t: int, *,
          dur: int = 5_000_000, attrs: dict[str, str] | None = None, error: bool = False,
          name: str = "call") -> dict[str, Any]:
    return {"Timestamp": t, "TraceId": trace, "SpanId": sid, "ParentSpanId": parent,
            "ServiceName": service, "SpanKind": kind, "SpanName": name, "Duration": dur,
            "SpanAttributes": attrs or {}, "StatusCode": "Error" if error else "Unset"}


def test_service_map_pairs_across_batches_in_any_order(
        fresh: tuple[str, TelemetryStore, Any]) -> None:
    _, store, _ = fresh
    t = int(T0.timestamp()) * NS
    egress = {"server.address": "127.0.0.1", "server.port": "15001"}
    # 1: server span first, its client span two batches later (an unrelated batch between).
    store.insert_spans([_span("a" * 32, "2" * 16, "1" * 16, "shop", "Server", t + 10)])
    store.insert_spans([_span("f" * 32, "9" * 16, "", "shop", "Server", t)])
    store.insert_spans([_span("a" * 32, "1" * 16, "", "web", "Client", t, attrs=egress)])
    # 2: client first, server next batch; 3: both in one batch; 4: same service (no edge).
    store.insert_spans([_span("b" * 32, "3" * 16, "", "web", "Client", t + NS, error=True)])
    store.insert_spans([_span("b" * 32, "4" * 16, "3" * 16, "shop", "Server", t + NS + 10,
                              attrs={"noops.mtls": "true"})])
    store.insert_spans([_span("c" * 32, "5" * 16, "", "web", "Client", t + 2 * NS),
                        _span("c" * 32, "6" * 16, "5" * 16, "shop", "Server", t + 2 * NS),
                        _span("c" * 32, "7" * 16, "", "shop", "Client", t + 3 * NS),
                        _span("c" * 32, "8" * 16, "7" * 16, "shop", "Server", t + 3 * NS)])
    (edge,) = store.service_map(START, END)
    assert (edge["client"], edge["server"], edge["calls"], edge["errors"]) == ("web", "shop", 3, 1)
    assert (edge["mtls_calls"], edge["mtls"]) == (2, False)
    assert edge["p95_ms"] == pytest.approx(5.0, rel=0.05)
    assert store.service_map(END, END + timedelta(minutes=5)) == []


def test_service_map_any_batching(fresh: tuple[str, TelemetryStore, Any]) -> None:
    """Four shuffles of a dataset, each cut into random batches of 1-40 spans: the map is the
    same as if every pair had been joined at once."""
    _, store, _ = fresh
    want: dict[tuple[str, str], dict[str, Any]] = {}
    for k in range(4):
        ds = make_dataset(traces=40, seed=100 + k, minutes=2)
        spans = [{**s, "ServiceName": f"{k}-{s['ServiceName']}"} for s in ds.spans]
        rnd = random.Random(k)
        rnd.shuffle(spans)
        i = 0
        while i < len(spans):
            n = rnd.randint(1, 40)
            store.insert_spans(spans[i:i + n])
            i += n
        want.update(expected_edges(spans))
    got = {(e["client"], e["server"]): e for e in store.service_map(START, END)}
    assert sorted(got) == sorted(want)
    for key, e in got.items():
        w = want[key]
        assert (e["calls"], e["errors"], e["mtls_calls"]) == (w["calls"], w["errors"], w["mtls"])


def test_endpoint_cardinality_guard(fresh: tuple[str, TelemetryStore, Any]) -> None:
    _, store, _ = fresh
    t = int(T0.timestamp()) * NS
    spans = [_span(f"{n:032x}", f"{n:016x}", "", "exploding", "Server", t + n, dur=(n + 1) * 1000,
                   name=f"GET /user/{k}") for k in range(30) for n in range(k * 100, k * 100 + k + 1)]
    store.insert_spans(spans)
    got = store.endpoints("exploding", START, END, max_endpoints=10)
    assert len(got) == 10
    assert [r["folded"] for r in got] == [0] * 9 + [21]
    assert [r["endpoint"] for r in got[:9]] == [f"GET /user/{k}" for k in range(29, 20, -1)]
    other = [s for s in spans if int(s["SpanName"].rsplit("/", 1)[1]) <= 20]
    assert got[-1]["endpoint"] == "other"
    check_stats(dict(got[-1]), other)
    assert all(r["folded"] == 0 for r in store.endpoints("exploding", START, END))
    with pytest.raises(StoreUsageError):
        store.endpoints("exploding", START, END, max_endpoints=1)


def test_error_groups(loaded: tuple[str, TelemetryStore], dataset: Dataset) -> None:
    want: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in dataset.spans:
        if "exception" in s["Events.Name"]:
            a = s["Events.Attributes"][0]
            want[(s["ServiceName"], s["SpanName"], a["exception.type"],
                  normalise(a["exception.message"]))].append(s)
        elif s["StatusCode"] == "Error":
            want[(s["ServiceName"], s["SpanName"], "", normalise(s["StatusMessage"]))].append(s)
    got = loaded[1].error_groups(START, END, limit=1000)
    assert {(g["service"], g["endpoint"], g["exception_type"], g["message"]): g["count"]
            for g in got} == {k: len(v) for k, v in want.items()}
    assert len(got) < sum(len(v) for v in want.values())  # messages did group
    assert [g["count"] for g in got] == sorted((g["count"] for g in got), reverse=True)
    for g in got:
        spans = want[(g["service"], g["endpoint"], g["exception_type"], g["message"])]
        assert g["first_seen_ns"] == min(s["Timestamp"] for s in spans)
        assert g["last_seen_ns"] == max(s["Timestamp"] for s in spans)
        assert g["sample_trace_id"] in {s["TraceId"] for s in spans
                                        if s["Timestamp"] == g["last_seen_ns"]}
    assert any(g["message"] == "no item <n> for <uuid>" for g in got)
    assert {g["service"] for g in loaded[1].error_groups(START, END, service="db")} == {"db"}


def test_correlations(loaded: tuple[str, TelemetryStore], dataset: Dataset) -> None:
    store = loaded[1]
    spans = entry(dataset, "api")
    slow_ms = q([s["Duration"] / 1e6 for s in spans], 0.9)
    got = store.correlations("api", None, START, END, slow_ms=slow_ms)
    top = got[0]
    assert (top["source"], top["key"], top["value"]) == ("resource", "host.name", "node-2")
    cohort = [s for s in spans if s["Duration"] >= slow_ms * 1e6]
    rest = [s for s in spans if s["Duration"] < slow_ms * 1e6]

    def share(group: list[dict[str, Any]]) -> float:
        return 100 * sum(s["ResourceAttributes"]["host.name"] == "node-2" for s in group) / len(group)

    assert top["cohort_pct"] == pytest.approx(share(cohort))
    assert top["baseline_pct"] == pytest.approx(share(rest))
    assert top["score"] == pytest.approx((share(cohort) - share(rest)) / 100)
    assert all(c["cohort_pct"] > c["baseline_pct"] for c in got)
    assert [c["score"] for c in got] == sorted((c["score"] for c in got), reverse=True)
    failed = store.correlations("api", "GET /items", START, END, failed=True)
    assert all(c["score"] > 0 for c in failed)
    assert {c["cohort"] for c in [*got, *failed]} == {"slow", "failed"}
    both = store.correlations("api", "GET /items", START, END, slow_ms=slow_ms, failed=True)
    assert both == store.correlations("api", "GET /items", START, END, slow_ms=slow_ms) + failed
    with pytest.raises(StoreUsageError):
        store.correlations("api", None, START, END)


def test_correlations_read_whole_time_slices_above_the_sample_size(
        loaded: tuple[str, TelemetryStore], dataset: Dataset, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With more entry spans in the window than CORRELATION_SAMPLE, both cohorts come from the
    time slices sample_slices picks, and every share is exact within them."""
    store = loaded[1]
    spans = entry(dataset, "api")
    cap = len(spans) // 4
    monkeypatch.setattr(analysis, "CORRELATION_SAMPLE", cap)
    n, s, e = analysis.CORRELATION_SLICES, ns(START), ns(END)

    def slice_of(span: dict[str, Any]) -> int:
        return int((span["Timestamp"] - s) * n // (e - s))

    # The slices are chosen by the minute rollup's counts, shared out over the slices.
    minutes = Counter(sp["Timestamp"] // MINUTE_NS * MINUTE_NS for sp in spans)
    keep = analysis.sample_slices(analysis.minute_slices(sorted(minutes.items()), s, e, n), cap, n)
    assert keep is not None
    part = [sp for sp in spans if slice_of(sp) in keep]
    assert 0.8 * cap <= len(part) < len(spans) / 2  # chosen by estimates: about ``cap``
    slow_ms = q([sp["Duration"] / 1e6 for sp in spans], 0.9)
    got = store.correlations("api", None, START, END, slow_ms=slow_ms, limit=1000)
    assert got
    cohort = [sp for sp in part if sp["Duration"] >= slow_ms * 1e6]
    rest = [sp for sp in part if sp["Duration"] < slow_ms * 1e6]
    column = {"span": "SpanAttributes", "resource": "ResourceAttributes"}

    def share(group: list[dict[str, Any]], c: dict[str, Any]) -> float:
        return 100 * sum(sp[column[c["source"]]].get(c["key"]) == c["value"]
                         for sp in group) / len(group)

    for c in got:
        assert c["cohort_pct"] == pytest.approx(share(cohort, c))
        assert c["baseline_pct"] == pytest.approx(share(rest, c))


def test_rollup_timeseries(loaded: tuple[str, TelemetryStore], dataset: Dataset) -> None:
    got = loaded[1].timeseries("api", START, END)
    per_min: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in entry(dataset, "api"):
        per_min[s["Timestamp"] // (60 * NS) * 60 * NS].append(s)
    assert [p["minute_ns"] for p in got] == sorted(per_min)
    for p in got:
        spans = per_min[p["minute_ns"]]
        assert p["count"] == len(spans)
        assert p["errors"] == sum(s["StatusCode"] == "Error" for s in spans)
        durs = [s["Duration"] / 1e6 for s in spans]
        # Log buckets of width 2^(1/8): the estimate is the bucket of the exact rank.
        assert p["p50_ms"] == pytest.approx(sorted(durs)[math.ceil(0.5 * len(durs)) - 1], rel=0.05)
    ep = loaded[1].timeseries("api", START, END, endpoint="GET /items")
    assert sum(p["count"] for p in ep) == sum(s["SpanName"] == "GET /items" for s in entry(dataset, "api"))


@pytest.mark.parametrize(("step", "by"), [(60, None), (180, "route"), (180, "absent")])
def test_gauge_series(loaded: tuple[str, TelemetryStore], dataset: Dataset, step: int,
                      by: str | None) -> None:
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for g in dataset.gauges:
        if g["MetricName"] == "cpu":
            key = (g["Attributes"].get(by, "") if by else "", g["TimeUnix"] // NS // step * step)
            groups[key].append(g["Value"])
    got = loaded[1].gauge_series("cpu", START, END, service="api", by=by, step_s=step)
    assert [(p["group"], p["bucket_s"]) for p in got] == sorted(groups)
    for p in got:
        values = groups[(p["group"], p["bucket_s"])]
        assert p["count"] == len(values)
        assert p["avg"] == pytest.approx(sum(values) / len(values))
        assert p["max"] == pytest.approx(max(values))
    assert loaded[1].gauge_series("cpu", START, END, step_s=step, by=by) == got  # only api sends it
    assert loaded[1].gauge_series("cpu", START, END, service="frontend") == []
    assert loaded[1].gauge_series("no.such.metric", START, END) == []
    with pytest.raises(StoreUsageError):
        loaded[1].gauge_series("cpu", START, END, step_s=0)


def test_bucket_formula_matches_sql(loaded: tuple[str, TelemetryStore], dataset: Dataset) -> None:
    backend, store = loaded
    table = "otel_traces_rollup_1m"
    sql = f"SELECT Bucket, sum(Count) AS n FROM {table} GROUP BY Bucket"
    rows = store._rows(sql) if backend == "duckdb" else store._tuples(sql)  # type: ignore[attr-defined]
    assert dict(rows) == Counter(bucket_of(s["Duration"]) for s in dataset.spans)


def _rollup_rows(backend: str, store: Any) -> dict[str, int]:
    sql = "SELECT count(*) FROM {}" if backend == "duckdb" else "SELECT count() FROM {}"
    read = store._rows if backend == "duckdb" else store._tuples
    return {t: int(read(sql.format(t))[0][0]) for t in schema.ROLLUP_TABLES}


def _answers(store: TelemetryStore) -> list[Any]:
    """Every read the rollup and edge tables feed."""
    return [
        store.services(START, END), store.services(W_START, W_END, exact_max=0),
        store.service_map(START, END), store.service_map(W_START, W_END),
        *(store.timeseries(svc, START, END) for svc in ("api", "db", "frontend")),
        store.timeseries("api", W_START, W_END, endpoint="GET /items"),
    ]


def test_compact_rollups_keeps_answers(fresh: tuple[str, TelemetryStore, Any],
                                       dataset: Dataset) -> None:
    """Merging closed minutes changes no answer and (DuckDB) leaves fewer rows; spans that
    arrive for a merged minute later still count, and a later pass merges them too."""
    backend, store, _ = fresh
    for i in range(4):  # one rollup row per group and insert
        store.insert_spans(dataset.spans[i::4])
    before, rows = _answers(store), _rollup_rows(backend, store)
    removed = store.compact_rollups(START + timedelta(minutes=6))
    assert _answers(store) == before
    assert store.compact_rollups(END + timedelta(hours=1), after=START) >= 0
    assert _answers(store) == before
    merged = _rollup_rows(backend, store)
    if backend == "duckdb":  # ClickHouse merges in the background and says 0
        assert removed > 0
        assert all(merged[t] < rows[t] for t in rows), (rows, merged)
        assert store.compact_rollups(END + timedelta(hours=1)) == 0  # nothing left to merge
    else:
        assert removed == 0
    late = make_dataset(traces=40, seed=7)
    store.insert_spans(late.spans)
    totals = {r["service"]: r["count"] for r in store.services(START, END, exact_max=0)}
    assert totals == Counter(s["ServiceName"] for s in entry(dataset) + entry(late))
    after_late = _answers(store)
    store.compact_rollups(END + timedelta(hours=1), after=START)
    assert _answers(store) == after_late
    if backend == "duckdb":  # the late rows joined their groups: one row per group key
        for table, agg in schema.ROLLUP_TABLES.items():
            keys = ", ".join(n for n, _ in schema.TABLES[table] if n not in agg)
            ((n, groups),) = store._rows(  # type: ignore[attr-defined]
                f"SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT {keys} FROM {table})) "
                f"FROM {table}")
            assert n == groups, table


def test_retention_deletes(fresh: tuple[str, TelemetryStore, Any]) -> None:
    _, store, _ = fresh
    old = make_dataset(traces=30, seed=1, t0=T0 - timedelta(days=2), minutes=1)
    new = make_dataset(traces=30, seed=2, minutes=1)
    load(store, old)
    load(store, new)
    now = T0 + timedelta(minutes=5)
    store.retention("traces", timedelta(days=1), now=now)
    store.retention("logs", timedelta(days=1), now=now)
    store.retention("rollups", timedelta(days=1), now=now)
    store.retention("metrics", timedelta(days=1), now=now)
    assert store.trace(old.spans[0]["TraceId"]) == []
    assert len(store.trace(new.spans[0]["TraceId"])) > 0
    assert store.logs(end=T0, limit=10_000) == []
    assert len(store.logs(limit=10_000)) == len(new.logs)
    assert store.timeseries("api", T0 - timedelta(days=3), T0) == []
    assert store.service_map(T0 - timedelta(days=3), T0) == []
    assert {(e["client"], e["server"]) for e in store.service_map(START, END)} == {
        ("frontend", "api"), ("api", "db")}
    with pytest.raises(StoreUsageError):
        store.retention("profiles", timedelta(days=1))  # type: ignore[arg-type]


def test_slowest_traces_when_the_rollup_outlives_the_spans(
        fresh: tuple[str, TelemetryStore, Any]) -> None:
    """Rollups follow the metrics retention, spans the traces retention: minutes whose spans
    are gone still count in the rollup, and the slowest traces must not come out short."""
    _, store, _ = fresh
    old = make_dataset(traces=30, seed=1, t0=T0 - timedelta(days=2), minutes=1)
    new = make_dataset(traces=30, seed=2, minutes=1)
    load(store, old)
    load(store, new)
    store.retention("traces", timedelta(days=1), now=T0 + timedelta(minutes=5))
    got = store.slowest_traces("api", T0 - timedelta(days=3), END, limit=5)
    want = sorted(entry(new, "api"), key=lambda s: (-s["Duration"], s["TraceId"]))[:5]
    assert [r["span_id"] for r in got] == [s["SpanId"] for s in want]


def test_file_size_bounded(fresh: tuple[str, TelemetryStore, Any]) -> None:
    """A steady insert/expire cycle does not grow the store on disk. ClickHouse removes the parts
    a DELETE replaced in the background (a few seconds later): the check waits for that, up to
    two minutes, instead of measuring parts that are already gone from the table."""
    backend, store, tmp = fresh

    def cycle(n: int) -> None:
        t0 = T0 + timedelta(hours=n)
        store.insert_spans(make_dataset(traces=3000, seed=n, t0=t0, minutes=1).spans)
        for signal in ("traces", "rollups"):
            store.retention(signal, timedelta(minutes=30), now=t0 + timedelta(hours=1))  # type: ignore[arg-type]

    def settled(bound: float) -> int:
        deadline = time.monotonic() + (120 if backend == "chdb" else 0)
        while True:
            size = disk_bytes(backend, store, tmp)
            if size <= bound or time.monotonic() >= deadline:
                return size
            time.sleep(1)

    cycle(0)
    cycle(1)
    first = disk_bytes(backend, store, tmp)
    for n in range(2, 6):
        cycle(n)
    assert store.services(T0, T0 + timedelta(days=1)) == []
    assert store.service_map(T0, T0 + timedelta(days=1)) == []
    last = settled(first * 1.25)
    assert last <= first * 1.25, (first, last)


def test_errors_are_store_errors(fresh: tuple[str, TelemetryStore, Any]) -> None:
    _, store, _ = fresh
    with pytest.raises(StoreUsageError, match="no column"):
        store.insert_spans([{"Timestamp": 1, "traceId": "x"}])
    with pytest.raises(StoreUsageError):
        store.insert_metrics("summary", [{}])  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.insert_spans([{"Timestamp": 1, "Duration": -5}])
    with pytest.raises(StoreUsageError):
        store.services(END, START)
    assert store.insert_spans([]) == 0


def test_insert_spans_arrow_same_as_rows(fresh: tuple[str, TelemetryStore, Any]) -> None:
    """``insert_spans_arrow`` (the native OTLP decoder's path) stores what ``insert_spans`` does
    with the same spans, trace-id table, rollup and service map included."""
    from noops.observe.store._rows import to_arrow

    _, store, _ = fresh
    ds = make_dataset(traces=40, seed=7, minutes=2)
    spans = ds.spans
    rnd = random.Random(3)
    i, k = 0, 0
    while i < len(spans):
        n = rnd.randint(1, 60)
        part = spans[i:i + n]
        if k % 2:
            store.insert_spans(part)
        else:
            assert store.insert_spans_arrow(to_arrow("otel_traces", schema.TRACES, part)) == len(part)  # type: ignore[attr-defined]
        i, k = i + n, k + 1
    got = {(e["client"], e["server"]): e for e in store.service_map(START, END)}
    want = expected_edges(spans)
    assert sorted(got) == sorted(want)
    for key, e in got.items():
        assert (e["calls"], e["errors"], e["mtls_calls"]) == (want[key]["calls"], want[key]["errors"],
                                                              want[key]["mtls"])
    tid = spans[0]["TraceId"]
    stored = store.trace(tid)
    assert sorted(r["SpanId"] for r in stored) == sorted(s["SpanId"] for s in spans if s["TraceId"] == tid)
    assert sum(s["count"] for s in store.services(START, END)) == len(entry(ds))
