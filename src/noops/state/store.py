"""The contract every platform state backend keeps: :class:`StateStore`.

The daemon, the deploy path and the API are the consumers; they depend on this Protocol only.
:class:`~noops.state.sqlite.SQLiteStateStore` (one machine) and
:class:`~noops.state.postgres.PostgresStateStore` (several replicas) implement it, and
``tests/integration/state`` is the one conformance suite both must pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from noops.state.model import App, Event, InstanceRecord, Release, ReleaseStatus

__all__ = ["StateStore"]


class StateStore(Protocol):
    """Apps, immutable releases, versioned config and secrets, instances and the event log.

    **Transactions and durability.** Every mutating call is exactly one transaction: it happens
    completely or not at all, and once it returns the change is durable: a crash of the daemon
    (or of the machine, as far as the disk honours fsync) loses nothing that was returned.
    SQLite runs in WAL mode with ``synchronous=FULL``; PostgreSQL sessions force
    ``synchronous_commit=on``. Reads see a consistent snapshot of committed data.

    **Concurrency.** A store object is safe to share between threads. Several store objects,
    processes or machines (daemon and gateway replicas on one PostgreSQL) may write at once.
    Release versions of an app are allocated atomically: ``1, 2, 3, …`` with no gaps and no
    duplicates, whatever the number of writers; a transaction that fails allocates nothing.
    Config versions follow the same rule.

    **Releases are immutable.** Only ``status`` changes, along the state machine documented in
    :mod:`noops.state.model` (``pending → active → superseded | rolled-back``,
    ``pending → failed``); an illegal move raises :class:`~noops.state.errors.TransitionError`.
    An app has at most one ``active`` release: activating one retires the previous one in the
    same transaction.

    **Config and secrets** share one version counter per app, starting at 0 (empty). Each
    change that alters something creates the next version, a full snapshot; a call that changes
    nothing returns the current version. A release pins a config version, and reading that
    version later returns exactly what it held. A key is either a config var or a secret, never
    both. Secret values are encrypted at rest (:class:`~noops.state.secrets.SecretBox`); no
    backend stores or logs them in clear.

    **Events** are append-only. Ids grow strictly, and an event becomes visible only after every
    event with a smaller id is visible, so polling with ``since_id`` misses nothing.

    **Errors.** An unknown app or release, an existing app, or invalid input raises
    :class:`~noops.errors.UsageError` saying what to do; everything the store itself cannot do
    (database unreachable or busy, schema newer than this noops, wrong or damaged secret key,
    tampered ciphertext) raises :class:`~noops.state.errors.StateError` (exit code 10). Driver
    exceptions never escape.

    **Ownership.** Returned objects are frozen dataclasses (their dicts are fresh copies); the
    caller may keep them. Lists are ordered as each method says.
    """

    def close(self) -> None:
        """Release connections; the store is unusable afterwards. Idempotent."""

    # apps -----------------------------------------------------------------------------------

    def create_app(self, name: str) -> App:
        """Create app ``name`` (``^[a-z][a-z0-9-]{0,62}$``); UsageError if it exists."""

    def app(self, name: str) -> App:
        """The app ``name``; UsageError if there is none."""

    def apps(self) -> list[App]:
        """Every app, by name."""

    # releases -------------------------------------------------------------------------------

    def create_release(self, app: str, *, image_ref: str, image_digest: str, config_version: int,
                       formation: Mapping[str, int], spec: Mapping[str, Any],
                       description: str = "") -> Release:
        """Record the next release of ``app``, ``pending``, with the next version number.

        ``config_version`` must be one the app has (0 … current); ``image_digest`` looks like
        ``sha256:<64 hex>``; ``formation`` maps process types to counts >= 0; ``spec`` must be
        JSON-serialisable.
        """

    def release(self, app: str, version: int) -> Release:
        """Release ``version`` of ``app``; UsageError if there is none."""

    def releases(self, app: str, limit: int | None = None) -> list[Release]:
        """Releases of ``app``, newest first, at most ``limit``."""

    def active_release(self, app: str) -> Release | None:
        """The ``active`` release of ``app``, if any."""

    def set_release_status(self, app: str, version: int, status: ReleaseStatus, *,
                           retire_as: ReleaseStatus = ReleaseStatus.SUPERSEDED) -> Release:
        """Move a release to ``status`` and return it.

        Moving one to ``active`` moves the app's previously active release to ``retire_as``
        (``superseded`` for a deploy, ``rolled-back`` for a rollback) in the same transaction.
        """

    # config and secrets ---------------------------------------------------------------------

    def config_version(self, app: str) -> int:
        """The current config version of ``app`` (0 until the first change)."""

    def set_config(self, app: str, values: Mapping[str, str] | None = None,
                   unset: Iterable[str] = ()) -> int:
        """Set and unset config vars in one new version; return the (possibly unchanged) version.

        Unsetting a key that is not set is not an error. Setting a key that is a secret is.
        """

    def config(self, app: str, version: int | None = None) -> dict[str, str]:
        """Config vars (not secrets) of ``version``, default the current one."""

    def set_secrets(self, app: str, values: Mapping[str, str] | None = None,
                    unset: Iterable[str] = ()) -> int:
        """Set and unset secrets in one new config version; return the version."""

    def secret_keys(self, app: str, version: int | None = None) -> list[str]:
        """Names of the secrets of ``version`` (default current), sorted; nothing is decrypted."""

    def secrets(self, app: str, version: int | None = None) -> dict[str, str]:
        """Decrypted secrets of ``version`` (default current)."""

    # instances ------------------------------------------------------------------------------

    def upsert_instance(self, record: InstanceRecord) -> None:
        """Insert or replace the instance ``record.id``; its app and release must exist."""

    def instances(self, app: str | None = None) -> list[InstanceRecord]:
        """Instances of ``app`` (or of every app) ordered by app, process type, id."""

    def delete_instance(self, instance_id: str) -> bool:
        """Forget an instance; True if there was one."""

    # events ---------------------------------------------------------------------------------

    def add_event(self, app: str | None, kind: str, message: str,
                  data: Mapping[str, Any] | None = None) -> Event:
        """Append an event (``app`` None for platform-wide ones) and return it with its id."""

    def events(self, app: str | None = None, since_id: int = 0, limit: int = 100) -> list[Event]:
        """Events with ``id > since_id`` (of ``app``, or all), oldest first, at most ``limit``."""

    # garbage collection ---------------------------------------------------------------------

    def pinned_digests(self, keep_per_app: int = 10) -> set[str]:
        """Image digests a garbage collector must keep.

        The digests of every app's newest ``keep_per_app`` releases, plus those of every
        ``active`` and every ``pending`` release (a rollout may be running) whatever its age.
        """
