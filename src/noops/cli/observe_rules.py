"""Uptime probes, alerts and deploy markers: ``noops probes``, ``noops alerts``, ``noops deploys``.

Each command sends one request to the daemon API (:mod:`noops.observe.rules_api`) and prints
the answer, or JSON with ``--json``.
"""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from noops.cli.app import cli, output_options
from noops.cli.client import Client
from noops.cli.common import Ctx, emit, pass_ctx
from noops.errors import UsageError


def _when(text: str | None) -> str:
    return (text or "-").replace("T", " ")[:19]


# -- probes ------------------------------------------------------------------------------------
@cli.group(invoke_without_command=True)
@output_options
@click.pass_context
def probes(click_ctx: click.Context) -> None:
    """Uptime probes: HTTP(S) through the front door, TCP, TLS certificate expiry."""
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(probes_list)


@probes.command("list")
@output_options
@pass_ctx
def probes_list(ctx: Ctx) -> None:
    """Probes with their last result."""
    data = Client(ctx.settings).call("GET", "/api/probes")

    def human(con: Console) -> None:
        if not data:
            con.print("no probes yet: `noops probes add https://APP.localhost:8443/`")
            return
        table = Table("ID", "NAME", "EVERY", "LAST", "STATUS", "MS", "NOTE", box=None)
        for p in data:
            last = p["last"] or {}
            state = "-" if not last else "[green]up[/]" if last["ok"] else "[red]down[/]"
            table.add_row(str(p["id"]), p["name"], f"{p['every_s']:g}s", _when(last.get("at")),
                          state, f"{last['duration_ms']:.0f}" if last else "",
                          last.get("error") or last.get("warning") or "")
        con.print(table)

    emit(ctx, data, human)


@probes.command("add")
@click.argument("url")
@click.option("--every", default="30s", show_default=True, help="Check interval (at least 5s).")
@click.option("--expect-status", type=int, default=200, show_default=True,
              help="HTTP status the check expects.")
@click.option("--expect-text", help="Text the response body must contain.")
@click.option("--json-path", help="JSON path that must exist in the body, e.g. $.status.")
@click.option("--expect-value", help="Value expected at --json-path (compared as text).")
@click.option("--name", help="Probe name (default: the URL).")
@click.option("--app", "app_name", help="App the probe belongs to (its metrics' service).")
@click.option("--timeout", help="Per-check timeout (default: 10s or the interval).")
@output_options
@pass_ctx
def probes_add(ctx: Ctx, url: str, every: str, expect_status: int, expect_text: str | None,
               json_path: str | None, expect_value: str | None, name: str | None,
               app_name: str | None, timeout: str | None) -> None:
    """Probe URL (http(s)://…, tcp://HOST:PORT or tls://HOST[:PORT])."""
    if expect_value is not None and json_path is None:
        raise UsageError("--expect-value needs --json-path")
    body: dict[str, Any] = {"url": url, "every": every, "expect_status": expect_status,
                            "expect_text": expect_text, "json_path": json_path, "name": name,
                            "app": app_name, "timeout": timeout}
    if expect_value is not None:
        body["json_expect"] = expect_value
    data = Client(ctx.settings).call("POST", "/api/probes", body)
    emit(ctx, data, lambda con: con.print(
        f"probe {data['id']} added: {data['kind']} {data['target']} every {data['every_s']:g}s"))


@probes.command("rm")
@click.argument("probe_id", type=int)
@output_options
@pass_ctx
def probes_rm(ctx: Ctx, probe_id: int) -> None:
    """Remove probe PROBE_ID and its results."""
    data = Client(ctx.settings).call("DELETE", f"/api/probes/{probe_id}")
    emit(ctx, data, lambda con: con.print(f"probe {probe_id} removed"))


# -- alerts ------------------------------------------------------------------------------------
@cli.group(invoke_without_command=True)
@output_options
@click.pass_context
def alerts(click_ctx: click.Context) -> None:
    """Alert rules (error rate, latency, probe failures, SLO burn) and their webhooks."""
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(alerts_list)


@alerts.command("list")
@output_options
@pass_ctx
def alerts_list(ctx: Ctx) -> None:
    """Alert rules with their state."""
    data = Client(ctx.settings).call("GET", "/api/alerts")

    def human(con: Console) -> None:
        if not data:
            con.print("no alerts yet: `noops alerts add APP --error-rate 5% --webhook URL`")
            return
        table = Table("ID", "NAME", "STATE", "SINCE", "MESSAGE", box=None)
        colour = {"firing": "red", "pending": "yellow"}
        for a in data:
            state = a["state"]
            table.add_row(str(a["id"]), a["name"],
                          f"[{colour[state]}]{state}[/]" if state in colour else state,
                          _when(a["since"]), a["message"])
        con.print(table)

    emit(ctx, data, human)


@alerts.command("add")
@click.argument("service", required=False)
@click.option("--error-rate", help="Fire above this error rate, e.g. 5%.")
@click.option("--p95", help="Fire above this p95 latency, e.g. 300ms.")
@click.option("--p99", help="Fire above this p99 latency, e.g. 1s.")
@click.option("--probe", "probe_id", type=int, help="Fire when probe ID fails --failures times.")
@click.option("--failures", type=int, default=3, show_default=True,
              help="Failed checks in a row for --probe.")
@click.option("--slo", help="Availability objective in %, e.g. 99.9 (fast/slow burn rates).")
@click.option("--endpoint", help="Only this endpoint (span name) of SERVICE.")
@click.option("--for", "for_", default="0s", show_default=True,
              help="How long the condition must hold before firing.")
@click.option("--window", default="5m", show_default=True, help="Measurement window.")
@click.option("--webhook", "webhooks", multiple=True, help="URL to POST notifications to; repeatable.")
@click.option("--name", help="Rule name.")
@output_options
@pass_ctx
def alerts_add(ctx: Ctx, service: str | None, error_rate: str | None, p95: str | None,
               p99: str | None, probe_id: int | None, failures: int, slo: str | None,
               endpoint: str | None, for_: str, window: str, webhooks: tuple[str, ...],
               name: str | None) -> None:
    """Alert on SERVICE: exactly one of --error-rate, --p95, --p99, --probe, --slo."""
    chosen = [(k, v) for k, v in (("error_rate", error_rate), ("p95", p95), ("p99", p99),
                                  ("slo", slo), ("probe", probe_id)) if v is not None]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --error-rate, --p95, --p99, --probe or --slo")
    kind, value = chosen[0]
    body: dict[str, Any] = {"kind": kind, "service": service, "endpoint": endpoint,
                            "for": for_, "window": window, "webhooks": list(webhooks),
                            "name": name}
    if kind == "probe":
        body.update(probe_id=value, threshold=failures)
    else:
        body["threshold"] = value
    data = Client(ctx.settings).call("POST", "/api/alerts", body)
    emit(ctx, data, lambda con: con.print(f"alert {data['id']} added: {data['name']}"))


@alerts.command("rm")
@click.argument("alert_id", type=int)
@output_options
@pass_ctx
def alerts_rm(ctx: Ctx, alert_id: int) -> None:
    """Remove alert ALERT_ID (its past notifications stay in the history)."""
    data = Client(ctx.settings).call("DELETE", f"/api/alerts/{alert_id}")
    emit(ctx, data, lambda con: con.print(f"alert {alert_id} removed"))


@alerts.command("events")
@click.option("--alert", "alert_id", type=int, help="Only this alert's notifications.")
@click.option("-n", "limit", type=int, default=20, show_default=True, help="How many.")
@output_options
@pass_ctx
def alerts_events(ctx: Ctx, alert_id: int | None, limit: int) -> None:
    """Firing and resolved notifications, newest first, with their delivery state."""
    params = {"limit": str(limit), **({"alert": str(alert_id)} if alert_id else {})}
    data = Client(ctx.settings).call("GET", "/api/alerts/events", params=params)

    def human(con: Console) -> None:
        for e in data:
            sent = ", ".join(f"{d['status']}" for d in e["deliveries"]) or "no webhook"
            con.print(f"{_when(e['at'])}  {e['status']:<8} {e['alert']['name']}: {e['message']} "
                      f"[dim]({sent})[/]")

    emit(ctx, data, human)


# -- deploy markers ----------------------------------------------------------------------------
def _fmt(figures: dict[str, Any] | None) -> str:
    if not figures or not figures["count"]:
        return "no traffic"
    return (f"{figures['rate_per_s']:.2f} req/s, {figures['error_pct']:.1f}% errors, "
            f"p95 {figures['p95_ms']:.0f} ms")


@cli.command()
@click.argument("service", required=False)
@click.option("-n", "limit", type=int, default=20, show_default=True, help="How many markers.")
@output_options
@pass_ctx
def deploys(ctx: Ctx, service: str | None, limit: int) -> None:
    """Deploy markers (releases, config changes, rollbacks, new versions) with before/after."""
    params = {"compare": "1", "limit": str(limit), **({"service": service} if service else {})}
    data = Client(ctx.settings).call("GET", "/api/deployments", params=params)

    def human(con: Console) -> None:
        if not data:
            con.print("no deploy markers yet")
        for m in data:
            cmp = m.get("comparison") or {}
            con.print(f"[bold]{_when(m['at'])}[/]  {m['service']} {m['version']}  "
                      f"[cyan]{m['kind']}[/]  {m['description']}", highlight=False)
            con.print(f"    before: {_fmt(cmp.get('before'))}", markup=False)
            con.print(f"    after:  {_fmt(cmp.get('after'))}", markup=False)
            if cmp.get("note"):
                con.print(f"    [dim]{cmp['note']}[/]")

    emit(ctx, data, human)


# -- public status pages -----------------------------------------------------------------------
@cli.group("status-page", invoke_without_command=True)
@output_options
@click.pass_context
def status_page(click_ctx: click.Context) -> None:
    """Public status pages: read-only, no sign-in, at https://console.localhost:PORT/status/APP."""
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(status_page_list)


def _page_url(ctx: Ctx, app: str) -> str:
    return f"https://console.localhost:{ctx.settings.get('frontdoor_port')}/status/{app}"


@status_page.command("list")
@output_options
@pass_ctx
def status_page_list(ctx: Ctx) -> None:
    """Published status pages."""
    data = Client(ctx.settings).call("GET", "/api/status-pages")

    def human(con: Console) -> None:
        if not data:
            con.print("no public status pages: `noops status-page enable APP`")
        for p in data:
            con.print(f"{p['app']}  {p['title']!r}  {_page_url(ctx, p['app'])}", highlight=False)

    emit(ctx, data, human)


@status_page.command("enable")
@click.argument("app")
@click.option("--title", help="Heading of the page (default: the app's name).")
@output_options
@pass_ctx
def status_page_enable(ctx: Ctx, app: str, title: str | None) -> None:
    """Publish APP's status page: its probes' names, state and uptime, for anyone."""
    data = Client(ctx.settings).call("PUT", f"/api/status-pages/{app}", {"title": title})
    emit(ctx, data, lambda con: con.print(
        f"published: {_page_url(ctx, app)}  (shows the names, state and uptime of {app}'s "
        "probes; targets and errors stay private)", highlight=False))


@status_page.command("disable")
@click.argument("app")
@output_options
@pass_ctx
def status_page_disable(ctx: Ctx, app: str) -> None:
    """Stop publishing APP's status page."""
    data = Client(ctx.settings).call("DELETE", f"/api/status-pages/{app}")
    emit(ctx, data, lambda con: con.print(f"{app}'s status page is no longer published"))
