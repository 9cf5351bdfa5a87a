"""noops.gate._pep_sso in-process: what the front door tests cannot wait for (a code's expiry)
and the bookkeeping of codes."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from noops.gate import _pep_sso
from noops.gate._pep_types import Request
from noops.gate.identity import IdentityStore
from noops.gate.mtls import load_or_create_ca
from noops.gate.pep import GateFiles, Gatekeeper

STATE = "s" * 43


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gatekeeper]:
    files = GateFiles(tmp_path / "gate")
    files.root.mkdir(mode=0o700)
    identities = IdentityStore(files.identity_db, hasher=PasswordHasher(time_cost=1, memory_cost=8,
                                                                        parallelism=1))
    identities.add_user("ada", "correct horse")
    g = Gatekeeper(files, ca=load_or_create_ca(files.ca), identities=identities, port=8443,
                   sso_host="auth.localhost")
    g.knows_host = {"app.localhost"}.__contains__
    try:
        yield g
    finally:
        g.close()
        identities.close()


def _request(host: str, path: str, query: dict[str, str], cookies: dict[str, str]) -> Request:
    return Request(method="GET", host=host, app="" if host == "auth.localhost" else "app", path=path,
                   query=urllib.parse.urlencode(query),
                   cookie_header="; ".join(f"{k}={v}" for k, v in cookies.items()), authorization="",
                   client_ip="127.0.0.1", request_id="r", browser=True)


def _issue(gate: Gatekeeper, secret: str | None = None, *, mfa: bool = False) -> str:
    if secret is None:
        _sid, secret = gate.identities.create_session("ada", auth_methods={"password"},
                                                      client_ip="127.0.0.1")
    assert gate.sso is not None
    query = {"host": "app.localhost", "rd": "/", "state": STATE, **({"mfa": "1"} if mfa else {})}
    status, headers, _ = gate.sso.issue(_request("auth.localhost", "/.noops/sso", query,
                                                 {"__Host-noops_session": secret}))
    assert status == 303
    location = dict(headers)["Location"]
    if location.startswith("/.noops/verify?"):
        return "verify"
    assert location.startswith("https://app.localhost:8443/.noops/sso/callback?")
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["code"]


def _redeem(gate: Gatekeeper, code: str) -> int:
    assert gate.sso is not None
    status, _headers, _ = gate.sso.redeem(_request("app.localhost", "/.noops/sso/callback",
                                                   {"code": code, "rd": "/"}, {"__Host-noops_sso": STATE}))
    return status


def test_a_code_expires(gate: Gatekeeper, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _issue(gate)
    later = time.time() + _pep_sso.CODE_TTL_S + 1
    monkeypatch.setattr(_pep_sso.time, "time", lambda: later)
    assert _redeem(gate, code) == 400
    monkeypatch.undo()
    assert _redeem(gate, _issue(gate)) == 303


def test_codes_are_bounded_and_expired_ones_pruned(gate: Gatekeeper, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pep_sso, "_MAX_CODES", 3)
    codes = [_issue(gate) for _ in range(3)]
    later = time.time() + _pep_sso.CODE_TTL_S + 1
    monkeypatch.setattr(_pep_sso.time, "time", lambda: later)
    fresh = _issue(gate)  # the full table is pruned of the expired three first
    assert gate.sso is not None and list(gate.sso._codes) == [fresh]
    assert all(_redeem(gate, c) == 400 for c in codes)


def test_a_flood_of_codes_evicts_the_oldest(gate: Gatekeeper, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pep_sso, "_MAX_CODES", 3)
    codes = [_issue(gate) for _ in range(5)]
    assert [_redeem(gate, c) for c in codes] == [400, 400, 303, 303, 303]


def test_one_sign_in_cannot_crowd_out_the_others(gate: Gatekeeper, monkeypatch: pytest.MonkeyPatch) -> None:
    _sid, secret = gate.identities.create_session("ada", auth_methods={"password"}, client_ip="127.0.0.1")
    mine = [_issue(gate, secret) for _ in range(_pep_sso._MAX_CODES_PER_SESSION + 5)]
    theirs = _issue(gate)
    assert gate.sso is not None and len(gate.sso._codes) == _pep_sso._MAX_CODES_PER_SESSION + 1
    assert _redeem(gate, mine[0]) == 400 and _redeem(gate, mine[-1]) == 303 and _redeem(gate, theirs) == 303


def test_a_step_up_through_the_sign_in_host_wants_a_fresh_code(gate: Gatekeeper) -> None:
    now = time.time()
    _sid, secret = gate.identities.create_session("ada", auth_methods={"password"}, client_ip="127.0.0.1",
                                                  now=now - 300)
    assert _issue(gate, secret, mfa=True) == "verify"  # no second factor at all
    gate.forget_session(secret)
    _session, secret = gate.identities.step_up(secret, "totp", now=now - 120)
    assert _issue(gate, secret, mfa=True) == "verify"  # shown two minutes ago: not for a step-up
    assert _issue(gate, secret) != "verify"  # a plain sign-in takes it
    gate.forget_session(secret)
    _session, secret = gate.identities.step_up(secret, "totp", now=now)
    code = _issue(gate, secret, mfa=True)
    assert code != "verify" and _redeem(gate, code) == 303
