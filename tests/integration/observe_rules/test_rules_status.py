"""Public status pages: published per app, figures from real probe checks in a real store, and
nothing beyond what a public page may show."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rules_helpers import Served
from starlette.applications import Starlette

from noops.observe._rules_common import RuleNotFound, RuleUsageError
from noops.observe.probes import Probes
from noops.observe.rules_api import status_routes
from noops.observe.status import StatusPages
from noops.observe.store import DuckDBStore

pytestmark = pytest.mark.observe

DAY = 86_400


@pytest.fixture
def pages(rules_db: Path, probes: Probes, tstore: DuckDBStore) -> Iterator[StatusPages]:
    p = StatusPages(rules_db, probes, tstore)
    yield p
    p.close()


def past_checks(store: DuckDBStore, probe_id: int, day: int, ups: list[bool]) -> None:
    """Checks on an earlier UTC day, written in the probes' own metric shape."""
    store.insert_metrics("gauge", [
        {"ServiceName": "shop", "MetricName": "noops.probe.up", "TimeUnix": (day + 60 * i) * 10**9,
         "Value": 1.0 if up else 0.0, "Attributes": {"probe.id": str(probe_id)}}
        for i, up in enumerate(ups)])


def test_a_page_shows_uptime_from_real_checks(pages: StatusPages, probes: Probes,
                                              tstore: DuckDBStore, app_server: Served) -> None:
    with pytest.raises(RuleNotFound, match="noops status-page enable shop"):
        pages.page("shop")
    front = probes.add(f"{app_server.url}/", name="Storefront", app="shop")
    down = probes.add(f"{app_server.url}/down", name="Checkout", app="shop")
    probes.add(f"{app_server.url}/", name="Other app", app="other")
    for probe in (front, front, down):
        asyncio.run(probes.check(probe.id))
    probes.flush()  # the current minute's points
    today = int(time.time()) // DAY * DAY
    past_checks(tstore, front.id, today - 3 * DAY, [True, True, True, False])
    assert pages.enable("shop", "Shop status")["path"] == "/status/shop"

    page = pages.page("shop")
    assert (page["title"], page["state"]) == ("Shop status", "degraded")
    by_name = {c["name"]: c for c in page["components"]}
    assert set(by_name) == {"Storefront", "Checkout"}
    assert by_name["Storefront"]["up"] is True and by_name["Checkout"]["up"] is False
    assert by_name["Storefront"]["uptime_pct"]["24h"] == 100.0
    assert by_name["Checkout"]["uptime_pct"]["24h"] == 0.0
    # 30d, by minute points: today's one (or two, across a minute boundary; both passed) and
    # 3 of 4 minutes three days ago
    assert by_name["Storefront"]["uptime_pct"]["30d"] in (80.0, round(100 * 5 / 6, 2))
    days = by_name["Storefront"]["days"]
    assert len(days) == 30 and days[-1]["uptime_pct"] == 100.0
    assert days[-4]["uptime_pct"] == 75.0 and days[-2]["uptime_pct"] is None
    text = json.dumps(page)
    assert app_server.url not in text and "/down" not in text  # targets are not public
    assert "503" not in text and "trace" not in text  # nor errors or trace ids

    probes.remove(down.id)
    assert pages.page("shop")["state"] == "operational"
    pages.disable("shop")
    with pytest.raises(RuleNotFound):
        pages.page("shop")
    with pytest.raises(RuleNotFound):
        pages.disable("shop")


def test_the_api_publishes_lists_and_refuses_bad_input(pages: StatusPages) -> None:
    async def calls() -> None:
        transport = httpx.ASGITransport(app=Starlette(routes=status_routes(pages)))
        async with httpx.AsyncClient(transport=transport, base_url="http://noops") as http:
            assert (await http.get("/api/status-pages/shop/page")).status_code == 404
            put = await http.put("/api/status-pages/shop", json={"title": "Shop"})
            assert put.json()["title"] == "Shop"
            assert (await http.put("/api/status-pages/shop", json={})).json()["title"] == "shop"
            assert [p["app"] for p in (await http.get("/api/status-pages")).json()] == ["shop"]
            page = (await http.get("/api/status-pages/shop/page")).json()
            assert (page["state"], page["components"]) == ("unknown", [])
            for app, body in (("Bad_Name", {}), ("shop", {"title": "x" * 81}),
                              ("shop", {"title": 3})):
                resp = await http.put(f"/api/status-pages/{app}", json=body)
                assert resp.status_code == 400, (app, body)
                assert resp.json()["error"]
            assert (await http.delete("/api/status-pages/shop")).json() == {"removed": "shop"}
            assert (await http.delete("/api/status-pages/shop")).status_code == 404

    asyncio.run(calls())
    with pytest.raises(RuleUsageError):
        pages.enable("shop", "line\nbreak")
