"""Platform commands: up/down, apps, deploy, releases, rollback, config, secrets, ps, scale,
logs, gc, export. Each sends one request to the daemon and prints the answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from noops.cli.app import cli, output_options
from noops.cli.client import Client
from noops.cli.common import Ctx, emit, pass_ctx
from noops.errors import NoopsError, UsageError


def _pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{item!r} is not KEY=VALUE ({what})")
        out[key] = value
    return out


@cli.command()
@click.option("-d", "--detach", is_flag=True, help="Run in the background (pid file, log file).")
@pass_ctx
def up(ctx: Ctx, detach: bool) -> None:
    """Start the platform daemon (API on a Unix socket; apps, health, restarts, front door)."""
    from noops.daemon import pid_path, process_running, serve, socket_path

    settings = ctx.settings
    pid_file = pid_path(settings)
    if pid_file.exists():
        text = pid_file.read_text().strip()
        if text.isdigit() and process_running(int(text)):
            raise NoopsError(f"noops is already running (pid {text}); `noops down` stops it")
        pid_file.unlink()
    if detach:
        log = settings.home / "logs" / "daemon.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        socket_path(settings).unlink(missing_ok=True)  # a stale one would look like "up"
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "noops", "--home", str(settings.home),
                                     "up"], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise NoopsError(f"the daemon did not start; see {log}")
            if socket_path(settings).exists():
                try:
                    Client(settings, timeout_s=2).call("GET", "/api/health")
                    break
                except NoopsError:
                    pass
            time.sleep(0.1)
        ctx.console.print(f"noops is up (pid {proc.pid}); API on {socket_path(settings)}; "
                          f"log {log}")
        return
    import asyncio
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(settings, backoff_s=float(settings.get("restart_backoff_s"))))


@cli.command()
@click.option("--apps", "stop_apps", is_flag=True, help="Also stop every app and the front door.")
@pass_ctx
def down(ctx: Ctx, stop_apps: bool) -> None:
    """Stop the daemon. Apps keep serving unless --apps is given."""
    from noops.daemon import pid_path, process_running

    pid_file = pid_path(ctx.settings)
    if not pid_file.exists() and not stop_apps:
        raise NoopsError("noops is not running")
    if pid_file.exists():
        # With --apps the daemon stops the instances itself, before its telemetry receiver, so
        # what the apps flush while shutting down is stored (and no exporter waits on a dead
        # receiver for its whole grace period).
        try:
            pid = int(pid_file.read_text())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"up" not in argv or not any(a == b"noops" or a.endswith(b"/noops") for a in argv):
                raise ProcessLookupError  # a stale pid file: that number is another process now
            os.kill(pid, signal.SIGUSR1 if stop_apps else signal.SIGTERM)
        except (ValueError, OSError):
            pid_file.unlink(missing_ok=True)
        else:
            wait_s = _stop_wait_s(ctx, stop_apps)
            deadline = time.monotonic() + wait_s
            while pid_file.exists() and process_running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_file.exists() and process_running(pid):
                raise NoopsError(f"the daemon (pid {pid}) did not stop within {wait_s:.0f} s: see "
                                 f"{ctx.settings.home / 'logs'}, then `kill -9 {pid}` and run "
                                 f"`noops down{' --apps' if stop_apps else ''}` again")
    if stop_apps:
        from noops.daemon import stop_everything

        stop_everything(ctx.settings)
    ctx.console.print("noops is down" + (" (apps stopped)" if stop_apps else
                                         "; apps keep serving"))


def _stop_wait_s(ctx: Ctx, with_apps: bool) -> float:
    """How long the daemon may take to stop: its own drain, plus with ``--apps`` the longest
    grace period of the instances it stops (they stop side by side)."""
    if not with_apps:
        return 30.0
    from noops.daemon import instance_manager

    manager = instance_manager(ctx.settings)
    return 30.0 + max((i.spec.grace_s + 5 for i in manager.existing()), default=0.0)


@cli.group()
def apps() -> None:
    """Create and list apps."""


@apps.command("create")
@click.argument("name")
@output_options
@pass_ctx
def apps_create(ctx: Ctx, name: str) -> None:
    """Create app NAME (lowercase letters, digits, dashes)."""
    data = Client(ctx.settings).call("POST", "/api/apps", {"name": name})
    emit(ctx, data, lambda con: con.print(f"created app {name}"))


@apps.command("list")
@output_options
@pass_ctx
def apps_list(ctx: Ctx) -> None:
    """Apps with their live release, ready instances and URL."""
    data = Client(ctx.settings).call("GET", "/api/apps")

    def human(con: Console) -> None:
        table = Table("APP", "RELEASE", "READY", "URL", box=None)
        for a in data:
            rel = a["release"]
            table.add_row(a["name"], f"v{rel['version']}" if rel else "-",
                          f"{a['ready']}/{a['instances']}", a["url"])
        con.print(table)

    emit(ctx, data, human)


@cli.command()
@click.argument("target")
@click.option("--app", "app_name", help="App to deploy to (default: the folder or image name).")
@output_options
@pass_ctx
def deploy(ctx: Ctx, target: str, app_name: str | None) -> None:
    """Deploy TARGET (a source folder: built first; or an image) as a new release."""
    path = Path(target)
    body: dict[str, Any] = {"path": str(path.resolve())} if path.is_dir() else {"image": target}
    name = app_name or (path.resolve().name if path.is_dir() else target.split(":")[0].split("/")[-1])
    client = Client(ctx.settings)
    existing = {a["name"] for a in client.call("GET", "/api/apps")}
    if name not in existing:
        client.call("POST", "/api/apps", {"name": name})
    data = client.call("POST", f"/api/apps/{name}/deploy", body)
    emit(ctx, data, lambda con: con.print(
        f"[bold green]deployed[/] {name} v{data['version']} in {data['seconds']:.1f}s → "
        f"https://{name}.localhost:{ctx.settings.get('frontdoor_port')}/"))


@cli.command()
@click.argument("app")
@output_options
@pass_ctx
def releases(ctx: Ctx, app: str) -> None:
    """List APP's releases, newest first."""
    data = Client(ctx.settings).call("GET", f"/api/apps/{app}/releases")

    def human(con: Console) -> None:
        table = Table("VERSION", "STATUS", "IMAGE", "CONFIG", "DESCRIPTION", box=None)
        for r in data:
            table.add_row(f"v{r['version']}", r["status"], r["digest"][7:19],
                          f"c{r['config_version']}", r["description"])
        con.print(table)

    emit(ctx, data, human)


@cli.command()
@click.argument("app")
@click.argument("version", required=False)
@output_options
@pass_ctx
def rollback(ctx: Ctx, app: str, version: str | None) -> None:
    """Roll APP back to the previous release, or to VERSION (e.g. v3): image and config."""
    body = {"version": int(version.lstrip("v"))} if version else {}
    data = Client(ctx.settings).call("POST", f"/api/apps/{app}/rollback", body)
    emit(ctx, data, lambda con: con.print(f"rolled back: {app} v{data['version']} is live"))


@cli.group()
def config() -> None:
    """Config vars (every change is a new release and a rolling restart)."""


@config.command("set")
@click.argument("app")
@click.argument("pairs", nargs=-1, required=True)
@output_options
@pass_ctx
def config_set(ctx: Ctx, app: str, pairs: tuple[str, ...]) -> None:
    """Set KEY=VALUE pairs: a new release, rolled out without downtime."""
    data = Client(ctx.settings).call("PATCH", f"/api/apps/{app}/config",
                                     {"set": _pairs(pairs, "config set")})
    emit(ctx, data, lambda con: con.print(
        f"config changed; {app} v{data['version']} is live" if data["changed"] else "no change"))


@config.command("unset")
@click.argument("app")
@click.argument("keys", nargs=-1, required=True)
@output_options
@pass_ctx
def config_unset(ctx: Ctx, app: str, keys: tuple[str, ...]) -> None:
    """Remove KEYS: a new release, rolled out without downtime."""
    data = Client(ctx.settings).call("PATCH", f"/api/apps/{app}/config", {"unset": list(keys)})
    emit(ctx, data, lambda con: con.print(
        f"config changed; {app} v{data['version']} is live" if data["changed"] else "no change"))


@config.command("list")
@click.argument("app")
@output_options
@pass_ctx
def config_list(ctx: Ctx, app: str) -> None:
    """Config vars, and secret names with their values masked."""
    data = Client(ctx.settings).call("GET", f"/api/apps/{app}/config")

    def human(con: Console) -> None:
        for k, v in sorted(data["config"].items()):
            con.print(f"{k}={v}", markup=False)
        for k in data["secrets"]:
            con.print(f"{k}=******** (secret)", markup=False)

    emit(ctx, data, human)


@cli.group()
def secrets() -> None:
    """Secrets: encrypted at rest, never printed or logged."""


@secrets.command("set")
@click.argument("app")
@click.argument("pairs", nargs=-1, required=True)
@output_options
@pass_ctx
def secrets_set(ctx: Ctx, app: str, pairs: tuple[str, ...]) -> None:
    """Set secrets (KEY=VALUE): encrypted at rest, a new release."""
    data = Client(ctx.settings).call("PATCH", f"/api/apps/{app}/secrets",
                                     {"set": _pairs(pairs, "secrets set")})
    emit(ctx, data, lambda con: con.print(f"secrets set: {', '.join(data['secrets'])}"))


@secrets.command("list")
@click.argument("app")
@output_options
@pass_ctx
def secrets_list(ctx: Ctx, app: str) -> None:
    """Secret names (values are never shown)."""
    data = Client(ctx.settings).call("GET", f"/api/apps/{app}/config")

    def human(con: Console) -> None:
        for key in data["secrets"]:
            con.print(key, markup=False)

    emit(ctx, data["secrets"], human)


@cli.command()
@click.argument("app")
@output_options
@pass_ctx
def ps(ctx: Ctx, app: str) -> None:
    """APP's instances: state, health, restarts."""
    data = Client(ctx.settings).call("GET", f"/api/apps/{app}/ps")

    def human(con: Console) -> None:
        table = Table("PROCESS", "RELEASE", "INSTANCE", "STATE", "RESTARTS", "CHECK", box=None)
        for s in data:
            table.add_row(f"{s['process']}.{s['index']}", f"v{s['release']}",
                          s["instance"] or "-", s["state"], str(s["restarts"]), s["last_check"])
        con.print(table)

    emit(ctx, data, human)


@cli.command()
@click.argument("app")
@click.argument("counts", nargs=-1, required=True)
@output_options
@pass_ctx
def scale(ctx: Ctx, app: str, counts: tuple[str, ...]) -> None:
    """Scale APP's processes: `noops scale shop web=3 worker=1`."""
    body = {}
    for k, v in _pairs(counts, "scale").items():
        if not v.isdigit():
            raise UsageError(f"{k}={v}: the count must be a whole number")
        body[k] = int(v)
    data = Client(ctx.settings).call("POST", f"/api/apps/{app}/scale", body)
    emit(ctx, data, lambda con: con.print(f"scaled; {app} v{data['version']} is live"))


@cli.command()
@click.argument("app")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--process", help="Only this process type (web, worker…).")
@click.option("-n", "--lines", default=100, show_default=True, help="How many recent lines.")
@click.option("--grep", help="Search the telemetry store: records whose message contains TEXT "
                             "(any case), newest first.")
@click.option("--severity", help="Search: this level and above (debug, info, warn, error…).")
@click.option("--since", help="Search window ending now: 30s, 15m, 2h, 7d (default 1h).")
@click.option("--attr", "attrs", multiple=True, help="Search: KEY=VALUE log or resource "
                                                     "attribute (repeatable).")
@output_options
@pass_ctx
def logs(ctx: Ctx, app: str, follow: bool, process: str | None, lines: int, grep: str | None,
         severity: str | None, since: str | None, attrs: tuple[str, ...]) -> None:
    """APP's logs (stdout/stderr of every instance, kept across deploys). With --grep,
    --severity, --since or --attr: a search of APP's log records in the telemetry store (OTLP
    logs and instance output, linked to their traces)."""
    if grep is not None or severity or since or attrs:
        if follow or process:
            raise UsageError("--follow and --process read the live output; leave them out "
                             "when searching with --grep/--severity/--since/--attr")
        _pairs(attrs, "--attr")  # checked here so a typo is reported before any request
        query: list[tuple[str, str]] = [("service", app), ("since", since or "1h"),
                                        ("limit", str(lines))]
        query += [(k, v) for k, v in (("q", grep), ("severity", severity)) if v]
        query += [("attr", a) for a in attrs]
        records = Client(ctx.settings).call("GET", "/api/logs", params=query)

        def human(con: Console) -> None:
            for r in reversed(records):  # oldest first, like a log file
                when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r["Timestamp"] / 1e9))
                trace = f" trace={r['TraceId']}" if r["TraceId"] else ""
                click.echo(f"{when}Z {r['SeverityText'] or '-':5} {r['Body']}{trace}")
            if not records:
                con.print(f"no matching log records for {app}", style="dim")

        emit(ctx, records, human)
        return
    params = {"lines": str(lines), "follow": "1" if follow else "0"}
    if process:
        params["process"] = process
    for line in Client(ctx.settings).stream(f"/api/apps/{app}/logs", params):
        click.echo(line)


@cli.command()
@output_options
@pass_ctx
def gc(ctx: Ctx) -> None:
    """Remove images and layers no retained release needs (automatic too)."""
    data = Client(ctx.settings).call("POST", "/api/gc")
    emit(ctx, data, lambda con: con.print(
        f"removed {data['blobs_removed']} blobs and {data['layers_removed']} unpacked layers, "
        f"{data['bytes_freed'] / 1e6:.1f} MB freed; {len(data['pinned'])} images pinned"))


@cli.group()
def export() -> None:
    """Export an app to another platform."""


@export.command("kubernetes")
@click.argument("app")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path),
              help="Write one YAML file per object here (default: YAML on stdout).")
@click.option("--image", help="Pushed image reference with digest (REGISTRY/NAME@sha256:…).")
@click.option("--domain", help="Also route APP.DOMAIN in the Ingress.")
@pass_ctx
def export_kubernetes(ctx: Ctx, app: str, out_dir: Path | None, image: str | None,
                      domain: str | None) -> None:
    """Deployment, Service, Ingress, ConfigMap, Secret, PDB, HPA for APP's current release."""
    from noops.runtime.kubernetes import to_yaml, write_manifests

    params = {k: v for k, v in {"image": image, "domain": domain}.items() if v}
    manifests = Client(ctx.settings).call("GET", f"/api/apps/{app}/export/kubernetes",
                                          params=params)
    if out_dir:
        paths = write_manifests(manifests, out_dir)
        ctx.console.print(f"wrote {len(paths)} files to {out_dir}")
    else:
        click.echo(to_yaml(manifests), nl=False)
