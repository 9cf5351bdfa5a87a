"""``noops probes|alerts|deploys`` via click's CliRunner against the routes served on the
home's noops.sock (the daemon API's socket)."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner, Result
from rules_helpers import RulesApi, Served, at, span_rows

from noops.cli import cli
from noops.errors import NoopsError
from noops.observe.store import DuckDBStore

pytestmark = pytest.mark.observe


def noops(api: RulesApi, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(api.home), *args], catch_exceptions=True)


def refused(result: Result, exit_code: int, message: str) -> bool:
    """A NoopsError that ``noops.cli.main`` prints and exits with ``exit_code``."""
    exc = result.exception
    return isinstance(exc, NoopsError) and exc.exit_code == exit_code and message in str(exc)


def test_probes_commands(rules_api: RulesApi, app_server: Served) -> None:
    added = noops(rules_api, "probes", "add", app_server.url + "/health", "--every", "15s",
                  "--json-path", "$.checks[0].ok", "--expect-value", "true", "--name", "health",
                  "--json")
    assert added.exit_code == 0, added.output
    probe = json.loads(added.output)
    assert (probe["every_s"], probe["json_path"], probe["json_expect"]) == (
        15.0, "$.checks[0].ok", "true")
    asyncio.run(rules_api.probes.check(probe["id"]))
    listed = noops(rules_api, "probes")
    assert listed.exit_code == 0, listed.output
    assert "health" in listed.output and "up" in listed.output
    as_json = json.loads(noops(rules_api, "probes", "list", "--json").output)
    assert as_json[0]["last"]["ok"] is True
    bad = noops(rules_api, "probes", "add", "https://x.example/", "--every", "1s")
    assert refused(bad, 2, "too short")
    removed = noops(rules_api, "probes", "rm", str(probe["id"]))
    assert removed.exit_code == 0 and f"probe {probe['id']} removed" in removed.output
    assert json.loads(noops(rules_api, "probes", "--json").output) == []


def test_alerts_commands(rules_api: RulesApi, tstore: DuckDBStore, webhook: Served) -> None:
    tstore.insert_spans(span_rows("shop", at(0), 3, 60, error_every=2))
    added = noops(rules_api, "alerts", "add", "shop", "--error-rate", "5%", "--for", "2m",
                  "--webhook", webhook.url, "--json")
    assert added.exit_code == 0, added.output
    rule = json.loads(added.output)
    assert (rule["kind"], rule["threshold"], rule["for_s"]) == ("error_rate", 5.0, 120.0)
    latency = noops(rules_api, "alerts", "add", "shop", "--p95", "300ms")
    assert latency.exit_code == 0 and "alert 2 added" in latency.output
    both = noops(rules_api, "alerts", "add", "shop", "--p95", "1s", "--p99", "2s")
    assert refused(both, 2, "exactly one")
    rules_api.alerts.evaluate(at(3))
    listed = noops(rules_api, "alerts")
    assert listed.exit_code == 0 and "pending" in listed.output
    states = json.loads(noops(rules_api, "alerts", "list", "--json").output)
    assert [s["state"] for s in states] == ["pending", "ok"]
    assert noops(rules_api, "alerts", "rm", "2").exit_code == 0
    missing = noops(rules_api, "alerts", "rm", "2")
    assert refused(missing, 2, "no alert 2")


def test_deploys_prints_before_and_after(rules_api: RulesApi, tstore: DuckDBStore) -> None:
    tstore.insert_spans(span_rows("shop", at(-15), 15, 60, duration_ms=20))
    tstore.insert_spans(span_rows("shop", at(0), 15, 60, duration_ms=200, error_every=10, seed=1))
    rules_api.markers.record("shop", "v9", "deploy", at=at(0), description="release v9")
    out = noops(rules_api, "deploys", "shop")
    assert out.exit_code == 0, out.output
    lines = [line.strip() for line in out.output.splitlines()]
    assert "shop v9" in lines[0] and "release v9" in lines[0]
    assert lines[1] == "before: 1.00 req/s, 0.0% errors, p95 20 ms"
    assert lines[2] == "after:  1.00 req/s, 10.0% errors, p95 200 ms"
    data = json.loads(noops(rules_api, "deploys", "--json").output)
    assert data[0]["comparison"]["after"]["error_pct"] == pytest.approx(10.0)
    assert json.loads(noops(rules_api, "deploys", "other", "--json").output) == []


def test_status_page_commands(rules_api: RulesApi) -> None:
    assert "no public status pages" in noops(rules_api, "status-page").output
    enabled = noops(rules_api, "status-page", "enable", "shop", "--title", "Shop")
    assert enabled.exit_code == 0, enabled.output
    assert "https://console.localhost:8443/status/shop" in enabled.output
    listed = json.loads(noops(rules_api, "status-page", "list", "--json").output)
    assert [(p["app"], p["title"]) for p in listed] == [("shop", "Shop")]
    assert refused(noops(rules_api, "status-page", "enable", "No_Such"), 2, "not an app name")
    assert noops(rules_api, "status-page", "disable", "shop").exit_code == 0
    assert refused(noops(rules_api, "status-page", "disable", "shop"), 2, "no public status page")
