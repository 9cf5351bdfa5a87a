"""A real platform for tests: ``noops up -d`` on the test home, front door on a free port."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import free_port


@dataclass
class Daemon:
    home: Path
    port: int
    env: dict[str, str]
    otlp_port: int = 0
    """The OTLP receiver's TCP port on 127.0.0.1 (also ``GET /metrics``); its gRPC port is
    ``env["NOOPS_OTLP_GRPC_PORT"]``."""

    def noops(self, *args: str, check: bool = True, timeout: float = 600,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "noops", "--home", str(self.home), *args],
                                capture_output=True, text=True, env=self.env, timeout=timeout,
                                input=input, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"noops {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.home / "noops.sock"))
        with httpx.Client(transport=transport, base_url="http://noops", timeout=600) as client:
            return client.request(method, path, **kwargs)

    @property
    def ca(self) -> ssl.SSLContext:
        """Trusts only the certificate noops generated for its front door."""
        return ssl.create_default_context(cafile=str(self.home / "tls" / "ca.crt"))

    def get_by_name(self, app: str, path: str = "/") -> httpx.Response:
        """Through the front door by host name (SNI ``APP.localhost``), as a browser would."""
        import socket

        real = socket.getaddrinfo

        def resolve(host, *args, **kwargs):  # type: ignore[no-untyped-def]
            return real("127.0.0.1" if host.endswith(".localhost") else host, *args, **kwargs)

        socket.getaddrinfo = resolve  # type: ignore[assignment]
        try:
            with httpx.Client(verify=self.ca, timeout=10) as client:
                return client.get(f"https://{app}.localhost:{self.port}{path}")
        finally:
            socket.getaddrinfo = real  # type: ignore[assignment]

    def get(self, app: str, path: str = "/") -> httpx.Response:
        with httpx.Client(verify=self.ca, timeout=10) as client:
            return client.get(f"https://127.0.0.1:{self.port}{path}",
                              headers={"Host": f"{app}.localhost"})

    def start(self) -> None:
        self.noops("up", "-d")

    def down_with_apps(self) -> None:
        """``noops down --apps``, then check that it left no instance of this home behind:
        no runtime directory, no runc container."""
        import hashlib
        import json as _json

        key = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:10]
        run_root = Path("/run/noops/instances", key)
        before = {p.parent.name for p in run_root.glob("*/instance.json")}
        self.noops("down", "--apps", check=False)
        left = sorted(p.parent.name for p in run_root.glob("*/instance.json"))
        listed = subprocess.run(["runc", "--root", "/run/noops/runc", "list", "-f", "json"],
                                capture_output=True, text=True, check=True).stdout
        running = sorted({c["id"] for c in _json.loads(listed) or []} & before)
        assert not left and not running, f"noops down --apps left {left} / {running} behind"

    def kill9(self) -> None:
        """``kill -9`` the daemon and wait until it is gone (its sockets closed)."""
        from noops.daemon import process_running

        pid = int((self.home / "run" / "noops.pid").read_text())
        os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while process_running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _platform(noops_home: Path, home: Path, **settings: str) -> Daemon:
    """Start ``noops up -d`` on ``home`` (sharing the machine's test image store); ``settings``
    become ``NOOPS_<NAME>`` environment variables."""
    for shared in ("images", "layers", "cache"):
        (noops_home / shared).mkdir(parents=True, exist_ok=True)
        (home / shared).symlink_to(noops_home / shared)
    port = free_port()
    env = dict(os.environ, NOOPS_HOME=str(home), NOOPS_FRONTDOOR_PORT=str(port),
               NOOPS_RESTART_BACKOFF_S="1", NOOPS_OTLP_PORT=str(free_port()),
               NOOPS_OTLP_GRPC_PORT=str(free_port()))
    env.update({f"NOOPS_{k.upper()}": v for k, v in settings.items()})
    env.pop("SOURCE_DATE_EPOCH", None)
    d = Daemon(home, port, env, int(env["NOOPS_OTLP_PORT"]))
    # These tests exercise the platform (deploys, health, rollouts); the gateway's enforcement is
    # tested on its own in tests/integration/zerotrust. Anonymous access, still through the
    # gateway (policy, audit, assertion, mTLS to every instance):
    policy = home / "open-policy.toml"
    policy.write_text('[[route]]\nid = "open"\nhost = "*.localhost"\nauthenticated = false\n'
                      'allow_spiffe = ["spiffe://noops.local/app/noops/probe"]\n')
    d.noops("policy", "apply", str(policy))
    d.start()
    return d


@pytest.fixture(scope="session")
def daemon(noops_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A platform with its own state, logs and certificates for this test session, sharing the
    machine's test image store (stacks, layers, caches) so nothing is built twice."""
    d = _platform(noops_home, tmp_path_factory.mktemp("platform-home"))
    yield d
    d.down_with_apps()


@pytest.fixture
def platform_with(noops_home: Path, tmp_path_factory: pytest.TempPathFactory,
                  ) -> Iterator[Callable[..., Daemon]]:
    """``platform_with(svid_ttl_s="20")``: a platform of the test's own with other settings;
    stopped (apps too) when the test ends."""
    started: list[Daemon] = []

    def start(**settings: str) -> Daemon:
        started.append(_platform(noops_home, tmp_path_factory.mktemp("platform-home"),
                                 **settings))
        return started[-1]

    yield start
    for d in started:
        d.down_with_apps()
