"""Probes against servers the tests start: HTTP (text, JSON path, status), HTTPS with a
short-lived certificate from the built-in CA and a required client certificate, TLS days-left,
TCP; traceparent seen by the server; results in the store as metrics and a client span."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rules_helpers import Served, app_routes, serve

from helpers import free_port
from noops.gate.pki import CertificateAuthority
from noops.observe._rules_common import RuleUsageError
from noops.observe.probes import Probes
from noops.observe.store import DuckDBStore

pytestmark = pytest.mark.observe

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")


def check(probes: Probes, probe_id: int):  # type: ignore[no-untyped-def]
    return asyncio.run(probes.check(probe_id))


def gauges(store: DuckDBStore) -> list[tuple[str, str, float, dict[str, str]]]:
    rows = store._rows("SELECT ServiceName, MetricName, Value, Attributes FROM otel_metrics_gauge "
                       "ORDER BY TimeUnix, MetricName")
    return [(s, m, v, dict(a)) for s, m, v, a in rows]


def test_http_probe_passes_and_sends_traceparent(probes: Probes, app_server: Served,
                                                  tstore: DuckDBStore) -> None:
    probe = probes.add(f"{app_server.url}/", every="30s", expect_text="hello", app="shop")
    first, second = check(probes, probe.id), check(probes, probe.id)
    assert first.ok and first.status == 200 and first.error == ""
    seen = [r["headers"]["traceparent"] for r in app_server.recorder.requests]
    assert len(seen) == 2
    ids = [TRACEPARENT.match(h) for h in seen]
    assert all(ids), seen
    assert [m.group(1) for m in ids if m] == [first.trace_id, second.trace_id]
    assert first.trace_id != second.trace_id
    # The check's own client span makes the trace visible in APM.
    spans = tstore.trace(first.trace_id)
    assert [(s["ServiceName"], s["SpanKind"], s["SpanId"]) for s in spans] == [
        ("noops-probe", "Client", ids[0].group(2) if ids[0] else "")]
    # metrics: one point per minute (the two checks may straddle a minute boundary)
    now = time.time()
    open_minutes = probes.flush(now)
    assert open_minutes == (1 if int(second.at) // 60 != int(now) // 60 else 0)
    assert probes.flush() >= 1  # the rest, e.g. on shutdown
    rows = gauges(tstore)
    assert {(s, m) for s, m, _, _ in rows} == {
        ("shop", m) for m in ("noops.probe.up", "noops.probe.duration_ms",
                              "noops.probe.duration_max_ms")}
    ups = [(v, a) for _, m, v, a in rows if m == "noops.probe.up"]
    assert sum(int(a["probe.checks"]) for _, a in ups) == 2 and {v for v, _ in ups} == {1.0}
    means = [(v, int(a["probe.checks"])) for _, m, v, a in rows if m == "noops.probe.duration_ms"]
    assert sum(v * n for v, n in means) / 2 == pytest.approx(
        (first.duration_ms + second.duration_ms) / 2)
    assert max(v for _, m, v, _ in rows if m == "noops.probe.duration_max_ms") == pytest.approx(
        max(first.duration_ms, second.duration_ms))
    assert ups[0][1] == {"probe.id": str(probe.id), "probe.name": probe.name,
                         "probe.target": probe.target, "probe.kind": "http",
                         "probe.checks": ups[0][1]["probe.checks"]}
    assert [r.trace_id for r in probes.results(probe.id)] == [second.trace_id, first.trace_id]


@pytest.mark.parametrize(("path", "options", "error"), [
    ("/", {"expect_text": "goodbye"}, "text 'goodbye' not found"),
    ("/down", {}, "status 503, expected 200"),
    ("/health", {"json_path": "$.checks[1].ok"}, "JSON path $.checks[1].ok not found"),
    ("/health", {"json_path": "$.status", "json_expect": "degraded"},
     "JSON path $.status is 'ok', expected 'degraded'"),
    ("/text", {"json_path": "$.status"}, "not JSON"),
])
def test_http_expectations_fail_with_a_reason(probes: Probes, app_server: Served, path: str,
                                              options: dict[str, str], error: str) -> None:
    probe = probes.add(app_server.url + path, **options)  # type: ignore[arg-type]
    result = check(probes, probe.id)
    assert not result.ok
    assert error in result.error


@pytest.mark.parametrize(("options"), [
    {"json_path": "$.checks[0].ok", "json_expect": True},
    {"json_path": "checks[0].ok", "json_expect": "true"},
    {"json_path": "$.version", "json_expect": 3},
    {"json_path": "$.checks[0].name"},
    {"expect_status": 503},
])
def test_http_expectations_pass(probes: Probes, app_server: Served,
                                options: dict[str, object]) -> None:
    path = "/down" if options.get("expect_status") == 503 else "/health"
    probe = probes.add(app_server.url + path, **options)  # type: ignore[arg-type]
    result = check(probes, probe.id)
    assert result.ok, result.error


def test_unreachable_and_down_probes_record_failures(probes: Probes, tstore: DuckDBStore) -> None:
    port = free_port()  # nothing listens here
    http = probes.add(f"http://127.0.0.1:{port}/", timeout="2s")
    tcp = probes.add(f"tcp://127.0.0.1:{port}")
    for probe_id in (http.id, tcp.id):
        result = check(probes, probe_id)
        assert not result.ok and result.error
    probes.flush()
    ups = [(s, v) for s, m, v, _ in gauges(tstore) if m == "noops.probe.up"]
    assert ups == [("noops-probe", 0.0), ("noops-probe", 0.0)]  # one point per probe


def test_tcp_probe_connects(probes: Probes) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probe = probes.add(f"tcp://127.0.0.1:{port}")
        assert check(probes, probe.id).ok


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca")


@pytest.fixture
def mtls_server(ca: CertificateAuthority) -> Iterator[Served]:
    """HTTPS with a 2-day serving certificate that requires a client certificate from the CA."""
    issued = ca.issue_gateway_cert(["localhost", "shop.localhost"], ttl_s=2 * 86400)
    served = serve(app_routes, tls=ca.server_ssl_context(issued))
    yield served
    served.stop()


def test_https_probe_presents_a_client_certificate(ca: CertificateAuthority, mtls_server: Served,
                                                    tmp_path: Path, tstore: DuckDBStore) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.export_ca_bundle())
    cert, key = ca.issue_svid("noops", "prober").write(tmp_path, "prober")
    with_cert = Probes(tmp_path / "a.db", tstore, client_cert=(cert, key), ca_file=bundle)
    without = Probes(tmp_path / "b.db", tstore, ca_file=bundle)
    try:
        url = f"{mtls_server.url}/health"
        ok = asyncio.run(with_cert.check(with_cert.add(url, json_path="$.status").id))
        assert ok.ok, ok.error
        # The front door's name: APP.localhost, connected on loopback with Host and SNI kept.
        front = f"https://shop.localhost:{mtls_server.port}/health"
        via_name = asyncio.run(with_cert.check(with_cert.add(front).id))
        assert via_name.ok, via_name.error
        assert mtls_server.recorder.requests[-1]["headers"]["host"] == \
            f"shop.localhost:{mtls_server.port}"
        wrong = f"https://other.localhost:{mtls_server.port}/health"  # not in the certificate
        mismatch = asyncio.run(with_cert.check(with_cert.add(wrong).id))
        assert not mismatch.ok and "other.localhost" in mismatch.error
        assert ok.tls_days_left is not None and 1.9 < ok.tls_days_left <= 2.0
        assert ok.warning == f"TLS certificate expires in {ok.tls_days_left:.1f} days"
        refused = asyncio.run(without.check(without.add(url).id))
        # The server refuses after the TLS 1.3 handshake: a closed connection or its alert.
        assert not refused.ok
        assert "client certificate" in refused.error or "CERTIFICATE_REQUIRED" in refused.error
        with_cert.flush()
        assert any(m == "noops.probe.tls_days_left" and v == ok.tls_days_left
                   for _, m, v, _ in gauges(tstore))
        # the probe's own client spans say whether the workload certificate was presented
        spans = tstore.trace(ok.trace_id)
        assert spans and spans[0]["SpanAttributes"].get("noops.mtls") == "true"
        assert "noops.mtls" not in tstore.trace(refused.trace_id)[0]["SpanAttributes"]
    finally:
        with_cert.close()
        without.close()


def test_tls_probe_reports_days_left(ca: CertificateAuthority, mtls_server: Served,
                                     tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.export_ca_bundle())
    cert, key = ca.issue_svid("noops", "prober").write(tmp_path, "prober")
    probes = Probes(tmp_path / "r.db", None, client_cert=(cert, key), ca_file=bundle)
    untrusting = Probes(tmp_path / "u.db", None)  # system roots only: the noops CA is unknown
    try:
        probe = probes.add(f"tls://localhost:{mtls_server.port}", tls_warn_days=3)
        result = asyncio.run(probes.check(probe.id))
        assert result.ok, result.error
        assert result.tls_days_left is not None and 1.9 < result.tls_days_left <= 2.0
        assert "expires in" in result.warning
        relaxed = probes.add(f"tls://localhost:{mtls_server.port}", name="relaxed",
                             tls_warn_days=1)
        assert asyncio.run(probes.check(relaxed.id)).warning == ""
        other = untrusting.add(f"tls://localhost:{mtls_server.port}")
        failed = asyncio.run(untrusting.check(other.id))
        assert not failed.ok and "certificate verify failed" in failed.error
    finally:
        probes.close()
        untrusting.close()


@pytest.mark.parametrize(("target", "options", "message"), [
    ("ftp://example.com/", {}, "bad probe URL"),
    ("not a url", {}, "bad probe URL"),
    ("http:///nohost", {}, "bad probe URL"),
    ("https://example.com/", {"every": "2s"}, "too short"),
    ("https://example.com/", {"every": "soon"}, "not a duration"),
    ("https://example.com/", {"json_path": "$.a..b"}, "bad JSON path"),
    ("https://example.com/", {"json_path": "$.a[x]"}, "bad JSON path"),
    ("https://example.com/", {"json_expect": 1}, "needs --json-path"),
    ("https://example.com/", {"expect_status": 99}, "not an HTTP status"),
    ("https://example.com/", {"timeout": "60s"}, "at most the interval"),
    ("tcp://example.com", {}, "no port"),
    ("tcp://example.com:80", {"expect_text": "x"}, "HTTP probes only"),
])
def test_bad_probes_are_refused_and_store_nothing(probes: Probes, target: str,
                                                  options: dict[str, object], message: str) -> None:
    with pytest.raises(RuleUsageError, match=message):
        probes.add(target, **options)  # type: ignore[arg-type]
    assert probes.list() == []


def test_result_ring_is_bounded(rules_db: Path, app_server: Served) -> None:
    probes = Probes(rules_db, None, keep_results=3)
    try:
        probe = probes.add(app_server.url)
        made = [asyncio.run(probes.check(probe.id)) for _ in range(5)]
        kept = probes.results(probe.id)
        assert [r.trace_id for r in kept] == [r.trace_id for r in reversed(made[-3:])]
        probes.remove(probe.id)
        assert probes.db.query("SELECT count(*) FROM probe_results")[0][0] == 0
    finally:
        probes.close()


def test_run_due_schedules_by_interval(probes: Probes, app_server: Served) -> None:
    fast = probes.add(app_server.url + "/", every="10s", name="fast")
    slow = probes.add(app_server.url + "/health", every="60s", name="slow")
    t = 1_000_000.0

    async def rounds() -> list[list[int]]:
        out = []
        for offset in (0, 5, 10, 20, 30, 60):
            out.append(sorted(r.probe_id for r in await probes.run_due(t + offset)))
        return out

    assert asyncio.run(rounds()) == [[fast.id, slow.id], [], [fast.id], [fast.id], [fast.id],
                                     [fast.id, slow.id]]


def test_run_forever_checks_until_stopped(probes: Probes, app_server: Served) -> None:
    probe = probes.add(app_server.url, every="5s")

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(probes.run_forever(stop, tick_s=0.05))
        for _ in range(400):
            if probes.results(probe.id):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(main())
    assert len(probes.results(probe.id)) == 1  # every 5 s: one check, then stopped
    assert probes.results(probe.id)[0].ok
