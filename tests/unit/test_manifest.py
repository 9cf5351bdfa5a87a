"""noops.toml validation: every field checked, errors name the field and the reason."""

from __future__ import annotations

import pytest

from noops.appspec import Probe, Scale, parse_manifest, parse_memory
from noops.errors import UsageError


def test_defaults() -> None:
    spec = parse_manifest({})
    assert spec.health_path == "/" and spec.count("web") == 1 and spec.count("worker") == 0
    assert spec.readiness == Probe(2, 2, 3, 1) and spec.memory_bytes == 512 * 1024**2
    assert (spec.grace_s, spec.drain_s) == (30.0, 30.0)


def test_full_manifest() -> None:
    spec = parse_manifest({
        "processes": {"web": "gunicorn app:app", "worker": {"command": ["python", "w.py"]}},
        "scale": {"web": {"min": 2, "max": 5, "cpu_percent": 60}, "worker": 1},
        "health": {"path": "/healthz", "readiness": {"period_s": 0.5, "failures": 2}},
        "resources": {"memory": "256Mi", "cpu": "500m"},
        "env": {"DEBUG": False, "WORKERS": 4},
        "routes": {"hosts": ["Shop.Example.com"]},
        "deploy": {"grace_s": 5, "drain_s": 2},
    })
    assert spec.processes["worker"].direct and spec.processes["worker"].command == ("python", "w.py")
    assert spec.scale["web"] == Scale(2, 2, 5, 60) and spec.count("worker") == 1
    assert spec.readiness == Probe(0.5, 2, 2, 1)
    assert (spec.memory_bytes, spec.cpu_millis) == (256 * 1024**2, 500)
    assert spec.env == {"DEBUG": "false", "WORKERS": "4"}
    assert spec.hosts == ("shop.example.com",)


@pytest.mark.parametrize(("data", "field"), [
    ({"scale": {"web": -1}}, "scale.web"),
    ({"scale": {"web": {"min": 3, "max": 1}}}, "scale.web"),
    ({"health": {"path": "healthz"}}, "health.path"),
    ({"health": {"liveness": {"period_s": 0}}}, "health.liveness.period_s"),
    ({"health": {"liveness": {"failures": 1.5}}}, "health.liveness.failures"),
    ({"health": {"readiness": {"every": 3}}}, "health.readiness has unknown keys"),
    ({"resources": {"memory": "lots"}}, "resources.memory"),
    ({"resources": {"memory": "1Mi"}}, "resources.memory"),
    ({"resources": {"cpu": "-1"}}, "resources.cpu"),
    ({"env": {"1BAD": "x"}}, "env key"),
    ({"routes": {"hosts": ["not a host"]}}, "routes.hosts"),
    ({"deploy": {"grace_s": "soon"}}, "deploy.grace_s"),
    ({"dependencies": {}}, "unknown table"),
])
def test_invalid_fields_are_named(data: dict[str, object], field: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_manifest(data)
    assert field in str(err.value)


@pytest.mark.parametrize(("text", "size"), [("256Mi", 256 * 1024**2), ("1G", 10**9),
                                            ("1.5Gi", int(1.5 * 1024**3)), (8 * 1024**2, 8 * 1024**2)])
def test_memory_sizes(text: object, size: int) -> None:
    assert parse_memory(text, "m") == size
