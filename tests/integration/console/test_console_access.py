"""The Access page and the overview's Safety column in Chromium against a real platform: real
gateway decisions (allowed, denied and sent to step up by the front door under a policy applied
with the CLI), users in the gateway's identity database, device certificates from the platform
CA. The numbers on the page equal the daemon's ``/api/access`` answers; the screenshot for
docs/console.md is taken."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from console_harness import APP, DOCS_IMG, Console, Platform

from helpers import eventually, needs
from noops.gate.identity import IdentityStore
from noops.gate.pki import CertificateAuthority

pytestmark = [pytest.mark.console, pytest.mark.runc, pytest.mark.stacks,
              needs("runc", "mmdebstrap", "ip")]

OPEN = '[[route]]\nid = "open"\nhost = "*.localhost"\nauthenticated = false\n'
GUARDED = OPEN + (
    '\n[[route]]\nid = "admin"\nhost = "shop.localhost"\npath = "/admin"\nauthenticated = true\n'
    '\n[[route]]\nid = "vault"\nhost = "shop.localhost"\npath = "/vault"\nauthenticated = false\n'
    'min_score = 50\nbelow = "step_up"\n')


def _status(platform: Platform, path: str) -> int:
    port = platform.env["NOOPS_FRONTDOOR_PORT"]
    return httpx.get(f"https://127.0.0.1:{port}{path}", verify=False,
                     headers={"Host": f"{APP}.localhost", "Accept": "application/json"}).status_code


@pytest.fixture(scope="module")
def gate_activity(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Under a guarded policy (then the open one again): anonymous calls that the front door
    allows, denies (``/admin``) and sends to step up (``/vault``); a user with an authenticator,
    a locked one; an enrolled and a revoked device. Yields the user name."""
    tmp = tmp_path_factory.mktemp("access")
    gate = platform.home / "gate"
    store = IdentityStore(gate / "identity.db",
                          hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    try:
        if store.get_user("auditor") is None:
            store.add_user("auditor", "correct horse battery staple", ["admin"])
            store.provision_totp("auditor")
            store.add_user("leaver", "correct horse battery staple", ["developers"])
            store.lock_user("leaver")
    finally:
        store.close()
    ca = CertificateAuthority.load(gate / "ca")
    ca.enroll_device("laptop", "auditor", password="bundle-password")
    ca.enroll_device("old-phone", "auditor", password="bundle-password")
    ca.revoke("auditor/old-phone", "lost")
    policy = tmp / "guarded.toml"
    policy.write_text(GUARDED)
    platform.noops("policy", "apply", str(policy))
    try:
        eventually("the guarded policy", lambda: _status(platform, "/admin") == 401, 10)
        for path, status in (("/", 200), ("/vault/keys", 401), ("/admin/users", 401), ("/", 200)):
            assert _status(platform, path) == status, path
    finally:
        policy.write_text(OPEN)
        platform.noops("policy", "apply", str(policy))
        eventually("the open policy", lambda: _status(platform, "/admin") != 401, 10)
    # the front door writes its audit records in batches, a moment after answering
    eventually("the step-up in the audit log", lambda: platform.api(
        "GET", "/api/access/audit", params={"outcome": "step_up", "route": "vault"}).json(), 10)
    yield "auditor"


def text(page: Any, selector: str) -> str:
    return str(page.locator(selector).first.inner_text()).strip()


def test_access_page_matches_the_api(console: Console, platform: Platform, gate_activity: str,
                                     page: Any) -> None:
    def api(path: str, **params: Any) -> Any:
        resp = platform.api("GET", path, params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    # the platform's own prober keeps calling through the gateway: every figure that grows is
    # read from the API before and after the page, and the page's must lie in between
    before = (api("/api/access/audit/verify"), api("/api/access/scores", since="1h"))
    page.goto(f"{console.url}/access?since=1h")
    page.locator("[data-field=chain]").wait_for()  # verified after the page loads
    after = (api("/api/access/audit/verify"), api("/api/access/scores", since="1h"))
    chain = text(page, "[data-field=chain]")
    assert "audit chain intact" in chain
    shown_records = int(chain.split("(")[1].split()[0])
    assert before[0]["records"] <= shown_records <= after[0]["records"]
    for route in ("admin", "vault"):   # decided once each, under the guarded policy
        (low,) = [r for r in before[1] if r["route"] == route]
        (high,) = [r for r in after[1] if r["route"] == route]
        card = f"figure.scores[data-route={route}]"
        assert low["decisions"] <= int(text(page, f"{card} [data-field=decisions]")) \
            <= high["decisions"]
        heights = [int(li.get_attribute("data-count"))
                   for li in page.locator(f"{card} ol.bars li").all()]
        assert heights == high["buckets"] == low["buckets"]

    users = {u["name"]: u for u in api("/api/access/users")}
    assert users[gate_activity]["totp_enrolled"] and users["leaver"]["locked"]
    assert text(page, f"tr[data-user={gate_activity}] [data-field=totp]") == "enrolled"
    assert "locked" in text(page, "tr[data-user=leaver] [data-field=state]")
    assert page.locator("table.users tbody tr").count() == len(users)
    devices = api("/api/access/devices")
    revoked = next(d for d in devices if d["name"] == "old-phone")
    assert revoked["revoked"] and revoked["revoked_reason"] == "lost"
    state = text(page, f"tr[data-device='{revoked['serial']}'] [data-field=state]")
    assert "revoked" in state and "lost" in state
    assert page.locator("table.devices tbody tr").count() == len(devices)
    certs = api("/api/access/certificates")["certificates"]
    kinds = {c["kind"] for c in certs}
    assert {"root", "intermediate", "serving", "workload", "gateway"} <= kinds
    shop_svids = [c for c in certs if c["kind"] == "workload" and c["app"] == APP]
    assert shop_svids and all(c["spiffe_id"].endswith(f"/app/{APP}/web") for c in shop_svids)
    for kind in ("root", "intermediate", "serving"):
        (cert,) = [c for c in certs if c["kind"] == kind]
        assert page.locator(f"tr[data-serial='{cert['serial']}'][data-kind={kind}]").count() == 1
    history = api("/api/access/policy/history")
    assert page.locator("table.history-table tbody tr").count() == len(history) >= 3
    assert history[0]["version"] == api("/api/access/policy")["version"]
    assert text(page, "[data-field=policy-version]") == history[0]["version"][:19]

    # the filters: the denied request, opened to its signals and reason codes
    page.select_option("select[name=outcome]", "deny")
    page.fill("input[name=route]", "admin")
    page.click("form.filters button")
    denied = api("/api/access/audit", outcome="deny", route="admin", since="1h")
    assert len(denied) >= 2   # waiting for the policy called /admin too
    assert text(page, "[data-field=decision-count]").startswith(f"{len(denied)} decisions ")
    assert [int(li.get_attribute("data-seq")) for li in page.locator("ol.decisions > li").all()] \
        == [r["seq"] for r in denied]
    record = denied[0]
    item = page.locator(f"ol.decisions > li[data-seq='{record['seq']}']")
    detail = item.locator(".decision-detail")
    assert not detail.is_visible()
    item.locator("summary").focus()
    page.keyboard.press("Enter")   # a <summary> opens from the keyboard
    detail.wait_for()
    assert text(page, f"li[data-seq='{record['seq']}'] [data-field=reasons]") \
        == ", ".join(record["reasons"])
    assert "unauthenticated" in record["reasons"]
    assert detail.locator("tbody tr").count() == len(record["contributions"]) >= 1
    for c in record["contributions"]:
        shown = text(page, f"li[data-seq='{record['seq']}'] tr[data-signal={c['signal']}] "
                           "[data-field=points]")
        assert shown == (f"{c['points']:+d}" if c["points"] else "0")
    assert text(page, f"li[data-seq='{record['seq']}'] [data-field=score]") \
        == f"score {record['score']}"
    # for docs/console.md: the whole page, the denied request opened
    page.goto(f"{console.url}/access?since=1h")
    opened = page.locator(f"ol.decisions > li[data-seq='{record['seq']}']")
    if opened.count():   # still among the newest 50 (the prober adds a record a minute)
        opened.locator("summary").click()
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMG / "console-access.png"), full_page=True)


def test_overview_safety_column(console: Console, platform: Platform, gate_activity: str,
                                page: Any) -> None:
    summary = platform.api("GET", "/api/access/summary", params={"since": "1h"}).json()[APP]
    page.goto(f"{console.url}/?since=1h")
    row = f"tr[data-app={APP}]"
    denials = int(text(page, f"{row} [data-field=denials]"))
    later = platform.api("GET", "/api/access/summary", params={"since": "1h"}).json()[APP]
    assert summary["deny"] <= denials <= later["deny"] and denials >= 1
    assert summary["step_up"] <= int(text(page, f"{row} [data-field=step-ups]")) \
        <= later["step_up"]
    assert later["cert_days_left"] is not None and later["cert_days_left"] > 0
    assert text(page, f"{row} [data-field=cert]").endswith(("min", "h", "d"))
    page.click(f"{row} a:has([data-field=denials])")
    page.wait_for_url(re.compile(rf"/access\?app={APP}&outcome=deny&since=1h$"))
    assert page.locator("ol.decisions > li.deny").count() >= 1


def test_access_page_at_phone_width(console: Console, browser: Any, gate_activity: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(f"{console.url}/access?since=1h")
        assert page.evaluate("document.documentElement.scrollWidth") <= 392
    finally:
        context.close()
