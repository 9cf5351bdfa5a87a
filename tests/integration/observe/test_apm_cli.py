"""``noops apm``, ``noops traces`` and ``noops logs --grep`` against the APM API on the
daemon's socket (``NOOPS_HOME/noops.sock``), served from a real store with SDK-recorded traffic."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner
from store_harness import ApmApi

from noops.cli import cli

pytestmark = pytest.mark.observe


def noops(api: ApmApi, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(api.home), *args], env={"COLUMNS": "200"},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def noops_json(api: ApmApi, *args: str) -> Any:
    return json.loads(noops(api, *args, "--json"))


def test_apm_services(apm_api: ApmApi) -> None:
    out = noops(apm_api, "apm", "--since", "1h")
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert sorted(lines) == ["shop", "web"]
    assert lines["shop"][2] == "25.0%"  # every 4th payment fails
    assert lines["shop"][-1] == str(apm_api.traffic.requests)
    data = noops_json(apm_api, "apm", "--since", "1h")
    assert [r["service"] for r in data] == ["shop", "web"]


def test_apm_one_service(apm_api: ApmApi) -> None:
    out = noops(apm_api, "apm", "shop", "--since", "1h")
    assert "POST /pay" in out
    assert "ValueError: card <n> declined" in out
    assert apm_api.traffic.trace_ids[apm_api.traffic.failed[-1]] in out
    data = noops_json(apm_api, "apm", "shop", "--since", "1h")
    assert data["errors"][0]["count"] == len(apm_api.traffic.failed)
    assert data["warning"] is None


def test_apm_map(apm_api: ApmApi) -> None:
    out = noops(apm_api, "apm", "map", "--since", "1h")
    row = next(line for line in out.splitlines() if "→" in line).split()
    assert row[:3] == ["web", "→", "shop"]
    assert row[4:6] == [str(apm_api.traffic.requests), str(len(apm_api.traffic.failed))]
    assert row[-1] == "yes"
    (edge,) = noops_json(apm_api, "apm", "map", "--since", "1h")
    assert edge["mtls"] is True


def test_traces_slowest(apm_api: ApmApi) -> None:
    t = apm_api.traffic
    rows = noops_json(apm_api, "traces", "shop", "--since", "1h", "-n", "5")
    assert len(rows) == 5
    assert {r["trace_id"] for r in rows} <= {t.trace_ids[i] for i in t.slow}
    everything = noops_json(apm_api, "traces", "--since", "1h", "-n", "100")
    assert {r["service"] for r in everything} == {"shop", "web"}
    durations = [r["duration_ms"] for r in everything]
    assert durations == sorted(durations, reverse=True)
    tail = noops_json(apm_api, "traces", "--slow", "--since", "1h", "-n", "100")
    assert 0 < len(tail) < len(everything)
    assert t.trace_ids[t.slow[0]] in noops(apm_api, "traces", "shop", "--since", "1h")
    found = noops_json(apm_api, "traces", "shop", "--errors", "--attr", "payment.provider=slowpay",
                       "--endpoint", "pay", "--since", "1h", "-n", "100")
    assert {r["trace_id"] for r in found} == {t.trace_ids[i] for i in t.slow if i in t.failed}
    assert "that match" in noops(apm_api, "traces", "--attr", "payment.provider=none",
                                 "--since", "1h")


def test_traces_show_waterfall(apm_api: ApmApi) -> None:
    t = apm_api.traffic
    i = t.failed[1]
    out = noops(apm_api, "traces", "show", t.trace_ids[i])
    lines = out.splitlines()
    assert t.trace_ids[i] in lines[0]
    spans = [line for line in lines if "█" in line]
    assert [s.split()[0] for s in spans] == ["GET", "POST", "POST"]
    assert spans[2].index("POST") > spans[1].index("POST") > spans[0].index("GET")  # indented
    bar_starts = [s.index("█") for s in spans]
    assert bar_starts == sorted(bar_starts)
    assert f"ValueError: card {4000 + i} declined" in out
    assert f"payment failed: card {4000 + i} declined" in out
    data = noops_json(apm_api, "traces", "show", t.trace_ids[i])
    assert [s["depth"] for s in data["spans"]] == [0, 1, 2]


def test_logs_grep(apm_api: ApmApi) -> None:
    t = apm_api.traffic
    out = noops(apm_api, "logs", "shop", "--grep", "DECLINED")
    lines = out.splitlines()
    assert len(lines) == len(t.failed)
    assert all(" ERROR payment failed: card " in line for line in lines)
    assert lines[0].endswith(f"trace={t.trace_ids[t.failed[0]]}")  # oldest first
    assert noops(apm_api, "logs", "web", "--grep", "declined").strip() == \
        "no matching log records for web"
    one = noops_json(apm_api, "logs", "web", "--attr", f"order.id={t.failed[2]}",
                     "--since", "2h")
    assert [r["Body"] for r in one] == [f"checkout {t.failed[2]} started"]
    assert len(noops_json(apm_api, "logs", "shop", "--severity", "info")) == len(t.failed)


def test_errors_reach_the_user(apm_api: ApmApi) -> None:
    env = {"NOOPS_HOME": str(apm_api.home), "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    for args, needle in ((["traces", "show", "ab" * 16], "not stored"),
                         (["apm", "--since", "soon"], "not a duration"),
                         (["logs", "shop", "--grep", "x", "--follow"], "--follow")):
        result = subprocess.run([sys.executable, "-m", "noops", *args], capture_output=True,
                                text=True, env=env, timeout=120, check=False)
        assert result.returncode == 2, result.stderr
        assert needle in result.stderr
        assert "Traceback" not in result.stderr
