"""Errors of the state store, below :class:`noops.errors.NoopsError`.

::

    NoopsError
    ├── UsageError            exit 2   unknown app or release, app exists, invalid name or key
    └── StateError            exit 10  the store failed or refused: database, schema, secret key
        └── TransitionError   exit 10  an illegal release status move (HTTP 409)
"""

from __future__ import annotations

from noops.errors import NoopsError

__all__ = ["StateError", "TransitionError"]


class StateError(NoopsError):
    """The state store failed (database unreachable or busy, schema too new, secret key unusable)."""

    exit_code = 10
    http_status = 500


class TransitionError(StateError):
    """A release status move the state machine does not allow, e.g. ``failed → active``."""

    http_status = 409
