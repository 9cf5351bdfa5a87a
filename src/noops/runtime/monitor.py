"""The instance monitor: one small process per instance, like conmon for Podman.

It runs ``runc run`` in the foreground (so it reaps the container and learns its exit code),
drains the app's stdout/stderr into rotating, timestamped log files, and serves the instance's
Unix socket: a bridge into the instance's network namespace, the only way in. It lives in its own
session, so a crash or ``kill -9`` of the daemon leaves the app running, logging and reachable;
the daemon re-adopts it from the status file on start.

No TLS offload: the instance socket is a TLS 1.3 server presenting the instance's SVID
(``spiffe://<td>/app/<app>/<process>``) and requiring a client certificate from the noops CA whose
SPIFFE ID is one of ``allowed_peers`` (the gateway). A connection without one, with another ID,
or speaking plain HTTP is closed before the app is dialled. Plaintext exists only between this
process and the app, inside the namespace. The SVID files are re-read when the daemon rotates
them (new handshakes get the new certificate, open connections keep theirs); an expired SVID is
never presented: connections are refused until a fresh one arrives.

Egress: inside the namespace, ``127.0.0.1:<egress_port>`` (``NOOPS_GATEWAY_URL`` for the app)
takes plain HTTP from the app and forwards it over mTLS, with the instance's SVID as the client
certificate, to the front door's workload socket (``gateway_socket``; Unix sockets cross network
namespaces), whose server certificate must be ``gateway_id``. The front door authenticates the
SVID and applies its policy to the ``Host`` the app asked for.

Telemetry: inside the namespace, ``127.0.0.1:<otlp_port>`` (4318, where the runtime points the
app's OpenTelemetry SDK) is forwarded byte for byte to the daemon's OTLP receiver on
``otlp_socket``; the receiver knows the sender by this process's pid on that socket and
stores the data under this instance, whatever the app's SDK claims
(:mod:`noops.observe.otlp.identity`). It is local plain HTTP and never leaves the machine;
while the receiver is down (a daemon restart) the app gets ``503`` with ``Retry-After: 1``,
which OTLP exporters retry.

Run as ``python -m noops.runtime.monitor SPEC.json``. The status file (``status.json`` next to
the spec) always holds the latest truth: ``{"monitor_pid", "state": starting|running|exited,
"exit_code", "started_at", "finished_at"}``, written atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from noops.gate.mtls import SvidFiles

__all__ = ["MonitorSpec", "main", "read_status"]

_CHUNK = 65536
_HANDSHAKE_TIMEOUT_S = 10.0
_SERVER_NAME = "instance.noops.internal"  # noops.gate.mtls.SERVER_NAME (SVIDs have no DNS name)


@dataclass(frozen=True)
class MonitorSpec:
    id: str
    bundle: str
    runc: str
    runc_root: str
    netns: str
    socket: str
    port: int
    log_path: str
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 5
    grace_s: float = 30.0
    # mTLS on the instance socket (empty: no SVID configured, every connection is refused)
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    allowed_peers: list[str] = field(default_factory=list)
    # egress for service-to-service calls (no gateway_socket: no egress listener)
    egress_port: int = 15001
    gateway_socket: str = ""
    gateway_id: str = ""
    # telemetry: 127.0.0.1:<otlp_port> in the namespace → the receiver's Unix socket (none: off)
    otlp_port: int = 4318
    otlp_socket: str = ""

    @classmethod
    def load(cls, path: Path) -> MonitorSpec:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        _atomic_json(path, self.__dict__)


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_status(spec_path: Path) -> dict[str, Any]:
    path = spec_path.with_name("status.json")
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


class _Log:
    """Line-oriented, timestamped, size-rotated log: ``<path>``, ``<path>.1`` … ``.<keep>``."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self.fh = open(path, "ab")  # noqa: SIM115 - held for the monitor's life
        self.size = self.fh.tell()

    def write(self, stream: str, line: bytes) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        record = b"%s.%03dZ %s " % (stamp.encode(), int(time.time() * 1000) % 1000, stream.encode())
        record += line if line.endswith(b"\n") else line + b"\n"
        self.fh.write(record)
        self.fh.flush()
        self.size += len(record)
        if self.size >= self.max_bytes:
            self.rotate()

    def rotate(self) -> None:
        self.fh.close()
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.fh = open(self.path, "ab")  # noqa: SIM115
        self.size = 0


class _Pipe(asyncio.Protocol):
    """One direction-agnostic half of a byte bridge, with back-pressure to its peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        if self.pending:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            # a TLS transport can deliver data before connection_made (see Monitor.secure)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        peer = self.peer
        self.eof = True
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True  # keep our write side open for the answer
        return False

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def attach(self, peer: _Pipe) -> None:
        """Connect to ``peer`` and flush what arrived before it existed."""
        self.peer, peer.peer = peer, self
        assert peer.transport is not None and self.transport is not None
        for chunk in self.pending:
            peer.transport.write(chunk)
        self.pending.clear()
        if self.eof and peer.transport.can_write_eof():
            peer.transport.write_eof()
        self.transport.resume_reading()


class _ClientSide(_Pipe):
    """A connection on the instance socket: bridged to 127.0.0.1:PORT in the namespace."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, app = await loop.create_connection(_Pipe, "127.0.0.1", self.port)
        except OSError:
            if self.transport is not None:
                self.transport.close()  # the app is not listening (yet): the caller retries
            return
        if self.transport is None or self.transport.is_closing():
            if app.transport is not None:
                app.transport.close()
            return
        self.attach(app)


class _Accept(asyncio.Protocol):
    """A raw connection on the instance socket. Reading is paused at once, so not a byte is read
    in the clear: :meth:`Monitor.secure` hands the transport to TLS (``start_tls``)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        raw.pause_reading()
        self.monitor.spawn(self.monitor.secure(raw))


class _EgressSide(_Pipe):
    """A plain connection from the app to ``127.0.0.1:<egress_port>``: forwarded over mTLS."""

    def __init__(self, monitor: Monitor) -> None:
        super().__init__()
        self.monitor = monitor

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.monitor.spawn(self.monitor.forward(self))


class _OtlpSide(_Pipe):
    """A plain connection from the app to ``127.0.0.1:<otlp_port>``: forwarded to the receiver.

    When the receiver cannot be reached the answer (``refusal``) is sent once the request has
    started to arrive, so it is read rather than reset away with unread bytes."""

    def __init__(self, monitor: Monitor) -> None:
        super().__init__()
        self.monitor = monitor
        self.refusal: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.monitor.spawn(self.monitor.forward_otlp(self))

    def data_received(self, data: bytes) -> None:
        if self.refusal is None:
            super().data_received(data)
        else:
            self.pending.append(data)
            self.refuse(self.refusal)

    def refuse(self, why: str, *, now: bool = False) -> None:
        """Answer 503 + ``Retry-After`` once request bytes are here (``now``: they were)."""
        self.refusal = why
        if self.pending or self.eof or now:
            self.pending.clear()
            _refuse(self, why, b"503 Service Unavailable", b"Retry-After: 1\r\n", "telemetry")
        elif self.transport is not None:
            self.transport.resume_reading()


class _ReceiverSide(_Pipe):
    """The monitor's connection to the receiver's socket. If it ends before a byte of answer
    came back (the daemon died with the request in its backlog), the app gets the retryable
    503 instead of a bare close."""

    def __init__(self) -> None:
        super().__init__()
        self.answered = False

    def data_received(self, data: bytes) -> None:
        self.answered = True
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        app = self.peer
        if not self.answered and isinstance(app, _OtlpSide):
            app.peer = None
            app.refuse("the telemetry receiver went away before it answered", now=True)
            return
        super().connection_lost(exc)


def _refuse(side: _Pipe, why: str, status: bytes = b"502 Bad Gateway", extra: bytes = b"",
            what: str = "egress") -> None:
    """Answer a request that cannot be forwarded (egress: 502; telemetry: 503 + Retry-After)
    with a body that says why, and close."""
    if side.transport is None or side.transport.is_closing():
        return
    body = f"noops {what}: {why}\n".encode()
    side.transport.write(b"HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\n%s"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (status, extra, len(body), body))
    side.transport.close()


class Monitor:
    def __init__(self, spec: MonitorSpec, spec_path: Path, tls: SvidFiles | None = None) -> None:
        self.spec, self.spec_path = spec, spec_path
        self.status_path = spec_path.with_name("status.json")
        self.log = _Log(Path(spec.log_path), spec.log_max_bytes, spec.log_keep)
        self.status: dict[str, Any] = {"monitor_pid": os.getpid(), "state": "starting",
                                       "started_at": time.time()}
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.tls = tls
        self.tasks: set[asyncio.Task[None]] = set()
        self.refused = 0
        self._refused_logged = float("-inf")

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _refused(self, why: str) -> None:
        """Count a refused connection; log at most one line per 10 s (a port scan must not
        flood the app's log)."""
        self.refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= 10.0:
            self._refused_logged = now
            self.log.write("noops", f"refused a connection: {why} ({self.refused} so far)".encode())

    async def secure(self, raw: asyncio.Transport) -> None:
        """TLS on a new instance-socket connection with the SVID current now; the app is dialled
        only once the client proved an allowed SPIFFE ID."""
        from noops.errors import NoopsError

        loop = asyncio.get_running_loop()
        if self.tls is None:
            self._refused("the instance has no SVID configured (a monitor spec without tls_cert);"
                          " restart the instance from a current daemon")
            raw.abort()
            return
        try:
            ctx = self.tls.server_context(self.spec.allowed_peers)
        except NoopsError as exc:
            self._refused(str(exc))
            raw.abort()
            return
        client = _ClientSide(self.spec.port)
        try:
            tls = await loop.start_tls(raw, client, ctx, server_side=True,
                                       ssl_handshake_timeout=_HANDSHAKE_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self._refused(f"TLS handshake failed ({exc.__class__.__name__}: {exc})")
            raw.abort()
            return
        if tls is None:
            raw.abort()
            return
        peer = self.tls.check_peer(tls.get_extra_info("ssl_object"), self.spec.allowed_peers)
        if peer is None:
            self._refused("the client certificate is not an allowed SPIFFE ID "
                          f"({', '.join(self.spec.allowed_peers) or 'none configured'})")
            tls.abort()
            return
        client.connection_made(tls)  # dials the app; what arrived meanwhile is pending

    async def forward(self, app: _EgressSide) -> None:
        """Bridge one egress connection to the front door's workload socket over mTLS."""
        from noops.errors import NoopsError

        loop = asyncio.get_running_loop()
        if self.tls is None:
            _refuse(app, "this instance has no SVID to present")
            return
        try:
            ctx = self.tls.client_context()
            _, gw = await loop.create_unix_connection(
                _Pipe, self.spec.gateway_socket, ssl=ctx, server_hostname=_SERVER_NAME,
                ssl_handshake_timeout=_HANDSHAKE_TIMEOUT_S)
        except (NoopsError, OSError, TimeoutError) as exc:
            _refuse(app, f"the gateway is not reachable ({exc})")
            return
        assert gw.transport is not None
        if self.tls.check_peer(gw.transport.get_extra_info("ssl_object"),
                               (self.spec.gateway_id,)) is None:
            gw.transport.abort()
            _refuse(app, f"the workload socket is not {self.spec.gateway_id or 'the gateway'}")
            return
        if app.transport is None or app.transport.is_closing():
            gw.transport.close()
            return
        app.attach(gw)

    async def forward_otlp(self, app: _OtlpSide) -> None:
        """Bridge one telemetry connection to the receiver's Unix socket (plain, local)."""
        loop = asyncio.get_running_loop()
        try:
            _, receiver = await loop.create_unix_connection(_ReceiverSide, self.spec.otlp_socket)
        except OSError as exc:
            app.refuse(f"the telemetry receiver is not reachable ({exc})")
            return
        assert receiver.transport is not None
        if app.transport is None or app.transport.is_closing():
            receiver.transport.close()
            return
        app.attach(receiver)

    async def _serve_otlp(self) -> asyncio.AbstractServer | None:
        if not self.spec.otlp_socket or not self.spec.otlp_port:
            return None
        try:
            return await asyncio.get_running_loop().create_server(
                lambda: _OtlpSide(self), "127.0.0.1", self.spec.otlp_port)
        except OSError as exc:  # the app must run even without telemetry
            self.log.write("noops", f"no telemetry on 127.0.0.1:{self.spec.otlp_port}: {exc}".encode())
            return None

    async def _serve_egress(self) -> asyncio.AbstractServer | None:
        if not self.spec.gateway_socket or not self.spec.egress_port:
            return None
        try:
            return await asyncio.get_running_loop().create_server(
                lambda: _EgressSide(self), "127.0.0.1", self.spec.egress_port)
        except OSError as exc:  # the app must run even without egress
            self.log.write("noops", f"no egress on 127.0.0.1:{self.spec.egress_port}: {exc}".encode())
            return None

    def _save(self) -> None:
        _atomic_json(self.status_path, self.status)

    async def _drain(self, reader: asyncio.StreamReader, stream: str) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self.log.write(stream, exc.partial)
                return
            except asyncio.LimitOverrunError:
                line = await reader.read(_CHUNK)
            self.log.write(stream, line)

    def _terminate(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        asyncio.get_running_loop().create_task(self._stop())

    async def _stop(self) -> None:
        runc = [self.spec.runc, "--root", self.spec.runc_root]
        subprocess.run([*runc, "kill", self.spec.id, "TERM"], capture_output=True, check=False)
        deadline = time.monotonic() + self.spec.grace_s
        while self.proc and self.proc.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.proc and self.proc.returncode is None:
            subprocess.run([*runc, "kill", "--all", self.spec.id, "KILL"], capture_output=True,
                           check=False)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._terminate)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.spec.socket)
        server = await loop.create_unix_server(lambda: _Accept(self), path=self.spec.socket)
        os.chmod(self.spec.socket, 0o600)
        egress = await self._serve_egress()
        otlp = await self._serve_otlp()
        self.proc = await asyncio.create_subprocess_exec(
            self.spec.runc, "--root", self.spec.runc_root, "run", "--bundle", self.spec.bundle,
            self.spec.id, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.status.update(state="running", container_pid=None)
        self._save()
        if self.tls is None and self.spec.tls_cert:
            # imported while the app boots (connections wait in the backlog meanwhile): the
            # socket and the container start as early as before TLS existed
            from noops.gate.mtls import SvidFiles

            self.tls = SvidFiles(self.spec.tls_cert, self.spec.tls_key, self.spec.tls_ca)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        drains = [asyncio.create_task(self._drain(self.proc.stdout, "stdout")),
                  asyncio.create_task(self._drain(self.proc.stderr, "stderr"))]
        code = await self.proc.wait()
        await asyncio.gather(*drains, return_exceptions=True)
        server.close()
        for listener in (egress, otlp):
            if listener is not None:
                listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.spec.socket)
        subprocess.run([self.spec.runc, "--root", self.spec.runc_root, "delete", "--force",
                        self.spec.id], capture_output=True, check=False)
        exit_code = code if code >= 0 else 128 - code
        self.status.update(state="exited", exit_code=exit_code, finished_at=time.time(),
                           stopped=self.stopping)
        self._save()
        self.log.write("noops", f"instance exited with code {exit_code}".encode())
        return exit_code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec_path = Path(args[0])
    spec = MonitorSpec.load(spec_path)
    from noops.runtime import netns

    netns.enter(spec.netns)  # single-threaded here: the whole process joins the namespace
    monitor = Monitor(spec, spec_path)
    # the stdlib loop, not uvloop: under load uvloop's Unix transports crashed this process
    # ("double free or corruption") while bridging; a monitor must never die
    return asyncio.run(monitor.run())


if __name__ == "__main__":
    sys.exit(main())
