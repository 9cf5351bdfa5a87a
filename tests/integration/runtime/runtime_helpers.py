"""Helpers for tests on real runc instances: an instance manager whose runtime files live
outside pytest's tmp dirs, and a client that talks to an instance socket the way the front door
does (mTLS as ``spiffe://noops.local/gateway``)."""

from __future__ import annotations

import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

from noops.gate.pki import CertificateAuthority
from noops.oci.bundle import Runc
from noops.oci.store import ImageStore
from noops.runtime.instances import InstanceManager
from noops.settings import Settings


def make_manager(noops_settings: Settings, tmp_path: Path, ca: CertificateAuthority,
                 **kwargs: Any) -> InstanceManager:
    store = ImageStore(noops_settings.home / "images")
    # runtime dirs (with overlay mounts) live outside pytest's tmp dirs: a mount left by a
    # crashed run must never make pytest's own clean-up fail
    run_root = Path("/run/noops-tests") / tmp_path.name / uuid.uuid4().hex[:8]
    return InstanceManager(noops_settings.home, store, Runc(), run_root=run_root, identity=ca,
                           **kwargs)


def tls_get(socket_path: str, ctx: ssl.SSLContext, path: str = "/",
            host: str = "app.localhost") -> tuple[int, bytes, bytes]:
    """``GET path`` over the instance socket with ``ctx``: (status, raw answer, server cert DER).

    Raises ConnectionError when the instance closed the connection without an HTTP answer, and
    ssl.SSLError when the handshake failed.
    """
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(socket_path)
        with ctx.wrap_socket(raw, server_hostname="instance.noops.internal") as tls:
            peer = tls.getpeercert(binary_form=True) or b""
            tls.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head = data.split(b"\r\n", 1)[0].split()
    if len(head) < 2:
        raise ConnectionError("the instance closed the connection (app not listening yet)")
    return int(head[1]), data, peer
