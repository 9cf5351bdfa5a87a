"""Pure parts of markers/probes/alerts: durations, JSON paths, window quantiles, payloads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from noops.observe._rules_common import (
    RuleUsageError,
    compile_json_path,
    match_json_path,
    parse_duration,
)
from noops.observe.alerts import AlertRule, payload, window_quantile
from noops.observe.store.base import TimeseriesPoint


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("7d", 604800.0), ("45", 45.0),
    (" 1.5 m ", 90.0), (12, 12.0), (0.25, 0.25),
])
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "-3s", "1e3s", True, -1])
def test_parse_duration_refuses(text: object) -> None:
    with pytest.raises(RuleUsageError):
        parse_duration(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(("path", "steps"), [
    ("$.status", ["status"]), ("status", ["status"]), ("$.a.b[2]", ["a", "b", 2]),
    ('$["odd key"].x', ["odd key", "x"]), ("[0].id", [0, "id"]), ("$.items[-1]", ["items", -1]),
    ("$.$ref", ["$ref"]),
])
def test_json_paths(path: str, steps: list[object]) -> None:
    assert compile_json_path(path) == steps


@pytest.mark.parametrize("path", ["", "$", "$.", "$.a..b", "$.a[", "a[x]", "$.a b", "$['a']"])
def test_bad_json_paths(path: str) -> None:
    with pytest.raises(RuleUsageError, match="JSON path"):
        compile_json_path(path)


def test_match_json_path() -> None:
    doc = {"a": [{"b": None}, {"c": 2}], "n": 0}
    assert match_json_path(doc, ["a", 0, "b"]) == (True, None)
    assert match_json_path(doc, ["a", -1, "c"]) == (True, 2)
    assert match_json_path(doc, ["a", 2]) == (False, None)
    assert match_json_path(doc, ["n", "x"]) == (False, None)
    assert match_json_path([1], ["a"]) == (False, None)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=10),
       st.lists(st.text(max_size=6) | st.integers(-3, 3), max_size=4))
def test_match_json_path_never_crashes(doc: object, steps: list[str | int]) -> None:
    found, _ = match_json_path(doc, steps)
    assert isinstance(found, bool)


def point(count: int, p50: float, p95: float, p99: float) -> TimeseriesPoint:
    return TimeseriesPoint(minute_ns=0, count=count, errors=0, p50_ms=p50, p95_ms=p95, p99_ms=p99)


def test_window_quantile() -> None:
    same = [point(10, 20, 40, 50)] * 5
    assert window_quantile(same, 0.95) == pytest.approx(40)
    assert window_quantile(same, 0.99) == pytest.approx(50)
    # One slow minute of three: 1/3 of the requests take 600 ms, so the window's p95 is 600 ms
    # (a weighted mean of the per-minute p95 would say 227 ms and hide the burst).
    burst = [point(30, 40, 40, 40), point(30, 40, 40, 40), point(30, 600, 600, 600)]
    assert window_quantile(burst, 0.95) == pytest.approx(600)
    assert window_quantile(burst, 0.5) == pytest.approx(40)
    assert window_quantile([], 0.95) == 0.0


@given(st.lists(st.tuples(st.integers(1, 1000), st.floats(0.1, 1e4), st.floats(1, 3),
                          st.floats(1, 2)), min_size=1, max_size=30))
def test_window_quantile_is_within_the_minutes(rows: list[tuple[int, float, float, float]]) -> None:
    pts = [point(c, p50, p50 * f95, p50 * f95 * f99) for c, p50, f95, f99 in rows]
    value = window_quantile(pts, 0.95)
    assert min(p["p50_ms"] for p in pts) * 0.999 <= value <= max(p["p99_ms"] for p in pts) * 1.001


def test_payload_fingerprint_is_per_episode() -> None:
    rule = AlertRule(id=4, name="n", kind="error_rate", service="s", endpoint=None, threshold=5,
                     probe_id=None, for_s=0, window_s=300, min_requests=10, webhooks=(), created=0)
    firing = payload(rule, "firing", "u1", "ep1", 100.0, 90.0, 9.0, "m")
    resolved = payload(rule, "resolved", "u2", "ep1", 200.0, 90.0, 1.0, "m")
    other = payload(rule, "firing", "u3", "ep2", 300.0, 300.0, 9.0, "m")
    assert firing["fingerprint"] == resolved["fingerprint"] != other["fingerprint"]
    assert firing["resolved_at"] is None and resolved["resolved_at"] == "1970-01-01T00:03:20Z"
    assert firing["started_at"] == "1970-01-01T00:01:30Z"
