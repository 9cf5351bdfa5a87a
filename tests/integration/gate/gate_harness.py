"""Test harness for the front door: real upstream servers on Unix sockets, the proxy on its own
uvloop thread, and small blocking HTTP clients.

* :class:`Upstream` -- a threaded HTTP/1.1 server on a Unix socket, written from the sockets up
  (it shares no parser with the proxy). Paths: ``/`` (who am I), ``/echo-head`` (the raw request
  head as the body), ``/sink`` (reads the body, answers its length and sha256; ``?delay_ms=`` per
  64 KiB read), ``/stream?n=`` (a chunked body of ``n`` bytes; ``sent`` tracks progress),
  ``/slow?ms=``, ``/split?n=`` (the head and an ``n``-byte body in two writes), ``/overrun``
  (the response to ``/``, then the start of another in the same write), ``/crash``
  (closes without answering), ``/crash-mid`` (closes mid-body),
  ``/close-delimited``. It counts connections, requests and requests in flight.
* :class:`WsUpstream` -- a ``websockets`` echo server on a Unix socket.
* :class:`ProxyThread` -- a :class:`FrontDoor` on 127.0.0.1:free port, in a thread with uvloop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qs, urlsplit

import uvloop
import websockets.sync.server

from noops.gate import Endpoint, FrontDoor, FrontDoorConfig, StaticEndpointRegistry

T = TypeVar("T")


# ------------------------------------------------------------------------------------- upstreams
class _Handler(socketserver.StreamRequestHandler):
    server: _UnixHTTPServer

    def handle(self) -> None:
        srv = self.server
        with srv.lock:
            srv.connections += 1
            srv.open_socks.add(self.connection)
        try:
            while self._one_request():
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            with srv.lock:
                srv.open_socks.discard(self.connection)

    def _one_request(self) -> bool:
        head = b""
        while True:
            line = self.rfile.readline(65537)
            if not line:
                return False
            if line in (b"\r\n", b"\n") and not head:
                continue
            head += line
            if line in (b"\r\n", b"\n"):
                break
        srv = self.server
        with srv.lock:
            srv.requests += 1
            srv.inflight += 1
        try:
            return self._serve(head)
        finally:
            with srv.lock:
                srv.inflight -= 1

    def _serve(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        method, target, _version = lines[0].decode().split(" ", 2)
        headers: dict[str, str] = {}
        for raw in lines[1:]:
            if raw:
                name, _, value = raw.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        srv = self.server
        srv.seen.append((method, target, headers))
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body_reader = self._body_reader(headers, int(query.get("delay_ms", "0")))
        keep = headers.get("connection", "").lower() != "close"
        if path == "/crash":
            for _ in body_reader:
                pass
            self.connection.shutdown(socket.SHUT_RDWR)
            return False
        if path == "/sink":
            digest, total = hashlib.sha256(), 0
            for chunk in body_reader:
                digest.update(chunk)
                total += len(chunk)
                srv.received = total
            return self._reply(method, 200, json.dumps({"bytes": total, "sha256": digest.hexdigest()})
                               .encode(), keep, "application/json")
        for _ in body_reader:
            pass
        if path == "/echo-head":
            return self._reply(method, 200, head, keep, "application/octet-stream")
        if path == "/slow":
            time.sleep(int(query.get("ms", "500")) / 1000)
        if path == "/stream":
            return self._stream(method, int(query.get("n", "0")), keep)
        if path == "/split":  # the head, then (in another write) a body of ?n= bytes
            n = int(query.get("n", "0"))
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n"
                    f"X-Upstream: {srv.name}\r\n\r\n").encode()
            self.wfile.write(head)
            self.wfile.flush()
            time.sleep(0.02)
            self.wfile.write(b"s" * n)
            self.wfile.flush()
            return keep
        if path == "/overrun":  # a whole response, then the start of one nobody asked for
            body = json.dumps({"app": srv.name, "path": "/", "method": method}).encode()
            self._reply(method, 200, body, keep, "application/json", b"", tail=b"HTTP/1.1 200 OK\r\nX-Bro")
            return keep
        if path == "/crash-mid":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return False
        if path == "/close-delimited":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                             b"until the end")
            self.wfile.flush()
            return False
        if path == "/hop":
            extra = (b"Connection: X-Secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
                     b"Proxy-Authenticate: Basic\r\nX-Visible: yes\r\n")
            return self._reply(method, 200, b"hop", keep, "text/plain", extra)
        body = json.dumps({"app": srv.name, "path": target, "method": method}).encode()
        return self._reply(method, 200, body, keep, "application/json")

    def _body_reader(self, headers: dict[str, str], delay_ms: int) -> Any:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 65536))
                    if not chunk:
                        return
                    left -= len(chunk)
                    if delay_ms:
                        time.sleep(delay_ms / 1000)
                    yield chunk
                self.rfile.readline()
        else:
            left = int(headers.get("content-length", "0"))
            while left:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)
                if delay_ms:
                    time.sleep(delay_ms / 1000)
                yield chunk

    def _reply(self, method: str, status: int, body: bytes, keep: bool, ctype: str,
               extra: bytes = b"", tail: bytes = b"") -> bool:
        head = (f"HTTP/1.1 {status} OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"X-Upstream: {self.server.name}\r\n").encode() + extra
        if not keep:
            head += b"Connection: close\r\n"
        self.wfile.write(head + b"\r\n" + (b"" if method == "HEAD" else body) + tail)
        self.wfile.flush()
        return keep

    def _stream(self, method: str, n: int, keep: bool) -> bool:
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
        if method == "HEAD":
            return keep
        block = bytes(range(256)) * 256  # 64 KiB
        srv = self.server
        while srv.sent < n:
            piece = block[: min(len(block), n - srv.sent)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            srv.sent += len(piece)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        return keep


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.inflight = 0
        self.sent = 0
        self.received = 0
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.open_socks: set[socket.socket] = set()
        super().__init__(path, _Handler)


class Upstream:
    """A running test app: ``Upstream(tmp_path, "a")`` listens on ``tmp_path/a.sock``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.path = str(directory / f"{name}.sock")
        self.server = _UnixHTTPServer(self.path, name)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.stopped = False

    def endpoint(self, app: str, *, ready: bool = True, draining: bool = False) -> Endpoint:
        return Endpoint(id=f"{app}/{self.name}", app=app, socket_path=self.path, ready=ready,
                        draining=draining)

    def stop(self) -> None:
        """Stop accepting, close every connection (idle keep-alive ones too), remove the socket."""
        if self.stopped:
            return
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()
        with self.server.lock:
            socks = list(self.server.open_socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if os.path.exists(self.path):
            os.unlink(self.path)


class WsUpstream:
    """A WebSocket echo server on a Unix socket."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.path = str(directory / f"{name}.sock")
        self.connected = threading.Event()

        def echo(conn: websockets.sync.server.ServerConnection) -> None:
            self.connected.set()
            for message in conn:
                conn.send(message)

        self.server = websockets.sync.server.unix_serve(echo, self.path)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def endpoint(self, app: str) -> Endpoint:
        return Endpoint(id=f"{app}/{self.name}", app=app, socket_path=self.path)

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


# ------------------------------------------------------------------------------------- the proxy
class ProxyThread:
    """A :class:`FrontDoor` served by uvloop on a background thread."""

    def __init__(self, registry: StaticEndpointRegistry, config: FrontDoorConfig | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.registry = registry
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.door = FrontDoor(registry, config)
        self.call_async(self.door.start("127.0.0.1", 0, tls))
        self.port = self.door.port

    def call_async(self, coro: Any, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, fn: Callable[[], T], timeout_s: float = 10.0) -> T:
        """Run ``fn`` on the proxy's loop thread and return its result."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout_s)

    def stats(self) -> dict[str, int]:
        return self.call(self.door.stats)

    def stop(self, drain_s: float = 2.0) -> None:
        try:
            self.call_async(self.door.stop(drain_s))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


# ------------------------------------------------------------------------------------- clients
def raw_exchange(port: int, data: bytes, timeout_s: float = 5.0, *, half_close: bool = False) -> bytes:
    """Send ``data`` on a new connection; return everything read until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0


class Client:
    """A kept-alive ``http.client`` connection to the proxy that always sends ``Host``.

    Every client is closed by :func:`close_clients` (an autouse fixture calls it after each test).
    """

    opened: ClassVar[list[Client]] = []

    def __init__(self, port: int, host: str, timeout_s: float = 10.0) -> None:
        import http.client

        self.host = host
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        Client.opened.append(self)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        hdrs = {"Host": self.host, **(headers or {})}
        self.conn.request(method, path, body=body, headers=hdrs)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def get(self, path: str = "/",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, headers=headers)

    def close(self) -> None:
        self.conn.close()


def close_clients() -> None:
    while Client.opened:
        Client.opened.pop().close()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
