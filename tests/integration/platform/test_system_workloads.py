"""The platform's own workloads under the default policy: the uptime prober opens the front door
with its SVID (and nothing else does without a session), and the console is served as an app of
its own at ``console.localhost`` behind the gateway — administrators only."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import EXAMPLES, eventually, needs
from noops.gate._identity_totp import totp_at
from noops.gate.identity import IdentityStore
from noops.gate.pep import DEFAULT_POLICY

PASSWORD = "correct horse battery staple"

pytestmark = [pytest.mark.runc, pytest.mark.stacks, needs("runc", "mmdebstrap", "ip")]

FAST_TOML = """
[health]
path = "/healthz"
startup = { period_s = 0.2, timeout_s = 2, failures = 150 }
readiness = { period_s = 0.5, timeout_s = 1, failures = 2 }
"""




def _get(daemon: Any, host: str, path: str = "/", cookie: str | None = None) -> httpx.Response:
    cookies = {"__Host-noops_session": cookie} if cookie else None
    with httpx.Client(verify=daemon.ca, timeout=10, cookies=cookies) as client:
        return client.get(f"https://127.0.0.1:{daemon.port}{path}", headers={"Host": host})


def _browser(daemon: Any) -> httpx.Client:
    return httpx.Client(base_url=f"https://127.0.0.1:{daemon.port}", verify=daemon.ca, timeout=10)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def _sign_in(browser: httpx.Client, user: str) -> httpx.Response:
    host = {"Host": "console.localhost"}
    form = browser.get("/.noops/login?rd=/", headers=host)
    assert form.status_code == 200, form.text
    signed = browser.post("/.noops/login", headers=host, data={
        "user": user, "password": PASSWORD, "csrf": _csrf(form.text), "rd": "/"})
    assert signed.status_code == 303, signed.text
    return browser.get("/", headers={**host, "Accept": "text/html"})


def _verify(browser: httpx.Client, secret: str) -> None:
    host = {"Host": "console.localhost"}
    form = browser.get("/.noops/verify?rd=/", headers=host)
    verified = browser.post("/.noops/verify", headers=host, data={
        "code": totp_at(secret, time.time()), "csrf": _csrf(form.text), "rd": "/"})
    assert verified.status_code == 303, verified.text


def test_default_policy_admits_the_prober_and_keeps_the_console_for_admins(  # type: ignore[no-untyped-def]
        platform_with, tmp_path: Path, unique: str) -> None:
    daemon = platform_with()
    policy = tmp_path / "default-policy.toml"
    policy.write_text(DEFAULT_POLICY)
    daemon.noops("policy", "apply", str(policy))
    app = f"sys{unique}"
    source = tmp_path / "flask"
    shutil.copytree(EXAMPLES / "flask", source)
    (source / "noops.toml").write_text(FAST_TOML)
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", str(source), "--app", app)

    # nobody gets in without signing in ...
    anonymous = _get(daemon, f"{app}.localhost")
    assert anonymous.status_code in (302, 303, 401, 403), anonymous
    # ... but the default probe, presenting the prober's SVID, checks the app itself
    probe = eventually("the default probe's first result", lambda: [
        p for p in daemon.api("GET", "/api/probes", params={"app": app}).json()
        if p.get("last")])
    assert probe[0]["last"]["ok"] is True and probe[0]["last"]["status"] == 200, probe
    allowed = json.loads(daemon.noops("audit", "--user", "spiffe://noops.local/app/noops/probe",
                                      "--outcome", "allow", "--json").stdout)
    assert allowed, "the probe's requests are decided and audited like any other"

    # the console: an app of its own behind the gateway; a browser signs in with a password,
    # is sent to verify with its authenticator (score below the console's minimum), then gets in
    assert _get(daemon, "console.localhost").status_code in (302, 303, 401, 403)
    identities = IdentityStore(daemon.home / "gate" / "identity.db")
    try:
        identities.add_user(f"adm{unique}", PASSWORD, ["admin"])
        identities.add_user(f"dev{unique}", PASSWORD, ["developers"])
        admin_secret = identities.provision_totp(f"adm{unique}")[0]
        dev_secret = identities.provision_totp(f"dev{unique}")[0]
    finally:
        identities.close()
    with _browser(daemon) as admin:
        step = _sign_in(admin, f"adm{unique}")
        assert step.status_code in (302, 303) and "/.noops/verify" in step.headers["location"]
        _verify(admin, admin_secret)
        page = admin.get("/", headers={"Host": "console.localhost"})
        assert page.status_code == 200, page.text
        assert app in page.text                # the overview lists the deployed app
    with _browser(daemon) as developer:
        _sign_in(developer, f"dev{unique}")
        _verify(developer, dev_secret)
        refused = developer.get("/", headers={"Host": "console.localhost", "Accept": "application/json"})
        assert refused.status_code == 403, refused.text
    # the prober's identity opens apps, not the console
    assert "console" not in {p["app"] for p in daemon.api("GET", "/api/probes").json()}

    # the platform's own names are reserved
    refused = daemon.noops("apps", "create", "console", check=False)
    assert refused.returncode != 0 and "reserved" in refused.stderr + refused.stdout
