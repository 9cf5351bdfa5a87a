"""HTTPS at the front door with the generated localhost certificate, verified by the client."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import stat

import pytest
import websockets.sync.client

from noops.gate import localhost_certificate, server_context

pytestmark = pytest.mark.gate


@pytest.fixture
def cert(tmp_path):
    return localhost_certificate(tmp_path / "tls", extra_hosts=["a.localhost"])


@pytest.fixture
def tls_proxy(registry, upstream, start_proxy, cert):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    return start_proxy(tls=server_context(*cert))


def client_context(cert_path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert_path))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def test_certificate_is_generated_once_with_a_private_key(tmp_path, cert):
    cert_path, key_path = cert
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "tls").st_mode) == 0o700
    assert b"BEGIN PRIVATE KEY" in key_path.read_bytes()
    before = cert_path.read_bytes()
    assert localhost_certificate(tmp_path / "tls", extra_hosts=["a.localhost"]) == cert
    assert cert_path.read_bytes() == before  # reused
    localhost_certificate(tmp_path / "tls", extra_hosts=["b.localhost"])
    assert cert_path.read_bytes() != before  # a missing name means a new certificate


def test_https_with_the_generated_certificate_verified(tls_proxy, cert):
    cert_path, _ = cert
    conn = http.client.HTTPSConnection("127.0.0.1", tls_proxy.port, context=client_context(cert_path),
                                       timeout=5)
    try:
        for _ in range(3):  # kept alive over TLS
            conn.request("GET", "/echo-head", headers={"Host": "a.localhost"})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            assert b"X-Forwarded-Proto: https\r\n" in body
        assert conn.sock.version() == "TLSv1.3"
        assert conn.sock.selected_alpn_protocol() == "http/1.1"
    finally:
        conn.close()


@pytest.mark.parametrize("name", ["localhost", "a.localhost", "127.0.0.1"])
def test_server_names_verify(tls_proxy, cert, name):
    ctx = client_context(cert[0])
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_wildcard_localhost_does_not_verify_in_openssl(tls_proxy, cert):
    """Documented limitation: OpenSSL refuses ``*.localhost`` for ``other.localhost`` (one label
    after the wildcard); app names must be listed (``extra_hosts``)."""
    ctx = client_context(cert[0])
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname="other.localhost")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_below_1_2_is_refused(tls_proxy, cert):
    ctx = client_context(cert[0])
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # so the refusal is the server's, not the client's
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="localhost")


def test_untrusting_client_fails(tls_proxy):
    ctx = ssl.create_default_context()  # system CAs only
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname="localhost")


def test_websocket_over_tls(registry, ws_upstream, start_proxy, cert):
    ws = ws_upstream("ws")
    registry.set("a", ["a.localhost"], [ws.endpoint("a")])
    proxy = start_proxy(tls=server_context(*cert))
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    with websockets.sync.client.connect(f"wss://a.localhost:{proxy.port}/", sock=sock, proxy=None,
                                        ssl=client_context(cert[0]), open_timeout=5) as conn:
        conn.send("over tls")
        assert conn.recv(timeout=5) == "over tls"
        assert proxy.call(lambda: proxy.door.close_tunnels(lambda t: t.app == "a")) == 1
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            conn.recv(timeout=5)
