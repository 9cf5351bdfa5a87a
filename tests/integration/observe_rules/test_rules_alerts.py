"""Alerts evaluated from a real DuckDB store at explicit times, notifying a webhook receiver the
test runs: an injected error burst fires once and resolves once; retries; latency, SLO burn and
probe-failure rules; validation."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from rules_helpers import Served, at, posted, span_rows

from helpers import free_port
from noops.observe._rules_common import RuleNotFound, RuleUsageError
from noops.observe.alerts import Alerts
from noops.observe.probes import Probes
from noops.observe.store import DuckDBStore

pytestmark = pytest.mark.observe


@pytest.fixture
def alerts(rules_db: Path, tstore: DuckDBStore, probes: Probes) -> Iterator[Alerts]:
    a = Alerts(rules_db, tstore, probes)
    yield a
    a.close()


def burst(store: DuckDBStore) -> None:
    """shop: 60 req/min for 40 minutes; minutes 10-12 fail every other request."""
    store.insert_spans(span_rows("shop", at(0), 10, 60))
    store.insert_spans(span_rows("shop", at(10), 3, 60, error_every=2, seed=1))
    store.insert_spans(span_rows("shop", at(13), 27, 60, seed=2))
    store.insert_spans(span_rows("cart", at(0), 40, 60, error_every=2, seed=3))  # not watched


def run(alerts: Alerts, minutes: range, step: float = 0.5) -> list[tuple[float, str]]:
    """Evaluate (twice per tick, to prove idempotency) and deliver every ``step`` minutes."""
    seen = []
    m = float(minutes.start)
    while m <= minutes.stop:
        for _ in range(2):
            seen += [(m, e.status) for e in alerts.evaluate(at(m))]
        alerts.deliver(at(m))
        m += step
    return seen


def test_error_burst_fires_and_resolves_once(alerts: Alerts, tstore: DuckDBStore,
                                             webhook: Served) -> None:
    burst(tstore)
    rule = alerts.add("error_rate", "shop", threshold="5%", for_="1m", window="2m",
                      webhooks=[webhook.url + "/hook"])
    events = run(alerts, range(2, 30))
    # The 2-minute window of complete minutes first holds burst minute 10 at 11:00 (pending),
    # still breaches at 12:00 (for 1 m: firing); the last burst minute (12) leaves the window at 15:00.
    assert events == [(12.0, "firing"), (15.0, "resolved")]
    bodies = posted(webhook.recorder)
    assert [b["status"] for b in bodies] == ["firing", "resolved"]
    firing, resolved = bodies
    assert firing["fingerprint"] == resolved["fingerprint"]
    assert firing["id"] != resolved["id"]
    assert [r["headers"]["idempotency-key"] for r in webhook.recorder.requests] == [
        firing["id"], resolved["id"]]
    assert firing["alert"]["id"] == rule.id and firing["service"] == "shop"
    assert firing["value"] == pytest.approx(50.0)  # minutes 10-11: 60 errors in 120 requests
    assert firing["started_at"] == "2026-01-05T12:11:00Z"
    assert resolved["resolved_at"] == "2026-01-05T12:15:00Z"
    assert resolved["value"] == 0.0
    state = alerts.states()[0]
    assert state["state"] == "resolved"
    history = alerts.events()
    assert [e["status"] for e in history] == ["resolved", "firing"]
    assert all(d["status"] == "delivered" and d["attempts"] == 1
               for e in history for d in e["deliveries"])


def test_a_failing_webhook_is_retried_with_backoff(alerts: Alerts, tstore: DuckDBStore,
                                                   webhook: Served) -> None:
    tstore.insert_spans(span_rows("shop", at(10), 1, 60, error_every=2))  # one bad minute
    tstore.insert_spans(span_rows("shop", at(11), 5, 60, seed=1))
    alerts.add("error_rate", "shop", threshold=5, window="1m", webhooks=[webhook.url])
    webhook.recorder.fail_next = 4
    (event,) = alerts.evaluate(at(11))
    assert event.status == "firing"
    t = at(11).timestamp()
    tries = [(dt, [(o["status"], o["error"]) for o in alerts.deliver(t + dt)])
             for dt in (0, 1, 5, 14, 15, 35)]
    assert tries == [(0, [("pending", "HTTP 500")]), (1, []), (5, [("pending", "HTTP 500")]),
                     (14, []), (15, [("pending", "HTTP 500")]), (35, [("pending", "HTTP 500")])]
    # Backoff 5, 10, 20, 40 s: the next try is at t + 75. The burst is over at t + 60; the
    # resolved notification waits for the firing one instead of overtaking it.
    (resolved,) = alerts.evaluate(at(12))
    assert resolved.status == "resolved"
    assert alerts.deliver(at(12)) == []
    out = alerts.deliver(t + 75)
    assert [(o["status"], o["attempts"]) for o in out] == [("delivered", 5), ("delivered", 1)]
    bodies = posted(webhook.recorder)
    assert [b["status"] for b in bodies] == ["firing"] * 5 + ["resolved"]
    assert len({b["id"] for b in bodies[:5]}) == 1  # the same notification, retried
    assert alerts.deliver(t + 3600) == []


def test_unreachable_webhook_gives_up(alerts: Alerts, tstore: DuckDBStore) -> None:
    burst(tstore)
    alerts.add("error_rate", "shop", threshold=5, window="1m",
               webhooks=[f"http://127.0.0.1:{free_port()}/"])
    alerts.evaluate(at(11))
    t = at(11).timestamp()
    outcomes = []
    for _ in range(12):
        outcomes += [o["status"] for o in alerts.deliver(t)]
        t += 3600
    assert outcomes == ["pending"] * 9 + ["failed"]
    assert alerts.events()[0]["deliveries"][0]["status"] == "failed"


def test_latency_alert(alerts: Alerts, tstore: DuckDBStore) -> None:
    tstore.insert_spans(span_rows("api", at(0), 10, 30, duration_ms=40))
    tstore.insert_spans(span_rows("api", at(10), 5, 30, duration_ms=600, seed=1))
    tstore.insert_spans(span_rows("api", at(15), 10, 30, duration_ms=40, seed=2))
    p95 = alerts.add("p95", "api", threshold="300ms", window="3m")
    p99 = alerts.add("p99", "api", threshold="1s", window="3m")
    events = run(alerts, range(1, 25))
    assert events == [(11.0, "firing"), (18.0, "resolved")]
    fired = alerts.events(alert_id=p95.id)[-1]
    assert fired["value"] == pytest.approx(600, rel=0.045)  # rollup estimates are within ±4.4 %
    assert alerts.events(alert_id=p99.id) == []


def test_endpoint_alert_only_sees_its_endpoint(alerts: Alerts, tstore: DuckDBStore) -> None:
    tstore.insert_spans(span_rows("api", at(0), 5, 30, endpoint="GET /a", error_every=1))
    tstore.insert_spans(span_rows("api", at(0), 5, 30, endpoint="GET /b", seed=1))
    a = alerts.add("error_rate", "api", threshold=1, endpoint="GET /a", window="2m")
    b = alerts.add("error_rate", "api", threshold=1, endpoint="GET /b", window="2m")
    assert [e.alert_id for e in alerts.evaluate(at(3))] == [a.id]
    assert {s["id"]: s["state"] for s in alerts.states()} == {a.id: "firing", b.id: "ok"}


def test_slo_burn_pages_on_both_windows_and_resolves_on_the_short_one(
        alerts: Alerts, tstore: DuckDBStore) -> None:
    # An hour of clean traffic, a 5-minute burst at 50 % errors, then clean again.
    tstore.insert_spans(span_rows("pay", at(0), 60, 60))
    tstore.insert_spans(span_rows("pay", at(60), 5, 60, error_every=2, seed=1))
    tstore.insert_spans(span_rows("pay", at(65), 45, 60, seed=2))
    rule = alerts.add("slo", "pay", threshold=99.9)
    events = [(m, e.status) for m in range(55, 110) for e in alerts.evaluate(at(m))]
    # 61:00, one burst minute in: 1 h burn 30/3600/0.001 = 8.3x (< 14.4, no fast page) but
    # 6 h 30/3660 → 8.2x and 30 m 30/1800 → 16.7x, both above 6 (slow page). It resolves at
    # 95:00, when the burst leaves the 30-minute window, although the 1 h and 6 h windows still
    # burn far above their factors: that is what the short windows are for.
    assert events == [(61, "firing"), (95, "resolved")]
    fired, resolved = reversed(alerts.events(alert_id=rule.id))
    assert fired["value"] == pytest.approx(30 / 3600 / 0.001)
    assert "1h 8.3x / 5m 100.0x" in fired["message"]
    assert "6h 8.2x / 30m 16.7x" in fired["message"]
    assert "1h 41.7x" in resolved["message"] and "30m 0.0x" in resolved["message"]


def test_slo_fast_burn_alone_pages(alerts: Alerts, tstore: DuckDBStore) -> None:
    # A long clean history keeps the slow tier quiet: 14.4x over 1 h fires the fast tier.
    tstore.insert_spans(span_rows("pay", at(-300), 360, 20))
    tstore.insert_spans(span_rows("pay", at(60), 10, 20, error_every=2, seed=1))
    alerts.add("slo", "pay", threshold=99.9)
    fired = [(m, e.status) for m in range(55, 70) for e in alerts.evaluate(at(m))]
    # 1 h burn after k burst minutes: 10k/1200/0.001 > 14.4 from k = 2 (16.7x); 30 m burn
    # 10k/600/0.001 > 6 from k = 1, but 6 h 10k/7200/0.001 > 6 only from k = 5.
    assert fired == [(62, "firing")]


def test_probe_failure_alert(alerts: Alerts, probes: Probes, webhook: Served) -> None:
    port = free_port()
    probe = probes.add(f"tcp://127.0.0.1:{port}", app="db")
    rule = alerts.add("probe", probe_id=probe.id, threshold=3, webhooks=[webhook.url])
    assert rule.service == "db"
    for expected in ([], [], ["firing"]):
        asyncio.run(probes.check(probe.id))
        assert [e.status for e in alerts.evaluate()] == expected
    asyncio.run(probes.check(probe.id))
    assert alerts.evaluate() == []  # still failing: one notification per episode
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        asyncio.run(probes.check(probe.id))
    assert [e.status for e in alerts.evaluate()] == ["resolved"]
    alerts.deliver()
    assert [b["status"] for b in posted(webhook.recorder)] == ["firing", "resolved"]
    assert "failed check(s) in a row" in posted(webhook.recorder)[0]["message"]


def test_no_traffic_is_no_data(alerts: Alerts, tstore: DuckDBStore) -> None:
    tstore.insert_spans(span_rows("tiny", at(0), 2, 3, error_every=1))  # 100 % errors, 6 requests
    alerts.add("error_rate", "tiny", threshold=5, window="5m")
    assert alerts.evaluate(at(3)) == []
    assert alerts.states()[0]["message"].startswith("no data: 6 requests")


def test_rules_persist_and_can_be_removed(rules_db: Path, tstore: DuckDBStore,
                                          alerts: Alerts, webhook: Served) -> None:
    burst(tstore)
    rule = alerts.add("error_rate", "shop", threshold=5, window="1m", webhooks=[webhook.url])
    assert alerts.evaluate(at(11))[0].status == "firing"
    again = Alerts(rules_db, tstore)
    try:
        assert again.evaluate(at(11.5)) == []  # the firing state survived the restart
        assert again.states()[0]["state"] == "firing"
        again.remove(rule.id)
        assert again.list() == [] and len(again.events()) == 1
        with pytest.raises(RuleNotFound):
            again.remove(rule.id)
    finally:
        again.close()


@pytest.mark.parametrize(("kind", "service", "options", "message"), [
    ("latency", "shop", {"threshold": 1}, "unknown alert kind"),
    ("error_rate", None, {"threshold": 5}, "needs a service"),
    ("error_rate", "shop", {}, "needs a threshold"),
    ("error_rate", "shop", {"threshold": "lots"}, "not a number"),
    ("error_rate", "shop", {"threshold": "120%"}, "percentage"),
    ("p95", "shop", {"threshold": "fast"}, "not a duration"),
    ("slo", "shop", {"threshold": 100}, "between 0 and 100"),
    ("probe", None, {}, "probe id"),
    ("probe", None, {"probe_id": 42}, "no probe 42"),
    ("error_rate", "shop", {"threshold": 5, "webhooks": ["ftp://x/"]}, "bad webhook URL"),
    ("error_rate", "shop", {"threshold": 5, "for_": "a while"}, "not a duration"),
])
def test_bad_rules_are_refused(alerts: Alerts, kind: str, service: str | None,
                               options: dict[str, object], message: str) -> None:
    with pytest.raises((RuleUsageError, RuleNotFound), match=message):
        alerts.add(kind, service, **options)  # type: ignore[arg-type]
    assert alerts.list() == []


def test_event_history_is_bounded(rules_db: Path, tstore: DuckDBStore) -> None:
    for start in (0, 10, 20):  # three bad minutes, each its own episode
        tstore.insert_spans(span_rows("shop", at(start), 1, 60, error_every=1, seed=start))
    alerts = Alerts(rules_db, tstore, keep_events=3)
    try:
        alerts.add("error_rate", "shop", threshold=5, window="1m", min_requests=1)
        made = [e.status for m in range(0, 25) for e in alerts.evaluate(at(m))]
        assert made == ["firing", "resolved"] * 3
        assert [e["status"] for e in alerts.events()] == ["resolved", "firing", "resolved"]
    finally:
        alerts.close()
