"""``noops up``: the platform daemon, composed from the subsystems.

The daemon owns the supervisor (instances, health, restarts), the state store, and the HTTP API
on a Unix socket (``$NOOPS_HOME/noops.sock``, mode 0600) that the CLI and the console use. The
front door runs as its own process, reading the routes the daemon publishes to
``$NOOPS_HOME/run/routes.json``; instances run under their own monitors. So a crash or
``kill -9`` of the daemon stops nothing that serves traffic, and on its next start the daemon
re-adopts the running instances instead of starting duplicates.

The daemon also owns the platform CA (``$NOOPS_HOME/gate/ca``, created on first start, before
the front door): every instance gets an SVID from it, renewed at half-life by
:meth:`Platform.rotate_forever` (re-adopted instances too), and health probes dial instance
sockets over mTLS as ``spiffe://<td>/gateway``, exactly like the front door.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from noops.appspec import AppSpec, parse_manifest
from noops.errors import NoopsError, UsageError
from noops.gate.api import CertificateInfo
from noops.gate.mtls import UpstreamTLS, load_or_create_ca
from noops.gate.pep import GateFiles
from noops.observe.service import PatternCounter, Sample, Telemetry, otlp_socket
from noops.oci.bundle import Runc
from noops.oci.image import Image
from noops.oci.store import ImageStore
from noops.runtime.identity import SvidRecord, read_record
from noops.runtime.instances import InstanceManager, InstanceSpec
from noops.runtime.logship import InstanceInfo, LogShipper
from noops.runtime.rollout import DeployError, RolloutPlan, rollout
from noops.runtime.supervisor import Supervisor
from noops.runtime.usage import InstanceUsage, UsageSampler
from noops.settings import Settings
from noops.state import StateStore, open_state
from noops.state.model import Release, ReleaseStatus
from noops.system import CONSOLE_APP, GATEWAY_SERVICE, PROBE_ID, RESERVED_APPS, SIGN_IN_APP, SystemWorkloads

__all__ = ["Platform", "RoutesFile"]

log = logging.getLogger("noops.daemon")


class RoutesFile:
    """The route table the front door reads: replaced atomically on every change.

    Format: ``{"apps": {app: {"hosts": [...], "endpoints": [{"id", "socket_path", "ready",
    "draining", "release", "spiffe_id"}]}}, "generation": n}``; ``spiffe_id`` is what the
    instance's certificate must say (the front door pins it).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.apps: dict[str, dict[str, Any]] = {}
        self.generation = 0
        if path.exists():
            try:
                data = json.loads(path.read_text())
                self.apps, self.generation = dict(data.get("apps", {})), int(data.get("generation", 0))
            except (ValueError, OSError):
                self.apps = {}

    def publish(self, app: str, hosts: Sequence[str], endpoints: Sequence[dict[str, Any]]) -> None:
        self.apps[app] = {"hosts": list(hosts), "endpoints": list(endpoints)}
        self.publish_all()

    def remove(self, app: str) -> None:
        if self.apps.pop(app, None) is not None:
            self.publish_all()

    def wait_applied(self, timeout_s: float = 3.0) -> bool:
        """Wait until the front door acknowledges the current generation (False on timeout)."""
        ack = self.path.with_name("routes.applied")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if int(ack.read_text()) >= self.generation:
                    return True
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        return False

    def publish_all(self) -> None:
        self.generation += 1
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"apps": self.apps, "generation": self.generation}))
        os.replace(tmp, self.path)


@dataclass
class DeployResult:
    release: Release
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"app": self.release.app, "version": self.release.version,
                "image": self.release.image_ref, "digest": self.release.image_digest,
                "status": str(self.release.status), "seconds": round(self.seconds, 3)}


def release_json(r: Release) -> dict[str, Any]:
    return {"app": r.app, "version": r.version, "image": r.image_ref, "digest": r.image_digest,
            "config_version": r.config_version, "formation": dict(r.formation),
            "description": r.description, "status": str(r.status),
            "created_at": r.created_at.isoformat()}


class Platform:
    """Apps, releases, config and deploys on top of the supervisor and the state store."""

    def __init__(self, settings: Settings, *, state: StateStore | None = None,
                 backoff_s: float = 10.0, svid_ttl_s: int | None = None,
                 rotate_every_s: float | None = None) -> None:
        self.settings = settings
        home = settings.home
        self.store = ImageStore(home / "images")
        self.state = state or open_state(settings, home)
        self.ca = load_or_create_ca(ca_path(settings))
        ttl_s = int(svid_ttl_s or settings.get("svid_ttl_s"))
        if ttl_s < 10:
            raise UsageError(f"svid_ttl_s={ttl_s}: certificates need at least 10 s to be renewed "
                             "in time; use 3600 (the default) or more than 10.")
        # renewals are due at half-life: look several times per half-life, at least once a minute
        self.rotate_every_s = rotate_every_s or min(60.0, ttl_s / 10)
        self.gateway_tls = UpstreamTLS(self.ca, ttl_s=ttl_s)
        runc = Runc(settings.get("runc"))
        self.manager = InstanceManager(home, self.store, runc, identity=self.ca, svid_ttl_s=ttl_s,
                                       otlp_socket=otlp_socket(settings),
                                       environment=str(settings.get("environment")))
        self.routes = RoutesFile(home / "run" / "routes.json")
        self.supervisor = Supervisor(self.manager, self.routes, backoff_s=backoff_s,
                                     on_event=self._event, tls=self.gateway_tls)
        self._locks: dict[str, asyncio.Lock] = {}
        sampler = UsageSampler(runc.binary, runc.state_root)
        # the audit log is canonical JSON (sorted keys, no spaces): one outcome per decision
        self._decisions = PatternCounter(GateFiles(home / "gate").audit, rb'"outcome":"([a-z_]+)"')
        self.telemetry = Telemetry(
            settings,
            logs=LogShipper(home / "logs", home / "telemetry" / "log-offsets.json",
                            self._instance_infos),
            usage=lambda: sampler.sample(self._instance_usage()),
            platform_samples=self.platform_samples, senders=self._telemetry_sender)
        self.system = SystemWorkloads(home, self.ca, ttl_s=ttl_s)
        # the prober is a workload: its SVID opens the front door where the policy names it
        # (the default policy does, for every app); it trusts the front door's certificate
        probe = self.system.probe_identity()
        self.telemetry.probes.set_tls(client_cert=(probe.cert, probe.key),
                                      ca_file=home / "tls" / "ca.crt")

    def check_app_name(self, name: str) -> str:
        """``name`` unless the platform uses it (``console``, ``noops``, ``auth``, ``noops-gateway``)."""
        if name in RESERVED_APPS:
            raise UsageError(f"the app name {name!r} is reserved for the platform's own "
                             "workloads; choose another name")
        return name

    # -- telemetry -----------------------------------------------------------------------
    def _instance_infos(self) -> dict[str, InstanceInfo]:
        return {s.instance.id: InstanceInfo(s.app, s.process_type, s.release)
                for s in list(self.supervisor.slots.values()) if s.instance is not None}

    def _telemetry_sender(self, pid: int) -> dict[str, str] | None:
        """Who sends telemetry from the receiver socket's peer ``pid``: an instance's monitor
        (apps reach the receiver only through theirs) is that instance, whatever its SDK says."""
        for s in list(self.supervisor.slots.values()):
            if s.instance is not None and s.instance.monitor_pid == pid:
                return {"service.name": s.app, "noops.app": s.app,
                        "noops.instance.id": s.instance.id, "noops.process": s.process_type}
        try:  # the front door's own spans (noops.gate._tracing)
            if int((self.settings.home / "run" / "frontdoor.pid").read_text()) == pid:
                return {"service.name": GATEWAY_SERVICE}
        except (OSError, ValueError):
            pass
        return None

    def _instance_usage(self) -> list[InstanceUsage]:
        return [InstanceUsage(s.instance.id, s.app, s.process_type, s.release,
                              s.instance.started_at, s.ispec.cpu_millis, s.restarts)
                for s in list(self.supervisor.slots.values()) if s.instance is not None]

    def platform_samples(self) -> list[Sample]:
        """The daemon's own figures for ``GET /metrics``: instances by app and state, restarts,
        the gateway's decisions by outcome (from its audit log)."""
        out: list[Sample] = []
        by_state: dict[tuple[str, str], int] = {}
        restarts: dict[str, int] = {}
        for slot in list(self.supervisor.slots.values()):
            by_state[(slot.app, slot.state)] = by_state.get((slot.app, slot.state), 0) + 1
            restarts[slot.app] = restarts.get(slot.app, 0) + slot.restarts
        for (app, state), n in sorted(by_state.items()):
            out.append(("noops_instances", "gauge", "Supervised instances by app and state",
                        float(n), {"app": app, "state": state}))
        for app, n in sorted(restarts.items()):
            # a gauge: a new release starts its slots from 0 restarts
            out.append(("noops_instance_restarts", "gauge",
                        "Restarts of the app's current instance slots", float(n), {"app": app}))
        for outcome, n in sorted(self._decisions.counts().items()):
            out.append(("noops_gateway_decisions", "counter",
                        "Gateway decisions since the daemon started, by outcome", float(n),
                        {"outcome": outcome}))
        return out

    def issued_certificates(self) -> list[CertificateInfo]:
        """The certificates the CA issued that live outside its directory, for the access API:
        every supervised instance's SVID, the platform workloads' (prober, console) and the
        gateway identity the daemon's health probes present. Reads files; call it in a thread."""
        out: list[CertificateInfo] = []
        for slot in list(self.supervisor.slots.values()):
            inst = slot.instance
            record = read_record(Path(inst.dir)) if inst is not None else None
            if inst is not None and record is not None:
                out.append(_svid_info(inst.id, record, slot.app))
        for name, app in (("probe", PROBE_ID[0]), ("console", CONSOLE_APP)):
            record = read_record(self.system.root / name)
            if record is not None:
                out.append(_svid_info(name, record, app))
        tls = self.gateway_tls
        out.append(CertificateInfo("gateway", "gateway (health probes)", tls.spiffe_id, tls.serial,
                                   tls.not_after, None,
                                   tls.not_after - timedelta(seconds=tls.ttl_s)))
        return out

    def route_hosts(self) -> dict[str, list[str]]:
        """App -> the hosts the front door routes to it (the published route table)."""
        return {app: list(entry.get("hosts", [])) for app, entry in list(self.routes.apps.items())}

    def _event(self, app: str | None, kind: str, message: str, data: dict[str, Any]) -> None:
        try:
            self.state.add_event(app, kind, message, data)
        except NoopsError:
            log.exception("could not record event %s for %s", kind, app)

    def lock(self, app: str) -> asyncio.Lock:
        return self._locks.setdefault(app, asyncio.Lock())

    # -- deploys -------------------------------------------------------------------------
    def _spec_of(self, release: Release) -> AppSpec:
        return parse_manifest(dict(release.spec), f"release v{release.version} noops.toml")

    def _env(self, app: str, release: Release, spec: AppSpec) -> dict[str, str]:
        env = dict(spec.env)
        env.update(self.state.config(app, release.config_version))
        env.update(self.state.secrets(app, release.config_version))
        return env

    async def _roll(self, release: Release, started: float) -> DeployResult:
        spec = self._spec_of(release)
        plan = RolloutPlan(release.app, release.version, release.image_digest, spec,
                           dict(release.formation), self._env(release.app, release, spec))
        try:
            await rollout(self.supervisor, plan)
            if not await asyncio.to_thread(self.routes.wait_applied):
                log.warning("the front door did not confirm the routes of %s v%s in time",
                            release.app, release.version)
        except DeployError as exc:
            self.state.set_release_status(release.app, release.version, ReleaseStatus.FAILED)
            self._event(release.app, "deploy-failed", f"v{release.version} failed",
                        {"reason": str(exc)[:2000]})
            raise
        active = self.state.set_release_status(release.app, release.version, ReleaseStatus.ACTIVE)
        self._event(release.app, "deploy", f"v{release.version} is live ({release.description})",
                    {"version": release.version, "digest": release.image_digest})
        await asyncio.to_thread(self._observe_release, release, spec)
        return DeployResult(active, time.monotonic() - started)

    def _observe_release(self, release: Release, spec: AppSpec) -> None:
        """A deploy marker for the live release and, once per app, a default uptime probe of
        its web process through the front door. Telemetry never fails a deploy."""
        kind = _marker_kind(release.description)
        try:
            self.telemetry.markers.record(
                release.app, f"v{release.version}", kind,
                fingerprint=f"{release.app}:release:{release.version}",
                description=release.description,
                attributes={"digest": release.image_digest, "image": release.image_ref})
            if release.formation.get("web", 0) > 0:
                port = self.settings.get("frontdoor_port")
                self.telemetry.probes.ensure(
                    f"https://{release.app}.localhost:{port}{spec.health_path}",
                    name=f"{release.app} front door", app=release.app)
        except NoopsError:
            log.exception("could not record the release of %s v%s in telemetry", release.app,
                          release.version)

    def _spec_in_image(self, image: Image) -> AppSpec:
        """The ``noops.toml`` baked into an image's app layer (defaults when it has none)."""
        from noops.build.inspect import read_layer_file

        lifecycle = image.label_json("io.buildpacks.lifecycle.metadata") or {}
        for layer in lifecycle.get("app", []):
            data = read_layer_file(self.store, image, layer["sha"], "workspace/noops.toml")
            if data is not None:
                try:
                    raw = tomllib.loads(data.decode())
                except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                    raise UsageError(f"the image's noops.toml is not valid TOML: {exc}") from exc
                return parse_manifest(raw, "noops.toml in the image")
        return AppSpec()

    async def collect_garbage(self) -> dict[str, Any]:
        """Delete images and unpacked layers that no retained release pins (bounded disk)."""
        keep = self.state.pinned_digests()
        # blobs younger than 10 minutes may belong to a build still running: never taken
        removed, freed = await asyncio.to_thread(self.store.gc, keep, min_age_s=600.0)
        _, live_diffs = await asyncio.to_thread(self.store.reachable, keep)
        layers, layer_bytes = await asyncio.to_thread(self.manager.layers.gc, live_diffs)
        result = {"blobs_removed": len(removed), "bytes_freed": freed + layer_bytes,
                  "layers_removed": len(layers), "pinned": sorted(keep)}
        if removed or layers:
            self._event(None, "gc", f"freed {(freed + layer_bytes) / 1e6:.1f} MB", result)
        return result

    async def gc_forever(self, every_s: float = 3600.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.collect_garbage()
            except NoopsError:
                log.exception("automatic gc failed")

    async def rotate_svids(self) -> int:
        """Renew the SVID of every supervised instance past half-life (and the prober's and the
        console's); return how many instance certificates were renewed."""
        live = [s.instance for s in list(self.supervisor.slots.values()) if s.instance is not None]
        await asyncio.to_thread(self.system.renew)
        return await asyncio.to_thread(self.manager.renew_svids, live)

    async def rotate_forever(self) -> None:
        """:meth:`rotate_svids` at once (instances re-adopted after a restart may be near their
        certificate's end), then every ``rotate_every_s``. An instance whose SVID expires is
        refused by its own monitor, so this loop must outlive every failure."""
        while True:
            try:
                renewed = await self.rotate_svids()
            except (NoopsError, OSError):
                log.exception("SVID rotation failed; retrying in %ss", self.rotate_every_s)
                renewed = 0
            if renewed:
                log.info("renewed %d instance certificates", renewed)
            await asyncio.sleep(self.rotate_every_s)

    async def release_image(self, app: str, image: str, *, spec: AppSpec | None = None,
                            description: str = "", formation: dict[str, int] | None = None,
                            config_version: int | None = None) -> DeployResult:
        """A new release of ``app`` running ``image`` (a local name or digest), rolled out."""
        started = time.monotonic()
        async with self.lock(app):
            self.state.app(app)
            image_obj = self.store.image(image)
            current = self.state.active_release(app)
            if spec is None:
                spec = await asyncio.to_thread(self._spec_in_image, image_obj)
            procs = _image_processes(image_obj.labels)
            if formation is None:
                # counts carry over from the running release (like `heroku ps:scale`); new
                # process types start at their default; [scale] in noops.toml always wins
                previous = dict(current.formation) if current else {}
                formation = {p: previous.get(p, spec.count(p)) for p in procs} or {"web": 1}
                for name, scale in spec.scale.items():
                    formation[name] = scale.count
            version = self.state.config_version(app) if config_version is None else config_version
            release = self.state.create_release(
                app, image_ref=image, image_digest=image_obj.digest, config_version=version,
                formation=formation, spec=spec.raw, description=description or f"deploy {image}")
            return await self._roll(release, started)

    async def rollback(self, app: str, version: int | None = None) -> DeployResult:
        started = time.monotonic()
        async with self.lock(app):
            releases = self.state.releases(app)
            current = self.state.active_release(app)
            if version is None:
                older = [r for r in releases if current and r.version < current.version
                         and r.status in (ReleaseStatus.SUPERSEDED, ReleaseStatus.ROLLED_BACK)]
                if not older:
                    raise UsageError(f"{app} has no earlier release to roll back to")
                target = older[0]
            else:
                target = self.state.release(app, version)
                if target.status == ReleaseStatus.FAILED:
                    raise UsageError(f"v{version} of {app} failed its checks; pick another release")
            if not self.store.has_blob(target.image_digest):
                raise UsageError(f"the image of v{target.version} is gone from the store")
            release = self.state.create_release(
                app, image_ref=target.image_ref, image_digest=target.image_digest,
                config_version=target.config_version, formation=dict(target.formation),
                spec=dict(target.spec), description=f"rollback to v{target.version}")
            return await self._roll(release, started)

    async def change_config(self, app: str, *, set_: dict[str, str] | None = None,
                            unset: list[str] | None = None, secrets: bool = False) -> DeployResult | None:
        """New config version → new release of the current image → rolling restart."""
        started = time.monotonic()
        async with self.lock(app):
            before = self.state.config_version(app)
            if secrets:
                after = self.state.set_secrets(app, set_ or {}, unset or [])
            else:
                after = self.state.set_config(app, set_ or {}, unset or [])
            current = self.state.active_release(app)
            if after == before or current is None:
                return None
            keys = sorted((set_ or {}).keys()) + [f"-{k}" for k in unset or []]
            release = self.state.create_release(
                app, image_ref=current.image_ref, image_digest=current.image_digest,
                config_version=after, formation=dict(current.formation), spec=dict(current.spec),
                description=f"{'secrets' if secrets else 'config'}: {', '.join(keys)}")
            return await self._roll(release, started)

    async def scale(self, app: str, counts: dict[str, int]) -> DeployResult:
        started = time.monotonic()
        async with self.lock(app):
            current = self.state.active_release(app)
            if current is None:
                raise UsageError(f"{app} has no release yet; deploy it first")
            formation = dict(current.formation)
            for proc, n in counts.items():
                if not 0 <= n <= 100:
                    raise UsageError(f"{proc}={n}: scale counts go from 0 to 100")
                formation[proc] = n
            release = self.state.create_release(
                app, image_ref=current.image_ref, image_digest=current.image_digest,
                config_version=current.config_version, formation=formation,
                spec=dict(current.spec),
                description="scale " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
            return await self._roll(release, started)

    # -- start-up ------------------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """Re-adopt running instances of active releases; reap the rest; start what is missing."""
        adopted = reaped = started = 0
        # certificates may have passed half-life (or expired) while no daemon ran: renew them
        # before the first probe, or the adopted instances would fail it
        await asyncio.to_thread(self.manager.renew_svids,
                                [i for i in self.manager.existing() if i.alive()])
        active = {a.name: self.state.active_release(a.name) for a in self.state.apps()}
        counters: dict[tuple[str, str], int] = {}
        for instance in self.manager.existing():
            rel = active.get(instance.spec.app)
            if rel is not None and instance.spec.release == rel.version and instance.alive():
                key = (instance.spec.app, instance.spec.process_type)
                if counters.get(key, 0) < rel.formation.get(instance.spec.process_type, 0):
                    self.supervisor.adopt(instance, self._spec_of(rel), counters.get(key, 0))
                    counters[key] = counters.get(key, 0) + 1
                    adopted += 1
                    continue
                await asyncio.to_thread(self.manager.stop, instance)
            else:
                await asyncio.to_thread(self.manager.stop, instance, wait_s=5)
            reaped += 1
        for app, rel in active.items():
            if rel is None:
                continue
            spec = self._spec_of(rel)
            env = self._env(app, rel, spec)
            for proc, want in rel.formation.items():
                for index in range(counters.get((app, proc), 0), want):
                    ispec = InstanceSpec(app, rel.version, proc, rel.image_digest, env,
                                         spec.memory_bytes, spec.cpu_millis, grace_s=spec.grace_s,
                                         telemetry=spec.telemetry)
                    await self.supervisor.start(app, rel.version, proc, index, ispec, spec)
                    started += 1
            self.supervisor.publish(app)
        return {"adopted": adopted, "reaped": reaped, "started": started}


def _svid_info(name: str, record: SvidRecord, app: str) -> CertificateInfo:
    not_after = datetime.fromtimestamp(record.not_after, UTC)
    return CertificateInfo("workload", name, record.spiffe_id, record.serial, not_after, app,
                           not_after - timedelta(seconds=record.ttl_s))


def _marker_kind(description: str) -> str:
    """The deploy-marker kind of a release, from the description the platform gave it."""
    for prefix, kind in (("rollback", "rollback"), ("config:", "config"), ("secrets:", "config"),
                         ("scale ", "scale"), ("rebase", "rebase")):
        if description.startswith(prefix):
            return kind
    return "deploy"


def _image_processes(labels: dict[str, str]) -> list[str]:
    try:
        build = json.loads(labels.get("io.buildpacks.build.metadata", "{}"))
    except ValueError:
        return ["web"]
    return [p["type"] for p in build.get("processes", [])] or ["web"]


def process_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a killed daemon may linger unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def socket_path(settings: Settings) -> Path:
    return settings.home / "noops.sock"


def ca_path(settings: Settings) -> Path:
    """The platform CA (``noops ca`` commands use the same directory)."""
    return settings.home / "gate" / "ca"


def pid_path(settings: Settings) -> Path:
    return settings.home / "run" / "noops.pid"


async def serve(settings: Settings, *, backoff_s: float = 10.0) -> None:
    """Run the daemon until SIGTERM/SIGINT (apps keep running after it stops) or SIGUSR1 (the
    daemon stops every instance first, while its receiver still takes their last telemetry)."""
    import signal

    import uvicorn

    from noops.api import make_app

    platform = Platform(settings, backoff_s=backoff_s)
    stop = asyncio.Event()
    with_apps = False

    def stop_with_apps() -> None:
        nonlocal with_apps
        with_apps = True
        stop.set()

    # before the pid file names this process: a stop asked for while starting is noted, and
    # acted on as soon as the step under way ends
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, stop_with_apps)
    pid_path(settings).parent.mkdir(parents=True, exist_ok=True)
    pid_path(settings).write_text(str(os.getpid()))
    background: list[asyncio.Task[Any]] = []
    frontdoor: int | None = None
    try:
        # before the instances: their monitors forward telemetry to the receiver's socket
        await platform.telemetry.start()
        summary = await platform.recover()
        log.info("recovered: %s", summary)
        if stop.is_set():
            return  # asked to stop while starting: no front door, console or API
        background += [asyncio.create_task(platform.gc_forever(), name="gc"),
                       asyncio.create_task(platform.rotate_forever(), name="svid-rotation")]
        frontdoor = start_frontdoor(settings)
        sock = socket_path(settings)
        platform.routes.publish(CONSOLE_APP, [f"{CONSOLE_APP}.localhost"],
                                [platform.system.console_endpoint()])
        console_task = asyncio.create_task(platform.system.run_console(stop, sock), name="console")
        sock.unlink(missing_ok=True)
        config = uvicorn.Config(make_app(platform), uds=str(sock), log_level="warning",
                                lifespan="off")
        server = uvicorn.Server(config)
        # uvicorn must not take over SIGTERM/SIGINT: the daemon stops in its own order
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if sock.exists():
            os.chmod(sock, 0o600)
        await stop.wait()
        server.should_exit = True
        await task
        await console_task
    finally:
        # also when starting up failed: the receiver drains, the store and the console close
        stop.set()
        await platform.system.stop_console()
        for bg in background:
            bg.cancel()
        for slot in list(platform.supervisor.slots.values()):
            if slot.task is not None:
                slot.task.cancel()
        if with_apps:
            # Unsupervised now, so nothing restarts them; the receiver still runs. (A start
            # already under way in a worker thread may finish after this list is taken: the
            # CLI's own stop_instances then stops it.)
            await asyncio.to_thread(stop_instances, settings)
        await platform.telemetry.stop()
        pid_path(settings).unlink(missing_ok=True)
        if frontdoor is not None:
            log.info("front door keeps running (pid %s)", frontdoor)
        platform.state.close()


def start_frontdoor(settings: Settings) -> int | None:
    """Start the front door process unless one is running; return its pid."""
    import subprocess
    import sys

    pid_file = settings.home / "run" / "frontdoor.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text())
        except ValueError:
            pid = 0
        if pid and process_running(pid):
            return pid
        pid_file.unlink(missing_ok=True)
    log_path = settings.home / "logs" / "frontdoor.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "noops.gate.frontdoor", "--home", str(settings.home),
             "--port", str(settings.get("frontdoor_port")), "--sso-host", f"{SIGN_IN_APP}.localhost",
             "--otlp-socket", str(otlp_socket(settings))],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def instance_manager(settings: Settings) -> InstanceManager:
    """The instances of this home, as the daemon sees them."""
    return InstanceManager(settings.home, ImageStore(settings.home / "images"), Runc(settings.get("runc")))


def stop_instances(settings: Settings) -> None:
    """Stop every instance of this home.

    Instances stop concurrently: each gets its own grace period (``grace_s + 5`` s), so the
    whole stop takes about the longest grace period, not their sum."""
    from concurrent.futures import ThreadPoolExecutor

    manager = instance_manager(settings)
    instances = manager.existing()
    if instances:
        with ThreadPoolExecutor(max_workers=min(32, len(instances))) as pool:
            for _ in pool.map(lambda i: manager.stop(i, wait_s=i.spec.grace_s + 5), instances):
                pass


def stop_everything(settings: Settings) -> None:
    """Stop every instance left (the daemon stops its own first) and the front door
    (``noops down --apps``)."""
    import signal

    stop_instances(settings)
    pid_file = settings.home / "run" / "frontdoor.pid"
    if pid_file.exists():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        pid_file.unlink(missing_ok=True)
