"""Servers and data the observe-rules tests share: exporter-shaped spans, a webhook receiver, a
small HTTP(S) app that records what probes send, and a short-lived certificate from the CA."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from helpers import free_port
from noops.observe.alerts import Alerts
from noops.observe.markers import DeployMarkers
from noops.observe.probes import Probes

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # on a minute boundary
NS = 1_000_000_000


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def span_rows(service: str, start: datetime, minutes: int, per_minute: int, *,
              error_every: int = 0, duration_ms: float = 20.0, version: str = "1",
              endpoint: str = "GET /", seed: int = 0) -> list[dict[str, Any]]:
    """``per_minute`` entry spans per minute, evenly spread; every ``error_every``-th is an
    error (0: none). Rows use the OTel ClickHouse exporter column names."""
    rows = []
    base = int(start.timestamp()) * NS
    for m in range(minutes):
        for i in range(per_minute):
            n = m * per_minute + i
            ts = base + m * 60 * NS + int(i * 60 * NS / per_minute)
            error = bool(error_every) and n % error_every == 0
            rows.append({
                "Timestamp": ts, "TraceId": f"{seed:08x}{n:024x}", "SpanId": f"{n:016x}",
                "SpanName": endpoint, "SpanKind": "Server", "ServiceName": service,
                "ResourceAttributes": {"service.name": service, "service.version": version},
                "SpanAttributes": {"http.route": endpoint},
                "Duration": int(duration_ms * 1e6), "StatusCode": "Error" if error else "Unset",
                "StatusMessage": "boom" if error else "",
            })
    return rows


@dataclass
class Recorder:
    """What a test server saw, and how it should answer next."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0  # answer this many requests with 500 first
    lock: threading.Lock = field(default_factory=threading.Lock)


class Served:
    def __init__(self, server: ThreadingHTTPServer, recorder: Recorder, scheme: str) -> None:
        self.server, self.recorder = server, recorder
        self.port = server.server_address[1]
        self.url = f"{scheme}://{'localhost' if scheme == 'https' else '127.0.0.1'}:{self.port}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


def serve(routes: Callable[[BaseHTTPRequestHandler, Recorder], tuple[int, str, bytes]], *,
          tls: ssl.SSLContext | None = None) -> Served:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            with recorder.lock:
                recorder.requests.append({"method": self.command, "path": self.path,
                                          "headers": {k.lower(): v for k, v in self.headers.items()},
                                          "body": body})
                failing = recorder.fail_next > 0
                if failing:
                    recorder.fail_next -= 1
            status, ctype, data = (500, "text/plain", b"not now") if failing else routes(self, recorder)
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    return Served(server, recorder, "https" if tls else "http")


def app_routes(handler: BaseHTTPRequestHandler, _: Recorder) -> tuple[int, str, bytes]:
    if handler.path == "/health":
        body = {"status": "ok", "checks": [{"name": "db", "ok": True}], "version": 3}
        return 200, "application/json", json.dumps(body).encode()
    if handler.path == "/down":
        return 503, "text/plain", b"maintenance"
    if handler.path == "/text":
        return 200, "text/plain", b"not json at all"
    return 200, "text/html", b"<h1>hello world</h1>"


def webhook_routes(handler: BaseHTTPRequestHandler, _: Recorder) -> tuple[int, str, bytes]:
    return 204, "text/plain", b""


def posted(recorder: Recorder) -> list[dict[str, Any]]:
    with recorder.lock:
        return [json.loads(r["body"]) for r in recorder.requests]


@dataclass
class RulesApi:
    """The rule routes served by uvicorn on ``home/noops.sock`` (where the CLI looks)."""

    home: Path
    http: httpx.Client
    markers: DeployMarkers
    probes: Probes
    alerts: Alerts
