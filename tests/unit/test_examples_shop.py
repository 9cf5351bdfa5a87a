"""The two-service example's documentation: the policy snippet in examples/README.md is a valid
policy that lets exactly the frontend's workload read the inventory."""

from __future__ import annotations

import re

from helpers import EXAMPLES
from noops.gate.policy import Identity, Policy, RequestFacts
from noops.gate.trust import TrustResult

FRONTEND = "spiffe://noops.local/app/shop-frontend/web"


def _policy() -> Policy:
    readme = (EXAMPLES / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    snippet = next(b for b in blocks if "shop-inventory" in b)
    assert FRONTEND in snippet
    return Policy.load(snippet)


def _outcome(policy: Policy, spiffe_id: str, path: str, method: str = "GET") -> str:
    facts = RequestFacts(host="shop-inventory.localhost", path=path, method=method)
    return policy.decide(facts, TrustResult(100, [], []), Identity(spiffe_id=spiffe_id)).outcome


def test_readme_policy_lets_only_the_frontend_read_the_inventory() -> None:
    policy = _policy()
    assert _outcome(policy, FRONTEND, "/items") == "allow"
    assert _outcome(policy, FRONTEND, "/items/mug") == "allow"
    assert _outcome(policy, FRONTEND, "/items", "POST") == "deny"
    assert _outcome(policy, FRONTEND, "/") == "deny"
    assert _outcome(policy, "spiffe://noops.local/app/intruder/web", "/items") == "deny"


def test_frontend_calls_the_inventory_by_its_platform_host_name() -> None:
    source = (EXAMPLES / "shop-frontend" / "app.py").read_text()
    assert "NOOPS_GATEWAY_URL" in source and "shop-inventory.localhost" in source
    assert not re.search(r"^\s*(import|from) opentelemetry", source, re.MULTILINE)
    assert "opentelemetry" not in (EXAMPLES / "shop-frontend" / "requirements.txt").read_text()
    for name in ("server.js", "package.json"):
        assert "@opentelemetry" not in (EXAMPLES / "shop-inventory" / name).read_text()


def test_people_still_sign_in_for_the_inventory_items() -> None:
    facts = RequestFacts(host="shop-inventory.localhost", path="/items", method="GET")
    for policy in (_policy(), _demo_policy()):
        anonymous = policy.decide(facts, TrustResult(100, [], []), Identity())
        assert anonymous.outcome == "deny"
        weak = policy.decide(facts, TrustResult(15, [], []), Identity(user="demo"))
        assert weak.outcome == "step_up"


def test_make_demo_applies_the_policy_the_readme_shows() -> None:
    assert _demo_policy().version == _policy().version
    assert _outcome(_demo_policy(), FRONTEND, "/items") == "allow"


def _demo_policy() -> Policy:
    from noops.demo import SHOP_ROUTE
    from noops.gate.pep import DEFAULT_POLICY

    return Policy.load(DEFAULT_POLICY + SHOP_ROUTE)
