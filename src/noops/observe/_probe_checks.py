"""The checks behind :mod:`noops.observe.probes`: one HTTP(S) request, one TCP connect or one TLS
handshake, judged against the probe's expectations. Each returns a :class:`ProbeResult`; nothing
here raises for a failing target (the failure is the result)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from cryptography import x509

from noops.observe._rules_common import (
    RuleUsageError,
    compile_json_path,
    iso,
    match_json_path,
)

__all__ = ["Probe", "ProbeResult", "TlsFiles", "check_http", "check_socket", "host_port", "judge"]

BODY_CAP: Final = 1 << 20  # bytes of a response body searched for expect_text / parsed as JSON
PROBE_SERVICE: Final = "noops-probe"
LOOPBACK: Final = "127.0.0.1"


@dataclass(frozen=True)
class Probe:
    id: int
    name: str
    kind: str
    target: str
    app: str | None
    every_s: float
    timeout_s: float
    expect_status: int
    expect_text: str | None
    json_path: str | None
    json_expect: str | None  # JSON text of the expected value; None: the path must exist
    tls_warn_days: float
    created: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "target": self.target,
                "app": self.app, "every_s": self.every_s, "timeout_s": self.timeout_s,
                "expect_status": self.expect_status, "expect_text": self.expect_text,
                "json_path": self.json_path,
                "json_expect": None if self.json_expect is None else json.loads(self.json_expect),
                "tls_warn_days": self.tls_warn_days, "created": iso(self.created)}


@dataclass(frozen=True)
class ProbeResult:
    probe_id: int
    at: float
    ok: bool
    duration_ms: float
    status: int | None = None
    error: str = ""
    warning: str = ""
    tls_days_left: float | None = None
    trace_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"probe_id": self.probe_id, "at": iso(self.at), "at_epoch_s": self.at,
                "ok": self.ok, "duration_ms": round(self.duration_ms, 3), "status": self.status,
                "error": self.error, "warning": self.warning,
                "tls_days_left": self.tls_days_left, "trace_id": self.trace_id}


def host_port(target: str, kind: str) -> tuple[str, int]:
    parts = urlsplit(target if "://" in target else f"{kind}://{target}")
    try:
        port = parts.port
    except ValueError as exc:
        raise RuleUsageError(f"bad port in {target!r}: {exc}") from exc
    if not parts.hostname:
        raise RuleUsageError(f"{target!r} has no host; write {kind}://HOST:PORT")
    if port is None:
        if kind == "tls":
            port = 443
        else:
            raise RuleUsageError(f"{target!r} has no port; write tcp://HOST:PORT")
    return parts.hostname, port


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class TlsFiles:
    """A client SSL context from files, rebuilt when a file's mtime changes."""

    def __init__(self, client_cert: tuple[Path, Path] | None, ca_file: Path | None) -> None:
        self.client_cert, self.ca_file = client_cert, ca_file
        self._stamp: tuple[float, ...] | None = None
        self._ctx: ssl.SSLContext | None = None

    def _files(self) -> list[Path]:
        return [*(self.client_cert or ()), *([self.ca_file] if self.ca_file else [])]

    def context(self) -> ssl.SSLContext:
        try:
            stamp = tuple(os.stat(p).st_mtime_ns for p in self._files())
        except OSError as exc:
            raise RuleUsageError(f"probe TLS file missing: {exc}") from exc
        if self._ctx is None or stamp != self._stamp:
            ctx = ssl.create_default_context()
            try:
                if self.ca_file:
                    ctx.load_verify_locations(cafile=str(self.ca_file))
                if self.client_cert:
                    ctx.load_cert_chain(str(self.client_cert[0]), str(self.client_cert[1]))
            except (OSError, ssl.SSLError) as exc:
                raise RuleUsageError(f"probe TLS files unusable ({exc}); check the certificate, "
                                     "key and CA paths") from exc
            self._ctx, self._stamp = ctx, stamp
        return self._ctx


def _is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


def _loopback(url: httpx.URL, headers: dict[str, str]) -> tuple[httpx.URL, dict[str, Any]]:
    """``*.localhost`` names are loopback (RFC 6761) but the system resolver may not know them:
    connect to 127.0.0.1 and keep the name in ``Host`` and in TLS SNI / certificate checks, as a
    browser would for the front door at https://APP.localhost:8443/."""
    if not _is_localhost(url.host):
        return url, {}
    headers["host"] = url.netloc.decode("ascii")
    return url.copy_with(host=LOOPBACK), {"sni_hostname": url.host}


def _describe(exc: httpx.HTTPError) -> str:
    reason = str(exc) or str(exc.__cause__ or exc.__context__ or "")
    if not reason and isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError):
        reason = ("the server closed the connection (a zero-trust front door does this when no "
                  "acceptable client certificate is presented)")
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def _days_left(der: bytes | None, now: float) -> float | None:
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    return round((cert.not_valid_after_utc.timestamp() - now) / 86400.0, 3)


async def check_http(probe: Probe, tls: TlsFiles, at: float) -> tuple[ProbeResult, dict[str, Any]]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{span_id}-01", "user-agent": "noops-probe/1"}
    # Plain HTTP follows no redirects, so it never needs a trust store (loading one per
    # check would cost more than the check).
    verify: ssl.SSLContext | bool = (tls.context() if probe.target.startswith("https")
                                     else False)
    status: int | None = None
    error, warning, days = "", "", None
    mutual = False  # the check went over TLS presenting the prober's workload certificate
    started = time.perf_counter()
    try:
        url, extensions = _loopback(httpx.URL(probe.target), headers)
        async with httpx.AsyncClient(verify=verify, timeout=probe.timeout_s) as client, \
                client.stream("GET", url, headers=headers, extensions=extensions) as resp:
            status = resp.status_code
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) >= BODY_CAP:
                    break
            stream = resp.extensions.get("network_stream")
            ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
            if ssl_object is not None:
                days = _days_left(ssl_object.getpeercert(binary_form=True), time.time())
                mutual = tls.client_cert is not None
        error = judge(probe, status, bytes(body[:BODY_CAP]))
    except httpx.TimeoutException:
        error = f"timed out after {probe.timeout_s:g}s"
    except httpx.HTTPError as exc:
        error = _describe(exc)
    except OSError as exc:  # e.g. a TLS alert read after the handshake, not mapped by httpx
        error = f"{type(exc).__name__}: {exc}"
    duration_ms = (time.perf_counter() - started) * 1000
    if days is not None and days < probe.tls_warn_days:
        warning = f"TLS certificate expires in {days:.1f} days"
    result = ProbeResult(probe.id, at, not error, duration_ms, status, error, warning, days,
                         trace_id)
    url = httpx.URL(probe.target)
    span = {"Timestamp": int(at * 1e9), "TraceId": trace_id, "SpanId": span_id,
            "SpanName": f"GET {url.path or '/'}", "SpanKind": "Client",
            "ServiceName": PROBE_SERVICE,
            "ResourceAttributes": {"service.name": PROBE_SERVICE},
            "ScopeName": "noops.observe.probes",
            "SpanAttributes": {"http.request.method": "GET", "url.full": probe.target,
                               "server.address": url.host, "noops.probe.id": str(probe.id),
                               "noops.probe.name": probe.name,
                               **({"http.response.status_code": str(status)}
                                  if status is not None else {}),
                               **({"noops.mtls": "true"} if mutual else {})},
            "Duration": int(duration_ms * 1e6),
            "StatusCode": "Error" if error else "Unset", "StatusMessage": error}
    return result, span

def judge(probe: Probe, status: int, body: bytes) -> str:
    """'' when the response meets the probe's expectations, else why not."""
    if status != probe.expect_status:
        return f"status {status}, expected {probe.expect_status}"
    text = body.decode("utf-8", "replace")
    if probe.expect_text is not None and probe.expect_text not in text:
        return f"text {probe.expect_text!r} not found in the response"
    if probe.json_path is not None:
        try:
            doc = json.loads(text)
        except ValueError:
            return "the response is not JSON (--json-path needs a JSON body)"
        found, value = match_json_path(doc, compile_json_path(probe.json_path))
        if not found:
            return f"JSON path {probe.json_path} not found in the response"
        if probe.json_expect is not None:
            want = json.loads(probe.json_expect)
            if value != want and not (isinstance(want, str) and _json_text(value) == want):
                return (f"JSON path {probe.json_path} is {_json_text(value)!r}, expected "
                        f"{_json_text(want)!r}")
    return ""


async def check_socket(probe: Probe, tls: TlsFiles, at: float) -> ProbeResult:
    host, port = host_port(probe.target, probe.kind)
    secure = probe.kind == "tls"
    started = time.perf_counter()
    days, error, warning = None, "", ""
    try:
        ctx = tls.context() if secure else None
        address = LOOPBACK if _is_localhost(host) else host
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port, ssl=ctx,
                                    server_hostname=host if secure else None),
            timeout=probe.timeout_s)
        try:
            if secure:
                ssl_object = writer.get_extra_info("ssl_object")
                days = _days_left(ssl_object.getpeercert(binary_form=True) if ssl_object
                                  else None, time.time())
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    except TimeoutError:
        error = f"timed out after {probe.timeout_s:g}s"
    except (OSError, ssl.SSLError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    duration_ms = (time.perf_counter() - started) * 1000
    if days is not None and days < probe.tls_warn_days:
        warning = f"TLS certificate expires in {days:.1f} days"
    return ProbeResult(probe.id, at, not error, duration_ms, None, error, warning, days)
