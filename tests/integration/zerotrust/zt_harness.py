"""A real gateway for the zero-trust tests: the front door process (``python -m
noops.gate.frontdoor``) with its CA, identity store, policy and audit log in a throw-away home,
in front of echo apps that only speak mTLS with the gateway's SPIFFE ID (as instances do).

The echo app answers every request with JSON: method, the exact target it received, and the
headers, so tests can check what the gateway forwarded. ``/ws`` upgrades to a WebSocket that
echoes messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx

from noops.gate.identity import IdentityStore
from noops.gate.mtls import gateway_spiffe_id, load_or_create_ca, peer_spiffe_id
from noops.gate.pki import CertificateAuthority, Issued
from noops.gate.policy import PolicyStore

PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EchoApp:
    """An HTTP/1.1 echo server on a Unix socket behind mTLS (accepts only the gateway)."""

    def __init__(self, ca: CertificateAuthority, sockdir: Path, name: str, *, ttl_s: int = 3600) -> None:
        self.name = name
        self.path = str(sockdir / f"{name}.sock")
        self.spiffe_id = f"spiffe://{ca.trust_domain}/app/{name}/web"
        issued = ca.issue_svid(name, "web", ttl_s=ttl_s)
        self.ctx = ca.server_ssl_context(issued)
        self.allowed = gateway_spiffe_id(ca.trust_domain)
        self.seen: list[dict[str, Any]] = []
        self.refused = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> asyncio.AbstractServer:
        server = await asyncio.start_unix_server(self._serve, self.path, ssl=self.ctx)
        os.chmod(self.path, 0o666)
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        sslobj = writer.get_extra_info("ssl_object")
        if peer_spiffe_id(sslobj.getpeercert(binary_form=True) if sslobj else None) != self.allowed:
            self.refused += 1
            writer.close()
            return
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = [tuple(x.split(": ", 1)) for x in lines[1:] if x]
                length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                record = {"method": method, "target": target, "headers": headers,
                          "body": body.decode("latin-1")}
                self.seen.append(record)
                if target == "/ws" and any(k.lower() == "upgrade" for k, _ in headers):
                    await self._websocket(reader, writer, dict((k.lower(), v) for k, v in headers))
                    return
                out = json.dumps(record).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(out), out))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         headers: dict[str, str]) -> None:
        import base64
        import hashlib

        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] +
                                                "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        await writer.drain()
        while True:  # echo raw bytes back, unmasked frames re-framed: enough for the tests
            first = await reader.readexactly(2)
            size = first[1] & 0x7F
            if size == 126:
                size = int.from_bytes(await reader.readexactly(2), "big")
            mask = await reader.readexactly(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(size)))
            if first[0] & 0x0F == 8:
                return
            writer.write(bytes([0x81, len(data)]) + data if len(data) < 126 else
                         bytes([0x81, 126]) + len(data).to_bytes(2, "big") + data)
            await writer.drain()

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class OtlpSink:
    """An OTLP/HTTP receiver on a Unix socket that keeps every span posted to ``/v1/traces``
    (the gateway's exporter talks to the platform's receiver the same way)."""

    def __init__(self, path: Path) -> None:
        import http.server
        import socketserver

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.path = path
        self.spans: list[Any] = []
        self.resources: list[dict[str, str]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    sink.resources.append({a.key: a.value.string_value for a in rs.resource.attributes})
                    sink.spans += [span for ss in rs.scope_spans for span in ss.spans]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def address_string(self) -> str:
                return "unix"

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> list[Any]:
        """The spans once ``predicate(spans)`` holds (the gateway sends every second)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.1)
        raise AssertionError(f"no such spans within {timeout} s: {list(self.spans)}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Gateway:
    """The front door process and everything it reads, in a temp home."""

    def __init__(self, *, sso_host: str | None = None, otlp: bool = False,
                 traces_per_second: int = 100) -> None:
        """``otlp``: the gateway sends its spans to :attr:`otlp` (an :class:`OtlpSink`)."""
        self.sso_host = sso_host
        self.traces_per_second = traces_per_second
        self.home = Path(tempfile.mkdtemp(prefix="zt-", dir="/tmp"))
        self.gate = self.home / "gate"
        self.gate.mkdir(mode=0o700)
        self.ca = load_or_create_ca(self.gate / "ca")
        self.identities = IdentityStore(self.gate / "identity.db")
        self.policies = PolicyStore(self.gate / "policy")
        self.apps: dict[str, EchoApp] = {}
        self.routes: dict[str, Any] = {}
        self.generation = 0
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        (self.home / "run").mkdir()
        self.bundle = self.home / "ca-bundle.pem"
        self.bundle.write_bytes(self.ca.export_ca_bundle())
        self.otlp = OtlpSink(self.home / "run" / "otlp.sock") if otlp else None

    # -- set-up -----------------------------------------------------------------------------------
    def add_app(self, name: str, hosts: list[str] | None = None, *, spiffe_id: str | None = None) -> EchoApp:
        app = EchoApp(self.ca, self.home, name)
        self.apps[name] = app
        self.routes[name] = {"hosts": hosts or [f"{name}.localhost"],
                             "endpoints": [{"id": f"{name}-1", "socket_path": app.path, "ready": True,
                                            "draining": False, "spiffe_id": spiffe_id or app.spiffe_id}]}
        self._publish()
        return app

    def _publish(self) -> None:
        self.generation += 1
        target = self.home / "run" / "routes.json"
        tmp = target.with_name(".routes.tmp")
        tmp.write_text(json.dumps({"apps": self.routes, "generation": self.generation}))
        os.replace(tmp, target)
        if self.proc is not None:
            ack = self.home / "run" / "routes.applied"
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    if int(ack.read_text()) >= self.generation:
                        return
                except (OSError, ValueError):
                    pass
                time.sleep(0.02)
            raise RuntimeError(f"the front door never applied routes {self.generation}:\n{self.log_text()}")

    def start(self) -> None:
        """Start the front door and wait until *it* listens. The port was free when picked, but
        any process may take it before the gateway binds: then start over on another port rather
        than send the tests to whoever holds it."""
        for _attempt in range(3):
            self._log = open(self.home / "frontdoor.log", "wb")  # noqa: SIM115 - closed in stop()
            sso = ["--sso-host", self.sso_host] if self.sso_host else []
            if self.otlp is not None:
                sso += ["--otlp-socket", str(self.otlp.path),
                        "--traces-per-second", str(self.traces_per_second)]
            self.proc = subprocess.Popen([sys.executable, "-m", "noops.gate.frontdoor", "--home",
                                          str(self.home), "--port", str(self.port), *sso],
                                         stdout=self._log, stderr=subprocess.STDOUT)
            listening = f"front door on 127.0.0.1:{self.port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                if listening in self.log_text():
                    self._publish()
                    return
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"the front door did not listen within 30 s:\n{self.log_text()}")
            self._log.close()
            if "address already in use" not in self.log_text().lower():
                raise RuntimeError(self.log_text())
            self.port = free_port()
        raise RuntimeError(f"no free port for the front door:\n{self.log_text()}")

    def stop(self) -> None:
        for app in self.apps.values():
            app.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
        if self.otlp is not None:
            self.otlp.stop()
        self.identities.close()
        shutil.rmtree(self.home, ignore_errors=True)

    def log_text(self) -> str:
        return (self.home / "frontdoor.log").read_text(errors="replace")

    def apply_policy(self, text: str) -> str:
        """Apply ``text`` and wait until the gateway logs that it applied this version (it looks
        every 0.25 s). A version already in force logs nothing again: then wait at most the
        0.4 s the gateway needs to look."""
        version = self.policies.apply(text, actor="test")
        marker = f"noops.gate.pep policy {version} applied"
        before = self.log_text().count(marker)
        applied = [line for line in self.log_text().splitlines()
                   if "noops.gate.pep policy " in line and line.endswith(" applied")]
        in_force = not applied or applied[-1].endswith(marker)
        deadline = time.monotonic() + (0.4 if in_force else 10)
        while self.log_text().count(marker) == before:
            if time.monotonic() > deadline:
                assert in_force, f"the gateway never applied policy {version}:\n{self.log_text()}"
                break
            time.sleep(0.02)
        return version

    # -- identities -------------------------------------------------------------------------------
    def add_user(self, name: str, groups: tuple[str, ...] = (), *, totp: bool = False) -> str | None:
        self.identities.add_user(name, PASSWORD, list(groups))
        if not totp:
            return None
        return self.identities.provision_totp(name)[0]

    def session(self, user: str, methods: set[str]) -> str:
        """A session as a login would make it; returns the cookie value."""
        return self.identities.create_session(user, auth_methods=methods, client_ip="127.0.0.1")[1]

    def device(self, name: str, user: str) -> tuple[Path, Path, int]:
        """Enrol a device; returns (cert.pem, key.pem, serial)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.serialization import pkcs12

        bundle = self.ca.enroll_device(name, user, password="device-pass")
        key, cert, chain = pkcs12.load_key_and_certificates(bundle, b"device-pass")
        assert key is not None and cert is not None
        cert_path = self.home / f"{user}-{name}.crt"
        key_path = self.home / f"{user}-{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (chain or [])[:1]))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path, cert.serial_number

    def write_issued(self, issued: Issued, name: str) -> tuple[Path, Path]:
        return issued.write(self.home, name)

    # -- clients ----------------------------------------------------------------------------------
    def tls(self, cert: tuple[Path, Path] | None = None, *, minimum: ssl.TLSVersion | None = None,
            maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.bundle))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
        return ctx

    @contextmanager
    def client(self, cert: tuple[Path, Path] | None = None,
               cookie: str | None = None) -> Iterator[httpx.Client]:
        """An HTTPS client that resolves ``*.localhost`` to 127.0.0.1 (SNI = the app's name)."""
        transport = httpx.HTTPTransport(verify=self.tls(cert))
        cookies = {"__Host-noops_session": cookie} if cookie else None
        with _resolve_localhost(), httpx.Client(transport=transport, timeout=10, cookies=cookies,
                                                follow_redirects=False) as client:
            yield client

    def url(self, app: str, path: str = "/") -> str:
        return f"https://{app}.localhost:{self.port}{path}"

    def raw(self, data: bytes, *, host: str = "echo.localhost", cert: tuple[Path, Path] | None = None,
            timeout: float = 5.0) -> bytes:
        """Send raw bytes over TLS (SNI ``host``) and return everything read until close/timeout."""
        ctx = self.tls(cert)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock, \
                ctx.wrap_socket(sock, server_hostname=host) as tls:
            tls.sendall(data)
            chunks = []
            try:
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except (TimeoutError, ssl.SSLError, ConnectionError):
                pass
            return b"".join(chunks)

    def audit_records(self) -> list[dict[str, Any]]:
        path = self.gate / "audit" / "decisions.jsonl"
        deadline = time.monotonic() + 2
        text = ""
        while time.monotonic() < deadline:
            text = path.read_text() if path.exists() else ""
            time.sleep(0.15)  # the writer thread batches
            if text == (path.read_text() if path.exists() else ""):
                break
        return [json.loads(line) for line in text.splitlines()]


@contextmanager
def _resolve_localhost() -> Iterator[None]:
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        return real("127.0.0.1" if isinstance(host, str) and host.endswith(".localhost") else host,
                    *args, **kwargs)

    socket.getaddrinfo = resolve  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.getaddrinfo = real  # type: ignore[assignment]


def workload_call(gw: Gateway, issued: Issued | None, host: str, path: str,
                  headers: dict[str, str] | None = None) -> bytes:
    """``GET path`` on ``host`` through the gateway's workload socket, as an instance calls
    another app (presenting ``issued``, an SVID); returns the whole raw answer."""
    from noops.gate.mtls import peer_spiffe_id

    ctx = ssl.create_default_context(cafile=str(gw.bundle))
    ctx.check_hostname = False  # the gateway's SVID has no DNS name: its SPIFFE ID is checked below
    if issued is not None:
        cert, key = issued.write(gw.home, f"svid-{issued.serial}")
        ctx.load_cert_chain(str(cert), str(key))
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(gw.home / "run" / "gateway.sock"))
        with ctx.wrap_socket(sock, server_hostname="gateway") as tls:
            assert peer_spiffe_id(tls.getpeercert(binary_form=True)) == "spiffe://noops.local/gateway"
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data


# -- helpers for the attack tests (test_attack_*.py) ---------------------------------------------


class RawResponse:
    """One parsed HTTP/1.1 response: status, header list (names as sent), body."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"RawResponse({self.status}, {self.headers!r}, {self.body[:200]!r})"


class RawConnection:
    """A kept-alive TLS connection to the front door for byte-exact requests (targets, header
    names and their case are sent as given, unlike an HTTP client library would)."""

    def __init__(self, gw: Gateway, host: str = "echo.localhost", *,
                 cert: tuple[Path, Path] | None = None, timeout: float = 5.0,
                 sock_path: str | None = None, ctx: ssl.SSLContext | None = None) -> None:
        context = ctx or gw.tls(cert)
        if sock_path is None:
            raw = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)
        else:
            raw = socket.socket(socket.AF_UNIX)
            raw.settimeout(timeout)
            raw.connect(sock_path)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLError, ConnectionError):
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self, *, head_only: bool = False) -> RawResponse | None:
        """The next response, or None when the connection closed (or timed out) first."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = [(k, v) for k, _, v in (line.partition(": ") for line in lines[1:])]
        low = {k.lower(): v for k, v in headers}
        if head_only or status in (101, 204, 304) or 100 <= status < 200:
            return RawResponse(status, headers, b"")
        if "content-length" in low:
            size = int(low["content-length"])
            while len(self.buf) < size:
                if not self._fill():
                    break
            body, self.buf = self.buf[:size], self.buf[size:]
            return RawResponse(status, headers, body)
        if low.get("transfer-encoding", "").lower().endswith("chunked"):
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    if not self._fill():
                        return RawResponse(status, headers, body)
                line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    if not self._fill():
                        return RawResponse(status, headers, body)
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    return RawResponse(status, headers, body)
        while self._fill():
            pass
        body, self.buf = self.buf, b""
        return RawResponse(status, headers, body)

    def request(self, data: bytes) -> RawResponse | None:
        self.send(data)
        return self.read_response()


def raw_get(target: str, host: str = "echo.localhost", *, cookie: str | None = None,
            headers: list[tuple[str, str]] | None = None, method: str = "GET") -> bytes:
    """A request head (no body) with ``target`` sent byte for byte."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if cookie is not None:
        lines.append(f"Cookie: __Host-noops_session={cookie}")
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def set_endpoint_spiffe(gw: Gateway, app: str, spiffe_id: str) -> None:
    """Pin another SPIFFE ID (or "" = none) on ``app``'s endpoint and wait until it is routed."""
    for endpoint in gw.routes[app]["endpoints"]:
        endpoint["spiffe_id"] = spiffe_id
    gw._publish()


def route_endpoint(gw: Gateway, app: str, socket_path: str, spiffe_id: str,
                   hosts: list[str] | None = None) -> None:
    """Route ``app`` to an arbitrary socket (a hand-made upstream) and wait until it is applied."""
    gw.routes[app] = {"hosts": hosts or [f"{app}.localhost"],
                      "endpoints": [{"id": f"{app}-1", "socket_path": socket_path, "ready": True,
                                     "draining": False, "spiffe_id": spiffe_id}]}
    gw._publish()


def seen_targets(app: EchoApp) -> list[str]:
    return [r["target"] for r in app.seen]


def header_values(record: dict[str, Any], name: str) -> list[str]:
    """Every value of header ``name`` (any case) the app received in ``record``."""
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


def ws_handshake(path: str = "/ws", host: str = "echo.localhost", *, cookie: str | None = None,
                 extra: list[tuple[str, str]] | None = None) -> bytes:
    import base64

    key = base64.b64encode(os.urandom(16)).decode()
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
               ("Sec-WebSocket-Version", "13"), *(extra or [])]
    return raw_get(path, host, cookie=cookie, headers=headers)


def ws_frame(text: bytes) -> bytes:
    """A masked client text frame (payload < 126 bytes)."""
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


def open_ws(gw: Gateway, cookie: str, cert: tuple | None = None) -> RawConnection:
    """A websocket through the gateway to the echo app, checked to echo."""
    c = RawConnection(gw, cert=cert, timeout=5)
    c.send(ws_handshake(cookie=cookie))
    r = c.read_response()
    assert r is not None and r.status == 101, r
    c.send(ws_frame(b"ping"))
    assert wait_for(lambda: b"ping" in c.buf or (c._fill() and b"ping" in c.buf), 3) is not None
    c.buf = b""
    return c


def ws_closed_within(c: RawConnection, limit_s: float) -> float | None:
    """Seconds until the gateway closes the tunnel (messages sent meanwhile get no echo)."""
    c.sock.settimeout(0.05)
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            c.send(ws_frame(b"still"))
        except OSError:
            return time.monotonic() - started
        try:
            data = c.sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
        if not data:
            return time.monotonic() - started
    return None


def write_trust(gw: Gateway, text: str) -> None:
    """Replace ``gate/trust.toml`` and wait for the gateway's reload tick."""
    path = gw.gate / "trust.toml"
    tmp = path.with_name(".trust.toml.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    time.sleep(0.6)


def wait_for(predicate: Any, timeout_s: float = 5.0, step_s: float = 0.02) -> float | None:
    """Poll ``predicate`` until true; seconds it took, or None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(step_s)
    return None


def audit_file(gw: Gateway) -> Path:
    """The decision log the front door writes (where :class:`noops.gate.pep.GateFiles` puts it)."""
    from noops.gate.pep import GateFiles

    return GateFiles(gw.gate).audit


def decisions(gw: Gateway) -> list[dict[str, Any]]:
    """Every audit record so far, read from :func:`audit_file` once the writer has caught up.
    Fails (instead of returning nothing) when the file is missing."""
    path = audit_file(gw)
    deadline = time.monotonic() + 2
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"no audit log at {path}"
    text = ""
    while time.monotonic() < deadline + 2:
        text = path.read_text()
        time.sleep(0.15)  # the writer thread batches
        if text == path.read_text():
            break
    return [json.loads(line) for line in text.splitlines()]
