"""On the receiver's Unix socket, a request from a process the platform knows (an instance's
monitor, found by the socket's peer pid) is stored with the platform's word for its service
and instance, whatever the SDK claimed; other senders' requests are stored as sent."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from noops.observe.otlp.decode import CONTENT_TYPE_PROTOBUF
from noops.observe.otlp.receiver import Receiver, peer_protocol
from noops.observe.store import DuckDBStore

VERIFIED = {"service.name": "shop", "noops.app": "shop", "noops.instance.id": "shop-web-1",
            "noops.process": "web"}

SENDER = r"""
import sys, httpx
body = open(sys.argv[2], "rb").read()
sys.stdin.readline()  # sent only once the test knows this pid
with httpx.Client(transport=httpx.HTTPTransport(uds=sys.argv[1])) as c:
    r = c.post("http://otlp/v1/traces", content=body,
               headers={"content-type": "application/x-protobuf"})
print(r.status_code)
"""


def _request(trace_byte: int) -> bytes:
    """A span from a sender claiming to be ``bank`` (another app) and instance ``bank-web-1``."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for key, value in {"service.name": "bank", "noops.instance.id": "bank-web-1",
                       "host.name": "node-1"}.items():
        rs.resource.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id = bytes([trace_byte]) * 16, bytes([trace_byte]) * 8
    span.name, span.kind = "GET /", 2
    span.start_time_unix_nano, span.end_time_unix_nano = time.time_ns() - 10**6, time.time_ns()
    return req.SerializeToString()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_known_senders_are_stamped_others_stored_as_sent(tmp_path: Path, loop: str) -> None:
    store = DuckDBStore(tmp_path / "t.duckdb")
    trusted: dict[int, dict[str, str]] = {}
    receiver = Receiver(store, tmp_path / "wal", senders=trusted.get)
    sock = tmp_path / "otlp.sock"
    server = uvicorn.Server(uvicorn.Config(receiver.app, uds=str(sock), http=peer_protocol(),
                                           lifespan="on", log_level="warning", loop=loop))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)
        # an instance's monitor: a process the platform maps to its instance
        (tmp_path / "monitor.pb").write_bytes(_request(0xA1))
        monitor = subprocess.Popen([sys.executable, "-c", SENDER, str(sock),
                                    str(tmp_path / "monitor.pb")],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        trusted[monitor.pid] = VERIFIED
        out, _ = monitor.communicate("go\n", timeout=60)
        assert out.strip() == "200"
        # anyone else on the socket (the test itself): stored as it claims
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as client:
            r = client.post("http://otlp/v1/traces", content=_request(0xB2),
                            headers={"content-type": CONTENT_TYPE_PROTOBUF})
            assert r.status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)
    try:
        (stamped,) = store.trace("a1" * 16)
        assert stamped["ServiceName"] == "shop"
        assert dict(stamped["ResourceAttributes"]) == {**VERIFIED, "host.name": "node-1"}
        (claimed,) = store.trace("b2" * 16)
        assert claimed["ServiceName"] == "bank"
        assert dict(claimed["ResourceAttributes"])["noops.instance.id"] == "bank-web-1"
    finally:
        store.close()
