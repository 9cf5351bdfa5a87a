"""Instance certificates rotate under load through the real front door: a platform whose SVIDs
live 20 s, continuous requests across several rotations and a `kill -9` of the daemon in between
(the re-adopted instance keeps being rotated), not one failed request."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers import EXAMPLES, needs

pytestmark = [pytest.mark.runc, pytest.mark.stacks, needs("runc", "mmdebstrap", "ip")]

TTL_S = 20

FAST_TOML = """
[health]
path = "/healthz"
startup = { period_s = 0.2, timeout_s = 2, failures = 150 }
readiness = { period_s = 0.5, timeout_s = 1, failures = 2 }
liveness = { period_s = 1, timeout_s = 2, failures = 3 }
"""


def _record(app: str) -> dict[str, object]:
    [path] = list(Path("/run/noops/instances").glob(f"*/{app}-web-*/identity/svid.json"))
    return dict(json.loads(path.read_text()))


def test_svids_rotate_under_load_and_after_readoption(platform_with, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      unique: str) -> None:
    short_ttl = platform_with(svid_ttl_s=str(TTL_S))
    app = f"rot{unique}"
    source = tmp_path / "flask"
    shutil.copytree(EXAMPLES / "flask", source)
    (source / "noops.toml").write_text(FAST_TOML)
    short_ttl.noops("apps", "create", app)
    short_ttl.noops("deploy", str(source), "--app", app)
    first = _record(app)
    assert first["spiffe_id"] == f"spiffe://noops.local/app/{app}/web" and first["ttl_s"] == TTL_S

    stop = threading.Event()
    ok, failures = [0], []

    def load() -> None:
        with httpx.Client(verify=short_ttl.ca, timeout=10) as client:
            while not stop.is_set():
                try:
                    # a new connection each time now and then: new upstream handshakes too
                    resp = client.get(f"https://127.0.0.1:{short_ttl.port}/healthz",
                                      headers={"Host": f"{app}.localhost"})
                    if resp.status_code == 200:
                        ok[0] += 1
                    else:
                        failures.append(f"{resp.status_code} {resp.text[:80]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                time.sleep(0.02)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + 60
        while _record(app)["serial"] == first["serial"]:  # first rotation (at ~10 s)
            assert time.monotonic() < deadline, "the daemon never rotated the instance SVID"
            time.sleep(0.5)
        second = _record(app)
        short_ttl.kill9()  # the front door and the instance keep serving meanwhile
        time.sleep(2)
        short_ttl.start()  # re-adopts the instance and keeps rotating its SVID
        deadline = time.monotonic() + 60
        while _record(app)["serial"] == second["serial"]:
            assert time.monotonic() < deadline, "the re-adopted instance was never rotated"
            time.sleep(0.5)
        time.sleep(3)  # the front door dials the new certificate for a while
    finally:
        stop.set()
        for w in workers:
            w.join(20)
    assert failures == [], failures[:5]
    assert ok[0] > 200, ok[0]
    [slot] = json.loads(short_ttl.noops("ps", app, "--json").stdout)
    assert slot["restarts"] == 0 and slot["state"] == "ready"
