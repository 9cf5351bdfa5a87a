"""Instances: one runc container per instance, in its own network namespace, behind a monitor.

Each instance gets a read-only root filesystem (the image's shared, once-unpacked layers under
overlayfs; writes go nowhere the app can see: the root is mounted read-only in the container), a
private ``/tmp``, the image's non-root user, memory/CPU/pids limits, and a network namespace with
only loopback. Its monitor (:mod:`noops.runtime.monitor`) owns the Unix socket that bridges into
that namespace and the instance's log file. Logs live under ``$NOOPS_HOME/logs/<app>/`` and are
kept across deploys; runtime state lives under ``/run/noops/instances/<id>/``.

Every instance has a workload identity (:mod:`noops.runtime.identity`): an SVID for
``spiffe://<td>/app/<app>/<process>`` issued at start and renewed at half-life by
:meth:`InstanceManager.renew_svids`. The monitor serves the instance socket over mTLS with it and
lets in only the gateway; the app itself speaks plain HTTP on loopback inside its namespace, and
reaches other apps through the monitor's egress port (``NOOPS_GATEWAY_URL``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from noops.errors import ContainerError
from noops.oci.bundle import ContainerSpec, Runc, write_config
from noops.oci.image import Image
from noops.oci.store import ImageStore
from noops.oci.unpack import LayerCache, mount_rootfs, unmount
from noops.runtime import identity, netns
from noops.runtime.identity import SvidIssuer
from noops.runtime.local import image_user
from noops.runtime.monitor import MonitorSpec, read_status

__all__ = ["Instance", "InstanceManager", "InstanceSpec"]

RUN_ROOT = Path("/run/noops/instances")
EGRESS_PORT = 15001  # Istio's outbound port: where apps reach other apps (NOOPS_GATEWAY_URL)
OTLP_PORT = 4318  # the OTLP/HTTP default: where the app's OpenTelemetry SDK exports


def telemetry_env(spec: InstanceSpec, instance_id: str, environment: str) -> dict[str, str]:
    """The OpenTelemetry SDK environment of one instance, user settings taken into account.

    Every ``OTEL_*`` variable the user set (config vars or ``[env]`` in ``noops.toml``, i.e.
    ``spec.env``) is kept as is; the platform fills in the rest. ``OTEL_RESOURCE_ATTRIBUTES``
    is merged key by key (the user's keys win). An app that opted out gets only
    ``OTEL_SDK_DISABLED=true`` (and none of the exporter settings; the instance's environment
    keeps no ``OTEL_*`` variable of the image either, only the user's).
    """
    if not spec.telemetry:
        return {"OTEL_SDK_DISABLED": "true"}
    # service.instance.id is also in noops.instance.id: SDKs replace the former with a UUID per
    # process after a fork (gunicorn workers), the latter always names the noops instance
    resource = {"service.version": f"v{spec.release}", "deployment.environment.name": environment,
                "service.instance.id": instance_id, "noops.instance.id": instance_id,
                "noops.process": spec.process_type}
    user_resource = spec.env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    for pair in user_resource.split(","):
        key = pair.partition("=")[0].strip()
        resource.pop(key, None)
    merged = ",".join(p for p in [user_resource.strip(" ,"),
                                  ",".join(f"{k}={v}" for k, v in resource.items())] if p)
    platform = {
        "OTEL_SERVICE_NAME": spec.app,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{OTLP_PORT}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
    }
    out = {k: v for k, v in platform.items() if k not in spec.env}
    out["OTEL_RESOURCE_ATTRIBUTES"] = merged
    return out


@dataclass(frozen=True)
class InstanceSpec:
    app: str
    release: int
    process_type: str
    image_digest: str
    env: dict[str, str] = field(default_factory=dict)
    memory_bytes: int = 512 * 1024 * 1024
    cpu_millis: int = 1000
    port: int = 8080
    grace_s: float = 30.0
    telemetry: bool = True
    """False when the app opted out (``[telemetry] enabled = false``): ``OTEL_SDK_DISABLED``."""


@dataclass
class Instance:
    id: str
    spec: InstanceSpec
    socket_path: str
    log_path: str
    dir: str
    started_at: float
    monitor_pid: int | None = None
    spiffe_id: str = ""
    """The SPIFFE ID the instance socket presents; the gateway pins it (routes.json)."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "spec": asdict(self.spec), "socket_path": self.socket_path,
                "log_path": self.log_path, "dir": self.dir, "started_at": self.started_at,
                "monitor_pid": self.monitor_pid, "spiffe_id": self.spiffe_id}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instance:
        return cls(data["id"], InstanceSpec(**data["spec"]), data["socket_path"],
                   data["log_path"], data["dir"], data["started_at"], data.get("monitor_pid"),
                   data.get("spiffe_id", ""))

    def status(self) -> dict[str, Any]:
        return read_status(Path(self.dir) / "monitor.json")

    def alive(self) -> bool:
        pid = self.monitor_pid
        if not pid:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return self.status().get("state") != "exited"


class InstanceManager:
    """Starts, stops and finds instances of one ``$NOOPS_HOME``.

    ``identity`` issues the instances' SVIDs (``svid_ttl_s`` seconds each); without one,
    :meth:`start` refuses (an instance socket without mTLS would be an open door), but stopping
    and reaping work. ``gateway_socket`` is the front door's workload socket the egress dials
    (default ``$NOOPS_HOME/run/gateway.sock``); ``egress_port`` 0 turns egress off.
    ``otlp_socket`` is the telemetry receiver the monitor forwards ``127.0.0.1:4318`` to
    (default ``$NOOPS_HOME/run/otlp.sock``); ``environment`` becomes every instance's
    ``deployment.environment.name`` (see :func:`telemetry_env`).
    """

    def __init__(self, home: Path, store: ImageStore, runc: Runc,
                 run_root: Path | None = None, *, identity: SvidIssuer | None = None,
                 svid_ttl_s: int = 3600, gateway_socket: Path | None = None,
                 egress_port: int = EGRESS_PORT, otlp_socket: Path | None = None,
                 environment: str = "production") -> None:
        self.home, self.store, self.runc = home, store, runc
        self.otlp_socket = otlp_socket or home / "run" / "otlp.sock"
        self.environment = environment
        self.identity, self.svid_ttl_s = identity, svid_ttl_s
        self.gateway_socket = gateway_socket or home / "run" / "gateway.sock"
        self.egress_port = egress_port
        self.layers = LayerCache(home / "layers", store)
        # one runtime directory per home, so two homes (a user's, the tests') never adopt or
        # reap each other's instances
        home_key = hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:10]
        self.run_root = run_root or RUN_ROOT / home_key
        self.run_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.run_root.chmod(0o700)

    def start(self, spec: InstanceSpec) -> Instance:
        if self.identity is None:
            raise ContainerError("instances need workload certificates: give the InstanceManager "
                                 "the platform CA (identity=...), as `noops up` does.")
        if self.egress_port and spec.port == self.egress_port:
            raise ContainerError(f"port {spec.port} is the egress port inside every instance; "
                                 "let the app listen on $PORT with another value.")
        if spec.telemetry and spec.port == OTLP_PORT:
            raise ContainerError(f"port {spec.port} is the telemetry port inside every instance; "
                                 "let the app listen on $PORT with another value.")
        issuer = self.identity
        image = self.store.image(spec.image_digest)
        iid = f"{spec.app}-{spec.process_type}-{uuid.uuid4().hex[:8]}"
        idir = self.run_root / iid
        # 0700: the bundle and instance.json carry the app's env, secrets included
        idir.mkdir(mode=0o700, parents=True)
        log_dir = self.home / "logs" / spec.app
        log_dir.mkdir(parents=True, exist_ok=True)
        instance = Instance(iid, spec, str(idir / "app.sock"),
                            str(log_dir / f"{spec.process_type}-{iid}.log"), str(idir), time.time())
        try:
            ns = f"noops-{uuid.uuid4().hex[:12]}"
            netns.create(ns)
            (idir / "netns").write_text(ns)
            rootfs = idir / "rootfs"
            mount_rootfs(self.layers.ensure(image), rootfs, upper=idir / "upper")
            write_config(idir / "bundle", rootfs, self._container_spec(image, spec, ns, iid))
            svid = identity.write_svid(idir, issuer, spec.app, spec.process_type, self.svid_ttl_s)
            instance.spiffe_id = svid.spiffe_id
            gateway = identity.gateway_id(issuer.trust_domain)
            monitor = MonitorSpec(iid, str(idir / "bundle"), self.runc.binary,
                                  str(self.runc.state_root), ns, instance.socket_path, spec.port,
                                  instance.log_path, grace_s=spec.grace_s, tls_cert=svid.cert,
                                  tls_key=svid.key, tls_ca=svid.bundle, allowed_peers=[gateway],
                                  egress_port=self.egress_port,
                                  gateway_socket=str(self.gateway_socket) if self.egress_port else "",
                                  gateway_id=gateway, otlp_port=OTLP_PORT,
                                  otlp_socket=str(self.otlp_socket) if spec.telemetry else "")
            monitor.save(idir / "monitor.json")
            _write_private(idir / "instance.json", json.dumps(instance.to_json()))
            with open(idir / "monitor.log", "ab") as monitor_log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "noops.runtime.monitor", str(idir / "monitor.json")],
                    stdin=subprocess.DEVNULL, stdout=monitor_log, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True,
                )
            instance.monitor_pid = proc.pid
            _write_private(idir / "instance.json", json.dumps(instance.to_json()))
            # the monitor outlives us; the kernel reaps it once we stop waiting for it
            _detach(proc)
        except BaseException:
            self._cleanup(idir)
            raise
        return instance

    def _container_spec(self, image: Image, spec: InstanceSpec, ns: str,
                        instance_id: str) -> ContainerSpec:
        cfg = image.config.get("config") or {}
        args = list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
        if spec.process_type != "web" or not args:
            args = [f"/cnb/process/{spec.process_type}"]
        env = dict(image.env)
        if not spec.telemetry:  # opted out: no OTLP settings from the image either
            env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
        env.update(spec.env)
        env.update(telemetry_env(spec, instance_id, self.environment))
        env.update({"PORT": str(spec.port), "HOME": "/tmp"})
        if self.egress_port:
            env["NOOPS_GATEWAY_URL"] = f"http://127.0.0.1:{self.egress_port}"
        uid, gid = image_user(image)
        return ContainerSpec(args=args, env=env, cwd=cfg.get("WorkingDir") or "/", uid=uid,
                             gid=gid, readonly_rootfs=True, netns_path=str(netns.path(ns)),
                             hostname=spec.app[:63], memory_bytes=spec.memory_bytes,
                             cpu_millis=spec.cpu_millis)

    def stop(self, instance: Instance, *, wait_s: float | None = None) -> dict[str, Any]:
        """SIGTERM → (grace) → SIGKILL through the monitor; then clean up. Returns the status."""
        if instance.monitor_pid and instance.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(instance.monitor_pid, signal.SIGTERM)
        deadline = time.monotonic() + (wait_s if wait_s is not None else instance.spec.grace_s + 10)
        while instance.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if instance.alive() and instance.monitor_pid:
            self.runc.kill(instance.id, "KILL")
            time.sleep(0.2)
        status = instance.status()
        self._cleanup(Path(instance.dir))
        return status

    def _cleanup(self, idir: Path) -> None:
        self.runc.delete(idir.name)
        self._keep_monitor_log(idir)
        unmount(idir / "rootfs")
        ns_file = idir / "netns"
        if ns_file.exists():
            netns.delete(ns_file.read_text().strip())
        shutil.rmtree(idir, ignore_errors=True)

    @staticmethod
    def _keep_monitor_log(idir: Path) -> None:
        """The monitor's own errors (rare) go to the app's log, so `noops logs` shows them."""
        monitor_log, spec = idir / "monitor.log", idir / "instance.json"
        try:
            text = monitor_log.read_text(errors="replace").strip()
            app_log = json.loads(spec.read_text())["log_path"]
        except (OSError, ValueError, KeyError):
            return
        if text:
            with open(app_log, "a") as fh:
                for line in text.splitlines():
                    fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}.000Z "
                             f"noops-monitor {line}\n")

    def existing(self) -> list[Instance]:
        """Instances found on disk (after a daemon restart): the caller decides to adopt or reap."""
        found = []
        for path in sorted(self.run_root.glob("*/instance.json")):
            try:
                found.append(Instance.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found

    def renew_svids(self, instances: list[Instance], *, now: float | None = None) -> int:
        """Renew the SVID of every given live instance past half-life; return how many.

        The monitor notices the new files within a second and uses them for new handshakes;
        open connections keep the certificate they were made with. An instance that goes away
        meanwhile is skipped.
        """
        if self.identity is None:
            return 0
        moment = time.time() if now is None else now
        renewed = 0
        for inst in instances:
            idir = Path(inst.dir)
            if not idir.is_dir() or not identity.renewal_due(identity.read_record(idir),
                                                              self.svid_ttl_s, moment):
                continue
            try:
                identity.write_svid(idir, self.identity, inst.spec.app, inst.spec.process_type,
                                    self.svid_ttl_s)
            except FileNotFoundError:  # stopped and cleaned up while we issued
                continue
            renewed += 1
        return renewed

    def reap(self, instance: Instance) -> None:
        """Remove what is left of an exited instance (mounts, namespace, runtime dir)."""
        if instance.alive():
            raise ContainerError(f"instance {instance.id} is still running; stop it first")
        self._cleanup(Path(instance.dir))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _detach(proc: subprocess.Popen[bytes]) -> None:
    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{proc.pid}").start()
