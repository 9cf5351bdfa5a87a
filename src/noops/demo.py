"""``make demo``: start the platform, deploy every example app, print where they answer.

Run as ``python -m noops.demo``. The first run builds the Debian stacks (a few minutes, once).
The apps are served only through the zero-trust gateway under the default policy (a signed-in
user who verified with an authenticator) plus one route that lets the two-service shop's
frontend call its inventory; the demo creates the user ``demo`` (groups ``developers`` and
``admin``, so the console at ``console.localhost`` opens too) with a password and a TOTP secret
and prints both, with the current code. Every app gets its default uptime probe; the shop's front
page gets one every 10 s as well, so there is a trace across both services to look at right
away. The platform keeps running afterwards; ``noops down --apps`` stops it.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from noops.cli.client import Client
from noops.errors import NoopsError
from noops.settings import Settings

EXAMPLES = ("flask", "fastapi", "express", "go", "static", "shop-inventory", "shop-frontend")

# the default policy, plus: the shop's frontend (its SVID) may read the inventory's items
SHOP_ROUTE = """
# workloads: only the shop's frontend may call the inventory, and only to read items;
# people reaching /items need what every app needs
[[route]]
id = "shop-inventory"
host = "shop-inventory.localhost"
path = "/items"
methods = ["GET"]
authenticated = true
min_score = 30
below = "step_up"
allow_spiffe = ["spiffe://noops.local/app/shop-frontend/web"]
"""


def _noops(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "noops", *args], check=True)


def _apply_policy(settings: Settings) -> None:
    from noops.gate.pep import DEFAULT_POLICY

    policy = settings.home / "gate" / "demo-policy.toml"
    policy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    policy.write_text(DEFAULT_POLICY + SHOP_ROUTE)
    _noops("policy", "apply", str(policy))


def _demo_user(settings: Settings) -> dict[str, Any]:
    """The ``demo`` user with a password and an authenticator; kept in ``demo-user.json`` (0600)
    so a second ``make demo`` prints the same credentials."""
    import json

    from noops.gate.identity import IdentityStore

    saved = settings.home / "gate" / "demo-user.json"
    if saved.exists():
        return dict(json.loads(saved.read_text()))
    saved.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = IdentityStore(saved.parent / "identity.db")
    try:
        password = secrets.token_urlsafe(12)
        if store.get_user("demo") is None:
            store.add_user("demo", password, ["developers", "admin"])
        else:
            store.set_password("demo", password)
        totp_secret, _uri = store.provision_totp("demo")
        data: dict[str, Any] = {"user": "demo", "password": password, "totp_secret": totp_secret}
    finally:
        store.close()
    tmp = saved.with_name(".demo-user.json.tmp")
    tmp.write_text(json.dumps(data))
    tmp.chmod(0o600)
    tmp.replace(saved)
    return data


def main() -> int:
    console = Console(highlight=False)
    settings = Settings()
    root = Path(__file__).resolve().parents[2] / "examples"
    client = Client(settings)
    try:
        try:
            client.call("GET", "/api/health")
        except NoopsError:
            _noops("up", "-d")
        existing = {a["name"] for a in client.call("GET", "/api/apps")}
        _apply_policy(settings)
        for name in EXAMPLES:
            started = time.monotonic()
            console.print(f"[bold]deploying[/] examples/{name} (build under runc, then a "
                          "zero-downtime rollout) …")
            if name not in existing:
                client.call("POST", "/api/apps", {"name": name})
            data = client.call("POST", f"/api/apps/{name}/deploy",
                               {"path": str(root / name), "description": "make demo"})
            console.print(f"  [green]✓[/] {name} v{data['version']} live in "
                          f"{time.monotonic() - started:.1f}s")
        port = settings.get("frontdoor_port")
        if not any(p["name"] == "shop front page" for p in client.call("GET", "/api/probes")):
            client.call("POST", "/api/probes", {
                "url": f"https://shop-frontend.localhost:{port}/", "every": "10s",
                "name": "shop front page", "app": "shop-frontend",
                "expect_text": "noops example: shop-frontend"})
        client.call("PUT", "/api/status-pages/shop-frontend", {"title": "Shop status"})
    except NoopsError as exc:
        console.print(f"[red]Error:[/] {exc}")
        return exc.exit_code
    from noops.gate._identity_totp import totp_at

    user = _demo_user(settings)
    port = settings.get("frontdoor_port")
    cert = settings.home / "tls" / "ca.crt"
    console.print("\n[bold]The example apps, behind the zero-trust gateway (HTTPS, noops' own CA):[/]")
    for name in EXAMPLES:
        console.print(f"  https://{name}.localhost:{port}/")
    console.print(f"\n[bold]The console:[/] https://console.localhost:{port}/  (traces, service "
                  "map, logs, deploys, probes and alerts of every app)")
    console.print(f"[bold]A public status page[/] (no sign-in): "
                  f"https://console.localhost:{port}/status/shop-frontend")
    console.print(f"\nTrust the CA once: {cert}  (or: noops ca export > noops-ca.pem)\n"
                  f"Sign in as [bold]{user['user']}[/] / [bold]{user['password']}[/]; when asked, "
                  f"enter the code from an authenticator app with the secret "
                  f"[bold]{user['totp_secret']}[/]\n  (right now the code is "
                  f"{totp_at(user['totp_secret'], time.time())}; `oathtool --totp -b SECRET`, from "
                  "Debian's oathtool package, prints it too). You sign in once, on "
                  f"https://auth.localhost:{port}/, for every app.\n"
                  f"Try: curl --cacert {cert} https://flask.localhost:{port}/  (a 401: sign in first)\n"
                  "The CLI is in .venv: run `. .venv/bin/activate` in this folder, then: noops apm · "
                  "noops apm map · noops traces shop-frontend · noops deploys · noops audit -n 10 · "
                  "noops logs flask -f · noops down --apps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
