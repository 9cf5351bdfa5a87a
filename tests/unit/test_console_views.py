"""The console's pure shaping of API answers (noops.console.views)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from noops.console.views import (
    app_row,
    base_age_days,
    chart_series,
    expiry_text,
    map_layout,
    policy_edges,
    resource_series,
    restarts,
    safety,
    score_bars,
    spark,
    trace_rows,
)


def test_app_row_counts_desired_from_the_formation_and_matches_probes_and_alerts() -> None:
    app = {"name": "shop", "ready": 2, "instances": 3, "url": "https://shop.localhost:8443/",
           "release": {"version": 4, "formation": {"web": 2, "worker": 1}, "config_version": 2,
                       "image": "shop:latest", "digest": "sha256:abc"}}
    probes = [{"id": 1, "app": "shop", "last": {"ok": True}}, {"id": 2, "app": "shop", "last": None},
              {"id": 3, "app": "other", "last": {"ok": True}}]
    alerts = [{"state": "firing", "service": "shop", "name": "a"},
              {"state": "ok", "service": "shop", "name": "b"},
              {"state": "firing", "probe_id": 2, "service": None, "name": "c"},
              {"state": "firing", "service": "other", "name": "d"}]
    row = app_row(app, None, alerts, probes)
    assert (row["ready"], row["desired"], row["config_version"]) == (2, 3, 2)
    assert (row["probes_up"], row["probes"]) == (1, 2)
    assert [a["name"] for a in row["firing"]] == ["a", "c"]
    assert app_row({"name": "new", "release": None}, None, [], [])["desired"] == 0


def test_chart_series_rate_errors_and_gaps() -> None:
    points = [{"minute_ns": 60 * 10**9, "count": 120, "errors": 6, "p95_ms": 41.5},
              {"minute_ns": 120 * 10**9, "count": 0, "errors": 0, "p95_ms": 0.0}]
    s = chart_series(points)
    assert s == {"x": [60.0, 120.0], "rate": [2.0, 0.0], "error_pct": [5.0, None],
                 "p95_ms": [41.5, None]}
    assert spark(points) == [41.5]
    assert restarts([{"restarts": 2}, {"restarts": None}, {}]) == 2


def test_trace_rows_mark_failed_and_give_the_time() -> None:
    rows = trace_rows([{"trace_id": "a", "status_code": "Ok", "timestamp_ns": 1_700_000_000 * 10**9},
                       {"trace_id": "b", "status_code": "Error", "timestamp_ns": 2}])
    assert [(r["trace_id"], r["failed"]) for r in rows] == [("a", False), ("b", True)]
    assert rows[0]["at"].startswith("2023-11-14T22:13:20")


names = st.sampled_from(["a", "b", "c", "d", "e"])


@given(st.lists(st.tuples(names, names), max_size=12))
def test_map_layout_places_every_service_and_callers_left_of_acyclic_callees(
        pairs: list[tuple[str, str]]) -> None:
    edges = [{"client": c, "server": s, "calls": 1} for c, s in pairs]
    layout = map_layout(edges)
    placed = {n["name"]: n for n in layout["nodes"]}
    assert set(placed) == {c for c, _ in pairs} | {s for _, s in pairs}
    assert len(layout["edges"]) == len(edges)
    assert all(0 < n["x"] < layout["width"] and 0 < n["y"] < layout["height"]
               for n in layout["nodes"])
    pair_set = set(pairs)
    for c, s in pairs:
        if c != s and (s, c) not in pair_set and not _reaches(pair_set, s, c):
            assert placed[c]["x"] < placed[s]["x"]


def _reaches(pairs: set[tuple[str, str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n == goal:
            return True
        if n not in seen:
            seen.add(n)
            todo += [s for c, s in pairs if c == n]
    return False


def test_resource_series_aligns_instances_on_one_axis() -> None:
    cpu = [{"bucket_s": 60, "group": "web-1", "avg": 0.25}, {"bucket_s": 120, "group": "web-1", "avg": 0.5},
           {"bucket_s": 120, "group": "web-2", "avg": 0.125}, {"bucket_s": 60, "group": "", "avg": 9.0}]
    mem = [{"bucket_s": 60, "group": "web-2", "avg": 3 * 2**20}]
    got = resource_series(cpu, mem)
    assert got["x"] == [60, 120]
    assert got["instances"] == ["web-1", "web-2"]  # a point without an instance is not drawn
    assert got["cpu_pct"] == [[25.0, 50.0], [None, 12.5]]
    assert got["mem_mib"] == [[None, None], [3.0, None]]
    assert got["latest"] == {"web-1": (50.0, None), "web-2": (12.5, 3.0)}
    assert resource_series([], [])["x"] == []


def test_base_age_days() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 27, 12, tzinfo=UTC)
    assert base_age_days({"base_released": "2026-11-20T00:00:00Z"}, now) == 7
    assert base_age_days({"base_released": "2026-11-28T00:00:00Z"}, now) == 0  # clock skew
    assert base_age_days({"base_released": "yesterday"}, now) is None
    assert base_age_days({"base_released": "1970-01-01T00:00:00Z"}, now) is None
    assert base_age_days({}, now) is None and base_age_days(None, now) is None


def test_expiry_text_reads_in_the_best_unit() -> None:
    assert [expiry_text(d) for d in (None, -1, 0, 3650, 2.0, 1.5, 1 / 24, 0.01, 0.0001)] == [
        "", "expired", "expired", "3650 d", "2 d", "36.0 h", "1.0 h", "14 min", "1 min"]


def test_safety_cell_from_the_access_summary() -> None:
    summary = {"shop": {"deny": 4, "step_up": 1, "cert_days_left": 0.02,
                        "cert_not_after": "2026-11-27T20:00:00+00:00", "cert_expiring": False},
               "blog": {"deny": 0, "step_up": 0, "cert_days_left": -0.5, "cert_expiring": True}}
    assert safety(None, "shop") is None   # not served: the page shows an empty state
    assert safety(summary, "shop") == {"deny": 4, "step_up": 1, "cert": "29 min",
                                       "cert_not_after": "2026-11-27T20:00:00+00:00",
                                       "cert_warn": False}
    assert safety(summary, "blog")["cert"] == "expired" and safety(summary, "blog")["cert_warn"]
    assert safety(summary, "new") == {"deny": 0, "step_up": 0, "cert": None,
                                      "cert_not_after": None, "cert_warn": False}
    row = app_row({"name": "shop", "release": None}, None, [], [], summary)
    assert row["safety"]["deny"] == 4
    assert app_row({"name": "shop", "release": None}, None, [], [])["safety"] is None


def test_score_bars_scale_to_the_fullest_bucket() -> None:
    (bars,) = score_bars([{"route": "apps", "decisions": 6, "mean_score": 51.5,
                           "buckets": [2, 0, 0, 0, 0, 0, 0, 0, 0, 4], "outcomes": {"allow": 6}}])
    assert bars["route"] == "apps" and bars["decisions"] == 6
    assert [b["pct"] for b in bars["bars"]] == [50.0, 0, 0, 0, 0, 0, 0, 0, 0, 100.0]
    assert bars["bars"][0]["label"] == "0–9" and bars["bars"][9]["label"] == "90–100"
    assert score_bars([{"route": "x", "buckets": [0] * 10}])[0]["bars"][3]["pct"] == 0.0


def test_policy_edges_mark_allowed_and_add_denied_only_calls() -> None:
    edges = [{"client": "front", "server": "inv", "calls": 5, "rate_per_s": 1.0, "errors": 0,
              "p95_ms": 3.0, "mtls": True, "mtls_calls": 5},
             {"client": "noops-probe", "server": "front", "calls": 2, "rate_per_s": 0.1,
              "errors": 0, "p95_ms": 9.0, "mtls": True, "mtls_calls": 2},
             {"client": "front", "server": "cache", "calls": 1, "rate_per_s": 0.1, "errors": 0,
              "p95_ms": 1.0, "mtls": False, "mtls_calls": 0}]
    calls = [{"caller": "front", "caller_spiffe_id": "spiffe://d/app/front/web", "app": "inv",
              "allow": 5, "deny": 1},
             {"caller": "noops", "caller_spiffe_id": "spiffe://d/app/noops/probe", "app": "front",
              "allow": 2, "deny": 0},
             {"caller": "front", "caller_spiffe_id": "spiffe://d/app/front/web", "app": "billing",
              "allow": 0, "deny": 3}]
    got = {(e["client"], e["server"]): e for e in policy_edges(edges, calls)}
    assert got[("front", "inv")]["policy"] == {"allow": 5, "deny": 1}
    assert got[("noops-probe", "front")]["policy"] == {"allow": 2, "deny": 0}
    assert got[("front", "cache")]["policy"] is None
    denied = got[("front", "billing")]
    assert denied["denied_only"] and denied["calls"] == 3 and denied["policy"]["deny"] == 3
    assert [e["policy"] for e in policy_edges(edges, None)] == [None, None, None]
