"""noops.gate.trust: signals to an explainable 0-100 score."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from noops.errors import NoopsError
from noops.gate.trust import Signal, TrustConfig, TrustConfigError, score

NOW = datetime(2026, 5, 6, 10, 0, tzinfo=UTC)   # a Wednesday, 12:00 in Berlin
CFG = TrustConfig.from_dict({
    "trusted_cidrs": ["10.0.0.0/8"],
    "blocked_cidrs": ["203.0.113.0/24"],
    "timezone": "Europe/Berlin",
    "time_windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "07:00", "end": "20:00"}],
    "weights": {"device_cert": 10},
    "penalties": {"off_hours": 5},
})


def v(name: str, value: object, age_s: float = 0.0) -> Signal:
    return Signal(name, "verified", value, age_s)


def test_explains_each_contribution() -> None:
    result = score([v("auth", "oidc_mfa", 600), v("device_cert", "enrolled", 3 * 86400),
                    Signal("client_ip", "observed", "10.1.2.3", 0)], CFG, NOW)
    lines = [str(c) for c in result.contributions]
    assert lines[0] == "auth +40 verified (oidc_mfa 10 min ago)"
    assert lines[1] == "device_cert +10 verified (enrolled 3 days ago)"
    assert lines[2] == "client_ip +10 observed (10.1.2.3 in a trusted network)"
    assert lines[3] == "time_of_day +10 observed (Wed 12:00 Europe/Berlin inside the allowed hours)"
    assert result.score == 70
    assert result.hard_denies == []
    assert "score 70" in result.explain()


def test_claimed_and_missing_count_zero() -> None:
    claimed = [Signal("auth", "claimed", "oidc_mfa", 0), Signal("device_cert", "claimed", "enrolled", 0),
               Signal("client_ip", "claimed", "10.0.0.1", 0),
               Signal("client_ip", "claimed", "203.0.113.9", 0)]
    result = score(claimed, TrustConfig(), NOW)
    assert result.score == 0
    assert result.hard_denies == []   # a claimed address cannot get anyone blocked either
    assert all(c.points == 0 and "claimed" in c.reason for c in result.contributions)
    assert score([], TrustConfig(), NOW).score == 0


def test_auth_and_device_must_be_verified() -> None:
    result = score([Signal("auth", "observed", "oidc", 0), Signal("device_cert", "observed", "enrolled", 0)],
                   TrustConfig(), NOW)
    assert result.score == 0
    assert [c.reason for c in result.contributions] == ["authentication must be verified",
                                                        "device certificate must be verified"]


def test_freshness_password_older_than_12h_counts_zero() -> None:
    assert score([v("auth", "password", 11 * 3600)], TrustConfig(), NOW).score == 15
    stale = score([v("auth", "password", 13 * 3600)], TrustConfig(), NOW)
    assert stale.score == 0
    assert "older than 12 h" in stale.contributions[0].reason


def test_hard_denies() -> None:
    result = score([v("device_cert", "revoked", 10), Signal("client_ip", "observed", "203.0.113.7", 0),
                    Signal("client_ip", "observed", "::ffff:203.0.113.8", 0)], CFG, NOW)
    assert result.hard_denies == ["blocked_network", "device_revoked"]


def test_behaviour_penalties_and_clamp() -> None:
    result = score([v("auth", "totp"), Signal("failed_logins", "observed", 9, 0),
                    Signal("request_rate", "observed", 500, 0), Signal("new_device", "observed", True, 0),
                    Signal("new_network", "observed", False, 0)], TrustConfig(), NOW)
    points = {c.signal: c.points for c in result.contributions}
    assert points == {"auth": 30, "failed_logins": -50, "request_rate": -20, "new_device": -15,
                      "new_network": 5}
    assert result.score == 0


def test_duplicates_cannot_hide_a_penalty() -> None:
    result = score([Signal("new_device", "observed", True, 0), Signal("new_device", "observed", False, 0),
                    v("auth", "password"), v("auth", "oidc_mfa")], TrustConfig(), NOW)
    points = [c.points for c in result.contributions]
    assert points == [-15, 5, 0, 40]
    assert result.score == 30


def test_off_hours_and_window_wrapping_midnight() -> None:
    saturday = datetime(2026, 5, 9, 10, 0, tzinfo=UTC)
    result = score([], CFG, saturday)
    assert [(c.signal, c.points) for c in result.contributions] == [("time_of_day", -5)]
    night = TrustConfig.from_dict({"time_windows": [{"days": ["fri"], "start": "22:00", "end": "02:00"}]})
    assert score([], night, datetime(2026, 5, 9, 1, 0, tzinfo=UTC)).contributions[0].points == 10  # Sat 01:00
    assert score([], night, datetime(2026, 5, 10, 1, 0, tzinfo=UTC)).contributions[0].points == 0   # Sun


def test_odd_inputs_count_zero_without_raising() -> None:
    result = score([v("auth", "kerberos"), v("mystery", 1), v("auth", "oidc", -5),
                    v("auth", "oidc", float("nan")), Signal("client_ip", "observed", "not-an-ip", 0),
                    Signal("request_rate", "observed", "fast", 0), Signal("auth", "bogus", "oidc", 0)],  # type: ignore[arg-type]
                   TrustConfig(), NOW)
    assert result.score == 0
    with pytest.raises(TrustConfigError, match="timezone-aware"):
        score([], TrustConfig(), datetime(2026, 1, 1))


@pytest.mark.parametrize(("data", "field"), [
    ({"weights": {"auth_totp": -5}}, "weights.auth_totp"),
    ({"weights": {"auth_totp": float("nan")}}, "weights.auth_totp"),
    ({"weights": {"auth_totp": True}}, "weights.auth_totp"),
    ({"weights": {"auth_kerberos": 5}}, "weights.auth_kerberos"),
    ({"penalties": {"new_device": 101}}, "penalties.new_device"),
    ({"max_age_s": {"auth_password": 0}}, "max_age_s.auth_password"),
    ({"trusted_cidrs": ["10.0.0.1/8"]}, "trusted_cidrs[0]"),
    ({"blocked_cidrs": "10.0.0.0/8"}, "blocked_cidrs"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"time_windows": [{"days": ["mon"], "start": "25:00", "end": "08:00"}]}, "time_windows[0].start"),
    ({"time_windows": [{"days": ["funday"], "start": "07:00", "end": "08:00"}]}, "time_windows[0].days"),
    ({"rate_limit_per_min": 0}, "rate_limit_per_min"),
    ({"wieghts": {}}, "wieghts"),
])
def test_config_validation_names_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(TrustConfigError) as info:
        TrustConfig.from_dict(data)
    assert field in str(info.value)
    assert isinstance(info.value, NoopsError)


def test_from_toml() -> None:
    cfg = TrustConfig.from_toml('trusted_cidrs = ["192.168.0.0/16"]\n[weights]\nauth_oidc = 50\n')
    assert cfg.weights["auth_oidc"] == 50
    assert cfg.weights["auth_totp"] == 30
    with pytest.raises(TrustConfigError, match="not valid TOML"):
        TrustConfig.from_toml("weights = [")


# -- properties ------------------------------------------------------------------------------------

_values = {
    "auth": st.sampled_from(["password", "totp", "oidc", "oidc_mfa", "x"]),
    "device_cert": st.sampled_from(["enrolled", "revoked", "?"]),
    "client_ip": st.sampled_from(["10.0.0.1", "203.0.113.5", "192.0.2.1", "::1", "bad"]),
    "request_rate": st.floats(min_value=0, max_value=1000),
    "failed_logins": st.integers(min_value=0, max_value=20),
    "new_device": st.booleans(),
    "new_network": st.booleans(),
}


@st.composite
def signals(draw: st.DrawFn, sources: tuple[str, ...] = ("verified", "observed", "claimed")) -> Signal:
    name = draw(st.sampled_from(sorted(_values)))
    return Signal(name, draw(st.sampled_from(sources)), draw(_values[name]),  # type: ignore[arg-type]
                  draw(st.floats(min_value=0, max_value=200_000)))


moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                       timezones=st.just(UTC))


@given(st.lists(signals()), signals(("verified",)), moments)
def test_adding_a_positive_verified_signal_never_lowers_the_score(
        base: list[Signal], extra: Signal, now: datetime) -> None:
    alone = score([extra], CFG, now)
    own = next(c for c in alone.contributions if c.signal == extra.name)
    before = score(base, CFG, now)
    after = score([*base, extra], CFG, now)
    if own.points >= 0:
        assert after.score >= before.score
    assert 0 <= after.score <= 100


@given(st.lists(signals()), st.lists(signals(("claimed",))), moments)
def test_claimed_signals_never_count(base: list[Signal], claimed: list[Signal], now: datetime) -> None:
    before = score(base, CFG, now)
    after = score([*base, *claimed], CFG, now)
    assert after.score == before.score
    assert after.hard_denies == before.hard_denies
    assert score(base, CFG, now) == before   # deterministic
