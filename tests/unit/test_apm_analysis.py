"""The backend-neutral halves of the APM queries: the mTLS-hop rule, error-message normalisation,
correlation scoring, the cardinality guard and the waterfall layout."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from noops.observe.store import StoreUsageError, schema
from noops.observe.store._rows import to_arrow
from noops.observe.store.analysis import (
    cohort_correlations,
    correlations,
    minute_slices,
    normalise,
    sample_slices,
    top_names,
)
from noops.observe.store.edges import (
    DEFAULT_EGRESS,
    edge_batch,
    edge_batch_arrow,
    is_mtls_client,
    peer_of,
)
from noops.observe.store.rollup import bucket_floor_ns, bucket_of, top_floor_ns
from noops.observe.waterfall import TraceNotFoundError, waterfall


@pytest.mark.parametrize(("attrs", "peer"), [
    ({"server.address": "127.0.0.1", "server.port": "15001"}, "127.0.0.1:15001"),
    ({"net.peer.name": "127.0.0.1", "net.peer.port": "15001"}, "127.0.0.1:15001"),
    ({"url.full": "http://127.0.0.1:15001/pay?x=1"}, "127.0.0.1:15001"),
    ({"http.url": "https://user:pw@shop.example/pay"}, "shop.example:443"),
    ({"url.full": "http://[::1]:8080/"}, "[::1]:8080"),
    ({"server.address": "db"}, "db"),
    # the newer convention wins over the older one and over the URL
    ({"server.address": "db", "server.port": "5432", "url.full": "http://127.0.0.1:15001/"},
     "db:5432"),
    ({"url.full": "not a url"}, None),
    ({}, None),
])
def test_peer_of(attrs: dict[str, str], peer: str | None) -> None:
    assert peer_of(attrs) == peer


def test_mtls_hop_rule_and_custom_egress() -> None:
    via_egress = {"url.full": "http://127.0.0.1:15001/"}
    assert is_mtls_client(via_egress, DEFAULT_EGRESS)
    assert not is_mtls_client(via_egress, {"127.0.0.1:16001"})
    assert is_mtls_client({"server.address": "127.0.0.1", "server.port": "16001"},
                          {"127.0.0.1:16001"})
    # the platform's prober says it presented its workload certificate to the front door
    assert is_mtls_client({"url.full": "https://shop.localhost:8443/", "noops.mtls": "true"},
                          DEFAULT_EGRESS)
    assert not is_mtls_client({"url.full": "https://shop.localhost:8443/"}, DEFAULT_EGRESS)
    rows = [
        {"SpanKind": "Client", "TraceId": "t", "SpanId": "c", "ServiceName": "a",
         "SpanAttributes": via_egress, "Timestamp": 5, "Duration": 7, "StatusCode": "Error"},
        {"SpanKind": "Server", "TraceId": "t", "SpanId": "s", "ParentSpanId": "c",
         "ServiceName": "b", "SpanAttributes": {"noops.mtls": "TRUE"}, "Timestamp": 6},
        {"SpanKind": "Server", "TraceId": "t", "SpanId": "r", "ParentSpanId": "",
         "ServiceName": "b"},  # a root server span cannot pair: not indexed
        {"SpanKind": "Internal", "TraceId": "t", "SpanId": "i", "ParentSpanId": "s"},
    ]
    batch = edge_batch(rows, 42, DEFAULT_EGRESS)
    assert batch is not None
    assert batch.to_pydict() == {
        "Batch": [42, 42], "Side": [0, 1], "TraceId": ["t", "t"], "LinkId": ["c", "c"],
        "ServiceName": ["a", "b"], "Timestamp": [batch["Timestamp"][0].as_py(),
                                                 batch["Timestamp"][1].as_py()],
        "Duration": [7, 0], "IsError": [1, 0], "Mtls": [1, 1]}
    assert edge_batch(rows[2:], 1, DEFAULT_EGRESS) is None


@pytest.mark.parametrize(("raw", "grouped"), [
    ("card 4004 declined", "card <n> declined"),
    ("user 3f2a9c1e-0b5d-4c6e-9a7f-1234567890ab not found",
     "user <uuid> not found"),
    ("span 5b8efff798038103 missing at 0x7ffe12", "span <hex> missing at <hex>"),
    ("took 12.5 s, retry 3", "took <n> s, retry <n>"),
    ("deadbeef facade", "deadbeef facade"),  # words made of hex letters stay
    ("", ""),
])
def test_normalise(raw: str, grouped: str) -> None:
    assert normalise(raw) == grouped


@given(st.text(max_size=60))
def test_normalise_is_idempotent(text: str) -> None:
    assert normalise(normalise(text)) == normalise(text)


def test_correlation_scores() -> None:
    rows = [("span", "provider", "slowpay", 8, 2), ("resource", "host", "a", 10, 50),
            ("span", "route", "/x", 1, 0)]
    got = correlations(rows, cohort_total=10, rest_total=50, limit=5, cohort="slow")
    assert [(c["key"], c["cohort_pct"], c["baseline_pct"]) for c in got] == [
        ("provider", 80.0, 4.0), ("route", 10.0, 0.0)]  # host: 100 % in both, not telling
    assert got[0]["score"] == pytest.approx(0.76)
    assert correlations(rows, cohort_total=10, rest_total=0, limit=5, cohort="slow") == []


def test_correlations_leave_out_keys_unique_per_span() -> None:
    # ten slow spans, each from its own client port: over-represented, and meaningless
    ports = [("span", "network.peer.port", str(40000 + i), 1, 0) for i in range(10)]
    rows = [*ports, ("span", "provider", "slowpay", 8, 2)]
    got = correlations(rows, cohort_total=10, rest_total=50, limit=5, cohort="slow")
    assert [c["key"] for c in got] == ["provider"]
    # a few values of a key are not "unique per span"
    few = [("span", "region", r, 3, 0) for r in ("a", "b", "c")]
    got = correlations(few, cohort_total=10, rest_total=50, limit=5, cohort="slow")
    assert {c["value"] for c in got} == {"a", "b", "c"}


def test_cohorts_read_in_one_pass_score_like_each_alone() -> None:
    # (source, key, value, slow hits, slow misses, failed hits, failed misses)
    rows = [("span", "provider", "slowpay", 8, 2, 0, 10), ("span", "card", "amex", 1, 9, 4, 6),
            ("resource", "host", "a", 10, 50, 5, 55)]
    got = cohort_correlations(rows, (10, 50, 5, 55), ["slow", "failed"], limit=5)
    slow = correlations([r[:5] for r in rows], 10, 50, 5, cohort="slow")
    failed = correlations([(*r[:3], *r[5:]) for r in rows if r[5]], 5, 55, 5, cohort="failed")
    assert got == slow + failed
    assert [(c["cohort"], c["value"]) for c in got] == [("slow", "slowpay"), ("failed", "amex")]


def test_top_names() -> None:
    counts = [("a", 5), ("b", 9), ("c", 5), ("d", 1)]
    assert top_names(counts, 4) is None
    assert top_names(counts, 3) == ["b", "a"]
    with pytest.raises(StoreUsageError):
        top_names(counts, 1)


def _span(sid: str, parent: str, t: int, d: int) -> dict[str, object]:
    return {"TraceId": "t" * 32, "SpanId": sid, "ParentSpanId": parent, "ServiceName": "s",
            "SpanName": sid, "SpanKind": "Internal", "StatusCode": "Unset", "StatusMessage": "",
            "Timestamp": t, "Duration": d, "SpanAttributes": {}, "ResourceAttributes": {},
            "Events.Name": [], "Events.Timestamp": [], "Events.Attributes": []}


def test_waterfall_tree_orphans_and_cycles() -> None:
    spans = [_span("b", "a", 2_000_000, 1_000_000), _span("a", "", 1_000_000, 9_000_000),
             _span("c", "a", 1_500_000, 1_000_000), _span("d", "b", 2_500_000, 100_000),
             _span("x", "lost", 500_000, 100_000),  # parent not stored: a root
             _span("p", "q", 3_000_000, 1), _span("q", "p", 3_000_000, 1)]  # a cycle
    got = waterfall(spans)
    assert [(s["span_id"], s["depth"]) for s in got["spans"]] == [
        ("x", 0), ("a", 0), ("c", 1), ("b", 1), ("d", 2), ("p", 0), ("q", 1)]
    assert got["spans"][0]["offset_ms"] == 0.0
    assert got["spans"][1]["offset_ms"] == 0.5
    assert got["duration_ms"] == 9.5
    with pytest.raises(TraceNotFoundError):
        waterfall([])


_ATTR_VALUES = {
    "server.address": st.sampled_from(["", "db", "127.0.0.1"]),
    "server.port": st.sampled_from(["", "5432", "15001"]),
    "net.peer.name": st.sampled_from(["", "127.0.0.1", "cache"]),
    "net.peer.port": st.sampled_from(["", "15001", "6379"]),
    "url.full": st.sampled_from(["", "not a url", "http://127.0.0.1:15001/x", "HTTP://127.0.0.1/",
                                 "https://u:p@shop.example/pay", "http://[::1]:8080/",
                                 "ftp://h/"]),
    "http.url": st.sampled_from(["", "http://127.0.0.1:15001/", "https://shop:8443/"]),
    "noops.mtls": st.sampled_from(["", "true", "TRUE", "false"]),
    "http.route": st.just("/"),
}
_EDGE_ROW = st.fixed_dictionaries({
    "SpanKind": st.sampled_from(["Client", "Server", "Internal", "Consumer"]),
    "TraceId": st.sampled_from(["t1", "t2"]),
    "SpanId": st.sampled_from(["a", "b", "c"]),
    "ParentSpanId": st.sampled_from(["", "a", "b"]),
    "ServiceName": st.sampled_from(["web", "api"]),
    "StatusCode": st.sampled_from(["Unset", "Error"]),
    "Timestamp": st.integers(0, 2**62),
    "Duration": st.integers(0, 2**63),
    "SpanAttributes": st.fixed_dictionaries({}, optional=_ATTR_VALUES),
})


@given(st.lists(_EDGE_ROW, min_size=1, max_size=12),
       st.sampled_from([DEFAULT_EGRESS, ("127.0.0.1:80", "shop.example:443"), ()]))
def test_edge_batch_arrow_matches_rows(rows: list[dict[str, Any]], egress: tuple[str, ...]) -> None:
    """The column-wise service-map feed (DuckDB's) gives exactly the row-wise one's rows."""
    want = edge_batch(rows, 9, egress)
    got = edge_batch_arrow(to_arrow("otel_traces", schema.TRACES, rows), 9, egress)
    assert (got is None) == (want is None)
    if want is not None:
        assert got is not None and got.to_pydict() == want.to_pydict()


def test_sample_slices_reads_everything_up_to_the_sample_size() -> None:
    assert sample_slices([(0, 10), (5, 10)], 20, 8) is None


def test_sample_slices_picks_runs_of_slices_spread_over_the_window() -> None:
    counts = [(i, 100) for i in range(64)]
    # Each run ends where a quarter (half) of the window does: the newest slice is always read.
    assert sample_slices(counts, 400, 64, runs=4) == [15, 31, 47, 63]
    assert sample_slices(counts, 1200, 64, runs=4) == [13, 14, 15, 29, 30, 31, 45, 46, 47,
                                                       61, 62, 63]
    assert sample_slices(counts, 400, 64, runs=2) == [30, 31, 62, 63]
    # Empty slices are left out, and the runs widen until they hold the sample.
    sparse = [(i, 100) for i in range(64) if i % 2 == 0]
    assert sample_slices(sparse, 400, 64, runs=4) == [14, 30, 46, 62]
    # Spans only at the start of the window: the runs widen up to covering every slice.
    early = [(0, 1000)]
    assert sample_slices(early, 10, 64) == [0]


MIN = 60 * 10**9


def test_minute_slices_share_each_minute_over_the_slices_it_overlaps() -> None:
    # A 60 s window from second 30 in 4 slices of 15 s: minute 0 covers slices 0-1, minute 1
    # slices 2-3; each minute's spans are shared by the time it overlaps each slice.
    assert minute_slices([(0, 600), (MIN, 60)], 30 * 10**9, 90 * 10**9, 4) == [
        (0, 150), (1, 150), (2, 15), (3, 15)]
    # Minutes outside the window count nothing; a few spans still mark a slice as not empty.
    assert minute_slices([(-MIN, 50), (0, 1), (2 * MIN, 50)], 0, MIN, 64) == [
        (i, 1) for i in range(64)]


@given(st.lists(st.tuples(st.integers(0, 59), st.integers(1, 5000)), max_size=60,
                unique_by=lambda m: m[0]),
       st.integers(0, 30 * MIN), st.integers(1, 29 * MIN), st.integers(1, 128))
def test_minute_slices_keep_the_window_total(minutes: list[tuple[int, int]], start: int,
                                             width: int, slices: int) -> None:
    rows = [(m * MIN, c) for m, c in minutes]
    got = minute_slices(rows, start, start + width, slices)
    exact = sum(c * max(0, min(m + MIN, start + width) - max(m, start)) / MIN for m, c in rows)
    assert all(0 <= i < slices and n >= 1 for i, n in got)
    # Rounded up per slice: never less than the window's share, at most one more per slice.
    assert exact - 1e-6 <= sum(n for _, n in got) <= exact + len(got)


@given(st.lists(st.integers(1, 10**12), min_size=1, max_size=300), st.integers(1, 400))
def test_top_floor_is_reached_by_the_n_longest(durations: list[int], n: int) -> None:
    """``slowest_traces`` reads only spans at least ``top_floor_ns`` long: the ``n`` longest
    (all of them when fewer) must all be among those."""
    counts: dict[int, int] = {}
    for d in durations:
        counts[bucket_of(d)] = counts.get(bucket_of(d), 0) + 1
    floor = top_floor_ns(counts.items(), n)
    longest = sorted(durations, reverse=True)[:n]
    assert all(d >= floor for d in longest)
    if len(durations) >= n:  # and the floor is not lower than the buckets allow
        assert floor >= bucket_floor_ns(bucket_of(longest[-1]))
