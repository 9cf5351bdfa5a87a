"""What the console tests share: the platform, API and console handles the fixtures return."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from console_traffic import Facts

from noops.observe.alerts import Alerts
from noops.observe.markers import DeployMarkers
from noops.observe.probes import Probes
from noops.observe.store import DuckDBStore

APP = "shop"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS_IMG = Path(__file__).resolve().parents[3] / "docs" / "img"
FAST_TOML = """
[health]
path = "/healthz"
startup = { period_s = 0.2, timeout_s = 2, failures = 150 }
readiness = { period_s = 0.5, timeout_s = 1, failures = 2 }
liveness = { period_s = 1, timeout_s = 2, failures = 3 }

[deploy]
grace_s = 5
drain_s = 1
"""

@dataclass
class Platform:
    home: Path
    env: dict[str, str]

    def noops(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "noops", "--home", str(self.home), *args],
                                capture_output=True, text=True, env=self.env, timeout=900,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"noops {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.home / "noops.sock"))
        with httpx.Client(transport=transport, base_url="http://noops", timeout=600) as client:
            return client.request(method, path, **kwargs)


@dataclass
class Api:
    socket: Path
    store: DuckDBStore
    facts: Facts
    markers: DeployMarkers
    probes: Probes
    alerts: Alerts

    def get(self, path: str, **params: Any) -> Any:
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://noops", timeout=60) as client:
            resp = client.get(path, params=params)
            resp.raise_for_status()
            return resp.json()


@dataclass
class Console:
    url: str
    api: Api
