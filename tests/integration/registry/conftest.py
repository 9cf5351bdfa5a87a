"""A real registry for tests: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1.

Fixtures:

* ``registry`` — anonymous registry, filesystem storage in a tmp dir.
* ``basic_registry`` — the same with htpasswd (bcrypt) basic auth; ``.user`` / ``.password``.
* ``token_registry`` — bearer-token auth against :class:`TokenServer`, a small in-test token
  endpoint that signs ES256 JWTs with a self-signed certificate (the registry's rootcertbundle).
* ``start_registry(**options)`` — the factory behind them, for variants (``relativeurls=True``).
* ``store`` — an empty :class:`ImageStore`; ``make_image(store, name, files, labels)`` builds a
  two-layer image into it and tags it; ``skopeo(*args)`` runs skopeo.

Each server binds a free port, is polled on ``/v2/`` until it answers, and is stopped at teardown.
``RegistryServer.stop()`` / ``.start()`` restart it on the same storage (for outage tests).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from noops.oci.layer import LayerSpec, write_tar
from noops.oci.model import Descriptor
from noops.oci.store import ImageStore

REGISTRY_BIN = "/usr/bin/docker-registry"
SERVICE = "noops-test-registry"
ISSUER = "noops-test-issuer"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RegistryServer:
    """One docker-registry process; ``host`` is what goes in image references."""

    root: Path
    auth_yaml: str = ""
    relativeurls: bool = False
    port: int = field(default_factory=_free_port)
    user: str = ""
    password: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def log(self) -> Path:
        return self.root / "registry.log"

    def start(self) -> None:
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            "http:\n"
            f"  addr: 127.0.0.1:{self.port}\n"
            "  secret: noops-test-secret\n"
            f"  relativeurls: {'true' if self.relativeurls else 'false'}\n"
            + self.auth_yaml
        )
        log = open(self.log, "ab")  # noqa: SIM115 - the child process owns it
        self.proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://{self.host}/v2/", timeout=1).status_code in (200, 401):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def manifest_status(self, repo: str, tag: str) -> int:
        """HTTP status of GET /v2/<repo>/manifests/<tag> (anonymous registries only)."""
        return httpx.get(
            f"http://{self.host}/v2/{repo}/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).status_code


@pytest.fixture
def start_registry(tmp_path: Path) -> Iterator[Callable[..., RegistryServer]]:
    started: list[RegistryServer] = []

    def start(**options: Any) -> RegistryServer:
        root = tmp_path / f"registry-{len(started)}"
        root.mkdir()
        server = RegistryServer(root, **options)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def registry(start_registry: Callable[..., RegistryServer]) -> RegistryServer:
    return start_registry()


@pytest.fixture
def basic_registry(
    tmp_path: Path, start_registry: Callable[..., RegistryServer]
) -> RegistryServer:
    bcrypt = pytest.importorskip("bcrypt")
    user, password = "alice", secrets.token_urlsafe(12)
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4, prefix=b"2a")).decode()
    htpasswd.write_text(f"{user}:{hashed}\n")
    auth = f"auth:\n  htpasswd:\n    realm: noops-test\n    path: {htpasswd}\n"
    return start_registry(auth_yaml=auth, user=user, password=password)


# -- bearer tokens --------------------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A minimal token endpoint (distribution ``spec/auth/token.md``): grants a known user every
    scope it asks for and refuses everyone else. ``requests`` records (user, scopes) per call."""

    def __init__(self, root: Path, user: str, password: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.user, self.password = user, password
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "noops test token signer")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = root / "token-ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[tuple[str, list[str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlparse(req.path).query)
        scopes = [s for value in query.get("scope", []) for s in value.split()]
        user = ""
        auth = req.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            name, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            if (name, pw) == (self.user, self.password):
                user = name
        self.requests.append((user, scopes))
        if not user or query.get("service") != [SERVICE]:
            req.send_response(401)
            req.end_headers()
            return
        body = json.dumps({"token": self.token(user, scopes), "expires_in": 300}).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def token(self, user: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            kind, rest = scope.split(":", 1)
            name, actions = rest.rsplit(":", 1)
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        claims = {
            "iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
            "iat": now, "jti": secrets.token_hex(8), "access": access,
        }
        signing_input = ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims))
        signature = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(signature)  # JWS wants raw r || s, not DER
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TokenServer]:
    pytest.importorskip("cryptography")
    server = TokenServer(tmp_path, "bob", secrets.token_urlsafe(12))
    yield server
    server.close()


@pytest.fixture
def token_registry(
    token_server: TokenServer, start_registry: Callable[..., RegistryServer]
) -> RegistryServer:
    auth = (
        "auth:\n  token:\n"
        f"    realm: {token_server.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
        f"    rootcertbundle: {token_server.bundle}\n"
    )
    return start_registry(auth_yaml=auth, user=token_server.user, password=token_server.password)


# -- images ---------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def build_image(store: ImageStore, name: str, files: dict[str, bytes],
                labels: dict[str, str], *, arch: str = "amd64") -> Descriptor:
    """Two layers (a fixed base layer, then ``files``), tagged ``name`` in ``store``."""
    work = store.root.parent / f"tars-{secrets.token_hex(4)}"
    work.mkdir()
    base, app = LayerSpec(), LayerSpec()
    base.add_file("etc/os-release", b"ID=noops-test\n")
    for path, data in files.items():
        app.add_file(path, data)
    layers, diff_ids = [], []
    for i, spec in enumerate((base, app)):
        tar = write_tar(spec, work / f"{i}.tar")
        desc, _ = store.add_layer(tar, "gzip")
        layers.append(desc)
        diff_ids.append(tar.diff_id)
    shutil.rmtree(work)
    config = {
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {"Labels": labels},
    }
    manifest = store.write_image(config, layers)
    store.tag(name, manifest)
    return manifest


@pytest.fixture
def make_image() -> Callable[..., Descriptor]:
    return build_image


@pytest.fixture
def skopeo() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``skopeo ARGS...``; the result is returned, not checked."""
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed: run `make deps` (apt-get install -y skopeo)")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)

    return run
