"""Observability with nothing to set up, end to end: a real app deployed through the platform
exports OTLP with the environment the runtime gave it; its stdout/stderr, CPU and memory land in
the telemetry store; ``/metrics`` is Prometheus text; an app can opt out; acknowledged telemetry
survives ``kill -9`` of the daemon.

The store is DuckDB, a file one process holds: each test runs a platform of its own, stops its
daemon (``noops down``, apps keep running) and then reads the file directly.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client.parser import text_string_to_metric_families

from helpers import EXAMPLES, eventually
from noops.observe.store import DuckDBStore

pytestmark = [pytest.mark.runc, pytest.mark.stacks]

OTELAPP = Path(__file__).parent / "apps" / "otelapp"


def _source(tmp_path: Path, toml_extra: str = "") -> Path:
    app = tmp_path / f"otelapp-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(OTELAPP, app)
    if toml_extra:
        with open(app / "noops.toml", "a") as fh:
            fh.write("\n" + toml_extra)
    return app


@contextmanager
def _store(home: Path) -> Iterator[DuckDBStore]:
    store = DuckDBStore(home / "telemetry" / "telemetry.duckdb")
    try:
        yield store
    finally:
        store.close()


def _metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text → {sample name: [(labels, value)]}; raises if it does not parse."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out




def _counter(daemon: Any, name: str, **labels: str) -> float:
    text = daemon.api("GET", "/metrics").text
    return sum(v for lab, v in _metrics(text).get(name, []) if labels.items() <= lab.items())


def test_an_app_is_observed_with_nothing_to_set_up(platform_with, tmp_path, unique) -> None:  # type: ignore[no-untyped-def]
    daemon = platform_with(metrics_interval_s="1")
    app = f"ot{unique}"
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", str(_source(tmp_path)), "--app", app)
    # a user-set OTEL_* variable wins; resource attributes are merged key by key
    daemon.noops("config", "set", app, "OTEL_RESOURCE_ATTRIBUTES=team=shop",
                 "OTEL_SERVICE_NAME=ignored-by-none")  # v2
    daemon.noops("config", "unset", app, "OTEL_SERVICE_NAME")  # v3
    [slot] = json.loads(daemon.noops("ps", app, "--json").stdout)
    assert slot["release"] == 3

    env = daemon.get(app, "/env").json()
    assert env["OTEL_SERVICE_NAME"] == app
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert {env[f"OTEL_{s}_EXPORTER"] for s in ("TRACES", "METRICS", "LOGS")} == {"otlp"}
    resource = dict(p.split("=", 1) for p in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    assert resource == {"team": "shop", "service.version": "v3",
                        "deployment.environment.name": "production",
                        "service.instance.id": slot["instance"],
                        "noops.instance.id": slot["instance"], "noops.process": "web"}
    assert "OTEL_SDK_DISABLED" not in env
    assert daemon.get(app, "/otlp-port").text == "open"
    assert daemon.get(app, "/otlp-raw").json()["status"] == 200  # reaches the receiver
    forged = secrets.token_hex(16)  # a span claiming another app's name and instance
    assert daemon.get(app, f"/otlp-forged/{forged}").json()["status"] == 200

    ids = [daemon.get(app, f"/work/m{i}{unique}").json() for i in range(3)]
    # a 200 from /work means the receiver acknowledged the span and the log record
    assert _counter(daemon, "noops_otlp_accepted_items_total", signal="traces") >= 3
    assert _counter(daemon, "noops_otlp_accepted_items_total", signal="logs") >= 3
    eventually("stdout lines in the store", lambda: _counter(
        daemon, "noops_telemetry_log_rows_total") >= 6)
    eventually("two usage samples", lambda: _counter(
        daemon, "noops_telemetry_usage_rows_total") >= 6)

    # /metrics on the API socket and on the receiver's port: Prometheus text, platform figures
    api_metrics = _metrics(daemon.api("GET", "/metrics").text)
    assert ({"app": app, "state": "ready"}, 1.0) in api_metrics["noops_instances"]
    assert "noops_otlp_queue_depth" in api_metrics
    assert _counter(daemon, "noops_gateway_decisions_total") >= 5  # the requests above
    with httpx.Client(timeout=10) as client:
        tcp = client.get(f"http://127.0.0.1:{daemon.otlp_port}/metrics")
    assert tcp.status_code == 200 and tcp.headers["content-type"].startswith("text/plain")
    assert "noops_store_insert_seconds_mean" in _metrics(tcp.text)
    # OTLP/gRPC on the host, as a collector or an SDK's default exporter sends: the same store
    grpc_port = daemon.env["NOOPS_OTLP_GRPC_PORT"]
    provider = TracerProvider(resource=Resource.create({"service.name": f"grpc{unique}"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=f"127.0.0.1:{grpc_port}", insecure=True)))
    with provider.get_tracer("t").start_as_current_span("by-grpc") as by_grpc:
        grpc_trace = format(by_grpc.get_span_context().trace_id, "032x")
    provider.shutdown()
    eventually("the span sent over OTLP/gRPC", lambda: "by-grpc" in daemon.api(
        "GET", f"/api/traces/{grpc_trace}").text)

    # the APM and rules APIs are mounted: the trace, the log search, deploy markers, the probe
    trace = daemon.api("GET", f"/api/traces/{ids[0]['trace_id']}")
    assert trace.status_code == 200 and ids[0]["span_id"] in trace.text
    # the front door's own spans of the same requests (sent every second)
    eventually("the gateway's spans in each trace", lambda: all(
        "noops-gateway" in daemon.api("GET", f"/api/traces/{i['trace_id']}").json().get("services", [])
        for i in ids))
    found = json.loads(daemon.noops("logs", app, "--grep", f"plain stderr line m1{unique}",
                                    "--json").stdout)
    assert [(r["Body"], r["SeverityText"]) for r in found] == [
        (f"plain stderr line m1{unique}", "WARN")]
    markers = daemon.api("GET", "/api/deployments", params={"service": app}).json()
    assert [(m["version"], m["kind"]) for m in markers] == [
        ("v3", "config"), ("v2", "config"), ("v1", "deploy")]
    outside = {"service": app, "version": "build-7", "fingerprint": f"ci-{unique}"}
    assert daemon.api("POST", "/api/deployments", json=outside).status_code == 201
    again = daemon.api("POST", "/api/deployments", json=outside)
    assert again.status_code == 200 and again.json()["deduplicated"] is True
    probe = eventually("the default probe's first result", lambda: [
        p for p in daemon.api("GET", "/api/probes", params={"app": app}).json()
        if p["last"] is not None])
    assert probe[0]["name"] == f"{app} front door"
    assert probe[0]["last"]["ok"] is True and probe[0]["last"]["status"] == 200, probe

    daemon.noops("down")  # the daemon drains into the store and closes it; the app keeps running
    with _store(daemon.home) as store:
        # the receiver knows the sender from its socket's peer (the instance's monitor): the
        # claimed service and instance are replaced, other claims kept
        [fake] = store.trace(forged)
        assert fake["ServiceName"] == app
        assert fake["ResourceAttributes"]["noops.instance.id"] == slot["instance"]
        assert fake["ResourceAttributes"]["noops.app"] == app
        assert fake["ResourceAttributes"]["host.name"] == "claimed-host"
        for item in ids:
            spans = store.trace(item["trace_id"])
            # the explicit span, inside the server span of the buildpack's zero-code Flask
            # instrumentation: both configured by the environment the runtime set
            [span] = [s for s in spans if s["SpanName"] == "work"]
            [root] = [s for s in spans if s["SpanId"] == span["ParentSpanId"]]
            assert root["SpanKind"] == "Server"
            # above it, the gateway's: the request as it arrived, then the mTLS hop to the app
            [door] = [s for s in spans if s["ParentSpanId"] == ""]
            [hop] = [s for s in spans if s["SpanKind"] == "Client" and s["ParentSpanId"] == door["SpanId"]]
            assert (door["ServiceName"], door["SpanKind"], hop["ServiceName"]) == (
                "noops-gateway", "Server", "noops-gateway")
            assert root["ParentSpanId"] == hop["SpanId"] and hop["SpanAttributes"]["noops.mtls"] == "true"
            assert door["SpanAttributes"]["noops.gate.decision"] == "allow"
            assert door["SpanAttributes"]["url.path"] == f"/work/m{ids.index(item)}{unique}"
            assert root["ScopeName"] == "opentelemetry.instrumentation.flask"
            for s in (span, root):
                assert s["ServiceName"] == app
                assert s["ResourceAttributes"]["service.version"] == "v3"
                assert s["ResourceAttributes"]["noops.instance.id"] == slot["instance"]
            # set before the fork of the worker, the SDK makes service.instance.id per process
            assert span["ResourceAttributes"]["service.instance.id"] == slot["instance"]
            linked = store.logs(trace_id=item["trace_id"])
            scopes = {r["ScopeName"] for r in linked}
            assert scopes == {"otelapp.otel", "noops.stdio"}, linked
            [sdk] = [r for r in linked if r["ScopeName"] == "otelapp.otel"]
            assert sdk["SeverityNumber"] == 13 and sdk["Body"].startswith("otel record")
            [line] = [r for r in linked if r["ScopeName"] == "noops.stdio"]
            assert line["Body"].startswith("json line") and line["SpanId"] == item["span_id"]
            assert line["SeverityText"] == "ERROR" and line["SeverityNumber"] == 17
            assert line["LogAttributes"] == {"log.iostream": "stdout", "order": "42"}
            assert line["ResourceAttributes"]["service.version"] == "v3"
        [plain] = store.logs(query=f"plain stderr line m0{unique}", service=app)
        assert plain["SeverityText"] == "WARN" and plain["TraceId"] == ""
        assert plain["LogAttributes"] == {"log.iostream": "stderr"}
        assert plain["ResourceAttributes"]["noops.process"] == "web"
        # the gunicorn banner of the first release, shipped with its own version
        assert any(r["ResourceAttributes"].get("service.version") == "v1"
                   for r in store.logs(service=app, limit=1000))
        con = store._con  # metrics have no query API in the store: plain SQL
        gauges = dict(con.execute(
            "SELECT MetricName, max(Value) FROM otel_metrics_gauge WHERE ServiceName = ? "
            "AND Attributes['service.instance.id'] = ? GROUP BY 1", [app, slot["instance"]]
        ).fetchall())
        sums = dict(con.execute(
            "SELECT MetricName, max(Value) FROM otel_metrics_sum WHERE ServiceName = ? "
            "GROUP BY 1", [app]).fetchall())
    assert gauges["container.memory.usage"] > 1_000_000  # a Python app uses more than 1 MB
    assert 0 <= gauges["container.cpu.utilization"] <= 1.5
    assert sums["container.cpu.time"] > 0
    assert sums["noops.instance.restarts"] == 0

    # offsets persist: a restarted daemon ships what is new, not what it shipped before
    daemon.start()
    daemon.get(app, f"/work/after{unique}")
    daemon.noops("down")
    with _store(daemon.home) as store:
        rows = store.logs(query=f"json line m0{unique}", service=app)
        assert len(rows) == 1, rows
        assert len(store.logs(query=f"json line after{unique}", service=app)) == 1


def test_an_app_can_opt_out_of_telemetry(daemon, tmp_path, unique) -> None:  # type: ignore[no-untyped-def]
    app = f"oo{unique}"
    daemon.noops("apps", "create", app)
    bad = daemon.noops("deploy", str(_source(tmp_path, '[telemetry]\nenabled = "no"\n')),
                       "--app", app, check=False)
    assert bad.returncode != 0 and "telemetry.enabled must be true or false" in bad.stderr
    daemon.noops("deploy", str(_source(tmp_path, "[telemetry]\nenabled = false\n")),
                 "--app", app)
    env = daemon.get(app, "/env").json()
    assert env["OTEL_SDK_DISABLED"] == "true"
    # nothing that would send telemetry anywhere (the buildpack's launch layer may still default
    # OTEL_EXPORTER_OTLP_PROTOCOL, which does nothing with the SDK disabled)
    assert set(env) <= {"OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_PROTOCOL"}, env
    assert daemon.get(app, "/otlp-port").text == "closed"


def test_acknowledged_telemetry_survives_kill9_of_the_daemon(platform_with, tmp_path,  # type: ignore[no-untyped-def]
                                                             unique) -> None:
    daemon = platform_with()
    app = f"kt{unique}"
    daemon.noops("apps", "create", app)
    daemon.noops("deploy", str(_source(tmp_path)), "--app", app)
    ids = [daemon.get(app, f"/work/k{i}").json()["trace_id"] for i in range(20)]
    daemon.kill9()
    # while no daemon runs the app still serves, and its exporter is told to retry
    assert daemon.get(app, "/otlp-raw").json() == {"status": 503, "retry_after": "1"}
    daemon.start()
    daemon.noops("down")
    with _store(daemon.home) as store:
        missing = [t for t in ids if not store.trace(t)]
    assert missing == []


SHOP_POLICY = """
[[route]]
id = "shop-inventory"
host = "shop-inventory.localhost"
path = "/items"
methods = ["GET"]
allow_spiffe = ["spiffe://noops.local/app/shop-frontend/web"]

[[route]]
id = "open"
host = "*.localhost"
authenticated = false
"""


def test_two_service_shop_is_one_trace_with_an_edge_and_markers(platform_with, tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = platform_with()
    policy = tmp_path / "shop-policy.toml"
    policy.write_text(SHOP_POLICY)
    daemon.noops("policy", "apply", str(policy))
    for app in ("shop-inventory", "shop-frontend"):
        daemon.noops("apps", "create", app)
        daemon.noops("deploy", str(EXAMPLES / app), "--app", app)
    page = daemon.get("shop-frontend", "/")
    assert page.status_code == 200 and "Enamel mug (mug): 12 in stock" in page.text, page.text

    def page_trace() -> dict[str, Any] | None:
        slowest = daemon.api("GET", "/api/apm/services/shop-frontend/slowest",
                             params={"since": "15m", "limit": "50"}).json()
        for item in slowest:
            trace = daemon.api("GET", f"/api/traces/{item['trace_id']}").json()
            if "shop-inventory" in trace.get("services", []) and any(
                    "listed 3 items" in str(r.get("body")) for r in trace.get("logs", [])):
                return dict(trace)
        return None

    # one trace: the frontend's server span, its client call through the egress and the
    # gateway, the inventory's server span; the frontend's log line carries the trace id
    trace = eventually("one trace across both services with its log line", page_trace)
    assert set(trace["services"]) >= {"shop-frontend", "shop-inventory"}
    edges = eventually("the shop-frontend → shop-inventory edge", lambda: [
        e for e in daemon.api("GET", "/api/apm/map", params={"since": "15m"}).json()
        if (e["client"], e["server"]) == ("shop-frontend", "shop-inventory")])
    assert edges[0]["calls"] >= 1
    # the browser's request entered through the front door: an edge from the gateway, over mTLS;
    # the frontend's call through the egress kept its context (the edge above) and the gateway
    # added a span of its own under the frontend's client span
    door = eventually("the noops-gateway → shop-frontend edge", lambda: [
        e for e in daemon.api("GET", "/api/apm/map", params={"since": "15m"}).json()
        if (e["client"], e["server"]) == ("noops-gateway", "shop-frontend")])
    assert door[0]["mtls"] is True
    assert "noops-gateway" in trace["services"] or eventually("the gateway in the trace", lambda: (
        "noops-gateway" in daemon.api("GET", f"/api/traces/{trace['trace_id']}").json()["services"]))
    markers = daemon.api("GET", "/api/deployments").json()
    assert {(m["service"], m["version"], m["kind"]) for m in markers} >= {
        ("shop-frontend", "v1", "deploy"), ("shop-inventory", "v1", "deploy")}

    # `noops down --apps`: the daemon stops the instances before its receiver, so what the apps
    # flush on the way out (spans the SDK still batches, 5 s by default) is stored too
    for n in range(3):
        assert daemon.get("shop-frontend", f"/?last={n}").status_code == 200
    daemon.down_with_apps()
    with duckdb.connect(str(daemon.home / "telemetry" / "telemetry.duckdb"), read_only=True) as db:
        [(last,)] = db.execute(
            "SELECT count(*) FROM otel_traces WHERE ServiceName = 'shop-frontend' AND SpanKind = "
            "'Server' AND coalesce(SpanAttributes['url.query'], SpanAttributes['http.target']) "
            "LIKE '%last=%'").fetchall()
    assert last == 3
