"""``noops export kubernetes APP``: one release as plain Kubernetes manifests.

The export is a pure function of a :class:`ReleaseInfo`; it talks to no cluster. Objects, in
the order :func:`export_manifests` returns (and :func:`write_manifests` numbers) them::

    ConfigMap               <app>-config    config vars over [env] (config wins)
    Secret                  <app>-secrets   only if the app has secrets: names, empty values
    Deployment              <app>-<type>    one per process type that runs (web first)
    Service                 <app>           web only: ClusterIP, port 80 → the pod's ``http``
    Ingress                 <app>           web only, when it has hosts (routes.hosts, --domain)
    PodDisruptionBudget     <app>-web       web only, when more than one pod may run
    HorizontalPodAutoscaler <app>-<type>    per autoscaled type (scale = { min, max })

Naming: every Deployment is ``<app>-<type>``, ``web`` included, so the rule has no exception;
the app's address is the Service ``<app>``. Process types are lower-cased and ``_``/``.``
become ``-`` (``email_sender`` → ``shop-email-sender``); two types that map to one name, an
app name that is not a DNS-1035 label, or a name over 63 characters is refused with
:class:`~noops.errors.UsageError`, as is anything else Kubernetes cannot express.

Mapping decisions (each one a reason, not a taste):

* **Probes** (web only): Kubernetes takes whole seconds ≥ 1, so ``period_s``/``timeout_s``
  round *up*; thresholds are kept, so a time budget (period times failures) never shrinks.
  Kubernetes requires ``successThreshold: 1`` for startup and liveness; other values are refused.
* **Resources**: requests = limits (Guaranteed QoS): the scheduler reserves what the app may
  use, and the HPA's ``cpu_percent`` is then a percentage of ``[resources] cpu`` as it is
  locally. Memory rounds up to whole ``Mi``; CPU is ``<millis>m``.
* **Stopping**: the web container sleeps :data:`PRESTOP_SLEEP_S` (at most ``drain_s``) in a
  ``preStop`` hook so that endpoint removal reaches every proxy before SIGTERM; requests in
  flight are the app's to finish between SIGTERM and SIGKILL, so
  ``terminationGracePeriodSeconds`` = that sleep + ``grace_s`` (rounded up). The hook uses the
  ``sleep`` action (Kubernetes ≥ 1.30, beta and on by default; alpha in 1.29), not ``exec
  sleep``, because the ``static`` run image has no shell.
* **Autoscaling**: ``scale = { min, max }`` with ``max > min`` becomes an autoscaling/v2 HPA
  on CPU utilisation and the Deployment has *no* ``replicas`` (else every ``kubectl apply``
  would reset the count the HPA chose). ``min == max`` is a fixed count. ``min = 0`` is refused:
  the HPA cannot scale to zero without an alpha feature gate.
* **Disruption budget**: ``minAvailable: 1`` when web always runs ≥ 2 pods; ``maxUnavailable:
  1`` when it is autoscaled from 1 (``minAvailable: 1`` over a single pod would block ``kubectl
  drain`` forever). None for a single fixed pod, for the same reason.
* **Rolling**: ``maxUnavailable: 0``, ``maxSurge: 25%``; the pod template carries the release
  version and ``noops.dev/config-hash`` (SHA-256 of the ConfigMap data and the secret *names*),
  so a new release or new config rolls the pods, and an unchanged one does not. Filling secret
  values does not change the hash: restart the Deployments after it (the Secret says how).
* **Command**: the image's entrypoint is the CNB launcher with ``web`` as default process, so
  web has no ``command``; other types run ``/cnb/process/<type>``.
* **Environment**: ``PORT`` and ``HOME=/tmp`` (the root file system is read-only, as in
  ``noops run``) are set in ``env`` and so win over config vars of the same name.
* **Secrets**: values never leave noops. The Secret has every key with an empty value and an
  annotation with the command that fills it. Re-applying the exported Secret blanks the values
  again: apply it once, or leave it out after the first time.
* **Hardening**: non-root 1000:1000, no privilege escalation, read-only root, all capabilities
  dropped, ``RuntimeDefault`` seccomp (the Pod Security "restricted" profile), an ``emptyDir``
  on ``/tmp``, no service-account token and no service-link variables (the app does not talk to
  the Kubernetes API, and ``<SERVICE>_PORT`` variables would shadow config).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from noops.appspec import AppSpec, Probe, Scale
from noops.errors import UsageError

__all__ = [
    "PRESTOP_SLEEP_S",
    "ReleaseInfo",
    "export_manifests",
    "to_yaml",
    "write_manifests",
]

PRESTOP_SLEEP_S = 5
"""Seconds a web pod keeps serving after it is marked terminating, for endpoints to drain."""

_PROGRESS_DEADLINE_S = 600  # Kubernetes' own default
_DEFAULT_CPU_PERCENT = 80  # what noops.toml's scale table defaults to
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DIGEST_REF = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")
_CONFIGMAP_MAX_BYTES = 1024 * 1024  # etcd object limit for ConfigMap data
_MANAGED = "app.kubernetes.io/managed-by"
_WRITTEN_FILE = re.compile(r"^\d{2}-[a-z]+-[a-z0-9.-]+\.yaml$")


@dataclass(frozen=True)
class ReleaseInfo:
    """What one release of an app is made of; the input of :func:`export_manifests`."""

    app: str
    version: int                     # release number, e.g. 7
    image: str                       # pushed reference with digest: "registry.example.com/shop@sha256:…"
    spec: AppSpec
    config: dict[str, str]           # plain config vars
    secret_keys: tuple[str, ...]     # secret names only; values are never exported
    port: int = 8080


@dataclass(frozen=True)
class _Process:
    type: str        # as the image knows it: /cnb/process/<type>
    name: str        # DNS-1123 label derived from it
    scale: Scale
    autoscaled: bool


def export_manifests(release: ReleaseInfo, *, namespace: str | None = None,
                     domain: str | None = None, ingress_class: str | None = None,
                     cluster_issuer: str | None = None) -> list[dict[str, Any]]:
    """Return the Kubernetes objects that run ``release`` (see the module docstring).

    ``namespace`` is set on every object (none is created); ``domain`` adds ``<app>.<domain>``
    to the Ingress hosts; ``ingress_class`` sets ``ingressClassName``; ``cluster_issuer`` adds
    the cert-manager annotation that issues the TLS certificate. Raises
    :class:`~noops.errors.UsageError` for anything Kubernetes cannot express.
    """
    app, spec = release.app, release.spec
    _check_release(release)
    for what, value, rule in (("namespace", namespace, _DNS1123_LABEL),
                              ("ingress class", ingress_class, _DNS1123_SUBDOMAIN),
                              ("cluster issuer", cluster_issuer, _DNS1123_SUBDOMAIN)):
        if value is not None and not (len(value) <= 253 and rule.match(value)):
            raise UsageError(f"{what} {value!r} is not a valid Kubernetes name: use lower-case "
                             "letters, digits and '-'")
    hosts = list(dict.fromkeys(spec.hosts))
    for host in hosts:
        if not _DNS1123_SUBDOMAIN.match(host):
            raise UsageError(f"routes.hosts has {host!r}, which an Ingress cannot route: use "
                             "lower-case DNS names without wildcards or ports")
    if domain is not None:
        host = f"{app}.{domain.lower().strip('.')}"
        if not _DNS1123_SUBDOMAIN.match(host):
            raise UsageError(f"--domain {domain!r} does not make a valid host name ({host!r})")
        hosts = list(dict.fromkeys([*hosts, host]))

    data = _configmap_data(release)
    meta = _Meta(app, release.version, namespace)
    config_hash = hashlib.sha256(json.dumps(
        {"config": data, "secret_keys": sorted(set(release.secret_keys))},
        sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    out: list[dict[str, Any]] = [_obj("v1", "ConfigMap", meta.of(f"{app}-config"), data=data)]
    if release.secret_keys:
        out.append(_secret(release, meta, namespace))
    processes = _processes(release)
    out += [_deployment(release, meta, p, config_hash) for p in processes]
    web = next((p for p in processes if p.type == "web"), None)
    if web is not None:
        selector = meta.selector("web")
        out.append(_obj("v1", "Service", meta.of(app, "web"), spec={
            "type": "ClusterIP", "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}))
        if hosts:
            out.append(_ingress(meta, hosts, ingress_class, cluster_issuer))
        floor = web.scale.min if web.autoscaled else web.scale.count
        if floor is not None and (floor >= 2 or web.autoscaled):
            budget: dict[str, Any] = ({"minAvailable": 1} if floor >= 2 else {"maxUnavailable": 1})
            out.append(_obj("policy/v1", "PodDisruptionBudget", meta.of(f"{app}-web", "web"),
                            spec={**budget, "selector": {"matchLabels": selector},
                                  # a crash-looping release must not block node maintenance
                                  "unhealthyPodEvictionPolicy": "AlwaysAllow"}))
    out += [_hpa(meta, p) for p in processes if p.autoscaled]
    return out


class _Dumper(yaml.SafeDumper):
    """Never ``&id001``/``*id001``: each object reads on its own, as kubectl users expect."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML (``---`` before each object), keys in the order they were built."""
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, explicit_start=True,
                         allow_unicode=True, default_flow_style=False, width=4096)


def write_manifests(manifests: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write one file per object, ``NN-<kind>-<name>.yaml`` numbered in apply order.

    Files a previous export wrote (that name pattern *and* the noops ``managed-by`` label) and
    that this export does not rewrite are removed, so ``kubectl apply -f out_dir`` never brings
    back an object the app no longer has. Any other file is left alone.
    """
    paths = [out_dir / f"{i:02d}-{m['kind'].lower()}-{m['metadata']['name']}.yaml"
             for i, m in enumerate(manifests, 1)]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in sorted(out_dir.iterdir()):
            if (old not in paths and old.is_file() and _WRITTEN_FILE.match(old.name)
                    and f"{_MANAGED}: noops" in old.read_text(errors="replace")):
                old.unlink()
        for path, manifest in zip(paths, manifests, strict=True):
            path.write_text(to_yaml([manifest]))
    except OSError as exc:
        raise UsageError(f"cannot write the manifests to {out_dir}: {exc.strerror or exc}; "
                         "choose a directory you can write") from exc
    return paths


# --- validation --------------------------------------------------------------------------


def _check_release(release: ReleaseInfo) -> None:
    if not (len(release.app) <= 63 and _DNS1035.match(release.app)):
        raise UsageError(f"app name {release.app!r} cannot name Kubernetes objects: it must "
                         "start with a letter and use only lower-case letters, digits and '-' "
                         "(at most 63 characters); rename the app")
    if release.version < 1:
        raise UsageError(f"release version must be 1 or more, not {release.version}")
    if not _DIGEST_REF.match(release.image):
        raise UsageError(f"image {release.image!r} is not pinned by digest (name@sha256:…); "
                         "push the release to a registry the cluster can pull from first")
    if not 1 <= release.port <= 65535:
        raise UsageError(f"port {release.port} is not a TCP port")
    for key in [*release.config, *release.spec.env, *release.secret_keys]:
        if not _ENV_NAME.match(key):
            raise UsageError(f"config/secret name {key!r} is not an environment variable name; "
                             "rename it with letters, digits and '_'")
    clash = set(release.secret_keys) & (set(release.config) | set(release.spec.env))
    if clash:
        raise UsageError(f"{sorted(clash)} are both config and secret; unset one of them")
    for kind, probe in (("startup", release.spec.startup), ("liveness", release.spec.liveness)):
        if probe.successes != 1:
            raise UsageError(f"health.{kind}.successes = {probe.successes}: Kubernetes requires "
                             f"1 for {kind} probes; remove it from noops.toml")


def _processes(release: ReleaseInfo) -> list[_Process]:
    spec = release.spec
    types = ["web", *sorted((set(spec.processes) | set(spec.scale)) - {"web"})]
    by_name: dict[str, str] = {}
    out: list[_Process] = []
    for ptype in types:
        scale = spec.scale.get(ptype, Scale(spec.count(ptype)))
        autoscaled = scale.min is not None and scale.max is not None and scale.max > scale.min
        if autoscaled and scale.min == 0:
            raise UsageError(f"scale.{ptype} has min = 0: a HorizontalPodAutoscaler cannot scale "
                             f"to zero; set scale.{ptype}.min to 1 or more for Kubernetes")
        if not autoscaled and scale.count == 0:
            continue
        name = ptype.lower().replace("_", "-").replace(".", "-")
        full = f"{release.app}-{name}"
        if not _DNS1123_LABEL.match(name) or len(full) > 63:
            raise UsageError(f"process type {ptype!r} gives the Kubernetes name {full!r}, which "
                             "must be at most 63 lower-case letters, digits and '-' that start "
                             "and end with a letter or digit; rename the process type")
        if name in by_name:
            raise UsageError(f"process types {by_name[name]!r} and {ptype!r} both become "
                             f"{full!r} on Kubernetes; rename one of them")
        by_name[name] = ptype
        out.append(_Process(ptype, name, scale, autoscaled))
    return out


def _configmap_data(release: ReleaseInfo) -> dict[str, str]:
    merged = {**release.spec.env, **release.config}
    data = {k: str(merged[k]) for k in sorted(merged)}
    size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    if size > _CONFIGMAP_MAX_BYTES:
        raise UsageError(f"config of {release.app} is {size} bytes; a ConfigMap holds at most "
                         "1 MiB: move large values to files in the image")
    return data


# --- objects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Meta:
    app: str
    version: int
    namespace: str | None

    def selector(self, component: str) -> dict[str, str]:
        """The immutable part of the labels: no version, so a Deployment can roll."""
        return {"app.kubernetes.io/name": self.app, "app.kubernetes.io/instance": self.app,
                "app.kubernetes.io/component": component}

    def labels(self, component: str | None = None) -> dict[str, str]:
        labels = self.selector(component) if component else {
            "app.kubernetes.io/name": self.app, "app.kubernetes.io/instance": self.app}
        return {**labels, "app.kubernetes.io/version": f"v{self.version}", _MANAGED: "noops"}

    def of(self, name: str, component: str | None = None,
           annotations: dict[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name}
        if self.namespace:
            meta["namespace"] = self.namespace
        meta["labels"] = self.labels(component)
        if annotations:
            meta["annotations"] = annotations
        return meta


def _obj(api_version: str, kind: str, metadata: dict[str, Any], **body: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}


def _secret(release: ReleaseInfo, meta: _Meta, namespace: str | None) -> dict[str, Any]:
    name = f"{release.app}-secrets"
    keys = sorted(set(release.secret_keys))
    ns = f" --namespace {namespace}" if namespace else ""
    literals = " ".join(f"--from-literal={k}=..." for k in keys)
    note = (f"Placeholder: noops never exports secret values. Fill them with `kubectl create "
            f"secret generic {name}{ns} {literals} --dry-run=client -o yaml | kubectl apply -f -`, "
            f"then `kubectl rollout restart deployment{ns} -l "
            f"app.kubernetes.io/instance={release.app}`. Re-applying this file empties them.")
    return _obj("v1", "Secret", meta.of(name, annotations={"noops.dev/fill-in": note}),
                type="Opaque", stringData=dict.fromkeys(keys, ""))


def _seconds(value_s: float) -> int:
    """Kubernetes durations are whole seconds ≥ 1: round up, so no budget shrinks."""
    return max(1, math.ceil(value_s))


def _probe(probe: Probe, path: str) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
            "periodSeconds": _seconds(probe.period_s),
            "timeoutSeconds": _seconds(probe.timeout_s),
            "failureThreshold": probe.failures,
            "successThreshold": probe.successes}


def _container(release: ReleaseInfo, proc: _Process, config_map: str) -> dict[str, Any]:
    spec = release.spec
    container: dict[str, Any] = {"name": proc.name, "image": release.image}
    if proc.type != "web":
        container["command"] = [f"/cnb/process/{proc.type}"]
    if proc.type == "web":
        container["ports"] = [{"name": "http", "containerPort": release.port, "protocol": "TCP"}]
    container["env"] = [{"name": "PORT", "value": str(release.port)},
                        {"name": "HOME", "value": "/tmp"}]
    env_from: list[dict[str, Any]] = [{"configMapRef": {"name": config_map}}]
    if release.secret_keys:
        env_from.append({"secretRef": {"name": f"{release.app}-secrets"}})
    container["envFrom"] = env_from
    mebibytes = -(-spec.memory_bytes // (1024 * 1024))
    amounts = {"cpu": f"{spec.cpu_millis}m", "memory": f"{mebibytes}Mi"}
    container["resources"] = {"requests": dict(amounts), "limits": dict(amounts)}
    if proc.type == "web":
        container["startupProbe"] = _probe(spec.startup, spec.health_path)
        container["readinessProbe"] = _probe(spec.readiness, spec.health_path)
        container["livenessProbe"] = _probe(spec.liveness, spec.health_path)
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": _prestop_s(spec)}}}
    container["securityContext"] = {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    return container


def _prestop_s(spec: AppSpec) -> int:
    return min(PRESTOP_SLEEP_S, _seconds(spec.drain_s))


def _deployment(release: ReleaseInfo, meta: _Meta, proc: _Process,
                config_hash: str) -> dict[str, Any]:
    spec = release.spec
    grace_s = _seconds(spec.grace_s) + (_prestop_s(spec) if proc.type == "web" else 0)
    progress_s = _PROGRESS_DEADLINE_S
    if proc.type == "web":
        # a rollout is "failed" after this long without progress: never before the app's own
        # startup allowance has run out
        startup_budget_s = _seconds(spec.startup.period_s) * spec.startup.failures
        progress_s = max(progress_s, startup_budget_s + _seconds(spec.readiness.period_s) + 60)
    body: dict[str, Any] = {}
    if not proc.autoscaled:
        body["replicas"] = proc.scale.count
    body.update({
        "revisionHistoryLimit": 10,
        "progressDeadlineSeconds": progress_s,
        "selector": {"matchLabels": meta.selector(proc.name)},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
        "template": {
            "metadata": {"labels": meta.labels(proc.name),
                         "annotations": {"noops.dev/config-hash": config_hash}},
            "spec": {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": grace_s,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                    "runAsGroup": 1000,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [_container(release, proc, f"{release.app}-config")],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        },
    })
    cause = f"noops release v{release.version} ({release.image})"
    return _obj("apps/v1", "Deployment", meta.of(
        f"{release.app}-{proc.name}", proc.name, {"kubernetes.io/change-cause": cause}),
        spec=body)


def _ingress(meta: _Meta, hosts: list[str], ingress_class: str | None,
             cluster_issuer: str | None) -> dict[str, Any]:
    app = meta.app
    annotations = {"cert-manager.io/cluster-issuer": cluster_issuer} if cluster_issuer else None
    spec: dict[str, Any] = {}
    if ingress_class:
        spec["ingressClassName"] = ingress_class
    spec["tls"] = [{"hosts": list(hosts), "secretName": f"{app}-tls"}]
    spec["rules"] = [{"host": h, "http": {"paths": [{
        "path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": app, "port": {"name": "http"}}}}]}} for h in hosts]
    return _obj("networking.k8s.io/v1", "Ingress", meta.of(app, "web", annotations), spec=spec)


def _hpa(meta: _Meta, proc: _Process) -> dict[str, Any]:
    name = f"{meta.app}-{proc.name}"
    return _obj("autoscaling/v2", "HorizontalPodAutoscaler", meta.of(name, proc.name), spec={
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": proc.scale.min,
        "maxReplicas": proc.scale.max,
        "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization",
            "averageUtilization": proc.scale.cpu_percent or _DEFAULT_CPU_PERCENT}}}],
    })
