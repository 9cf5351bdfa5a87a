"""The :class:`~noops.state.store.StateStore` logic both SQL backends share.

A backend supplies transactions (``_transaction``) that yield a :class:`Cursor` speaking
``?``-placeholder SQL, plus two dialect hooks: the suffix that locks an app row inside a write
transaction (``FOR UPDATE`` on PostgreSQL; nothing on SQLite, whose write transactions are
already serial) and ``_serialize_events``, which makes event ids commit in order.

Counters live on the app row (``last_release``, ``config_version``) and are bumped with
``UPDATE … RETURNING`` after the row is locked, so a version is allocated and used in the same
transaction: a rollback leaves no gap, two writers never get the same number.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

from noops.errors import UsageError
from noops.state.errors import StateError
from noops.state.model import (
    App,
    Event,
    InstanceRecord,
    Release,
    ReleaseStatus,
    check_transition,
    from_micros,
    to_micros,
    validate_app_name,
    validate_config_key,
)
from noops.state.secrets import SecretBox

__all__ = ["Cursor", "SQLStateStore"]

_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
# Whole statements as literals: the column lists must match the row readers below.
_SELECT_RELEASES = ("SELECT app, version, image_ref, image_digest, config_version, formation, spec, "
                    "description, status, created_at FROM releases ")
_INSERT_RELEASE = ("INSERT INTO releases (app, version, image_ref, image_digest, config_version, "
                   "formation, spec, description, status, created_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_SELECT_INSTANCES = ("SELECT id, app, release_version, process_type, container_id, state, pid, "
                     "started_at, restarts, last_exit_code, last_exit_at, socket_path "
                     "FROM instances ")
_UPSERT_INSTANCE = (
    "INSERT INTO instances (id, app, release_version, process_type, container_id, state, pid, "
    "started_at, restarts, last_exit_code, last_exit_at, socket_path, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET app = excluded.app, release_version = excluded.release_version, "
    "process_type = excluded.process_type, container_id = excluded.container_id, "
    "state = excluded.state, pid = excluded.pid, started_at = excluded.started_at, "
    "restarts = excluded.restarts, last_exit_code = excluded.last_exit_code, "
    "last_exit_at = excluded.last_exit_at, socket_path = excluded.socket_path, "
    "updated_at = excluded.updated_at")
_SELECT_EVENTS = "SELECT id, app, kind, message, data, created_at FROM events WHERE id > ? "
# A new config version: copy the untouched table, insert the changed one (keyed by table).
_COPY_VARS = {
    "config_vars": "INSERT INTO config_vars (app, version, key, value) "
                   "SELECT app, ?, key, value FROM config_vars WHERE app = ? AND version = ?",
    "secret_vars": "INSERT INTO secret_vars (app, version, key, sealed) "
                   "SELECT app, ?, key, sealed FROM secret_vars WHERE app = ? AND version = ?",
}
_INSERT_VARS = {
    "config_vars": "INSERT INTO config_vars (app, version, key, value) VALUES (?, ?, ?, ?)",
    "secret_vars": "INSERT INTO secret_vars (app, version, key, sealed) VALUES (?, ?, ?, ?)",
}

Row = tuple[Any, ...]


class Cursor(Protocol):
    """The little a shared method needs from a backend inside one transaction."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; return the number of rows changed."""
        ...

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


def _now_us() -> int:
    return time.time_ns() // 1000


def _text(what: str, value: object, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise UsageError(f"{what} contains a NUL character; remove it")
    if not empty and not value:
        raise UsageError(f"{what} must not be empty")
    return value


def _json(what: str, value: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} is not JSON-serialisable: {exc}") from exc


def _non_negative(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{what} must be an integer >= 0, not {value!r}")
    return value


def _release(row: Row) -> Release:
    return Release(app=row[0], version=int(row[1]), image_ref=row[2], image_digest=row[3],
                   config_version=int(row[4]), formation=json.loads(row[5]),
                   spec=json.loads(row[6]), description=row[7], status=ReleaseStatus(row[8]),
                   created_at=from_micros(int(row[9])))


def _micros_or_none(value: int | None) -> dt.datetime | None:
    return None if value is None else from_micros(int(value))


def _instance(row: Row) -> InstanceRecord:
    return InstanceRecord(id=row[0], app=row[1], release_version=int(row[2]), process_type=row[3],
                          container_id=row[4], state=row[5], pid=row[6],
                          started_at=_micros_or_none(row[7]), restarts=int(row[8]),
                          last_exit_code=row[9], last_exit_at=_micros_or_none(row[10]),
                          socket_path=row[11])


def _event(row: Row) -> Event:
    return Event(id=int(row[0]), app=row[1], kind=row[2], message=row[3], data=json.loads(row[4]),
                 created_at=from_micros(int(row[5])))


class SQLStateStore(ABC):
    """Implements every :class:`StateStore` method on top of ``_transaction``."""

    #: appended to the SELECT that reads an app row inside a write transaction
    _LOCK_APP = ""

    def __init__(self, secret_box: SecretBox) -> None:
        self.secret_box = secret_box

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Cursor]:
        """One transaction: committed when the block ends, rolled back if it raises.

        Driver errors come out as :class:`StateError`; write transactions are durable on commit.
        """

    def _serialize_events(self, cur: Cursor) -> None:  # noqa: B027 (a hook; most need nothing)
        """Hold whatever lock makes event ids become visible in id order (until commit)."""

    @abstractmethod
    def close(self) -> None: ...

    # helpers --------------------------------------------------------------------------------

    def _app_row(self, cur: Cursor, app: str, *, lock: bool = False) -> Row:
        validate_app_name(app)
        sql = "SELECT name, created_at, last_release, config_version FROM apps WHERE name = ?"
        row = cur.one(sql + (self._LOCK_APP if lock else ""), (app,))
        if row is None:
            raise UsageError(f"no app named {app}: create it with `noops apps create {app}`")
        return row

    def _release_row(self, cur: Cursor, app: str, version: int, last: int) -> Release:
        row = cur.one(_SELECT_RELEASES + "WHERE app = ? AND version = ?", (app, version))
        if row is None:
            latest = f"the latest is v{last}" if last else "it has none yet"
            raise UsageError(f"app {app} has no release v{version} ({latest}); see "
                             f"`noops releases {app}`")
        return _release(row)

    @staticmethod
    def _config_at(app: str, version: int | None, current: int) -> int:
        if version is None:
            return current
        _non_negative("config version", version)
        if version > current:
            raise UsageError(f"app {app} has no config version {version} (the current one is "
                             f"{current})")
        return version

    # apps -----------------------------------------------------------------------------------

    def create_app(self, name: str) -> App:
        validate_app_name(name)
        now = _now_us()
        with self._transaction(write=True) as cur:
            added = cur.run("INSERT INTO apps (name, created_at) VALUES (?, ?) "
                            "ON CONFLICT (name) DO NOTHING", (name, now))
            if not added:
                raise UsageError(f"app {name} exists: choose another name, or use it as it is "
                                 "(`noops apps` lists them)")
        return App(name, from_micros(now))

    def app(self, name: str) -> App:
        with self._transaction(write=False) as cur:
            row = self._app_row(cur, name)
        return App(row[0], from_micros(int(row[1])))

    def apps(self) -> list[App]:
        with self._transaction(write=False) as cur:
            rows = cur.all("SELECT name, created_at FROM apps ORDER BY name")
        return [App(r[0], from_micros(int(r[1]))) for r in rows]

    # releases -------------------------------------------------------------------------------

    def create_release(self, app: str, *, image_ref: str, image_digest: str, config_version: int,
                       formation: Mapping[str, int], spec: Mapping[str, Any],
                       description: str = "") -> Release:
        validate_app_name(app)
        _text("image_ref", image_ref, empty=False)
        if not isinstance(image_digest, str) or not _DIGEST.match(image_digest):
            raise UsageError(f"image digest {image_digest!r} is not a digest like sha256:<64 hex>")
        _non_negative("config_version", config_version)
        counts: dict[str, int] = {}
        for ptype, count in dict(formation).items():
            _text("process type", ptype, empty=False)
            counts[ptype] = _non_negative(f"formation count of {ptype}", count)
        formation_json = _json("formation", counts)
        spec_json = _json("spec", spec)
        _text("description", description)
        now = _now_us()
        with self._transaction(write=True) as cur:
            row = self._app_row(cur, app, lock=True)
            self._config_at(app, config_version, int(row[3]))
            bumped = cur.one("UPDATE apps SET last_release = last_release + 1 WHERE name = ? "
                             "RETURNING last_release", (app,))
            assert bumped is not None  # the row is locked and exists
            version = int(bumped[0])
            cur.run(_INSERT_RELEASE,
                    (app, version, image_ref, image_digest, config_version, formation_json,
                     spec_json, description, ReleaseStatus.PENDING.value, now))
        return Release(app, version, image_ref, image_digest, config_version, counts,
                       json.loads(spec_json), description, ReleaseStatus.PENDING, from_micros(now))

    def release(self, app: str, version: int) -> Release:
        with self._transaction(write=False) as cur:
            row = self._app_row(cur, app)
            return self._release_row(cur, app, _non_negative("release version", version), int(row[2]))

    def releases(self, app: str, limit: int | None = None) -> list[Release]:
        sql = _SELECT_RELEASES + "WHERE app = ? ORDER BY version DESC"
        params: tuple[Any, ...] = (app,)
        if limit is not None:
            sql += " LIMIT ?"
            params += (_non_negative("limit", limit),)
        with self._transaction(write=False) as cur:
            self._app_row(cur, app)
            rows = cur.all(sql, params)
        return [_release(r) for r in rows]

    def active_release(self, app: str) -> Release | None:
        with self._transaction(write=False) as cur:
            self._app_row(cur, app)
            row = cur.one(_SELECT_RELEASES + "WHERE app = ? AND status = ?",
                          (app, ReleaseStatus.ACTIVE.value))
        return None if row is None else _release(row)

    def set_release_status(self, app: str, version: int, status: ReleaseStatus, *,
                           retire_as: ReleaseStatus = ReleaseStatus.SUPERSEDED) -> Release:
        try:
            new, retired = ReleaseStatus(status), ReleaseStatus(retire_as)
        except ValueError as exc:
            names = ", ".join(s.value for s in ReleaseStatus)
            raise UsageError(f"{exc}; a release status is one of {names}") from exc
        if retired not in (ReleaseStatus.SUPERSEDED, ReleaseStatus.ROLLED_BACK):
            raise UsageError(f"retire_as must be superseded or rolled-back, not {retired}")
        _non_negative("release version", version)
        with self._transaction(write=True) as cur:
            row = self._app_row(cur, app, lock=True)
            release = self._release_row(cur, app, version, int(row[2]))
            check_transition(app, version, release.status, new)
            if new is ReleaseStatus.ACTIVE:
                cur.run("UPDATE releases SET status = ? WHERE app = ? AND status = ?",
                        (retired.value, app, ReleaseStatus.ACTIVE.value))
            cur.run("UPDATE releases SET status = ? WHERE app = ? AND version = ?",
                    (new.value, app, version))
        return replace(release, status=new)

    # config and secrets ---------------------------------------------------------------------

    def config_version(self, app: str) -> int:
        with self._transaction(write=False) as cur:
            return int(self._app_row(cur, app)[3])

    def _changes(self, app: str, values: Mapping[str, str] | None,
                 unset: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        validate_app_name(app)
        new = dict(values or {})
        gone = list(dict.fromkeys([unset] if isinstance(unset, str) else unset))
        for key in [*new, *gone]:
            validate_config_key(app, key)
        for key, value in new.items():
            _text(f"the value of {key}", value)
        both = sorted(set(new) & set(gone))
        if both:
            raise UsageError(f"{', '.join(both)} both set and unset in one change; do one or the "
                             "other")
        return new, gone

    def _bump_config(self, cur: Cursor, app: str, current: int, *, secrets: bool,
                     rows: dict[str, Any]) -> int:
        """Write config version ``current + 1``: ``rows`` for one table, a copy for the other."""
        bumped = cur.one("UPDATE apps SET config_version = config_version + 1 WHERE name = ? "
                         "RETURNING config_version", (app,))
        assert bumped is not None
        version = int(bumped[0])
        changed, copied = ("secret_vars", "config_vars") if secrets else ("config_vars", "secret_vars")
        cur.run(_COPY_VARS[copied], (version, app, current))
        if rows:
            cur.many(_INSERT_VARS[changed], [(app, version, k, v) for k, v in sorted(rows.items())])
        return version

    def set_config(self, app: str, values: Mapping[str, str] | None = None,
                   unset: Iterable[str] = ()) -> int:
        new, gone = self._changes(app, values, unset)
        with self._transaction(write=True) as cur:
            current = int(self._app_row(cur, app, lock=True)[3])
            clash = [r[0] for r in cur.all("SELECT key FROM secret_vars WHERE app = ? AND "
                                           "version = ? ORDER BY key", (app, current))
                     if r[0] in new]
            if clash:
                raise UsageError(f"{', '.join(clash)} is a secret of app {app}, not a config var: "
                                 "set it as a secret, or unset the secret first")
            rows = cur.all("SELECT key, value FROM config_vars WHERE app = ? AND version = ?",
                           (app, current))
            config = {str(k): str(v) for k, v in rows}
            wanted = {k: v for k, v in config.items() if k not in gone} | new
            if wanted == config:
                return current
            return self._bump_config(cur, app, current, secrets=False, rows=wanted)

    def config(self, app: str, version: int | None = None) -> dict[str, str]:
        with self._transaction(write=False) as cur:
            at = self._config_at(app, version, int(self._app_row(cur, app)[3]))
            rows = cur.all("SELECT key, value FROM config_vars WHERE app = ? AND version = ? "
                           "ORDER BY key", (app, at))
        return {str(k): str(v) for k, v in rows}

    def set_secrets(self, app: str, values: Mapping[str, str] | None = None,
                    unset: Iterable[str] = ()) -> int:
        new, gone = self._changes(app, values, unset)
        # Seal before the transaction: it keeps the write lock short.
        sealed_new = {k: self.secret_box.seal(app, k, v) for k, v in new.items()}
        with self._transaction(write=True) as cur:
            current = int(self._app_row(cur, app, lock=True)[3])
            clash = [r[0] for r in cur.all("SELECT key FROM config_vars WHERE app = ? AND "
                                           "version = ? ORDER BY key", (app, current))
                     if r[0] in new]
            if clash:
                raise UsageError(f"{', '.join(clash)} is a config var of app {app}, not a secret: "
                                 f"unset it first (`noops config unset {app} {' '.join(clash)}`), "
                                 "or set it as config")
            sealed = {str(k): bytes(v) for k, v in cur.all(
                "SELECT key, sealed FROM secret_vars WHERE app = ? AND version = ?", (app, current))}
            wanted = {k: v for k, v in sealed.items() if k not in gone}
            changed = len(wanted) != len(sealed)
            for key, value in new.items():
                # Re-setting the same value keeps the old ciphertext: no change, no new version.
                if key in wanted and self._same_secret(app, key, wanted[key], value):
                    continue
                wanted[key], changed = sealed_new[key], True
            if not changed:
                return current
            return self._bump_config(cur, app, current, secrets=True, rows=wanted)

    def _same_secret(self, app: str, key: str, sealed: bytes, value: str) -> bool:
        try:
            return self.secret_box.open(app, key, sealed) == value
        except StateError:
            return False  # unreadable (tampered, other key): setting it again repairs it

    def _sealed(self, app: str, version: int | None) -> list[Row]:
        with self._transaction(write=False) as cur:
            at = self._config_at(app, version, int(self._app_row(cur, app)[3]))
            return cur.all("SELECT key, sealed FROM secret_vars WHERE app = ? AND version = ? "
                           "ORDER BY key", (app, at))

    def secret_keys(self, app: str, version: int | None = None) -> list[str]:
        return [str(r[0]) for r in self._sealed(app, version)]

    def secrets(self, app: str, version: int | None = None) -> dict[str, str]:
        return {str(k): self.secret_box.open(app, str(k), bytes(v))
                for k, v in self._sealed(app, version)}

    # instances ------------------------------------------------------------------------------

    def upsert_instance(self, record: InstanceRecord) -> None:
        _text("instance id", record.id, empty=False)
        for what, value in (("process type", record.process_type),
                            ("container id", record.container_id), ("state", record.state)):
            _text(what, value, empty=False)
        if record.socket_path is not None:
            _text("socket path", record.socket_path)
        _non_negative("restarts", record.restarts)
        for what, number in (("pid", record.pid), ("last exit code", record.last_exit_code)):
            if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
                raise UsageError(f"{what} must be an integer or None, not {number!r}")
        started = None if record.started_at is None else to_micros(record.started_at)
        exited = None if record.last_exit_at is None else to_micros(record.last_exit_at)
        with self._transaction(write=True) as cur:
            row = self._app_row(cur, record.app)
            self._release_row(cur, record.app, _non_negative("release version", record.release_version),
                              int(row[2]))
            cur.run(_UPSERT_INSTANCE,
                    (record.id, record.app, record.release_version, record.process_type,
                     record.container_id, record.state, record.pid, started, record.restarts,
                     record.last_exit_code, exited, record.socket_path, _now_us()))

    def instances(self, app: str | None = None) -> list[InstanceRecord]:
        with self._transaction(write=False) as cur:
            if app is None:
                rows = cur.all(_SELECT_INSTANCES + "ORDER BY app, process_type, id")
            else:
                self._app_row(cur, app)
                rows = cur.all(_SELECT_INSTANCES + "WHERE app = ? ORDER BY process_type, id", (app,))
        return [_instance(r) for r in rows]

    def delete_instance(self, instance_id: str) -> bool:
        _text("instance id", instance_id, empty=False)
        with self._transaction(write=True) as cur:
            return cur.run("DELETE FROM instances WHERE id = ?", (instance_id,)) > 0

    # events ---------------------------------------------------------------------------------

    def add_event(self, app: str | None, kind: str, message: str,
                  data: Mapping[str, Any] | None = None) -> Event:
        if app is not None:
            validate_app_name(app)
        _text("event kind", kind, empty=False)
        _text("event message", message)
        payload = _json("event data", data or {})
        now = _now_us()
        with self._transaction(write=True) as cur:
            self._serialize_events(cur)
            row = cur.one("INSERT INTO events (app, kind, message, data, created_at) "
                          "VALUES (?, ?, ?, ?, ?) RETURNING id", (app, kind, message, payload, now))
        assert row is not None
        return Event(int(row[0]), app, kind, message, json.loads(payload), from_micros(now))

    def events(self, app: str | None = None, since_id: int = 0, limit: int = 100) -> list[Event]:
        _non_negative("since_id", since_id)
        if _non_negative("limit", limit) == 0:
            return []
        sql = _SELECT_EVENTS
        params: list[object] = [since_id]
        if app is not None:
            sql, params = sql + "AND app = ? ", [since_id, validate_app_name(app)]
        with self._transaction(write=False) as cur:
            rows = cur.all(sql + "ORDER BY id LIMIT ?", [*params, limit])
        return [_event(r) for r in rows]

    # garbage collection ---------------------------------------------------------------------

    def pinned_digests(self, keep_per_app: int = 10) -> set[str]:
        _non_negative("keep_per_app", keep_per_app)
        with self._transaction(write=False) as cur:
            rows = cur.all(
                "SELECT image_digest FROM (SELECT image_digest, status, ROW_NUMBER() OVER "
                "(PARTITION BY app ORDER BY version DESC) AS pos FROM releases) AS ranked "
                "WHERE pos <= ? OR status IN (?, ?)",
                (keep_per_app, ReleaseStatus.ACTIVE.value, ReleaseStatus.PENDING.value))
        return {str(r[0]) for r in rows}

