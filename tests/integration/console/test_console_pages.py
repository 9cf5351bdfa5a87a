"""Every console page in Chromium against a real platform and real telemetry: the numbers on the
page equal the API's, deploy markers open their comparison, a rollback from the UI completes, and
the screenshots for docs/console.md are taken."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from console_harness import APP, DOCS_IMG, Console, Platform

from helpers import needs
from noops.runtime.usage import InstanceUsage, UsageSampler

pytestmark = [pytest.mark.console, pytest.mark.runc, pytest.mark.stacks,
              needs("runc", "mmdebstrap", "ip")]

H = {"since": "1h"}


def shot(page: Any, name: str) -> None:
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMG / f"{name}.png"), full_page=True)


def text(page: Any, selector: str) -> str:
    return str(page.locator(selector).first.inner_text()).strip()


def test_overview_matches_the_api(console: Console, platform: Platform, page: Any) -> None:
    page.goto(f"{console.url}/?since=1h")
    apps = platform.api("GET", "/api/apps").json()
    (shop,) = [a for a in apps if a["name"] == APP]
    stats = {s["service"]: s for s in console.api.get("/api/apm/services", **H)}[APP]
    row = f"tr[data-app={APP}]"
    assert text(page, f"{row} [data-field=release]") == f"v{shop['release']['version']}"
    assert text(page, f"{row} [data-field=config]") == str(shop["release"]["config_version"])
    desired = sum(shop["release"]["formation"].values())
    assert text(page, f"{row} [data-field=ready]") == f"{shop['ready']}/{desired}"
    assert text(page, f"{row} [data-field=rate]") == f"{stats['rate_per_s']:.2f}/s"
    assert text(page, f"{row} [data-field=error_pct]") == f"{stats['error_pct']:.1f} %"
    assert text(page, f"{row} [data-field=p95]") == f"{stats['p95_ms']:.1f} ms"
    page.locator(f"{row} svg.spark polyline").wait_for(state="attached")  # loaded after the page
    restarts = sum(i["restarts"] for i in platform.api("GET", f"/api/apps/{APP}/ps").json())
    assert text(page, f"{row} [data-field=restarts]").split()[0] == str(restarts)
    image = platform.api("GET", f"/api/apps/{APP}/image").json()
    page.locator(f"{row} [data-field=stack]").wait_for()  # loaded after the page
    assert text(page, f"{row} [data-field=stack]") == f"{image['stack']} · {image['distro']}"
    assert text(page, f"{row} [data-field=rebase]") == (
        "rebase available" if image["rebase_available"] else "up to date")
    assert "shop errors > 5 %" in text(page, row)  # the firing alert
    assert text(page, f"{row} [data-field=probes]") == "1/1 up"
    assert "inventory" in text(page, "main")  # a service that is not an app
    shot(page, "overview")


def test_times_are_in_the_viewers_time_zone(console: Console, page: Any) -> None:
    page.goto(f"{console.url}/apps/{APP}?since=1h")
    el = page.locator("time[data-local]").first
    iso, shown = el.get_attribute("title"), el.inner_text()
    expected = page.evaluate("""iso => new Intl.DateTimeFormat('en-US', {dateStyle: 'medium',
        timeStyle: 'medium', timeZone: 'America/New_York'}).format(new Date(iso))""", iso)
    utc = page.evaluate("""iso => new Intl.DateTimeFormat('en-US', {dateStyle: 'medium',
        timeStyle: 'medium', timeZone: 'UTC'}).format(new Date(iso))""", iso)
    assert shown == expected != utc


def test_app_page_charts_markers_config_and_logs(console: Console, platform: Platform,
                                                 page: Any) -> None:
    page.goto(f"{console.url}/apps/{APP}?since=1h")
    detail = platform.api("GET", f"/api/apps/{APP}").json()
    config = platform.api("GET", f"/api/apps/{APP}/config").json()
    assert text(page, "[data-field=release]") == f"v{detail['release']['version']}"
    assert text(page, "[data-field=config]") == str(config["version"])
    assert "COLOR" in text(page, "dl.config") and "blue" in text(page, "dl.config")
    assert "API_TOKEN" in text(page, "dl.config")
    assert "console-test-secret-value" not in page.content()
    assert page.locator("figure[data-chart] canvas").count() == 3
    # the deploy markers drawn over the chart are buttons; the first opens its comparison
    flags = page.locator("figure[data-chart=p95_ms] .marker-flag")
    assert flags.count() == 2
    # an after-window still open moves with the clock: the page must show what the API said
    # just before the click or just after the page was read
    v1 = next(m for m in console.api.get("/api/deployments", service=APP) if m["version"] == "v1")
    answers = [console.api.get(f"/api/deployments/{v1['id']}")]
    flags.filter(has_text="v1").click()
    detail_box = page.locator("#deploy-detail [data-marker-detail]")
    detail_box.wait_for()
    marker_id = detail_box.get_attribute("data-marker-detail")
    assert marker_id == str(v1["id"])
    shown = {(side, key): text(page, f"[data-{side}={key}]")
             for side in ("before", "after") for key in ("rate_per_s", "error_pct", "p95_ms")}
    answers.append(console.api.get(f"/api/deployments/{marker_id}"))
    for (side, key), value in shown.items():
        unit = {"rate_per_s": "/s", "error_pct": " %", "p95_ms": " ms"}[key]
        assert value.endswith(unit), (side, key, value)
        low, high = sorted(round(a["comparison"][side][key], 2) for a in answers)
        assert low <= float(value.removesuffix(unit)) <= high, (side, key, value, low, high)
    # log search reads the telemetry store's records for the app
    page.fill("form.logsearch input[name=q]", "request 17")
    page.click("form.logsearch button")
    page.locator("#log-results table.logs").wait_for()
    rows = console.api.get("/api/logs", service=APP, q="request 17", since="24h")
    assert page.locator("#log-results tbody tr").count() == len(rows) >= 1
    # the live tail streams the instances' own log lines (server-sent events)
    page.wait_for_function("document.getElementById('log-tail').textContent.length > 0")
    assert text(page, "#tail-state") == "live"
    shot(page, "app")


def test_instance_resource_charts(console: Console, platform: Platform, page: Any) -> None:
    # the console's store is its own: fill it the way the daemon does, from the instances' cgroups
    slots = [i for i in platform.api("GET", f"/api/apps/{APP}/ps").json() if i["instance"]]
    sampler = UsageSampler("runc", Path("/run/noops/runc"))
    usage = [InstanceUsage(i["instance"], APP, i["process"], i["release"], i["started_at"], 1000,
                           i["restarts"]) for i in slots]
    for _ in range(2):  # CPU utilisation needs two samples
        console.api.store.insert_metrics("gauge", sampler.sample(usage)["gauge"])
        time.sleep(1)
    mem = console.api.get("/api/metrics/gauge/container.memory.usage", service=APP,
                          by="noops.instance.id", **H)
    running = {i["instance"] for i in slots}
    assert {p["group"] for p in mem} == running
    page.goto(f"{console.url}/apps/{APP}?since=1h")
    assert page.locator("figure[data-usage] canvas").count() == 2
    legend = text(page, "figure[data-usage=mem_mib] .u-legend")
    assert all(inst in legend for inst in running)
    cells = page.locator("[data-field=mem]").all_inner_texts()
    assert len(cells) == len(running) and all(re.fullmatch(r"\d+ MiB", c) for c in cells)
    assert max(float(c.split()[0]) for c in cells) <= max(p["max"] for p in mem) / 2**20 + 1
    assert all(re.fullmatch(r"\d+\.\d %", c) for c in page.locator("[data-field=cpu]").all_inner_texts())


def test_traces_search_scatter_and_waterfall(console: Console, page: Any) -> None:
    facts = console.api.facts
    page.goto(f"{console.url}/traces?service={APP}&since=1h")
    assert text(page, "[data-field=trace-count]").startswith(f"{facts.requests} traces of {APP}")
    assert page.locator("figure[data-scatter] canvas").count() == 1
    # what the slow requests of inventory have in common: the cold shard
    page.goto(f"{console.url}/traces?service=inventory&since=1h")
    page.locator("[data-correlations]").wait_for()  # loaded after the page
    assert "db.shard=cold" in text(page, "[data-correlations] > div")
    shot(page, "traces")
    page.goto(f"{console.url}/traces?service={APP}&since=1h")
    page.select_option("select[name=status]", "error")
    page.click("form.filters button")
    assert text(page, "[data-field=trace-count]").startswith(f"{len(facts.failed)} traces")
    # search by attribute (the store filters, not the page): the slow stock lookups
    page.goto(f"{console.url}/traces?service=inventory&since=1h")
    page.fill("input[name=attr]", "db.shard=cold")
    page.click("form.filters button")
    assert text(page, "[data-field=trace-count]").startswith(
        f"{len(facts.slow)} traces of inventory")
    assert "attr=db.shard%3Dcold" in page.url
    page.goto(f"{console.url}/traces?service={APP}&since=1h&min_ms=300")
    assert text(page, "[data-field=trace-count]").startswith(f"{len(facts.slow)} traces")
    listed = {re.sub(r"\W", "", a) for a in page.locator("table.traces a").all_inner_texts()}
    assert listed == {t[:12] for t in facts.slow}
    page.locator("table.traces a").first.click()
    page.locator("ol.waterfall").wait_for()
    trace_id = page.url.rsplit("/", 1)[1]
    tree = console.api.get(f"/api/traces/{trace_id}")
    assert page.locator("ol.waterfall > li").count() == len(tree["spans"]) == 3
    assert text(page, "[data-field=trace-duration]") == f"{tree['duration_ms']:.1f}"
    page.locator("ol.waterfall > li").nth(2).locator("summary").first.click()
    assert "db.shard" in text(page, "ol.waterfall > li:nth-child(3) .span-detail")
    assert "listing items" in text(page, "table.logs")  # the trace's linked log
    shot(page, "trace")


def test_service_map(console: Console, page: Any) -> None:
    page.goto(f"{console.url}/map?since=1h")
    (edge,) = console.api.get("/api/apm/map", **H)
    row = f"tr[data-edge='{APP}>inventory']"
    assert text(page, f"{row} [data-field=calls]") == str(edge["calls"])
    assert text(page, f"{row} [data-field=errors]") == str(edge["errors"]) != "0"
    # the gateway's decisions on workload calls: all-denied callers are edges of their own
    calls = console.api.get("/api/access/calls", **H)
    denied = {(c["caller"], c["app"]) for c in calls if c["deny"] and not c["allow"]}
    names = {APP, "inventory"} | {n for pair in denied for n in pair}
    assert page.locator("svg.graph .node").count() == len(names)
    for caller, app in denied:
        assert "denied" in text(page, f"tr[data-edge='{caller}>{app}'] [data-field=policy]")
    page.locator("svg.graph .node").filter(has_text="inventory").click()
    page.wait_for_url(re.compile(r"/traces\?service=inventory"))
    page.goto(f"{console.url}/map?since=1h")
    shot(page, "map")


def test_uptime_and_alerts(console: Console, page: Any) -> None:
    page.goto(f"{console.url}/uptime")
    (probe,) = console.api.get("/api/probes")
    card = f"[data-probe='{probe['id']}']"
    assert text(page, f"{card} [data-field=last-status]") == "up"
    assert text(page, f"{card} [data-field=last-ms]") == f"{probe['last']['duration_ms']:.1f}"
    assert text(page, f"{card} [data-field=uptime]") == "100.0 %"
    assert page.locator(f"{card} .history li").count() == 5
    assert page.locator(f"{card} figure canvas").count() == 1
    (alert,) = console.api.get("/api/alerts")
    assert alert["state"] == "firing"
    assert text(page, f"[data-alert='{alert['id']}'] [data-field=state]") == "firing"
    assert page.locator("ol.events li").count() == len(console.api.get("/api/alerts/events")) >= 1
    shot(page, "uptime")


def test_phone_width_and_keyboard(console: Console, platform: Platform, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    platform.api("PUT", f"/api/status-pages/{APP}", json={"title": "Shop"}).raise_for_status()
    try:
        page = context.new_page()
        for path in ("/?since=1h", f"/apps/{APP}?since=1h", f"/traces?service={APP}&since=1h",
                     "/map?since=1h", "/uptime", "/access", f"/status/{APP}"):
            page.goto(console.url + path)
            overflow = page.evaluate("document.documentElement.scrollWidth")
            wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > 392)
                .map(e => e.tagName + '.' + e.className + ':' + e.getBoundingClientRect().right
                     + ':' + (e.closest('.table-wrap') ? 'in-table' : '')).slice(0, 8)""")
            assert overflow <= 392, f"{path} is {overflow}px wide on a 390px screen: {wide}"
        page.goto(f"{console.url}/apps/{APP}?since=1h")
        shot(page, "app-phone")
        page.goto(f"{console.url}/?since=1h")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main"
        page.keyboard.press("Tab")  # the first focusable element after the skip target
        focused = page.evaluate("document.activeElement.tagName")
        assert focused in ("SELECT", "A")
    finally:
        context.close()
        platform.api("DELETE", f"/api/status-pages/{APP}")


def test_rollback_from_the_ui(console: Console, platform: Platform, page: Any) -> None:
    """Last in this module: it changes the active release."""
    releases = platform.api("GET", f"/api/apps/{APP}/releases").json()
    active = platform.api("GET", f"/api/apps/{APP}").json()["release"]
    target = next(r for r in releases if r["version"] != active["version"])
    page.goto(f"{console.url}/apps/{APP}?since=1h")
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.click(f"tr[data-release='{target['version']}'] button")
    page.locator("[data-rollback-result]").wait_for(timeout=180_000)
    now = platform.api("GET", f"/api/apps/{APP}").json()["release"]
    assert dialogs and f"v{target['version']}" in dialogs[0]
    assert now["version"] == active["version"] + 1
    assert now["digest"] == target["digest"]
    assert text(page, "[data-field=rolled-to]") == str(now["version"])
    # while it rolled out, the page showed the instances as they changed (polled fragment)
    assert int(page.locator("#rollback-live").get_attribute("data-polled") or 0) >= 1
    assert all(i["ready"] for i in platform.api("GET", f"/api/apps/{APP}/ps").json()
               if i["release"] == now["version"])
    shot(page, "rollback")


def test_console_on_the_daemon_api_alone(platform: Platform, page: Any) -> None:
    """Pointed straight at the daemon's socket (its own telemetry, probes and markers), every
    page renders without a script error and shows what the daemon knows."""
    import signal
    import subprocess
    import sys

    from helpers import free_port, wait_http

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "noops.console", "--home", str(platform.home),
                             "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", 30)
        page.goto(url + "/")
        row = text(page, f"tr[data-app={APP}]")
        assert f"https://{APP}.localhost:" in row
        page.goto(f"{url}/apps/{APP}")
        releases = platform.api("GET", f"/api/apps/{APP}/releases").json()
        assert f"v{releases[0]['version']}" in text(page, "main")
        for path in ("/traces", "/map"):
            page.goto(url + path)
            assert text(page, "main")
        page.goto(url + "/uptime")
        # the daemon made the app's default probe on deploy
        assert f"{APP} front door" in text(page, "main")
        import httpx

        missing = httpx.get(f"{url}/apps/nosuchapp")
        api_answer = platform.api("GET", "/api/apps/nosuchapp")
        assert missing.status_code == api_answer.status_code >= 400
        assert api_answer.json()["error"] in missing.text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert b"Traceback" not in err, err.decode()
