"""``python -m noops.console`` as a process: HTTPS on a Unix socket that only the gateway's
client certificate gets through, a clear page when the platform API is down, and POSTs that
only the console's own pages can make. No platform needed: every check happens before the API."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from helpers import free_port, wait_http
from noops.gate.pki import CertificateAuthority

pytestmark = pytest.mark.console


def _start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "noops.console", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()
    return err.decode()


@pytest.fixture
def no_api_console(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = _start("--api-socket", str(tmp_path / "missing.sock"), "--listen", f"127.0.0.1:{port}")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        assert "Traceback" not in _stop(proc)


def test_a_down_platform_gets_a_page_that_says_what_to_do(no_api_console: str) -> None:
    resp = httpx.get(no_api_console + "/")
    assert resp.status_code == 503
    assert "does not answer" in resp.text and "noops up" in resp.text
    assert resp.headers["content-security-policy"].startswith("default-src 'self'")
    assert httpx.get(no_api_console + "/static/vendor/htmx-LICENSE.txt").status_code == 200


def test_rollback_only_from_the_consoles_own_pages(no_api_console: str) -> None:
    url = no_api_console + "/apps/shop/rollback"
    plain_form = httpx.post(url, data={"version": "1"})
    assert plain_form.status_code == 400
    assert "from the console&#39;s own page" in plain_form.text
    cross_site = httpx.post(url, data={"version": "1"},
                            headers={"HX-Request": "true", "Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 400
    # a same-origin htmx request gets past the check and reaches the (missing) platform API
    same = httpx.post(url, data={"version": "1"}, headers={"HX-Request": "true"})
    assert same.status_code == 503 and "does not answer" in same.text


def test_bad_flags_are_refused_with_a_message(tmp_path: Path) -> None:
    for args, message in ((["--listen", "nowhere"], "use unix:PATH or HOST:PORT"),
                          (["--client-ca", str(tmp_path / "ca.pem")], "needs --tls-cert"),
                          (["--tls-cert", str(tmp_path / "c.pem")], "go together")):
        result = subprocess.run([sys.executable, "-m", "noops.console", "--home", str(tmp_path),
                                 *args], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def served_serial(sock: Path, ctx: ssl.SSLContext) -> int:
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(str(sock))
        with ctx.wrap_socket(raw, server_hostname="console.localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_https_on_a_unix_socket_admits_only_the_gateway(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    first = ca.issue_svid("console", "web")
    cert, key = first.write(tmp_path, "console")
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(ca.export_ca_bundle())
    gateway, other = ca.issue_gateway_identity(), ca.issue_svid("shop", "web")
    sock = tmp_path / "console.sock"
    proc = _start("--api-socket", str(tmp_path / "missing.sock"), "--listen", f"unix:{sock}",
                  "--tls-cert", str(cert), "--tls-key", str(key), "--client-ca", str(bundle),
                  "--peer-id", gateway.spiffe_id or "")

    def get(ctx: ssl.SSLContext) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(sock), verify=ctx)
        with httpx.Client(transport=transport, base_url="https://console.localhost",
                          timeout=10) as client:
            return client.get("/healthz")

    try:
        deadline = time.monotonic() + 30
        while True:  # listening (a raw probe: nothing of it is left open)
            with socket.socket(socket.AF_UNIX) as probe:
                if probe.connect_ex(str(sock)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "console did not start"
            time.sleep(0.05)
        assert sock.stat().st_mode & 0o777 == 0o600
        ok = get(ca.client_ssl_context(gateway))
        assert (ok.status_code, ok.text) == (200, "ok")
        for ctx in (ca.client_ssl_context(other), ca.client_ssl_context(None)):
            with pytest.raises(httpx.HTTPError):
                get(ctx)
        # the SVID is renewed in place: the next handshake presents the new certificate
        assert served_serial(sock, ca.client_ssl_context(gateway)) == first.serial
        renewed = ca.issue_svid("console", "web")
        renewed.write(tmp_path, "console")
        assert served_serial(sock, ca.client_ssl_context(gateway)) == renewed.serial
        assert get(ca.client_ssl_context(gateway)).status_code == 200
    finally:
        assert "Traceback" not in _stop(proc)


def test_a_failing_subsystem_is_named_on_the_page_not_hidden(tmp_path: Path) -> None:
    """An optional read that the API serves but fails (503) leaves an empty state *and* says
    so; a route the platform does not serve (404) is a plain empty state."""
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def apps(_: object) -> JSONResponse:
        return JSONResponse([{"name": "shop", "release": None, "instances": 0, "ready": 0}])

    async def broken(_: object) -> JSONResponse:
        return JSONResponse({"error": "telemetry store: disk I/O error", "kind": "StoreError"},
                            status_code=503)

    sock = tmp_path / "api.sock"
    server = uvicorn.Server(uvicorn.Config(
        Starlette(routes=[Route("/api/apps", apps), Route("/api/apm/services", broken)]),
        uds=str(sock), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    port = free_port()
    proc = _start("--api-socket", str(sock), "--listen", f"127.0.0.1:{port}")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30)
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and "shop" in page.text
        assert "Part of this page is missing" in page.text
        assert "telemetry store: disk I/O error" in page.text
        assert page.text.count("<li>") == 1  # alerts and probes (404: not served) are not problems
    finally:
        assert "Traceback" not in _stop(proc)
        server.should_exit = True
        thread.join(15)


def test_the_console_ends_with_the_daemon_that_started_it(tmp_path: Path) -> None:
    """A daemon killed with SIGKILL cannot stop its console: the console stops by itself."""
    port = free_port()
    starter = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-m', 'noops.console', '--api-socket', sys.argv[1],"
        " '--listen', '127.0.0.1:' + sys.argv[2], '--parent-pid', str(os.getpid())])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"), str(tmp_path / "api.sock"), str(port)],
        stdout=subprocess.PIPE, text=True)
    assert starter.stdout is not None
    console_pid = int(starter.stdout.readline())
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30)
        starter.kill()
        starter.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(console_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the console outlived the process that started it")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        starter.kill()
        starter.wait(10)
        starter.stdout.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(console_pid, signal.SIGKILL)
