"""``make demo``: start the platform, deploy every example app, print where they answer.

Run as ``python -m noops.demo``. The first run builds the Debian stacks (a few minutes, once).
The platform keeps running afterwards; ``noops down --apps`` stops it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from noops.cli.client import Client
from noops.errors import NoopsError
from noops.settings import Settings

EXAMPLES = ("flask", "fastapi", "express", "go", "static")


def _noops(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "noops", *args], check=True)


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
    except NoopsError as exc:
        console.print(f"[red]Error:[/] {exc}")
        return exc.exit_code
    port = settings.get("frontdoor_port")
    cert = settings.home / "tls" / "ca.crt"
    console.print("\n[bold]The example apps, behind the front door (HTTPS, noops' own CA):[/]")
    for name in EXAMPLES:
        console.print(f"  https://{name}.localhost:{port}/")
    console.print(f"\nTry: curl --cacert {cert} https://flask.localhost:{port}/\n"
                  "Then: noops ps flask · noops logs flask -f · noops releases flask · "
                  "noops down --apps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
