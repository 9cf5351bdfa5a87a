"""The platform end to end: `noops up`, deploys through the front door, zero failed requests
during rollouts under load, healing, re-adoption after `kill -9` of the daemon, rollback, gc,
secrets hygiene and the Kubernetes export."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml

from helpers import EXAMPLES, needs

pytestmark = [pytest.mark.runc, pytest.mark.stacks, needs("runc", "mmdebstrap", "ip")]

FAST_TOML = """
[health]
path = "/healthz"
startup = { period_s = 0.2, timeout_s = 2, failures = 150 }
readiness = { period_s = 0.5, timeout_s = 1, failures = 2 }
liveness = { period_s = 1, timeout_s = 2, failures = 3 }

[deploy]
grace_s = 5
drain_s = 2
"""


def _app_copy(tmp_path: Path, version: str = "1.0.0") -> Path:
    app = tmp_path / f"flask-{version}"
    shutil.copytree(EXAMPLES / "flask", app)
    (app / "noops.toml").write_text(FAST_TOML)
    source = (app / "app.py").read_text()
    (app / "app.py").write_text(source.replace('VERSION = "1.0.0"', f'VERSION = "{version}"'))
    return app


async def _load(daemon: object, app: str, stop: asyncio.Event, rate: float = 200.0,
                workers: int = 10) -> tuple[int, list[str], set[str]]:
    """~``rate`` req/s from ``workers`` keep-alive clients until ``stop``; count failures."""
    ok = 0
    failures: list[str] = []
    versions: set[str] = set()
    interval = workers / rate

    async def worker() -> None:
        nonlocal ok
        async with httpx.AsyncClient(verify=daemon.ca, timeout=10) as client:  # type: ignore[attr-defined]
            while not stop.is_set():
                started = time.monotonic()
                try:
                    resp = await client.get(f"https://127.0.0.1:{daemon.port}/version",  # type: ignore[attr-defined]
                                            headers={"Host": f"{app}.localhost"})
                    if resp.status_code == 200:
                        ok += 1
                        versions.add(resp.text.strip())
                    else:
                        failures.append(f"{resp.status_code} {resp.text[:80]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return ok, failures, versions


def test_deploy_and_config_change_under_load_fail_no_request(daemon, tmp_path, unique) -> None:  # type: ignore[no-untyped-def]
    app = f"zd{unique}"
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", str(_app_copy(tmp_path, "1.0.0")), "--app", app)
    assert daemon.get(app, "/version").text.strip() == "1.0.0"

    async def scenario() -> tuple[int, list[str], set[str], float]:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(daemon, app, stop))
        await asyncio.sleep(1.5)
        t0 = time.monotonic()
        await asyncio.to_thread(daemon.noops, "deploy", str(_app_copy(tmp_path, "2.0.0")),
                                "--app", app)
        deploy_s = time.monotonic() - t0
        await asyncio.sleep(1.0)
        await asyncio.to_thread(daemon.noops, "config", "set", app, "GREETING=hello")
        await asyncio.sleep(1.5)
        stop.set()
        ok, failures, versions = await load
        return ok, failures, versions, deploy_s

    ok, failures, versions, _ = asyncio.run(scenario())
    assert failures == [], failures[:5]
    assert ok > 500, ok  # the load really ran (~200 req/s for several seconds)
    assert versions == {"1.0.0", "2.0.0"}
    releases = json.loads(daemon.noops("releases", app, "--json").stdout)
    assert [r["status"] for r in releases] == ["active", "superseded", "superseded"]
    assert releases[0]["description"].startswith("config: GREETING")


def test_failing_release_never_receives_traffic(daemon, tmp_path, unique) -> None:  # type: ignore[no-untyped-def]
    app = f"bad{unique}"
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", str(_app_copy(tmp_path, "1.0.0")), "--app", app)
    broken = _app_copy(tmp_path, "6.6.6")
    (broken / "noops.toml").write_text(FAST_TOML.replace('path = "/healthz"',
                                                         'path = "/does-not-exist"')
                                       .replace("failures = 150", "failures = 40"))
    result = daemon.noops("deploy", str(broken), "--app", app, check=False)
    assert result.returncode != 0
    assert "failed its health checks" in result.stderr and "404" in result.stderr
    assert "last log lines" in result.stderr
    assert daemon.get(app, "/version").text.strip() == "1.0.0"
    statuses = [r["status"] for r in json.loads(daemon.noops("releases", app, "--json").stdout)]
    assert statuses == ["failed", "active"]


def test_kill9_daemon_apps_keep_answering_and_are_readopted(daemon, tmp_path, unique) -> None:  # type: ignore[no-untyped-def]
    app = f"k9{unique}"
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", str(_app_copy(tmp_path)), "--app", app)
    before = json.loads(daemon.noops("ps", app, "--json").stdout)
    daemon.kill9()
    for _ in range(20):
        assert daemon.get(app, "/").status_code == 200
    daemon.start()
    after = json.loads(daemon.noops("ps", app, "--json").stdout)
    assert [s["instance"] for s in after] == [s["instance"] for s in before]
    running = [d for d in (daemon.home / "run").glob("*")]  # noqa: F841 - kept for debugging
    containers = [d.name for d in Path("/run/noops/instances").glob(f"*/{app}-web-*")]
    assert len(containers) == 1, containers
    assert daemon.get(app, "/").status_code == 200


def test_crashed_app_is_restarted(daemon, tmp_path, unique) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess

    app = f"cr{unique}"
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", str(_app_copy(tmp_path)), "--app", app)
    [slot] = json.loads(daemon.noops("ps", app, "--json").stdout)
    state = json.loads(subprocess.run(["runc", "--root", "/run/noops/runc", "state",
                                       slot["instance"]], capture_output=True, text=True,
                                      check=True).stdout)
    os.kill(state["pid"], 9)
    deadline = time.monotonic() + 60
    while True:
        [now] = json.loads(daemon.noops("ps", app, "--json").stdout)
        if now["restarts"] == 1 and now["state"] == "ready":
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.5)
    assert now["exits"][-1]["exit_code"] == 137
    assert daemon.get(app, "/").status_code == 200
    events = daemon.api("GET", "/api/events", params={"app": app}).json()
    assert any(e["kind"] == "restart" for e in events)


def test_rollback_gc_and_secrets(daemon, tmp_path, unique) -> None:  # type: ignore[no-untyped-def]
    app = f"rb{unique}"
    secret = f"s3cr3t-{unique}-value"
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", str(_app_copy(tmp_path, "1.0.0")), "--app", app)
    daemon.noops("config", "set", app, "COLOR=blue")
    daemon.noops("deploy", str(_app_copy(tmp_path, "2.0.0")), "--app", app)
    daemon.noops("secrets", "set", app, f"API_TOKEN={secret}")
    assert daemon.get(app, "/version").text.strip() == "2.0.0"

    daemon.noops("rollback", app, "v2")  # v2 = first image + COLOR=blue
    assert daemon.get(app, "/version").text.strip() == "1.0.0"
    releases = json.loads(daemon.noops("releases", app, "--json").stdout)
    assert releases[0]["description"] == "rollback to v2"
    assert releases[0]["digest"] == releases[-1]["digest"]
    config = json.loads(daemon.noops("config", "list", app, "--json").stdout)
    assert config["secrets"] == ["API_TOKEN"] and secret not in json.dumps(config)

    gc = json.loads(daemon.noops("gc", "--json").stdout)
    for r in releases:
        assert r["digest"] in gc["pinned"]
        assert daemon.api("GET", f"/api/apps/{app}").status_code == 200
    listed = {a["name"]: a["url"] for a in daemon.api("GET", "/api/apps").json()}
    assert daemon.api("GET", f"/api/apps/{app}").json()["url"] == listed[app]  # the console's link
    daemon.noops("rollback", app, "v3")
    assert daemon.get(app, "/version").text.strip() == "2.0.0"

    # the secret is nowhere a person or a log could see it
    outputs = [daemon.noops(*args).stdout for args in (
        ("ps", app, "--json"), ("releases", app, "--json"), ("config", "list", app),
        ("logs", app, "-n", "500"))]
    outputs += [daemon.api("GET", path).text for path in (
        f"/api/apps/{app}", f"/api/apps/{app}/config", "/api/events")]
    for text in outputs:
        assert secret not in text
    for folder in ("state", "logs", "run", "tls"):
        for path in (daemon.home / folder).rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_kubernetes_export(daemon, tmp_path, unique) -> None:  # type: ignore[no-untyped-def]
    import kubernetes_validate

    app = f"k8s{unique}"
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", str(_app_copy(tmp_path)), "--app", app)
    missing = daemon.noops("export", "kubernetes", app, check=False)
    assert missing.returncode != 0 and "pushed image" in missing.stderr
    image = f"registry.example.com/{app}@sha256:" + "a" * 64
    out = daemon.noops("export", "kubernetes", app, "--image", image, "-o", str(tmp_path / "k8s"))
    assert "wrote" in out.stdout
    kinds = []
    for path in sorted((tmp_path / "k8s").glob("*.yaml")):
        obj = yaml.safe_load(path.read_text())
        kubernetes_validate.validate(obj, "1.30", strict=True)
        kinds.append(obj["kind"])
    assert {"Deployment", "Service", "ConfigMap"} <= set(kinds)


def test_scale_ps_and_logs_across_deploys(daemon, tmp_path, unique) -> None:  # type: ignore[no-untyped-def]
    app = f"sc{unique}"
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", str(_app_copy(tmp_path, "1.0.0")), "--app", app)
    assert daemon.get(app, "/").status_code == 200
    daemon.noops("scale", app, "web=3")
    ps = json.loads(daemon.noops("ps", app, "--json").stdout)
    assert len(ps) == 3 and all(s["state"] == "ready" for s in ps)
    seen = set()
    for _ in range(30):
        seen.add(daemon.get(app, "/healthz").status_code)
    assert seen == {200}
    daemon.noops("deploy", str(_app_copy(tmp_path, "2.0.0")), "--app", app)
    ps = json.loads(daemon.noops("ps", app, "--json").stdout)
    assert len(ps) == 3, "a deploy keeps the scaled formation"
    daemon.get(app, "/")
    logs = daemon.noops("logs", app, "-n", "1000").stdout
    releases_logged = {line.split("-web-")[0] for line in logs.splitlines() if "-web-" in line}
    assert releases_logged, logs[-500:]
    instances = {line.split()[0] for line in logs.splitlines() if line.startswith("web-")}
    assert len(instances) >= 4, "logs of the retired release's instances are kept"
    assert "GET / 200" in logs
    bad = daemon.noops("scale", app, "web=lots", check=False)
    assert bad.returncode == 2 and "whole number" in bad.stderr


@pytest.mark.parametrize("example", ["flask", "fastapi", "express", "go", "static"])
def test_every_example_answers_through_the_front_door(daemon, unique, example) -> None:  # type: ignore[no-untyped-def]
    app = f"ex{example}{unique}"
    daemon.noops("apps", "create", app)
    out = daemon.noops("deploy", str(EXAMPLES / example), "--app", app, "--json").stdout
    assert json.loads(out)["version"] == 1
    resp = daemon.get(app, "/")
    assert resp.status_code == 200 and f"noops example: {example}" in resp.text
    [slot] = json.loads(daemon.noops("ps", app, "--json").stdout)
    assert slot["state"] == "ready" and slot["release"] == 1


def test_image_deploy_uses_the_noops_toml_inside_the_image(daemon, tmp_path, unique) -> None:  # type: ignore[no-untyped-def]
    app = f"img{unique}"
    source = _app_copy(tmp_path, "3.0.0")
    (source / "noops.toml").write_text(FAST_TOML + "\n[scale]\nweb = 2\n")
    daemon.noops("build", str(source), "-t", f"t-{unique}/img")
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", f"t-{unique}/img", "--app", app)
    ps = json.loads(daemon.noops("ps", app, "--json").stdout)
    assert len(ps) == 2 and all(s["state"] == "ready" for s in ps)
    assert daemon.get(app, "/version").text.strip() == "3.0.0"


def test_front_door_certificates_verify_by_app_name(daemon, tmp_path, unique) -> None:  # type: ignore[no-untyped-def]
    app = f"tls{unique}"
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", str(_app_copy(tmp_path)), "--app", app)
    resp = daemon.get_by_name(app, "/")
    assert resp.status_code == 200 and "noops example: flask" in resp.text
    import subprocess

    curl = subprocess.run(["curl", "-sS", "--cacert", str(daemon.home / "tls" / "ca.crt"),
                           "--resolve", f"{app}.localhost:{daemon.port}:127.0.0.1",
                           f"https://{app}.localhost:{daemon.port}/"],
                          capture_output=True, text=True, check=False)
    assert curl.returncode == 0 and "noops example: flask" in curl.stdout, curl.stderr
