"""No TLS offload, on real runc instances: the instance socket is mTLS with the gateway only,
what crosses it is TLS, SVIDs rotate under load without a failed request, an expired SVID is
never presented, and the egress port carries the instance's SVID to the gateway."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from runtime_helpers import make_manager, tls_get

from helpers import needs
from noops.gate.mtls import SERVER_NAME, UpstreamTLS, peer_spiffe_id
from noops.gate.pki import CertificateAuthority, Issued
from noops.runtime import identity
from noops.runtime.instances import Instance, InstanceManager, InstanceSpec
from noops.settings import Settings

pytestmark = [pytest.mark.runc, pytest.mark.stacks, needs("runc", "mmdebstrap", "ip", "ss")]

TD = "noops.local"


def _wait_ready(instance: Instance, gateway: UpstreamTLS, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if tls_get(instance.socket_path, gateway.context())[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the instance never answered over mTLS"
        time.sleep(0.1)


@pytest.fixture
def web(manager: InstanceManager, flask_image: str, gateway: UpstreamTLS,
        unique: str) -> Iterator[Instance]:
    instance = manager.start(InstanceSpec(f"m{unique}", 1, "web", flask_image, port=18932,
                                          grace_s=5))
    try:
        _wait_ready(instance, gateway)
        yield instance
    finally:
        manager.stop(instance, wait_s=10)


def _client_context(ca: CertificateAuthority, issued: Issued | None) -> ssl.SSLContext:
    return ca.client_ssl_context(issued)


def _refused(socket_path: str, ctx: ssl.SSLContext) -> bytes:
    """Try a request with ``ctx``; return whatever came back (must not be an HTTP answer)."""
    try:
        status, data, _ = tls_get(socket_path, ctx)
    except (OSError, ConnectionError) as exc:  # ssl.SSLError too: closed by the monitor
        return repr(exc).encode()
    raise AssertionError(f"the instance answered {status}: {data[:80]!r}")


def _device_context(ca: CertificateAuthority, folder: Path) -> ssl.SSLContext:
    """A client context presenting an enrolled device certificate (valid, same CA)."""
    p12 = ca.enroll_device("laptop", "alice", password="correct horse battery")
    key, cert, chain = pkcs12.load_key_and_certificates(p12, b"correct horse battery")
    assert key is not None and cert is not None
    (folder / "dev.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (folder / "dev.crt").write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                              for c in [cert, *chain]))
    ctx = ca.client_ssl_context(None)
    ctx.load_cert_chain(folder / "dev.crt", folder / "dev.key")
    return ctx


def test_instance_socket_speaks_only_mtls_with_the_gateway(
        web: Instance, ca: CertificateAuthority, gateway: UpstreamTLS, tmp_path: Path,
        unique: str) -> None:
    status, data, server_cert = tls_get(web.socket_path, gateway.context())
    assert status == 200 and b"noops example: flask" in data
    # the instance proves its own identity, the one the routes pin
    assert web.spiffe_id == f"spiffe://{TD}/app/m{unique}/web"
    assert peer_spiffe_id(server_cert) == web.spiffe_id
    assert ca.verify_server(server_cert, web.spiffe_id).app == f"m{unique}"

    # plain HTTP: closed without an HTTP answer (at most a TLS alert comes back)
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(web.socket_path)
        raw.sendall(b"GET / HTTP/1.0\r\nHost: app.localhost\r\n\r\n")
        answer = b""
        try:
            while chunk := raw.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert b"HTTP/" not in answer and b"flask" not in answer, answer
    assert answer == b"" or answer[0] == 0x15, answer  # nothing, or a TLS alert record

    # valid certificates from the same CA, but not the gateway: refused after the handshake
    _refused(web.socket_path, _client_context(ca, ca.issue_svid("other", "web")))
    _refused(web.socket_path, _client_context(ca, ca.issue_svid(f"m{unique}", "web")))  # itself
    _refused(web.socket_path, _device_context(ca, tmp_path))
    # no client certificate at all, and a gateway ID from another CA
    _refused(web.socket_path, _client_context(ca, None))
    rogue = CertificateAuthority.create(tmp_path / "rogue", TD)
    rogue_ctx = ca.client_ssl_context(None)
    rogue_issued = rogue.issue_gateway_identity()
    rogue_issued.write(tmp_path, "rogue")
    rogue_ctx.load_cert_chain(tmp_path / "rogue.crt", tmp_path / "rogue.key")
    _refused(web.socket_path, rogue_ctx)

    assert tls_get(web.socket_path, gateway.context())[0] == 200  # the gateway still gets in
    assert "refused a connection" in Path(web.log_path).read_text()


def test_what_crosses_the_socket_is_tls_and_the_port_is_not_on_the_host(
        web: Instance, gateway: UpstreamTLS) -> None:
    """A tiny capture: drive TLS through memory BIOs and keep every byte of the Unix socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = gateway.context().wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME)
    wire_in = bytearray()
    wire_out = bytearray()
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(web.socket_path)

        def pump() -> None:
            data = outgoing.read()
            if data:
                wire_out.extend(data)
                raw.sendall(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
                chunk = raw.recv(65536)
                assert chunk, "closed during the handshake"
                wire_in.extend(chunk)
                incoming.write(chunk)
        pump()
        tls.write(b"GET / HTTP/1.0\r\nHost: app.localhost\r\n\r\n")
        pump()
        plain = b""
        while True:
            try:
                piece = tls.read(65536)
                if not piece:
                    break
                plain += piece
            except ssl.SSLWantReadError:
                chunk = raw.recv(65536)
                if not chunk:
                    break
                wire_in.extend(chunk)
                incoming.write(chunk)
            except ssl.SSLZeroReturnError:
                break
    assert plain.startswith(b"HTTP/1") and b"noops example: flask" in plain
    # the first record each way is a TLS handshake record (content type 22, version 3.x)
    assert wire_out[0] == 0x16 and wire_out[1] == 0x03
    assert wire_in[0] == 0x16 and wire_in[1] == 0x03
    # and nothing of the request or the answer crossed in the clear
    for secret in (b"HTTP/1", b"GET /", b"noops example", b"Host:"):
        assert secret not in wire_in and secret not in wire_out

    # the app listens only inside its namespace: not on the host, where only the socket is
    ns = (Path(web.dir) / "netns").read_text().strip()
    inside = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH"], capture_output=True,
                            text=True, check=True).stdout
    # (the namespace has only loopback, so even a 0.0.0.0 bind is reachable from inside only)
    assert ":18932 " in inside and "127.0.0.1:15001 " in inside, inside
    host = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    assert ":18932 " not in host
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", 18932), timeout=2):
        pass
    # the socket was made inside the namespace (/proc/net/unix is per namespace) by the monitor,
    # not the app; its path on the host filesystem is the one way in
    unix = subprocess.run(["ip", "netns", "exec", ns, "ss", "-xlpH"], capture_output=True,
                          text=True, check=True).stdout
    [line] = [line for line in unix.splitlines() if web.socket_path in line]
    assert f"pid={web.monitor_pid}," in line, line


class _PastIssuer:
    """Issues SVIDs as if it were ``at`` (to write an expired one into an instance)."""

    def __init__(self, ca: CertificateAuthority, at: datetime.datetime) -> None:
        self.ca, self.at = ca, at
        self.trust_domain = ca.trust_domain

    def issue_svid(self, app: str, process: str, *, ttl_s: int = 3600) -> Issued:
        return self.ca.issue_svid(app, process, ttl_s=ttl_s, now=self.at)

    def export_ca_bundle(self) -> bytes:
        return self.ca.export_ca_bundle()


@pytest.fixture
def old_ca(tmp_path: Path) -> CertificateAuthority:
    """A CA made three hours ago, so it can issue certificates that have already expired."""
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=3)
    return CertificateAuthority.create(tmp_path / "old-ca", TD, now=past)


def test_rotation_under_load_fails_nothing_and_expired_svids_are_never_presented(
        noops_settings: Settings, tmp_path: Path, old_ca: CertificateAuthority,
        flask_image: str, unique: str) -> None:
    ttl_s = 20
    mgr = make_manager(noops_settings, tmp_path, old_ca, svid_ttl_s=ttl_s)
    gateway = UpstreamTLS(old_ca, ttl_s=ttl_s)  # the gateway's own SVID rotates as well
    # gunicorn's sync workers serve one connection each: the held one below must not block the rest
    instance = mgr.start(InstanceSpec(f"r{unique}", 1, "web", flask_image,
                                      env={"WEB_CONCURRENCY": "4"}, grace_s=5))
    stop = threading.Event()
    try:
        _wait_ready(instance, gateway)
        first = identity.read_record(Path(instance.dir))
        assert first is not None and first.ttl_s == ttl_s

        def rotate() -> None:  # what the daemon's rotate_forever does
            while not stop.wait(1.0):
                mgr.renew_svids([instance])

        rotator = threading.Thread(target=rotate, daemon=True)
        rotator.start()
        failures: list[str] = []
        served: list[tuple[float, int, float]] = []  # (when, serial, not_after)
        # a connection opened before the rotation, used after it
        early = socket.socket(socket.AF_UNIX)
        early.settimeout(10)
        early.connect(instance.socket_path)
        early_tls = gateway.context().wrap_socket(early, server_hostname=SERVER_NAME)
        deadline = time.monotonic() + ttl_s * 0.5 + 4  # past the first half-life
        while time.monotonic() < deadline:
            try:
                status, _, cert = tls_get(instance.socket_path, gateway.context(), "/healthz")
                leaf = x509.load_der_x509_certificate(cert)
                served.append((time.time(), leaf.serial_number,
                               leaf.not_valid_after_utc.timestamp()))
                if status != 200:
                    failures.append(str(status))
            except OSError as exc:
                failures.append(repr(exc))
            time.sleep(0.05)
        early_tls.sendall(b"GET /healthz HTTP/1.0\r\nHost: app.localhost\r\n\r\n")
        assert early_tls.recv(64).split()[1] == b"200", "an open connection was dropped"
        early_tls.close()
        assert failures == [], failures[:5]
        assert len(served) > 50
        serials = {s for _, s, _ in served}
        assert len(serials) >= 2, "the instance certificate did not rotate"
        assert first.serial in serials
        assert gateway.renewals >= 2, "the gateway certificate did not rotate"
        assert all(when < not_after for when, _, not_after in served)

        # an expired SVID on disk is never presented: connections are refused instead
        stop.set()
        rotator.join(5)
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
        expired = identity.write_svid(Path(instance.dir), _PastIssuer(old_ca, past),
                                      f"r{unique}", "web", ttl_s)
        assert expired.not_after < time.time()
        time.sleep(1.2)  # SvidFiles looks at the files at most once a second
        for _ in range(10):
            try:
                _, _, cert = tls_get(instance.socket_path, gateway.context(), "/healthz")
            except OSError:
                continue
            raise AssertionError("served while the only SVID on disk is expired: "
                                 f"{x509.load_der_x509_certificate(cert).not_valid_after_utc}")
        assert mgr.renew_svids([instance]) == 1  # the daemon's next pass heals it
        time.sleep(1.2)
        assert tls_get(instance.socket_path, gateway.context(), "/healthz")[0] == 200
    finally:
        stop.set()
        mgr.stop(instance, wait_s=10)


class _WorkloadSocket:
    """A stand-in for the front door's workload socket: mTLS as the gateway, records the
    client's SPIFFE ID and the Host it asked for, answers 200."""

    def __init__(self, ca: CertificateAuthority, path: Path) -> None:
        self.path = path
        self.ctx = ca.server_ssl_context(ca.issue_gateway_identity())
        self.seen: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5)
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    peer = peer_spiffe_id(tls.getpeercert(binary_form=True))
                    host = next((line.split(b":", 1)[1].strip().decode()
                                 for line in head.split(b"\r\n")
                                 if line.lower().startswith(b"host:")), "")
                    self.seen.append({"peer": peer, "host": host})
                    body = json.dumps({"peer": peer, "host": host}).encode()
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body))
            except OSError:
                continue
            except Exception:  # reported by the test, not lost in a thread
                self.errors.append(traceback.format_exc())

    def close(self) -> None:
        self.sock.close()


_FETCH = """
import os, sys, urllib.request, urllib.error
req = urllib.request.Request(os.environ["NOOPS_GATEWAY_URL"] + "/hello",
                             headers={"Host": sys.argv[1]})
try:
    with urllib.request.urlopen(req, timeout=10) as resp:
        print(resp.status, resp.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
"""


def _exec_in(instance: Instance, *args: str) -> str:
    result = subprocess.run(["runc", "--root", "/run/noops/runc", "exec", instance.id, *args],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_egress_carries_the_instance_svid_to_the_gateway(
        noops_settings: Settings, tmp_path: Path, ca: CertificateAuthority, gateway: UpstreamTLS,
        flask_image: str, unique: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="noops-egress-", dir="/run"))
    workload = _WorkloadSocket(ca, folder / "gateway.sock")
    mgr = make_manager(noops_settings, tmp_path, ca, gateway_socket=workload.path)
    instance = mgr.start(InstanceSpec(f"e{unique}", 1, "web", flask_image, grace_s=5))
    try:
        _wait_ready(instance, gateway)
        out = _exec_in(instance, "python3", "-c", _FETCH, "other.localhost")
        status, _, body = out.partition(" ")
        assert status == "200", out
        assert json.loads(body) == {"peer": f"spiffe://{TD}/app/e{unique}/web",
                                    "host": "other.localhost"}
        assert workload.seen[-1]["peer"] == instance.spiffe_id
        assert workload.errors == []
        # the gateway gone: the app gets a 502 that says why, not a hang
        workload.close()
        workload.path.unlink()
        out = _exec_in(instance, "python3", "-c", _FETCH, "other.localhost")
        assert out.startswith("502 noops egress: the gateway is not reachable"), out
    finally:
        workload.close()
        mgr.stop(instance, wait_s=10)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def test_egress_refuses_a_workload_socket_that_is_not_the_gateway(
        noops_settings: Settings, tmp_path: Path, ca: CertificateAuthority, gateway: UpstreamTLS,
        flask_image: str, unique: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="noops-egress-", dir="/run"))
    impostor = _WorkloadSocket(ca, folder / "gateway.sock")
    impostor.ctx = ca.server_ssl_context(ca.issue_svid("impostor", "web"))
    mgr = make_manager(noops_settings, tmp_path, ca, gateway_socket=impostor.path)
    instance = mgr.start(InstanceSpec(f"i{unique}", 1, "web", flask_image, grace_s=5))
    try:
        _wait_ready(instance, gateway)
        out = _exec_in(instance, "python3", "-c", _FETCH, "other.localhost")
        assert out.startswith("502 noops egress: the workload socket is not spiffe://"), out
        # the request never reached the impostor: the monitor hung up after the handshake
        assert all(s["host"] != "other.localhost" for s in impostor.seen)
        env = _exec_in(instance, "sh", "-c", "echo $NOOPS_GATEWAY_URL")
        assert env == "http://127.0.0.1:15001"
    finally:
        impostor.close()
        mgr.stop(instance, wait_s=10)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def test_instances_need_an_identity(noops_settings: Settings, tmp_path: Path,
                                    flask_image: str) -> None:
    from noops.errors import ContainerError
    from noops.oci.bundle import Runc
    from noops.oci.store import ImageStore

    bare = InstanceManager(noops_settings.home, ImageStore(noops_settings.home / "images"), Runc(),
                           run_root=Path("/run/noops-tests") / tmp_path.name / "bare")
    with pytest.raises(ContainerError, match="workload certificates"):
        bare.start(InstanceSpec("x", 1, "web", flask_image))
