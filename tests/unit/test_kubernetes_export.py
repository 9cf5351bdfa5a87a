"""``noops export kubernetes``: every object against the published Kubernetes JSON schemas.

The schemas come from the ``kubernetes-validate`` package (generated from the Kubernetes
OpenAPI documents; ``strict`` rejects unknown fields), so nothing is fetched at test time. The
schemas cannot say what the API server checks beyond structure (names, label syntax, which
probe may have ``successThreshold > 1``, references between objects), so
:func:`api_server_problems` checks those, written from the API conventions, not from the code
under test. Each object is validated as it reads back from the YAML that users apply.

``NOOPS_UPDATE_GOLDEN=1`` rewrites ``data/kubernetes/*.yaml`` after an intended change.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes_validate.utils import latest_version

from noops.appspec import AppSpec, ProcessDef, Scale, parse_manifest
from noops.errors import UsageError
from noops.runtime.kubernetes import (
    PRESTOP_SLEEP_S,
    ReleaseInfo,
    export_manifests,
    to_yaml,
    write_manifests,
)

OLDEST = "1.30"  # the first release where the preStop `sleep` action is on by default
VERSIONS = (OLDEST, ".".join(latest_version().split(".")[:2]))
GOLDEN = Path(__file__).parent / "data" / "kubernetes"
IMAGE = "registry.example.com/shop@sha256:" + "ab" * 32

# --- the releases under test ------------------------------------------------------------

FULL_TOML: dict[str, Any] = {
    "processes": {"web": "gunicorn app:app", "worker": {"command": ["python", "worker.py"]},
                  "email_sender": "python mail.py"},
    "scale": {"web": {"min": 2, "max": 6, "cpu_percent": 70}, "worker": 2, "email_sender": 1},
    "health": {"path": "/healthz", "startup": {"period_s": 1, "timeout_s": 2, "failures": 90},
               "readiness": {"period_s": 2, "timeout_s": 1, "failures": 3, "successes": 2},
               "liveness": {"period_s": 15, "timeout_s": 3, "failures": 4}},
    "resources": {"memory": "1G", "cpu": "250m"},
    "env": {"LOG_LEVEL": "info", "DEBUG": "1"},
    "routes": {"hosts": ["shop.example.com", "www.shop.example.com"]},
    "deploy": {"grace_s": 20, "drain_s": 10},
}
STATIC_TOML: dict[str, Any] = {  # like the static stack: no shell in the run image
    "processes": {"web": {"command": ["/cnb/static-server"]}},
    "health": {"path": "/index.html", "startup": {"period_s": 0.5, "timeout_s": 0.2,
                                                   "failures": 20},
               "readiness": {"period_s": 1.5, "timeout_s": 1.5, "failures": 2}},
    "resources": {"memory": "64Mi", "cpu": 0.1},
    "routes": {"hosts": ["docs.example.org"]},
    "deploy": {"grace_s": 2.5, "drain_s": 1.2},
}


def release(spec: AppSpec | None = None, *, app: str = "shop", version: int = 7,
            config: dict[str, str] | None = None, secret_keys: tuple[str, ...] = (),
            image: str = IMAGE) -> ReleaseInfo:
    return ReleaseInfo(app, version, image, spec or AppSpec(), dict(config or {}), secret_keys)


CASES: dict[str, tuple[ReleaseInfo, dict[str, Any]]] = {
    "defaults": (release(), {}),
    "full": (release(parse_manifest(FULL_TOML), config={"DEBUG": "0", "SHOP_MODE": "yes"},
                     secret_keys=("DATABASE_URL", "STRIPE_KEY")),
             {"namespace": "prod", "domain": "apps.example.net", "ingress_class": "nginx",
              "cluster_issuer": "letsencrypt-prod"}),
    "fixed3": (release(parse_manifest({"scale": {"web": 3},
                                       "routes": {"hosts": ["shop.example.com"]}})), {}),
    "static": (release(parse_manifest(STATIC_TOML), app="docs"), {"domain": "example.net"}),
    "autoscale-from-1": (release(parse_manifest({"scale": {"web": {"min": 1, "max": 4}}})), {}),
}


def export(case: str) -> list[dict[str, Any]]:
    rel, kwargs = CASES[case]
    return export_manifests(rel, **kwargs)


def applied(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects as kubectl will read them: through the YAML text."""
    loaded: list[dict[str, Any]] = list(yaml.safe_load_all(to_yaml(manifests)))
    return loaded


def only(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in manifests
             if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(found) == 1, (kind, name, [m["metadata"]["name"] for m in found])
    return found[0]


def kinds(manifests: list[dict[str, Any]]) -> list[str]:
    return [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


# --- the published schemas --------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _schemas_parsed_once() -> Iterator[None]:
    """kubernetes_validate parses its JSON schema files (the definitions are megabytes) on every
    ``validate``; here each file is parsed once per module. Validation only reads them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kubernetes_validate.utils, "schema_contents",
                   functools.cache(kubernetes_validate.utils.schema_contents))
        yield


def schema_error(obj: dict[str, Any], version: str) -> str | None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{obj['kind']}/{obj['metadata'].get('name')}: {exc.message} at {list(exc.path)}"
    return None


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_object_matches_the_published_schema(case: str, version: str) -> None:
    manifests = applied(export(case))
    assert manifests
    errors = [e for e in (schema_error(m, version) for m in manifests) if e]
    assert errors == []


BROKEN: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown field": lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
        imagePullPolicyy="Always"),
    "string replicas": lambda d: d["spec"].update(replicas="3"),
    "no selector": lambda d: d["spec"].pop("selector"),
    "probe port missing": lambda d: d["spec"]["template"]["spec"]["containers"][0][
        "readinessProbe"]["httpGet"].pop("port"),
    "sleep without seconds": lambda d: d["spec"]["template"]["spec"]["containers"][0][
        "lifecycle"]["preStop"]["sleep"].pop("seconds"),
    "wrong apiVersion": lambda d: d.update(apiVersion="apps/v1beta9"),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_the_validator_rejects_broken_objects(breakage: str) -> None:
    deployment = copy.deepcopy(only(export("full"), "Deployment", "shop-web"))
    assert schema_error(deployment, OLDEST) is None
    BROKEN[breakage](deployment)
    try:
        error = schema_error(deployment, OLDEST)
    except kubernetes_validate.SchemaNotFoundError:
        error = "no schema for that apiVersion"
    assert error is not None


def test_the_sleep_hook_is_why_kubernetes_1_30_is_the_floor() -> None:
    # LifecycleHandler.sleep appeared in 1.29 (alpha, off by default); 1.28 does not know it
    deployment = only(export("static"), "Deployment", "docs-web")
    error = schema_error(deployment, "1.28")
    assert error is not None
    assert "sleep" in error


# --- what the API server checks beyond the schema ---------------------------------------

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def label_problems(labels: dict[str, str]) -> list[str]:
    out = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if prefix and not (len(prefix) <= 253 and DNS1123_SUBDOMAIN.match(prefix)):
            out.append(f"label prefix {key!r}")
        if not (len(name) <= 63 and QUALIFIED.match(name)):
            out.append(f"label name {key!r}")
        if value and not (len(value) <= 63 and QUALIFIED.match(value)):
            out.append(f"label value {key}={value!r}")
    return out


def api_server_problems(manifests: list[dict[str, Any]]) -> list[str]:
    """Names, labels and cross-object references, as ``kubectl apply`` would find them."""
    out: list[str] = []
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for m in manifests:
        name, kind = m["metadata"]["name"], m["kind"]
        by_kind.setdefault(kind, {})[name] = m
        rule = DNS1035_LABEL if kind == "Service" else DNS1123_LABEL
        if not (len(name) <= 63 and rule.match(name)):
            out.append(f"{kind} name {name!r}")
        out += label_problems(m["metadata"].get("labels", {}))
    for name, d in by_kind.get("Deployment", {}).items():
        template = d["spec"]["template"]
        out += label_problems(template["metadata"]["labels"])
        if not d["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items():
            out.append(f"Deployment {name}: selector does not match its pods")
        for c in template["spec"]["containers"]:
            if not DNS1123_LABEL.match(c["name"]):
                out.append(f"container name {c['name']!r}")
            for env in c.get("env", []):
                if not ENV_NAME.match(env["name"]):
                    out.append(f"env name {env['name']!r}")
            for probe in ("startupProbe", "livenessProbe"):
                if c.get(probe, {}).get("successThreshold", 1) != 1:
                    out.append(f"{name}: {probe}.successThreshold must be 1")
            port_names = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:
                    p = c[probe]
                    if p["httpGet"]["port"] not in port_names:
                        out.append(f"{name}: {probe} port is not a container port")
                    for field in ("periodSeconds", "timeoutSeconds", "failureThreshold",
                                  "successThreshold"):
                        if not (isinstance(p[field], int) and p[field] >= 1):
                            out.append(f"{name}: {probe}.{field} = {p[field]!r}")
            for source in c.get("envFrom", []):
                ref_kind, ref = next(iter(source.items()))
                wanted = {"configMapRef": "ConfigMap", "secretRef": "Secret"}[ref_kind]
                if ref["name"] not in by_kind.get(wanted, {}):
                    out.append(f"{name}: envFrom {wanted} {ref['name']} is not exported")
    pods = [d["spec"]["template"] for d in by_kind.get("Deployment", {}).values()]

    def selects(selector: dict[str, str], port: str | None = None) -> bool:
        return any(selector.items() <= p["metadata"]["labels"].items()
                   and (port is None or any(cp.get("name") == port
                                            for c in p["spec"]["containers"]
                                            for cp in c.get("ports", [])))
                   for p in pods)

    for name, svc in by_kind.get("Service", {}).items():
        for port in svc["spec"]["ports"]:
            if not selects(svc["spec"]["selector"], port["targetPort"]):
                out.append(f"Service {name} selects no pod with port {port['targetPort']}")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        if not selects(pdb["spec"]["selector"]["matchLabels"]):
            out.append(f"PodDisruptionBudget {name} selects no pod")
    for name, ing in by_kind.get("Ingress", {}).items():
        for rule in ing["spec"]["rules"]:
            if not DNS1123_SUBDOMAIN.match(rule["host"]):
                out.append(f"Ingress host {rule['host']!r}")
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                target_svc = by_kind.get("Service", {}).get(backend["name"])
                if target_svc is None or backend["port"]["name"] not in {
                        p["name"] for p in target_svc["spec"]["ports"]}:
                    out.append(f"Ingress {name} routes to a missing Service port")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        target = hpa["spec"]["scaleTargetRef"]["name"]
        if target not in by_kind.get("Deployment", {}):
            out.append(f"HPA {name} scales a missing Deployment {target}")
        if not 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]:
            out.append(f"HPA {name}: replicas range")
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_names_labels_and_references_are_what_the_api_server_accepts(case: str) -> None:
    assert api_server_problems(applied(export(case))) == []


def test_the_server_side_checks_catch_what_the_schema_does_not() -> None:
    manifests = copy.deepcopy(export("full"))
    only(manifests, "Service")["spec"]["ports"][0]["targetPort"] = "web"
    only(manifests, "Deployment", "shop-worker")["metadata"]["name"] = "shop_worker"
    only(manifests, "Deployment", "shop-web")["spec"]["template"]["spec"]["containers"][0][
        "livenessProbe"]["successThreshold"] = 2
    problems = api_server_problems(manifests)
    assert any("Service shop selects no pod" in p for p in problems)
    assert any("'shop_worker'" in p for p in problems)
    assert any("livenessProbe.successThreshold" in p for p in problems)
    assert all(schema_error(m, OLDEST) is None for m in manifests)  # the schema lets them pass


# --- semantics ---------------------------------------------------------------------------

EXPECTED_KINDS = {
    "defaults": ["ConfigMap/shop-config", "Deployment/shop-web", "Service/shop"],
    "full": ["ConfigMap/shop-config", "Secret/shop-secrets", "Deployment/shop-web",
             "Deployment/shop-email-sender", "Deployment/shop-worker", "Service/shop",
             "Ingress/shop", "PodDisruptionBudget/shop-web",
             "HorizontalPodAutoscaler/shop-web"],
    "fixed3": ["ConfigMap/shop-config", "Deployment/shop-web", "Service/shop", "Ingress/shop",
               "PodDisruptionBudget/shop-web"],
    "static": ["ConfigMap/docs-config", "Deployment/docs-web", "Service/docs", "Ingress/docs"],
    "autoscale-from-1": ["ConfigMap/shop-config", "Deployment/shop-web", "Service/shop",
                         "PodDisruptionBudget/shop-web", "HorizontalPodAutoscaler/shop-web"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_objects_each_app_gets(case: str) -> None:
    assert kinds(export(case)) == EXPECTED_KINDS[case]


def test_deployment_shape_labels_and_rollout() -> None:
    manifests = export("full")
    web = only(manifests, "Deployment", "shop-web")
    assert web["metadata"]["namespace"] == "prod"
    assert all(m["metadata"]["namespace"] == "prod" for m in manifests)
    labels = web["spec"]["template"]["metadata"]["labels"]
    assert labels == {"app.kubernetes.io/name": "shop", "app.kubernetes.io/instance": "shop",
                      "app.kubernetes.io/component": "web", "app.kubernetes.io/version": "v7",
                      "app.kubernetes.io/managed-by": "noops"}
    assert "app.kubernetes.io/version" not in web["spec"]["selector"]["matchLabels"]
    assert web["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {
        "maxUnavailable": 0, "maxSurge": "25%"}}
    assert web["spec"]["revisionHistoryLimit"] == 10
    c = container(web)
    assert c["image"] == IMAGE
    assert "command" not in c  # the image's default process is web
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert {"name": "PORT", "value": "8080"} in c["env"]
    assert c["envFrom"] == [{"configMapRef": {"name": "shop-config"}},
                            {"secretRef": {"name": "shop-secrets"}}]
    worker = container(only(manifests, "Deployment", "shop-worker"))
    assert worker["command"] == ["/cnb/process/worker"]
    assert "ports" not in worker and "readinessProbe" not in worker and "lifecycle" not in worker
    mail = only(manifests, "Deployment", "shop-email-sender")
    assert container(mail)["command"] == ["/cnb/process/email_sender"]  # the image's own name
    assert mail["spec"]["replicas"] == 1
    assert only(manifests, "Deployment", "shop-worker")["spec"]["replicas"] == 2


def test_probes_come_from_the_appspec_in_whole_seconds_rounded_up() -> None:
    full = container(only(export("full"), "Deployment", "shop-web"))
    assert full["startupProbe"] == {
        "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}, "periodSeconds": 1,
        "timeoutSeconds": 2, "failureThreshold": 90, "successThreshold": 1}
    assert full["readinessProbe"]["successThreshold"] == 2
    assert full["readinessProbe"]["timeoutSeconds"] == 1
    assert (full["livenessProbe"]["periodSeconds"], full["livenessProbe"]["timeoutSeconds"],
            full["livenessProbe"]["failureThreshold"]) == (15, 3, 4)
    static = container(only(export("static"), "Deployment", "docs-web"))
    # 0.5 s → 1 s, 0.2 s → 1 s, 1.5 s → 2 s; counts are kept, so no time budget shrinks
    assert static["startupProbe"]["periodSeconds"] == 1
    assert static["startupProbe"]["timeoutSeconds"] == 1
    assert static["startupProbe"]["failureThreshold"] == 20
    assert static["readinessProbe"]["periodSeconds"] == 2
    assert static["readinessProbe"]["timeoutSeconds"] == 2
    assert static["readinessProbe"]["httpGet"]["path"] == "/index.html"


def test_stopping_sleeps_then_gives_the_app_its_grace_period() -> None:
    web = only(export("full"), "Deployment", "shop-web")
    assert container(web)["lifecycle"] == {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}}
    assert web["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 20 + PRESTOP_SLEEP_S
    worker = only(export("full"), "Deployment", "shop-worker")
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 20
    static = only(export("static"), "Deployment", "docs-web")
    # drain_s = 1.2 caps the sleep at 2 s; grace_s = 2.5 rounds up to 3 s
    assert container(static)["lifecycle"]["preStop"]["sleep"]["seconds"] == 2
    assert static["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5


@pytest.mark.parametrize("case", sorted(CASES))
def test_pods_are_restricted_and_never_need_a_shell(case: str) -> None:
    """The Pod Security "restricted" profile, a read-only root with a writable /tmp, no exec."""
    for d in (m for m in export(case) if m["kind"] == "Deployment"):
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000,
                                          "runAsGroup": 1000,
                                          "seccompProfile": {"type": "RuntimeDefault"}}
        assert pod["automountServiceAccountToken"] is False
        c = container(d)
        assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                        "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}}
        assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
        assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
        assert "exec" not in to_yaml([d])  # no exec probe or hook: the static image has no sh


def test_resources_become_requests_and_limits() -> None:
    full = container(only(export("full"), "Deployment", "shop-web"))
    # 1G = 10^9 bytes = 953.67 MiB, rounded up
    assert full["resources"] == {"requests": {"cpu": "250m", "memory": "954Mi"},
                                 "limits": {"cpu": "250m", "memory": "954Mi"}}
    defaults = container(only(export("defaults"), "Deployment", "shop-web"))
    assert defaults["resources"]["limits"] == {"cpu": "1000m", "memory": "512Mi"}
    static = container(only(export("static"), "Deployment", "docs-web"))
    assert static["resources"]["requests"] == {"cpu": "100m", "memory": "64Mi"}


def test_config_map_holds_env_and_config_and_config_wins() -> None:
    cm = only(export("full"), "ConfigMap")
    assert cm["data"] == {"DEBUG": "0", "LOG_LEVEL": "info", "SHOP_MODE": "yes"}
    # "0" and "yes" stay strings through YAML (a ConfigMap rejects numbers and booleans)
    assert only(applied([cm]), "ConfigMap")["data"] == cm["data"]


def test_secrets_have_names_but_never_values() -> None:
    manifests = export("full")
    secret = only(manifests, "Secret")
    assert secret["type"] == "Opaque"
    assert secret["stringData"] == {"DATABASE_URL": "", "STRIPE_KEY": ""}
    assert "data" not in secret
    note = secret["metadata"]["annotations"]["noops.dev/fill-in"]
    assert "kubectl create secret generic shop-secrets --namespace prod" in note
    assert "--from-literal=DATABASE_URL=" in note and "--from-literal=STRIPE_KEY=" in note
    assert "--dry-run=client -o yaml | kubectl apply -f -" in note
    # an app without secrets gets no Secret and no reference to one
    defaults = export("defaults")
    assert not [m for m in defaults if m["kind"] == "Secret"]
    assert container(only(defaults, "Deployment"))["envFrom"] == [
        {"configMapRef": {"name": "shop-config"}}]


def config_hash(rel: ReleaseInfo) -> str:
    web = only(export_manifests(rel), "Deployment", f"{rel.app}-web")
    return str(web["spec"]["template"]["metadata"]["annotations"]["noops.dev/config-hash"])


def test_the_config_hash_changes_with_config_and_only_then() -> None:
    spec = parse_manifest({"env": {"A": "1"}})
    base = release(spec, config={"X": "1", "Y": "2"}, secret_keys=("S",))
    h = config_hash(base)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    changed = [
        dataclasses.replace(base, config={"X": "1", "Y": "3"}),
        dataclasses.replace(base, config={"X": "1"}),
        dataclasses.replace(base, secret_keys=("S", "T")),
        dataclasses.replace(base, secret_keys=()),
        dataclasses.replace(base, spec=parse_manifest({"env": {"A": "2"}})),
    ]
    assert all(config_hash(r) != h for r in changed)
    assert len({config_hash(r) for r in changed}) == len(changed)
    same = [
        dataclasses.replace(base, config={"Y": "2", "X": "1"}),          # order
        dataclasses.replace(base, secret_keys=("S", "S")),               # duplicates
        dataclasses.replace(base, version=8),
        dataclasses.replace(base, image="r.example/shop@sha256:" + "cd" * 32),
        dataclasses.replace(base, spec=parse_manifest({"env": {"A": "1"}, "scale": {"web": 3}})),
        dataclasses.replace(base, config={"X": "1", "Y": "2", "A": "1"}),  # same merged data
    ]
    assert all(config_hash(r) == h for r in same)


def test_an_hpa_exists_exactly_when_a_process_is_autoscaled() -> None:
    full = export("full")
    hpa = only(full, "HorizontalPodAutoscaler")
    assert hpa["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop-web"},
        "minReplicas": 2, "maxReplicas": 6,
        "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 70}}}]}
    # the HPA owns the count: a replicas field would be reset by every `kubectl apply`
    assert "replicas" not in only(full, "Deployment", "shop-web")["spec"]
    for case in ("defaults", "fixed3", "static"):
        assert not [m for m in export(case) if m["kind"] == "HorizontalPodAutoscaler"]
    assert only(export("fixed3"), "Deployment")["spec"]["replicas"] == 3
    pinned = export_manifests(release(parse_manifest({"scale": {"web": {"min": 3, "max": 3}}})))
    assert not [m for m in pinned if m["kind"] == "HorizontalPodAutoscaler"]
    assert only(pinned, "Deployment")["spec"]["replicas"] == 3
    worker = export_manifests(release(parse_manifest(
        {"processes": {"worker": "w"}, "scale": {"worker": {"min": 1, "max": 3}}})))
    assert kinds(worker)[-1] == "HorizontalPodAutoscaler/shop-worker"
    assert "replicas" not in only(worker, "Deployment", "shop-worker")["spec"]


@pytest.mark.parametrize(("scale", "budget"), [
    (1, None),
    (2, {"minAvailable": 1}),
    (3, {"minAvailable": 1}),
    ({"min": 2, "max": 5}, {"minAvailable": 1}),
    # minAvailable 1 over a single pod would block `kubectl drain` forever
    ({"min": 1, "max": 4}, {"maxUnavailable": 1}),
    ({"min": 1, "max": 1}, None),
])
def test_the_disruption_budget_rule(scale: Any, budget: dict[str, int] | None) -> None:
    manifests = export_manifests(release(parse_manifest({"scale": {"web": scale}})))
    pdbs = [m for m in manifests if m["kind"] == "PodDisruptionBudget"]
    if budget is None:
        assert pdbs == []
        return
    (pdb,) = pdbs
    spec = dict(pdb["spec"])
    assert spec.pop("selector") == {"matchLabels": {
        "app.kubernetes.io/name": "shop", "app.kubernetes.io/instance": "shop",
        "app.kubernetes.io/component": "web"}}
    assert spec.pop("unhealthyPodEvictionPolicy") == "AlwaysAllow"
    assert spec == budget


def test_service_and_ingress() -> None:
    manifests = export("full")
    service = only(manifests, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http",
                                         "protocol": "TCP"}]
    ingress = only(manifests, "Ingress")
    hosts = ["shop.example.com", "www.shop.example.com", "shop.apps.example.net"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer":
                                                  "letsencrypt-prod"}
    assert ingress["spec"]["tls"] == [{"hosts": hosts, "secretName": "shop-tls"}]
    assert [r["host"] for r in ingress["spec"]["rules"]] == hosts
    for rule in ingress["spec"]["rules"]:
        assert rule["http"]["paths"] == [{"path": "/", "pathType": "Prefix", "backend": {
            "service": {"name": "shop", "port": {"name": "http"}}}}]
    # the domain host is not repeated when routes.hosts already has it
    rel = release(parse_manifest({"routes": {"hosts": ["shop.example.com"]}}))
    again = only(export_manifests(rel, domain="example.com"), "Ingress")
    assert [r["host"] for r in again["spec"]["rules"]] == ["shop.example.com"]
    plain = only(export("fixed3"), "Ingress")
    assert "ingressClassName" not in plain["spec"] and "annotations" not in plain["metadata"]
    assert not [m for m in export("defaults") if m["kind"] == "Ingress"]


def test_no_web_means_no_service() -> None:
    rel = release(parse_manifest({"processes": {"worker": "w"}, "scale": {"web": 0,
                                                                          "worker": 1}}))
    assert kinds(export_manifests(rel)) == ["ConfigMap/shop-config", "Deployment/shop-worker"]


# --- output ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["full", "static"])
def test_yaml_is_byte_for_byte_stable(case: str) -> None:
    text = to_yaml(export(case))
    assert text == to_yaml(export(case))
    assert "&id" not in text and "*id" not in text  # no YAML aliases
    assert text.startswith("---\n")
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("NOOPS_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"output changed; NOOPS_UPDATE_GOLDEN=1 rewrites {golden}"


def test_insertion_order_does_not_change_the_yaml() -> None:
    rel, kwargs = CASES["full"]
    shuffled = dataclasses.replace(
        rel, config=dict(reversed(rel.config.items())),
        secret_keys=tuple(reversed(rel.secret_keys)),
        spec=dataclasses.replace(rel.spec, env=dict(reversed(rel.spec.env.items())),
                                 processes=dict(reversed(rel.spec.processes.items())),
                                 scale=dict(reversed(rel.spec.scale.items()))))
    assert to_yaml(export_manifests(shuffled, **kwargs)) == to_yaml(export("full"))


def test_write_manifests_one_file_per_object_and_no_stale_ones(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    keep = out / "00-namespace.yaml"
    out.mkdir()
    keep.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n")
    manifests = export("full")
    paths = write_manifests(manifests, out)
    assert [p.name for p in paths] == [
        "01-configmap-shop-config.yaml", "02-secret-shop-secrets.yaml",
        "03-deployment-shop-web.yaml", "04-deployment-shop-email-sender.yaml",
        "05-deployment-shop-worker.yaml", "06-service-shop.yaml", "07-ingress-shop.yaml",
        "08-poddisruptionbudget-shop-web.yaml", "09-horizontalpodautoscaler-shop-web.yaml"]
    assert [yaml.safe_load(p.read_text()) for p in paths] == applied(manifests)
    # a smaller release removes the files of objects it no longer has, and nothing else
    smaller = write_manifests(export("defaults"), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [keep.name, *(p.name for p in smaller)])


def test_write_manifests_reports_an_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot write the manifests"):
        write_manifests(export("defaults"), blocker / "k8s")


# --- refusals ----------------------------------------------------------------------------

REFUSALS: list[tuple[Callable[[], object], str]] = [
    (lambda: export_manifests(release(app="Shop")), "rename the app"),
    (lambda: export_manifests(release(app="1shop")), "start with a letter"),
    (lambda: export_manifests(release(app="a" * 64)), "at most 63"),
    (lambda: export_manifests(release(image="registry.example.com/shop:latest")),
     "pinned by digest"),
    (lambda: export_manifests(release(version=0)), "release version"),
    (lambda: export_manifests(release(parse_manifest(
        {"processes": {"w_a": "x", "w-a": "y"}, "scale": {"w_a": 1, "w-a": 1}}))),
     "rename one of them"),
    (lambda: export_manifests(release(parse_manifest(
        {"processes": {"w" * 60: "x"}, "scale": {"w" * 60: 1}}))), "rename the process type"),
    (lambda: export_manifests(release(parse_manifest(
        {"health": {"liveness": {"successes": 2}}}))), "health.liveness.successes"),
    (lambda: export_manifests(release(parse_manifest(
        {"health": {"startup": {"successes": 3}}}))), "health.startup.successes"),
    (lambda: export_manifests(release(parse_manifest(
        {"scale": {"web": {"min": 0, "max": 3}}}))), "min to 1"),
    (lambda: export_manifests(release(config={"bad-name": "1"})), "environment variable"),
    (lambda: export_manifests(release(config={"K": "1"}, secret_keys=("K",))),
     "both config and secret"),
    (lambda: export_manifests(release(config={"BIG": "x" * (1024 * 1024)})), "1 MiB"),
    (lambda: export_manifests(release(AppSpec(hosts=("*.example.com",)))), "routes.hosts"),
    (lambda: export_manifests(release(), domain="bad_domain"), "--domain"),
    (lambda: export_manifests(release(), namespace="Prod"), "namespace"),
    (lambda: export_manifests(release(), ingress_class="nginx class"), "ingress class"),
]


@pytest.mark.parametrize(("call", "hint"), REFUSALS, ids=[h for _, h in REFUSALS])
def test_what_kubernetes_cannot_express_is_refused_with_a_way_out(
        call: Callable[[], object], hint: str) -> None:
    with pytest.raises(UsageError, match=re.escape(hint)):
        call()


# --- any app noops accepts ---------------------------------------------------------------

PROCESS_TYPES = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
ENV_KEYS = st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True)


@st.composite
def releases(draw: st.DrawFn) -> ReleaseInfo:
    types = draw(st.lists(PROCESS_TYPES, max_size=3, unique=True))
    scale: dict[str, Scale] = {}
    for t in ["web", *types]:
        if draw(st.booleans()):
            lo = draw(st.integers(0, 4))
            scale[t] = Scale(lo, lo, draw(st.integers(lo, 6)), draw(st.integers(1, 100)))
        else:
            scale[t] = Scale(draw(st.integers(0, 4)))
    seconds = st.floats(0.05, 120, allow_nan=False)
    spec = AppSpec(
        processes={t: ProcessDef(t, ("run",), False, "Procfile") for t in types},
        scale=scale,
        health_path=draw(st.sampled_from(["/", "/healthz", "/a/b?x=1"])),
        memory_bytes=draw(st.integers(4 * 1024 * 1024, 64 * 1024**3)),
        cpu_millis=draw(st.integers(1, 64000)),
        env=draw(st.dictionaries(ENV_KEYS, st.text(max_size=20), max_size=3)),
        hosts=tuple(draw(st.lists(st.sampled_from(["a.example.com", "b.example.org"]),
                                  unique=True))),
        grace_s=draw(seconds), drain_s=draw(seconds),
    )
    spec = dataclasses.replace(spec, startup=dataclasses.replace(
        spec.startup, period_s=draw(seconds), timeout_s=draw(seconds)))
    app = draw(st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True))
    return release(spec, app=app, version=draw(st.integers(1, 10**6)),
                   config=draw(st.dictionaries(ENV_KEYS, st.text(max_size=20), max_size=3)),
                   secret_keys=tuple(draw(st.lists(ENV_KEYS.map(lambda k: "S_" + k),
                                                   max_size=2))))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(releases(), st.sampled_from([None, "prod"]), st.sampled_from([None, "example.net"]))
def test_any_release_exports_valid_objects_or_is_refused(
        rel: ReleaseInfo, namespace: str | None, domain: str | None) -> None:
    try:
        manifests = export_manifests(rel, namespace=namespace, domain=domain)
    except UsageError:
        return
    objects = applied(manifests)
    assert [schema_error(m, OLDEST) for m in objects] == [None] * len(objects)
    assert api_server_problems(objects) == []
    assert to_yaml(manifests) == to_yaml(export_manifests(rel, namespace=namespace,
                                                          domain=domain))
