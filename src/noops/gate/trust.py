"""Signals in, an explainable 0-100 trust score out (the score-based trust algorithm of
NIST SP 800-207 §3.3.1).

The gateway collects :class:`Signal` values for a request and calls :func:`score` on every
request, so this module does no I/O and keeps its work to one pass over the signals.

Rules (each one is tested):

* **Only what the gateway knows counts.** A signal's ``source`` is ``"verified"`` (checked
  cryptographically: a session, an OIDC token, a client certificate), ``"observed"`` (seen by the
  gateway itself: the socket peer address, its own request counters) or ``"claimed"`` (taken from
  something the client sent, such as a header). Claimed signals count 0 and never cause a hard
  deny either: a client cannot move its own score in any direction. Authentication and device
  signals must be ``verified``; network, behaviour and time may be ``verified`` or ``observed``.
* **Missing counts 0.** There is no default credit; a signal the gateway did not send adds
  nothing. Unknown signal names count 0 (with a reason) instead of raising on the hot path.
* **Freshness.** A signal older than its ``max_age_s`` limit counts 0 (a password login of 13 h
  ago with the default 12 h limit adds nothing).
* **Duplicates.** For each signal name the best bonus and the worst penalty count; other
  duplicates are listed with 0 points. A duplicate can therefore never hide a penalty, and adding
  a signal that earns points never lowers the score (the property tests check this).
* **Hard denies** (``device_revoked``, ``blocked_network``) are reasons the policy must deny for,
  whatever the score.
* The total is clamped to 0..100; the result is a pure function of (signals, config, now).

Known signals (``name``: ``value``; ``age_s`` is how old the fact is):

============== ============================================ ======================================
name           value                                        points
============== ============================================ ======================================
auth           ``"password" | "totp" | "oidc" |             ``weights.auth_<method>``; ``age_s`` is
               "oidc_mfa"`` (strongest method of the        time since that login
               session)
device_cert    ``"enrolled" | "revoked"``                   ``weights.device_cert``; ``age_s`` is
                                                            time since enrolment; revoked: hard deny
client_ip      an IP address string                         ``weights.trusted_network`` inside
                                                            ``trusted_cidrs``; hard deny inside
                                                            ``blocked_cidrs``
request_rate   requests per minute (number)                 ``weights.normal_rate`` up to
                                                            ``rate_limit_per_min``, else
                                                            ``-penalties.excessive_rate``
failed_logins  recent failed logins (int >= 0)              ``-penalties.failed_login`` each, at
                                                            most ``max_failed_logins`` counted
new_device     bool (first time this user uses it)          ``weights.known_device`` or
                                                            ``-penalties.new_device``
new_network    bool                                         ``weights.known_network`` or
                                                            ``-penalties.new_network``
============== ============================================ ======================================

The time of day is not a signal: when ``time_windows`` are configured, ``now`` (converted to
``timezone``) inside a window adds ``weights.time_window``, outside subtracts
``penalties.off_hours``.

Config (dict or TOML; every key optional, defaults in :data:`DEFAULT_WEIGHTS`,
:data:`DEFAULT_PENALTIES`, :data:`DEFAULT_MAX_AGE_S`)::

    trusted_cidrs = ["10.0.0.0/8"]
    blocked_cidrs = ["203.0.113.0/24"]
    timezone = "Europe/Berlin"
    rate_limit_per_min = 120
    max_failed_logins = 5
    [weights]                 # points added, integers 0..100
    auth_oidc_mfa = 40
    [penalties]               # points subtracted, integers 0..100 (never negative)
    new_device = 15
    [max_age_s]               # seconds; keys are auth_<method> or a signal name
    auth_password = 43200
    [[time_windows]]
    days = ["mon", "tue", "wed", "thu", "fri"]
    start = "07:00"
    end = "20:00"             # end < start wraps past midnight
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from noops.gate._errors import GateError

__all__ = [
    "AUTH_METHODS",
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_PENALTIES",
    "DEFAULT_WEIGHTS",
    "Contribution",
    "Signal",
    "SignalSource",
    "TimeWindow",
    "TrustConfig",
    "TrustConfigError",
    "TrustResult",
    "score",
]

SignalSource = Literal["verified", "observed", "claimed"]
AUTH_METHODS: Final = ("password", "totp", "oidc", "oidc_mfa")

DEFAULT_WEIGHTS: Final[Mapping[str, int]] = {
    "auth_password": 15,
    "auth_totp": 30,
    "auth_oidc": 30,
    "auth_oidc_mfa": 40,
    "device_cert": 25,
    "trusted_network": 10,
    "normal_rate": 5,
    "known_device": 5,
    "known_network": 5,
    "time_window": 10,
}
DEFAULT_PENALTIES: Final[Mapping[str, int]] = {
    "excessive_rate": 20,
    "failed_login": 10,
    "new_device": 15,
    "new_network": 10,
    "off_hours": 0,
}
DEFAULT_MAX_AGE_S: Final[Mapping[str, float]] = {
    "auth_password": 12 * 3600.0,
    "auth_totp": 12 * 3600.0,
    "auth_oidc": 12 * 3600.0,
    "auth_oidc_mfa": 12 * 3600.0,
    "device_cert": 90 * 86400.0,   # enrolment older than this: re-enrol
    "client_ip": 60.0,
    "request_rate": 300.0,
    "failed_logins": 86400.0,
    "new_device": 3600.0,
    "new_network": 3600.0,
}
_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_USER_SOURCES: Final = frozenset({"verified"})
_GATEWAY_SOURCES: Final = frozenset({"verified", "observed"})
_CONFIG_KEYS: Final = frozenset({"weights", "penalties", "max_age_s", "trusted_cidrs", "blocked_cidrs",
                                 "timezone", "time_windows", "rate_limit_per_min", "max_failed_logins"})

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustConfigError(GateError):
    """The trust configuration is invalid; the message names the field and the fix."""

    exit_code = 2
    http_status = 400


@dataclass(frozen=True, slots=True)
class Signal:
    """One fact about a request. ``age_s`` is how old the fact is, in seconds."""

    name: str
    source: SignalSource
    value: object
    age_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one signal added to the score, and why. ``str()`` is the one-line explanation."""

    signal: str
    source: str
    points: int
    reason: str

    def __str__(self) -> str:
        return f"{self.signal} {self.points:+d} {self.source} ({self.reason})"


@dataclass(frozen=True, slots=True)
class TrustResult:
    """The score (0..100), one contribution per signal (in input order, time window last) and
    the hard-deny reason codes (sorted, unique)."""

    score: int
    contributions: list[Contribution]
    hard_denies: list[str]

    def explain(self) -> str:
        """Every contribution on its own line, then the total."""
        lines = [str(c) for c in self.contributions]
        lines.extend(f"hard deny: {reason}" for reason in self.hard_denies)
        lines.append(f"score {self.score}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Days (0 = Monday) and minutes after midnight; ``end_min < start_min`` wraps midnight."""

    days: frozenset[int]
    start_min: int
    end_min: int

    def contains(self, weekday: int, minute: int) -> bool:
        if self.start_min <= self.end_min:
            return weekday in self.days and self.start_min <= minute < self.end_min
        if minute >= self.start_min:
            return weekday in self.days
        # the early-morning part of a window that started the day before
        return (weekday - 1) % 7 in self.days and minute < self.end_min


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """Validated weights, penalties, freshness limits, networks and time windows.

    Build it with :meth:`from_dict` / :meth:`from_toml` (which validate) or ``TrustConfig()``
    for the defaults.
    """

    weights: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    penalties: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PENALTIES))
    max_age_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_AGE_S))
    trusted_cidrs: tuple[IPNetwork, ...] = ()
    blocked_cidrs: tuple[IPNetwork, ...] = ()
    timezone: str = "UTC"
    time_windows: tuple[TimeWindow, ...] = ()
    rate_limit_per_min: float = 120.0
    max_failed_logins: int = 5

    @classmethod
    def from_toml(cls, text: str) -> TrustConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TrustConfigError(f"trust config is not valid TOML ({exc}); fix the syntax") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrustConfig:
        """Validate ``data``; a :class:`TrustConfigError` names the first bad field."""
        if not isinstance(data, Mapping):
            raise TrustConfigError("trust config must be a table of settings")
        for key in data:
            if key not in _CONFIG_KEYS:
                raise TrustConfigError(
                    f"trust config: unknown field {key!r}; known fields: {', '.join(sorted(_CONFIG_KEYS))}")
        weights = _points_table(data.get("weights", {}), "weights", DEFAULT_WEIGHTS)
        penalties = _points_table(data.get("penalties", {}), "penalties", DEFAULT_PENALTIES)
        max_age = _age_table(data.get("max_age_s", {}))
        tz = data.get("timezone", "UTC")
        if not isinstance(tz, str):
            raise TrustConfigError("trust config: timezone must be an IANA name such as 'Europe/Berlin'")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise TrustConfigError(
                f"trust config: timezone {tz!r} is unknown; use an IANA name such as 'Europe/Berlin' "
                "(install the tzdata package if none are found)") from exc
        rate = data.get("rate_limit_per_min", 120.0)
        if (isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate)
                or rate <= 0):
            raise TrustConfigError("trust config: rate_limit_per_min must be a positive number")
        max_failed = data.get("max_failed_logins", 5)
        if isinstance(max_failed, bool) or not isinstance(max_failed, int) or not 0 <= max_failed <= 100:
            raise TrustConfigError("trust config: max_failed_logins must be an integer 0..100")
        return cls(
            weights=weights,
            penalties=penalties,
            max_age_s=max_age,
            trusted_cidrs=_cidrs(data.get("trusted_cidrs", []), "trusted_cidrs"),
            blocked_cidrs=_cidrs(data.get("blocked_cidrs", []), "blocked_cidrs"),
            timezone=tz,
            time_windows=_windows(data.get("time_windows", [])),
            rate_limit_per_min=float(rate),
            max_failed_logins=max_failed,
        )


def _points_table(raw: object, name: str, defaults: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        raise TrustConfigError(f"trust config: {name} must be a table of integers")
    out = dict(defaults)
    for key, value in raw.items():
        if key not in defaults:
            raise TrustConfigError(
                f"trust config: {name}.{key} is not a known field; known: {', '.join(sorted(defaults))}")
        # bool is an int subclass and NaN is a float: both rejected, as are negative numbers
        # (penalties are written as positive numbers that are subtracted).
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise TrustConfigError(
                f"trust config: {name}.{key} must be an integer 0..100, got {value!r}")
        out[key] = value
    return out


def _age_table(raw: object) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise TrustConfigError("trust config: max_age_s must be a table of seconds")
    out = dict(DEFAULT_MAX_AGE_S)
    for key, value in raw.items():
        if key not in DEFAULT_MAX_AGE_S:
            raise TrustConfigError(
                f"trust config: max_age_s.{key} is not a known field; "
                f"known: {', '.join(sorted(DEFAULT_MAX_AGE_S))}")
        if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                or value <= 0):
            raise TrustConfigError(f"trust config: max_age_s.{key} must be a positive number of seconds")
        out[key] = float(value)
    return out


def _cidrs(raw: object, name: str) -> tuple[IPNetwork, ...]:
    if not isinstance(raw, list):
        raise TrustConfigError(f"trust config: {name} must be a list of CIDRs such as '10.0.0.0/8'")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise TrustConfigError(f"trust config: {name}[{i}] must be a CIDR string such as '10.0.0.0/8'")
        try:
            out.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise TrustConfigError(
                f"trust config: {name}[{i}] {item!r} is not a CIDR ({exc}); write e.g. '10.0.0.0/8'") from exc
    return tuple(out)


def _minutes(raw: object, where: str) -> int:
    if isinstance(raw, str) and len(raw) == 5 and raw[2] == ":" and raw[:2].isdigit() and raw[3:].isdigit():
        hours, minutes = int(raw[:2]), int(raw[3:])
        if (hours < 24 and minutes < 60) or (hours == 24 and minutes == 0):
            return hours * 60 + minutes
    raise TrustConfigError(f"trust config: {where} must be a time 'HH:MM' between 00:00 and 24:00")


def _windows(raw: object) -> tuple[TimeWindow, ...]:
    if not isinstance(raw, list):
        raise TrustConfigError("trust config: time_windows must be a list of tables")
    out = []
    for i, item in enumerate(raw):
        where = f"time_windows[{i}]"
        if not isinstance(item, Mapping):
            raise TrustConfigError(f"trust config: {where} must be a table with days, start and end")
        extra = set(item) - {"days", "start", "end"}
        if extra:
            raise TrustConfigError(f"trust config: {where}.{sorted(extra)[0]} is not a known field "
                                   "(use days, start, end)")
        days = item.get("days", list(_DAYS))
        if not isinstance(days, list) or not days or any(d not in _DAYS for d in days):
            raise TrustConfigError(f"trust config: {where}.days must be a list of {', '.join(_DAYS)}")
        start = _minutes(item.get("start"), f"{where}.start")
        end = _minutes(item.get("end"), f"{where}.end")
        if start == end:
            raise TrustConfigError(f"trust config: {where} is empty (start == end); widen it or remove it")
        out.append(TimeWindow(frozenset(_DAYS.index(d) for d in days), start, end))
    return tuple(out)


# -- scoring -------------------------------------------------------------------------------------


def _age_text(age_s: float) -> str:
    if age_s < 120:
        return f"{age_s:.0f} s"
    if age_s < 7200:
        return f"{age_s / 60:.0f} min"
    if age_s < 2 * 86400:
        return f"{age_s / 3600:.0f} h"
    return f"{age_s / 86400:.0f} days"


def _in_any(address: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: tuple[IPNetwork, ...]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped   # ::ffff:203.0.113.7 is 203.0.113.7
    return any(address in net for net in nets)


def _rate(value: object, cfg: TrustConfig) -> tuple[int, str]:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0, "invalid value"
    if value <= cfg.rate_limit_per_min:
        return cfg.weights["normal_rate"], f"{value:g}/min within {cfg.rate_limit_per_min:g}/min"
    return -cfg.penalties["excessive_rate"], f"{value:g}/min over {cfg.rate_limit_per_min:g}/min"


def _evaluate(sig: Signal, cfg: TrustConfig, denies: list[str]) -> tuple[int, str]:
    """Points and reason for one signal; appends hard-deny codes to ``denies``."""
    name, value, source = sig.name, sig.value, sig.source
    if source == "claimed":
        return 0, "claimed by the client, not counted"
    if source not in _GATEWAY_SOURCES:
        return 0, f"unknown source {source!r}, not counted"
    age = sig.age_s
    if not isinstance(age, int | float) or not math.isfinite(age) or age < 0:
        return 0, "invalid age, not counted"
    if name == "auth":
        if source not in _USER_SOURCES:
            return 0, "authentication must be verified"
        if value not in AUTH_METHODS:
            return 0, f"unknown method {value!r}"
        key = f"auth_{value}"
        if age > cfg.max_age_s[key]:
            return 0, f"{value} login {_age_text(age)} ago, older than {_age_text(cfg.max_age_s[key])}"
        return cfg.weights[key], f"{value} {_age_text(age)} ago"
    if name == "device_cert":
        if source not in _USER_SOURCES:
            return 0, "device certificate must be verified"
        if value == "revoked":
            denies.append("device_revoked")
            return 0, "revoked"
        if value != "enrolled":
            return 0, f"unknown state {value!r}"
        if age > cfg.max_age_s["device_cert"]:
            return 0, f"enrolled {_age_text(age)} ago, older than {_age_text(cfg.max_age_s['device_cert'])}"
        return cfg.weights["device_cert"], f"enrolled {_age_text(age)} ago"
    limit = cfg.max_age_s.get(name)
    if limit is not None and age > limit:
        return 0, f"{_age_text(age)} old, older than {_age_text(limit)}"
    if name == "client_ip":
        try:
            address = ipaddress.ip_address(value)  # type: ignore[arg-type]
        except ValueError:
            return 0, "invalid address"
        if _in_any(address, cfg.blocked_cidrs):
            denies.append("blocked_network")
            return 0, f"{address} is on the block list"
        if _in_any(address, cfg.trusted_cidrs):
            return cfg.weights["trusted_network"], f"{address} in a trusted network"
        return 0, f"{address} not in a trusted network"
    if name == "request_rate":
        return _rate(value, cfg)
    if name == "failed_logins":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return 0, "invalid value"
        counted = min(value, cfg.max_failed_logins)
        return -counted * cfg.penalties["failed_login"], f"{value} recent failed logins"
    if name in ("new_device", "new_network"):
        if not isinstance(value, bool):
            return 0, "invalid value"
        what = name[4:]
        if value:
            return -cfg.penalties[name], f"first request from this {what}"
        return cfg.weights[f"known_{what}"], f"known {what}"
    return 0, "unknown signal, not counted"


def score(signals: Iterable[Signal], config: TrustConfig, now: datetime) -> TrustResult:
    """Score ``signals`` under ``config`` at ``now`` (timezone-aware); see the module docstring."""
    if now.tzinfo is None:
        raise TrustConfigError("score() needs a timezone-aware 'now' (use datetime.now(UTC))")
    denies: list[str] = []
    evaluated: list[tuple[Signal, int, str]] = []
    best: dict[str, int] = {}    # best bonus per signal name
    worst: dict[str, int] = {}   # worst penalty per signal name
    for sig in signals:
        points, reason = _evaluate(sig, config, denies)
        evaluated.append((sig, points, reason))
        if points > 0 and points > best.get(sig.name, 0):
            best[sig.name] = points
        elif points < 0 and points < worst.get(sig.name, 0):
            worst[sig.name] = points
    contributions: list[Contribution] = []
    counted_bonus: set[str] = set()
    counted_penalty: set[str] = set()
    for sig, points, reason in evaluated:
        if points > 0:
            if points != best[sig.name] or sig.name in counted_bonus:
                points, reason = 0, f"{reason}; a stronger {sig.name} signal counts instead"
            else:
                counted_bonus.add(sig.name)
        elif points < 0:
            if points != worst[sig.name] or sig.name in counted_penalty:
                points, reason = 0, f"{reason}; a worse {sig.name} signal counts instead"
            else:
                counted_penalty.add(sig.name)
        contributions.append(Contribution(sig.name, sig.source, points, reason))
    if config.time_windows:
        local = now.astimezone(ZoneInfo(config.timezone))
        minute = local.hour * 60 + local.minute
        stamp = f"{local:%a %H:%M} {config.timezone}"
        if any(w.contains(local.weekday(), minute) for w in config.time_windows):
            contributions.append(Contribution("time_of_day", "observed", config.weights["time_window"],
                                              f"{stamp} inside the allowed hours"))
        else:
            contributions.append(Contribution("time_of_day", "observed", -config.penalties["off_hours"],
                                              f"{stamp} outside the allowed hours"))
    total = sum(c.points for c in contributions)
    return TrustResult(max(0, min(100, total)), contributions, sorted(set(denies)))
