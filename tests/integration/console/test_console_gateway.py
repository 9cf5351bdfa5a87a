"""The console as users meet it: an app of the platform at ``https://console.localhost`` behind the
zero-trust gateway, under the default policy. Chromium signs in with a password on the sign-in
host (``auth.localhost``), is sent to verify with its authenticator, then sees the overview and
reaches the app without signing in again; a non-administrator and an anonymous browser are
refused every page (``PAGES``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_harness import APP, DOCS_IMG, Platform

from helpers import eventually, needs
from noops.gate._identity_totp import totp_at
from noops.gate.identity import IdentityStore
from noops.gate.pep import DEFAULT_POLICY

pytestmark = [pytest.mark.runc, pytest.mark.stacks, pytest.mark.console,
              needs("runc", "mmdebstrap", "ip")]

PASSWORD = "correct horse battery staple"


PAGES = ("/", f"/apps/{APP}", "/traces", "/map", "/uptime", "/access")


def _anonymous_status(platform: Platform, path: str = "/") -> int:
    port = platform.env["NOOPS_FRONTDOOR_PORT"]
    return httpx.get(f"https://127.0.0.1:{port}{path}", verify=False,
                     headers={"Host": "console.localhost", "Accept": "application/json"}).status_code


@pytest.fixture
def default_policy(platform: Platform, tmp_path: Path) -> Any:
    """The default policy for this test, then the open one the other console tests use (each
    waited for until the front door enforces it)."""
    policy = tmp_path / "default.toml"
    policy.write_text(DEFAULT_POLICY)
    platform.noops("policy", "apply", str(policy))
    eventually("the default policy", lambda: _anonymous_status(platform) == 401, 10)
    yield
    policy.write_text('[[route]]\nid = "open"\nhost = "*.localhost"\nauthenticated = false\n')
    platform.noops("policy", "apply", str(policy))
    eventually("the open policy", lambda: _anonymous_status(platform) == 200, 10)


def _users(platform: Platform, suffix: str) -> dict[str, str]:
    store = IdentityStore(platform.home / "gate" / "identity.db")
    try:
        secrets = {}
        for name, groups in ((f"adm{suffix}", ["admin"]), (f"dev{suffix}", ["developers"])):
            store.add_user(name, PASSWORD, groups)
            secrets[name] = store.provision_totp(name)[0]
        return secrets
    finally:
        store.close()


def _sign_in(page: Any, url: str, user: str) -> None:
    page.goto(url)
    assert "/.noops/login" in page.url
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("form[action='/.noops/login'] button")
    page.wait_for_url(lambda u: "/.noops/login" not in u)


def _verify(page: Any, secret: str) -> None:
    assert "/.noops/verify" in page.url, (page.url, page.locator("body").inner_text())
    page.fill("input[name=code]", totp_at(secret, time.time()))
    page.click("form[action='/.noops/verify'] button")
    page.wait_for_url(lambda u: "/.noops/verify" not in u)


def test_console_behind_the_gateway(platform: Platform, browser: Any, default_policy: Any,
                                    unique: str) -> None:
    port = platform.env["NOOPS_FRONTDOOR_PORT"]
    url = f"https://console.localhost:{port}/"
    secrets = _users(platform, unique)

    # anonymous: a page asks to sign in, the API behind it refuses outright
    for path in PAGES:
        assert _anonymous_status(platform, path) == 401, path

    admin = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
    try:
        page = admin.new_page()
        _sign_in(page, url, f"adm{unique}")
        assert page.url.startswith(f"https://auth.localhost:{port}/")  # signed in on the sign-in host
        _verify(page, secrets[f"adm{unique}"])     # a password alone scores below 35
        assert page.url == url
        row = page.locator(f"tr[data-app={APP}]").inner_text()
        release = platform.api("GET", f"/api/apps/{APP}").json()["release"]
        assert f"v{release['version']}" in row
        page.goto(f"{url}apps/{APP}")
        assert APP in page.locator("main").inner_text()
        page.goto(f"{url}access")   # the admin's own sign-in is among the decisions
        assert f"adm{unique}" in page.locator("ol.decisions").inner_text()
        # single sign-on: the app's own host takes the same sign-in, authenticator included
        app_url = f"https://{APP}.localhost:{port}/"
        answer = page.goto(app_url)
        assert answer is not None and answer.status == 200 and page.url == app_url, page.url
    finally:
        admin.close()

    developer = browser.new_context(ignore_https_errors=True)
    try:
        page = developer.new_page()
        _sign_in(page, url, f"dev{unique}")       # not an administrator: no step-up helps
        body = page.locator("body").inner_text()
        assert "Access denied" in body and "group" in body and APP not in body, body
        for path in PAGES:
            answer = page.goto(url + path.lstrip("/"))
            assert answer is not None and answer.status == 403, path
            assert "Access denied" in page.locator("body").inner_text(), path
    finally:
        developer.close()


def test_a_published_status_page_is_the_only_public_page(platform: Platform, browser: Any,
                                                         default_policy: Any) -> None:
    port = platform.env["NOOPS_FRONTDOOR_PORT"]
    url = f"https://console.localhost:{port}/"
    platform.noops("status-page", "enable", APP, "--title", "Shop status")
    anonymous = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
    try:
        page = anonymous.new_page()
        # the platform's default probe of the app has checked it through the gateway
        eventually("a probe result on the status page", lambda: (
            page.goto(f"{url}status/{APP}") is not None
            and page.locator("[data-component] [data-field=up]").first.inner_text() == "Operational"), 90)
        assert page.locator("h1").inner_text() == "Shop status"
        assert page.locator("[data-field=state]").inner_text() == "All systems operational"
        # probe metrics are written per minute: the 24 h figure may appear between two reads
        def uptime_24h() -> tuple[str, str]:
            (probe,) = platform.api("GET", f"/api/status-pages/{APP}/page").json()["components"]
            pct = probe["uptime_pct"]["24h"]
            return probe["name"], "—" if pct is None else f"{pct:.2f} %"

        name, before = uptime_24h()
        page.reload()
        shown = page.locator(f"[data-component='{name}'] [data-field=uptime-24h]").inner_text()
        assert shown in (before, uptime_24h()[1])
        assert page.locator("a, script, form").count() == 0  # nothing leads into the console
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / "status.png"), full_page=True)

        unpublished = page.goto(f"{url}status/no-such-app")
        assert unpublished is not None and unpublished.status == 404
        assert "No status page here" in page.locator("h1").inner_text()
        # every console page asks the anonymous browser to sign in; a write is refused
        for path in ("", f"apps/{APP}", "traces", "map", "uptime", "access", "static/console.js",
                     f"apps/{APP}/instances"):
            page.goto(url + path)
            assert "/.noops/login" in page.url, path
        post = httpx.post(f"https://127.0.0.1:{port}/status/{APP}", verify=False,
                          headers={"Host": "console.localhost"})
        assert post.status_code in (401, 403, 405) and "Shop status" not in post.text
    finally:
        anonymous.close()
        platform.noops("status-page", "disable", APP)
