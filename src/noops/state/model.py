"""What the state store keeps: apps, releases, instances, events, and the release state machine.

Every entity is a frozen dataclass; timestamps are timezone-aware UTC :class:`datetime` values
(stored as integer microseconds since the epoch, so they round-trip exactly on every backend).

Release status moves (anything else raises :class:`TransitionError`)::

    pending ──► active ──► superseded       a newer release became active (a deploy)
       │           └─────► rolled-back      a rollback replaced it
       └──────► failed                      the rollout never made it serve

``failed``, ``superseded`` and ``rolled-back`` are final: a rollback creates a *new* release
that copies an old one's image and config version (as Heroku does), it never revives one.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from noops.errors import UsageError
from noops.state.errors import TransitionError

__all__ = [
    "App",
    "Event",
    "InstanceRecord",
    "Release",
    "ReleaseStatus",
    "check_transition",
    "validate_app_name",
    "validate_config_key",
]

_APP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class ReleaseStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"


_MOVES: dict[ReleaseStatus, frozenset[ReleaseStatus]] = {
    ReleaseStatus.PENDING: frozenset({ReleaseStatus.ACTIVE, ReleaseStatus.FAILED}),
    ReleaseStatus.ACTIVE: frozenset({ReleaseStatus.SUPERSEDED, ReleaseStatus.ROLLED_BACK}),
    ReleaseStatus.SUPERSEDED: frozenset(),
    ReleaseStatus.ROLLED_BACK: frozenset(),
    ReleaseStatus.FAILED: frozenset(),
}


def check_transition(app: str, version: int, current: ReleaseStatus, new: ReleaseStatus) -> None:
    """Raise :class:`TransitionError` unless ``current → new`` is a legal move."""
    allowed = _MOVES[current]
    if new in allowed:
        return
    if allowed:
        hint = "it can only become " + " or ".join(sorted(allowed))
    else:
        hint = f"{current} is final; deploy or roll back to create a new release instead"
    raise TransitionError(f"release v{version} of app {app} is {current} and cannot become {new}: "
                          f"{hint}")


def validate_app_name(name: str) -> str:
    if not isinstance(name, str) or not _APP_NAME.match(name):
        raise UsageError(f"invalid app name {name!r}: use 1-63 characters, lower-case letters, "
                         "digits and '-', starting with a letter (e.g. `shop-api`)")
    return name


def validate_config_key(app: str, key: str) -> str:
    if not isinstance(key, str) or not _CONFIG_KEY.match(key):
        raise UsageError(f"invalid config key {key!r} for app {app}: an environment variable name "
                         "is letters, digits and '_', not starting with a digit (e.g. DATABASE_URL)")
    return key


def to_micros(when: dt.datetime) -> int:
    if when.tzinfo is None:
        raise UsageError(f"timestamp {when.isoformat()} has no time zone; pass an aware datetime")
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


def from_micros(micros: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=micros)


@dataclass(frozen=True)
class App:
    name: str
    created_at: dt.datetime


@dataclass(frozen=True)
class Release:
    """One immutable release; only :attr:`status` ever changes, along the state machine above.

    ``spec`` is the parsed ``noops.toml`` as JSON, ``formation`` the process counts
    (``{"web": 2}``), ``config_version`` the config (and secrets) version it runs with.
    """

    app: str
    version: int
    image_ref: str
    image_digest: str
    config_version: int
    formation: dict[str, int]
    spec: dict[str, Any]
    description: str
    status: ReleaseStatus
    created_at: dt.datetime


@dataclass(frozen=True)
class InstanceRecord:
    """What the supervisor knows of one running (or last-run) container of a release."""

    id: str
    app: str
    release_version: int
    process_type: str
    container_id: str
    state: str
    pid: int | None = None
    started_at: dt.datetime | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_at: dt.datetime | None = None
    socket_path: str | None = None


@dataclass(frozen=True)
class Event:
    """One entry of the append-only event log; ``id`` grows with every event."""

    id: int
    app: str | None
    kind: str
    message: str
    data: dict[str, Any]
    created_at: dt.datetime
