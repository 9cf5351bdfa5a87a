"""Platform state: apps, immutable releases, config and encrypted secrets, instances, events.

``open_state(settings)`` returns the :class:`StateStore` the settings ask for: PostgreSQL when
the state URL (``NOOPS_STATE_URL``) starts with ``postgresql://`` (or ``postgres://``), else the
embedded SQLite file ``$NOOPS_HOME/state/noops.db``. Secret values are sealed with the key file
``$NOOPS_HOME/state/secret.key`` on either backend. The contract is :class:`StateStore`'s
docstring; ``tests/integration/state`` checks both backends against it.
"""

from __future__ import annotations

from pathlib import Path

from noops.errors import UsageError
from noops.settings import Settings
from noops.state.errors import StateError, TransitionError
from noops.state.model import App, Event, InstanceRecord, Release, ReleaseStatus
from noops.state.secrets import SecretBox
from noops.state.store import StateStore

__all__ = [
    "App",
    "Event",
    "InstanceRecord",
    "Release",
    "ReleaseStatus",
    "SecretBox",
    "StateError",
    "StateStore",
    "TransitionError",
    "open_state",
    "state_url",
]

_POSTGRES = ("postgresql://", "postgres://")


def state_url(settings: Settings) -> str:
    """The configured state URL; empty means the embedded SQLite file."""
    return str(settings.get("state_url") or "")


def open_state(settings_or_url: Settings | str, home: Path | str | None = None) -> StateStore:
    """Open (creating and migrating if needed) the platform state store.

    ``settings_or_url`` is resolved :class:`Settings` or a URL: ``postgresql://…`` selects
    PostgreSQL; ``""`` selects SQLite at ``<home>/state/noops.db``; ``sqlite:///PATH`` names
    another SQLite file. ``home`` defaults to the settings' home and is required with a URL.
    """
    if isinstance(settings_or_url, Settings):
        url = state_url(settings_or_url)
        home = settings_or_url.home if home is None else home
    else:
        url = settings_or_url
    if home is None:
        raise UsageError("open_state needs the noops home (where state/secret.key lives)")
    state_dir = Path(home) / "state"
    box = SecretBox(state_dir / "secret.key")
    if url.startswith(_POSTGRES):
        try:  # psycopg is imported only when PostgreSQL is asked for
            from noops.state.postgres import PostgresStateStore
        except ImportError as exc:
            raise StateError(f"NOOPS_STATE_URL points at PostgreSQL but psycopg is missing ({exc}): "
                             "pip install 'psycopg[binary]>=3.1'") from exc
        return PostgresStateStore(url, box)
    from noops.state.sqlite import SQLiteStateStore

    if not url:
        return SQLiteStateStore(state_dir / "noops.db", box)
    if url.startswith("sqlite:///"):
        return SQLiteStateStore(Path(url.removeprefix("sqlite://")), box)
    raise UsageError(f"NOOPS_STATE_URL={url!r} is not a state URL: use postgresql://USER@HOST/DB, "
                     "sqlite:///PATH, or leave it empty for $NOOPS_HOME/state/noops.db")
