"""APM commands: ``noops apm`` (services, one service, the service map) and ``noops traces``
(slowest traces, one trace as a waterfall with its logs). Each asks the daemon's API
(:mod:`noops.observe.api`) and prints a table, or JSON with ``--json``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from noops.cli.app import cli, output_options
from noops.cli.client import Client
from noops.cli.common import Ctx, emit, pass_ctx
from noops.errors import UsageError

_BAR = 40  # waterfall bar width in characters


def _since_option(func: Any) -> Any:
    return click.option("--since", default="15m", show_default=True,
                        help="Window ending now: 30s, 15m, 2h, 7d.")(func)


def _ms(value: float) -> str:
    return f"{value / 1000:.2f}s" if value >= 1000 else f"{value:.1f}ms"


def _rate(per_s: float) -> str:
    return f"{per_s:.2f}" if per_s >= 1 else f"{per_s:.3g}"


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@cli.command()
@click.argument("service", required=False)
@_since_option
@output_options
@pass_ctx
def apm(ctx: Ctx, service: str | None, since: str) -> None:
    """Services with rate, error % and p50/p95/p99; `noops apm SERVICE` shows its endpoints and
    error groups; `noops apm map` shows the service map (calls, errors, mTLS per edge)."""
    client = Client(ctx.settings)
    if service == "map":
        _print_map(ctx, client.call("GET", "/api/apm/map", params={"since": since}))
        return
    if service is None:
        rows = client.call("GET", "/api/apm/services", params={"since": since})

        def services(con: Console) -> None:
            if not rows:
                con.print(f"no requests in the last {since}")
                return
            table = Table("SERVICE", "REQ/S", "ERRORS", "P50", "P95", "P99", "REQUESTS", box=None)
            for r in rows:
                approx = "≈" if r.get("estimated") else ""  # from the minute rollup, ±4.4 %
                table.add_row(r["service"], _rate(r['rate_per_s']), f"{r['error_pct']:.1f}%",
                              *(approx + _ms(r[k]) for k in ("p50_ms", "p95_ms", "p99_ms")),
                              str(r["count"]))
            con.print(table)

        emit(ctx, rows, services)
        return
    eps = client.call("GET", f"/api/apm/services/{service}/endpoints", params={"since": since})
    errs = client.call("GET", f"/api/apm/services/{service}/errors", params={"since": since})
    data = {**eps, "errors": errs}

    def one(con: Console) -> None:
        if eps["warning"]:
            con.print(f"[yellow]warning:[/] {escape(eps['warning'])}")
        table = Table("ENDPOINT", "REQ/S", "ERRORS", "P50", "P95", "P99", "REQUESTS", box=None)
        for r in eps["endpoints"]:
            name = f"{r['endpoint']} ({r['folded']} names)" if r["folded"] else r["endpoint"]
            table.add_row(escape(name), _rate(r['rate_per_s']), f"{r['error_pct']:.1f}%",
                          _ms(r["p50_ms"]), _ms(r["p95_ms"]), _ms(r["p99_ms"]), str(r["count"]))
        con.print(table if eps["endpoints"] else f"{service}: no requests in the last {since}")
        if errs:
            con.print()
            table = Table("ERRORS", "COUNT", "ENDPOINT", "LAST SEEN", "SAMPLE TRACE", box=None)
            for g in errs:
                what = f"{g['exception_type']}: {g['message']}" if g["exception_type"] \
                    else g["message"] or "(status Error)"
                table.add_row(escape(what), str(g["count"]), escape(g["endpoint"]),
                              _when(g["last_seen_ns"]), g["sample_trace_id"])
            con.print(table)

    emit(ctx, data, one)


def _print_map(ctx: Ctx, edges: list[dict[str, Any]]) -> None:
    def human(con: Console) -> None:
        if not edges:
            con.print("no calls between services in this window")
            return
        table = Table("CLIENT", "", "SERVER", "CALLS/S", "CALLS", "ERRORS", "P95", "MTLS",
                      box=None)
        for e in edges:
            mtls = "[green]yes[/]" if e["mtls"] else (
                f"[red]no[/] ({e['mtls_calls']}/{e['calls']})")
            table.add_row(escape(e["client"]), "→", escape(e["server"]), _rate(e['rate_per_s']),
                          str(e["calls"]), str(e["errors"]), _ms(e["p95_ms"]), mtls)
        con.print(table)

    emit(ctx, edges, human)


@cli.command()
@click.argument("args", nargs=-1, metavar="[SERVICE] | show TRACE_ID")
@click.option("--slow", is_flag=True, help="Only traces slower than their service's p95.")
@click.option("--errors", is_flag=True, help="Only failed traces.")
@click.option("--endpoint", metavar="TEXT", help="Only endpoints whose name contains TEXT.")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE",
              help="Only requests with this span or resource attribute (repeatable).")
@click.option("-n", "--limit", default=20, show_default=True, help="How many traces.")
@_since_option
@output_options
@pass_ctx
def traces(ctx: Ctx, args: tuple[str, ...], slow: bool, errors: bool, endpoint: str | None,
           attrs: tuple[str, ...], limit: int, since: str) -> None:
    """The slowest traces (of SERVICE, or of every service), or the slowest that match
    --errors, --endpoint, --attr; `noops traces show TRACE_ID` draws one trace as a waterfall,
    then the logs linked to it."""
    client = Client(ctx.settings)
    if args and args[0] == "show":
        if len(args) != 2:
            raise UsageError("usage: noops traces show TRACE_ID")
        _show_trace(ctx, client.call("GET", f"/api/traces/{args[1]}"))
        return
    if len(args) > 1:
        raise UsageError("usage: noops traces [SERVICE] or noops traces show TRACE_ID")
    stats = client.call("GET", "/api/apm/services", params={"since": since})
    p95 = {s["service"]: s["p95_ms"] for s in stats}
    names = [args[0]] if args else sorted(p95)
    rows: list[dict[str, Any]] = []
    search = [("since", since), ("limit", str(limit)), *(("attr", a) for a in attrs)]
    search += [("status", "error")] if errors else []
    search += [("endpoint", endpoint)] if endpoint else []
    for name in names:
        floor = [("min_ms", str(p95.get(name, 0.0)))] if slow else []
        rows += [{**t, "service": name} for t in client.call(
            "GET", f"/api/apm/services/{name}/slowest", params=[*search, *floor])]
    rows = sorted(rows, key=lambda t: (-t["duration_ms"], t["trace_id"]))[:limit]

    def human(con: Console) -> None:
        if not rows:
            con.print(f"no traces in the last {since}"
                      + (" that match" if errors or endpoint or attrs or slow else ""))
            return
        table = Table("TRACE", "SERVICE", "ENDPOINT", "DURATION", "STATUS", "STARTED", box=None)
        for t in rows:
            status = "[red]Error[/]" if t["status_code"] == "Error" else "ok"
            table.add_row(t["trace_id"], escape(t["service"]), escape(t["endpoint"]),
                          _ms(t["duration_ms"]), status, _when(t["timestamp_ns"]))
        con.print(table)
        con.print("[dim]noops traces show TRACE_ID draws one[/]")

    emit(ctx, rows, human)


def _bar(offset_ms: float, duration_ms: float, total_ms: float, error: bool) -> Text:
    scale = _BAR / total_ms if total_ms > 0 else 0.0
    start = min(int(offset_ms * scale), _BAR - 1)
    width = max(1, min(round(duration_ms * scale), _BAR - start))
    bar = Text(" " * start)
    bar.append("█" * width, style="red" if error else "cyan")
    return bar.append(" " * (_BAR - start - width))


def _show_trace(ctx: Ctx, data: dict[str, Any]) -> None:
    def human(con: Console) -> None:
        con.print(f"trace [bold]{data['trace_id']}[/]  {_when(data['start_ns'])} UTC  "
                  f"{_ms(data['duration_ms'])}  services: {', '.join(data['services'])}")
        table = Table("SPAN", "SERVICE", "DURATION", "TIMELINE", box=None)
        for s in data["spans"]:
            error = s["status"] == "Error"
            name = Text("  " * s["depth"] + s["name"], style="red" if error else "")
            table.add_row(name, s["service"], _ms(s["duration_ms"]),
                          _bar(s["offset_ms"], s["duration_ms"], data["duration_ms"], error))
        con.print(table)
        for s in data["spans"]:
            for ev in s["events"]:
                if ev["name"] == "exception":
                    a = ev["attributes"]
                    con.print(f"[red]exception[/] in {escape(s['name'])} ({escape(s['service'])}) "
                              f"+{_ms(ev['offset_ms'])}: "
                              f"{escape(a.get('exception.type', ''))}: "
                              f"{escape(a.get('exception.message', ''))}")
        if data["logs"]:
            con.print()
            logs = Table("OFFSET", "SERVICE", "LEVEL", "MESSAGE", box=None)
            for r in data["logs"]:
                logs.add_row(f"+{_ms(r['offset_ms'])}", r["service"], r["severity"],
                             Text(r["body"]))
            con.print(logs)

    emit(ctx, data, human)
