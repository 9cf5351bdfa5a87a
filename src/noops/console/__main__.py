"""``python -m noops.console``: run the web console as its own process (see :mod:`.serve`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from noops.console.serve import ConsoleServer
from noops.errors import NoopsError
from noops.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m noops.console",
        description="The noops web console; it reads the platform API on $NOOPS_HOME/noops.sock.")
    parser.add_argument("--home", type=Path, help="the platform home (default: $NOOPS_HOME)")
    parser.add_argument("--api-socket", type=Path,
                        help="the platform API socket (default: HOME/noops.sock)")
    parser.add_argument("--listen", default="127.0.0.1:8080",
                        help="unix:PATH or HOST:PORT (default 127.0.0.1:8080)")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain")
    parser.add_argument("--tls-key", type=Path, help="the key of --tls-cert")
    parser.add_argument("--client-ca", type=Path,
                        help="require a client certificate from this CA (mutual TLS)")
    parser.add_argument("--peer-id", action="append", default=[],
                        help="accept only client certificates naming this SPIFFE ID (repeatable)")
    args = parser.parse_args(argv)
    try:
        home = args.home or Settings(environ=os.environ).home
        server = ConsoleServer(api_socket=args.api_socket or home / "noops.sock",
                               listen=args.listen, tls_cert=args.tls_cert, tls_key=args.tls_key,
                               client_ca=args.client_ca, allowed_peers=tuple(args.peer_id))
        server.run()
    except NoopsError as exc:
        print(f"noops console: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
