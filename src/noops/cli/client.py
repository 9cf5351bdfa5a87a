"""The CLI's side of the daemon API: JSON over the Unix socket, errors as NoopsErrors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from noops.errors import NoopsError
from noops.settings import Settings

__all__ = ["ApiError", "Client"]


class ApiError(NoopsError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.http_status = status
        self.exit_code = 2 if 400 <= status < 500 and status not in (409, 422) else 1
        if status == 422:
            self.exit_code = 11


class Client:
    def __init__(self, settings: Settings, timeout_s: float = 900.0) -> None:
        self.sock = settings.home / "noops.sock"
        self.timeout_s = timeout_s

    def _client(self) -> httpx.Client:
        if not self.sock.exists():
            raise NoopsError(f"the noops daemon is not running (no {self.sock}): "
                             "start it with `noops up -d`")
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.sock)),
                            base_url="http://noops", timeout=self.timeout_s)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             params: dict[str, str] | list[tuple[str, str]] | None = None) -> Any:
        """``params`` as a list of pairs may repeat a key (``attr=a=1&attr=b=2``)."""
        query = httpx.QueryParams(params) if params is not None else None  # type: ignore[arg-type]
        try:
            with self._client() as client:
                resp = client.request(method, path, json=body, params=query)
        except httpx.TransportError as exc:
            raise NoopsError(f"cannot reach the noops daemon at {self.sock} ({exc}): is it "
                             "running? `noops up -d` starts it") from exc
        if resp.status_code >= 400:
            try:
                message = resp.json().get("error", resp.text)
            except ValueError:
                message = resp.text
            raise ApiError(message, resp.status_code)
        return resp.json()

    def stream(self, path: str, params: dict[str, str]) -> Iterator[str]:
        try:
            with self._client() as client, client.stream("GET", path, params=params,
                                                          timeout=None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError(resp.json().get("error", resp.text), resp.status_code)
                yield from resp.iter_lines()
        except httpx.TransportError as exc:
            raise NoopsError(f"cannot reach the noops daemon at {self.sock} ({exc})") from exc
