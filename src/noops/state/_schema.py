"""The schema, as numbered migrations shared by SQLite and PostgreSQL.

A migration is a list of statements with two dialect holes: ``{blob}`` (``BLOB`` / ``BYTEA``) and
``{serial}`` (an ever-growing integer primary key). ``noops_schema_migrations`` records which
numbers a database has; a backend applies the missing ones in order, each in one transaction,
when a store opens. Never edit a released migration: append a new one.

Timestamps are integer microseconds since the epoch (UTC) on both backends; JSON documents are
text. Config and secrets are full snapshots per config version.
"""

from __future__ import annotations

from collections.abc import Mapping

from noops.state.errors import StateError

__all__ = ["MIGRATIONS", "pending_migrations"]

_V1 = [
    """CREATE TABLE apps (
        name TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        last_release BIGINT NOT NULL DEFAULT 0,
        config_version BIGINT NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE releases (
        app TEXT NOT NULL REFERENCES apps (name),
        version BIGINT NOT NULL,
        image_ref TEXT NOT NULL,
        image_digest TEXT NOT NULL,
        config_version BIGINT NOT NULL,
        formation TEXT NOT NULL,
        spec TEXT NOT NULL,
        description TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'active', 'superseded', 'rolled-back', 'failed')),
        created_at BIGINT NOT NULL,
        PRIMARY KEY (app, version)
    )""",
    # The store keeps one active release per app; the index makes the database agree.
    "CREATE UNIQUE INDEX releases_one_active ON releases (app) WHERE status = 'active'",
    """CREATE TABLE config_vars (
        app TEXT NOT NULL REFERENCES apps (name),
        version BIGINT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (app, version, key)
    )""",
    """CREATE TABLE secret_vars (
        app TEXT NOT NULL REFERENCES apps (name),
        version BIGINT NOT NULL,
        key TEXT NOT NULL,
        sealed {blob} NOT NULL,
        PRIMARY KEY (app, version, key)
    )""",
    """CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        release_version BIGINT NOT NULL,
        process_type TEXT NOT NULL,
        container_id TEXT NOT NULL,
        state TEXT NOT NULL,
        pid BIGINT,
        started_at BIGINT,
        restarts BIGINT NOT NULL,
        last_exit_code BIGINT,
        last_exit_at BIGINT,
        socket_path TEXT,
        updated_at BIGINT NOT NULL,
        FOREIGN KEY (app, release_version) REFERENCES releases (app, version)
    )""",
    "CREATE INDEX instances_by_app ON instances (app, process_type, id)",
    # No foreign key on app: the log outlives what it talks about.
    """CREATE TABLE events (
        id {serial},
        app TEXT,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at BIGINT NOT NULL
    )""",
    "CREATE INDEX events_by_app ON events (app, id)",
]

MIGRATIONS: list[tuple[int, list[str]]] = [(1, _V1)]


def pending_migrations(applied: set[int], dialect: Mapping[str, str],
                       where: str) -> list[tuple[int, list[str]]]:
    """The migrations ``applied`` lacks, in order, with the dialect's types filled in."""
    latest = MIGRATIONS[-1][0]
    newer = sorted(n for n in applied if n > latest)
    if newer:
        raise StateError(f"the state database {where} has schema version {newer[-1]}, newer than "
                         f"this noops knows ({latest}): upgrade noops, or point it at another "
                         "database")
    return [(n, [s.format(**dialect) for s in statements])
            for n, statements in MIGRATIONS if n not in applied]
