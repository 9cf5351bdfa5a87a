"""``python -m noops.observe.otlp``: one OTLP/HTTP receiver process over a store and a WAL.

::

    python -m noops.observe.otlp --store PATH --wal DIR [--backend duckdb|clickhouse]
                                 [--host 127.0.0.1] [--port 4318] [--unix SOCKET]

``--backend duckdb`` (default) keeps the store in the DuckDB file ``PATH``; ``clickhouse`` uses
embedded ClickHouse (chdb) with ``PATH`` as its data directory. ``--unix`` serves on a Unix
socket instead of TCP. On start the WAL is replayed into the store; SIGTERM/SIGINT drain the
queue and close the store. Exit status 0 after a clean stop, the error's ``exit_code`` when the
store or the WAL cannot be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from noops.errors import NoopsError
from noops.observe.otlp.receiver import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Receiver,
    ReceiverSettings,
    TelemetryStore,
    serve,
    serve_unix,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m noops.observe.otlp", description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True, type=Path, help="DuckDB file or chdb data directory")
    p.add_argument("--wal", required=True, type=Path, help="write-ahead log directory")
    p.add_argument("--backend", choices=("duckdb", "clickhouse"), default="duckdb")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--unix", type=Path, help="serve on this Unix socket instead of host:port")
    p.add_argument("--queue-requests", type=int, default=ReceiverSettings.queue_requests)
    p.add_argument("--batch-rows", type=int, default=ReceiverSettings.batch_rows)
    return p


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # uvicorn handles SIGTERM itself (graceful drain), then re-raises it with the previous
    # handler restored: this one turns it into a normal exit, so the store is closed (DuckDB
    # checkpoints its own log into the file) instead of the process dying on the signal.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings = ReceiverSettings(queue_requests=args.queue_requests, batch_rows=args.batch_rows)
    try:
        store: TelemetryStore
        if args.backend == "duckdb":
            from noops.observe.store import DuckDBStore

            store = DuckDBStore(args.store)
        else:
            from noops.observe.store.clickhouse import ClickHouseStore

            store = ClickHouseStore.embedded(args.store)
        try:
            receiver = Receiver(store, args.wal, settings)
            if args.unix:
                asyncio.run(serve_unix(receiver, args.unix))
            else:
                asyncio.run(serve(receiver, args.host, args.port))
        finally:
            close = getattr(store, "close", None)
            if close is not None:
                close()
    except NoopsError as exc:
        print(f"noops otlp receiver: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
