"""WebSocket upgrades become tunnels; close_tunnels() revokes them."""

from __future__ import annotations

import socket

import pytest
import websockets.exceptions
import websockets.sync.client
from gate_harness import raw_exchange, status_of

pytestmark = pytest.mark.gate


def ws_connect(port: int, host: str, path: str = "/room") -> websockets.sync.client.ClientConnection:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return websockets.sync.client.connect(f"ws://{host}:{port}{path}", sock=sock, proxy=None, open_timeout=5)


def test_websocket_echo_and_close_tunnels(registry, ws_upstream, start_proxy):
    ws = ws_upstream("ws")
    registry.set("chat", ["chat.localhost"], [ws.endpoint("chat")])
    proxy = start_proxy()
    with ws_connect(proxy.port, "chat.localhost") as conn, ws_connect(proxy.port, "chat.localhost") as other:
        conn.send("hello")
        assert conn.recv(timeout=5) == "hello"
        big = bytes(range(256)) * 4000  # 1 MB in one frame, both ways
        conn.send(big)
        assert conn.recv(timeout=5) == big
        other.send("still here")
        assert other.recv(timeout=5) == "still here"

        tunnels = proxy.call(proxy.door.tunnels)
        assert len(tunnels) == 2
        assert {t.app for t in tunnels} == {"chat"} and tunnels[0].endpoint_id == "chat/ws"
        assert tunnels[0].client == "127.0.0.1" and tunnels[0].host == "chat.localhost"
        assert proxy.stats()["tunnels_open"] == 2

        assert proxy.call(lambda: proxy.door.close_tunnels(lambda t: t.app == "other")) == 0
        first = tunnels[0].request_id
        assert proxy.call(lambda: proxy.door.close_tunnels(lambda t: t.request_id == first)) == 1
        closed, alive = conn, other  # tunnels() lists the oldest first: conn's
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            closed.recv(timeout=5)
        alive.send("ping")
        assert alive.recv(timeout=5) == "ping"
        assert proxy.call(lambda: proxy.door.close_tunnels(lambda t: True)) == 1
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            alive.recv(timeout=5)
    assert proxy.stats()["tunnels_open"] == 0


def test_client_closing_ends_the_tunnel(registry, ws_upstream, start_proxy):
    ws = ws_upstream("ws")
    registry.set("chat", ["chat.localhost"], [ws.endpoint("chat")])
    proxy = start_proxy()
    with ws_connect(proxy.port, "chat.localhost") as conn:
        conn.send("x")
        assert conn.recv(timeout=5) == "x"
    deadline_ok = False
    for _ in range(200):
        if proxy.stats()["tunnels_open"] == 0:
            deadline_ok = True
            break
        import time

        time.sleep(0.01)
    assert deadline_ok


def test_upgrade_refused_by_the_app_is_a_plain_response(registry, upstream, start_proxy):
    a = upstream("a")
    registry.set("a", ["a.localhost"], [a.endpoint("a")])
    proxy = start_proxy()
    response = raw_exchange(proxy.port, b"GET /echo-head HTTP/1.1\r\nHost: a.localhost\r\n"
                                        b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                        b"Sec-WebSocket-Version: 13\r\n"
                                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert status_of(response) == 200 and b"Connection: close" in response
    forwarded = response.split(b"\r\n\r\n", 1)[1]
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in forwarded
    assert b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" in forwarded
    assert proxy.stats()["tunnels_total"] == 0


def test_websocket_to_unknown_host_is_404(registry, start_proxy):
    proxy = start_proxy()
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        ws_connect(proxy.port, "nobody.localhost")
    assert info.value.response.status_code == 404
