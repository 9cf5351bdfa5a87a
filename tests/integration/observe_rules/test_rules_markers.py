"""Deploy markers against a real DuckDB store: dedup, the service.version hook, before/after."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from rules_helpers import at, span_rows

from noops.observe._rules_common import RuleNotFound, RuleUsageError
from noops.observe.markers import DeployMarkers
from noops.observe.store import DuckDBStore

pytestmark = pytest.mark.observe


@pytest.fixture
def markers(rules_db: Path, tstore: DuckDBStore) -> Iterator[DeployMarkers]:
    m = DeployMarkers(rules_db, tstore)
    yield m
    m.close()


def test_fingerprint_deduplicates(markers: DeployMarkers) -> None:
    first = markers.record("shop", "v7", "deploy", at=at(0), fingerprint="ci-run-41")
    again = markers.record("shop", "v8", "external", at=at(30), fingerprint="ci-run-41")
    assert not first.deduplicated and again.deduplicated
    assert again.id == first.id and again.version == "v7"
    assert [m.id for m in markers.list()] == [first.id]


def test_same_release_within_window_is_one_marker(markers: DeployMarkers) -> None:
    a = markers.record("shop", "v3", "deploy", at=at(0))
    b = markers.record("shop", "v3", "deploy", at=at(5))  # a retry of the same pipeline
    c = markers.record("shop", "v3", "config", at=at(5))  # another kind: its own marker
    d = markers.record("shop", "v3", "deploy", at=at(60))  # outside the 10-minute window
    assert b.deduplicated and b.id == a.id
    assert not c.deduplicated and not d.deduplicated
    assert len({a.id, c.id, d.id}) == 3
    assert [m.id for m in markers.list(service="shop")] == [d.id, c.id, a.id]  # newest first
    assert [m.id for m in markers.list(since=at(1))] == [d.id, c.id]
    assert markers.list(service="other") == []


def test_markers_survive_reopen(rules_db: Path, tstore: DuckDBStore) -> None:
    first = DeployMarkers(rules_db, tstore)
    made = first.record("shop", "v1", "rollback", at=at(0), description="back to v1",
                        attributes={"from": "v2"})
    first.close()
    second = DeployMarkers(rules_db, tstore)
    try:
        got = second.get(made.id)
        assert (got.kind, got.description, got.attributes) == ("rollback", "back to v1",
                                                               {"from": "v2"})
    finally:
        second.close()


def test_observe_spans_marks_a_new_version_once(markers: DeployMarkers) -> None:
    markers.record("shop", "v4", "deploy", at=at(0))
    assert markers.observe_spans("shop", "v4") is None  # the platform marked this release
    new = markers.observe_spans("shop", "2.0.1")
    assert new is not None and new.kind == "version" and new.source == "telemetry"
    assert markers.observe_spans("shop", "2.0.1") is None
    assert markers.observe_spans("other", "2.0.1") is not None
    assert sorted(m.version for m in markers.list(service="shop")) == ["2.0.1", "v4"]


@pytest.mark.parametrize(("args", "message"), [
    (("", "v1", "deploy"), "service"),
    (("shop", " ", "deploy"), "version"),
    (("shop", "v1", "launch"), "unknown marker kind"),
])
def test_bad_markers_are_refused(markers: DeployMarkers, args: tuple[str, str, str],
                                 message: str) -> None:
    with pytest.raises(RuleUsageError, match=message):
        markers.record(*args)
    assert markers.list() == []


def test_unknown_marker_is_not_found(markers: DeployMarkers) -> None:
    with pytest.raises(RuleNotFound):
        markers.get(99)


def test_compare_before_and_after(markers: DeployMarkers, tstore: DuckDBStore) -> None:
    # 15 min before: 60 req/min at 20 ms, no errors; after: 120 req/min at 80 ms, 10 % errors.
    tstore.insert_spans(span_rows("shop", at(-15), 15, 60, duration_ms=20))
    tstore.insert_spans(span_rows("shop", at(0), 15, 120, duration_ms=80, error_every=10, seed=1))
    tstore.insert_spans(span_rows("other", at(0), 15, 10, duration_ms=900, error_every=2, seed=2))
    marker = markers.record("shop", "v2", at=at(0))

    done = markers.compare(marker, now=at(30))
    assert done["complete"] and done["note"] == ""
    before, after = done["before"], done["after"]
    assert (before["count"], after["count"]) == (900, 1800)
    assert before["rate_per_s"] == pytest.approx(1.0)
    assert after["rate_per_s"] == pytest.approx(2.0)
    assert (before["error_pct"], after["error_pct"]) == (0.0, pytest.approx(10.0))
    assert before["p95_ms"] == pytest.approx(20.0)
    assert after["p95_ms"] == pytest.approx(80.0)
    assert done["delta"] == {"rate_pct": 100.0, "error_pct_points": 10.0, "p95_pct": 300.0}

    early = markers.compare(marker, now=at(5))
    assert not early["complete"]
    assert early["note"].startswith("not enough data yet")
    assert early["after"]["count"] == 5 * 120
    assert early["after"]["rate_per_s"] == pytest.approx(2.0)

    short = markers.compare(marker, window=timedelta(minutes=1), now=at(30))
    assert short["before"]["count"] == 60 and short["after"]["count"] == 120

    future = markers.compare(marker, now=at(-1))
    assert future["after"] is None and "not enough data yet" in future["note"]


def test_compare_without_traffic_says_so(markers: DeployMarkers) -> None:
    marker = markers.record("quiet", "v1", at=at(0))
    out = markers.compare(marker, now=at(20))
    assert out["before"]["count"] == 0 and out["after"]["count"] == 0
    assert "no traffic before" in out["note"] and "delta" not in out


def test_marker_history_is_bounded(rules_db: Path, tstore: DuckDBStore) -> None:
    markers = DeployMarkers(rules_db, tstore, keep=3)
    try:
        for n in range(5):
            markers.record("shop", f"v{n}", at=at(n * 30))
        assert [m.version for m in markers.list()] == ["v4", "v3", "v2"]
    finally:
        markers.close()
