"""The ``noops`` command group and its commands (each a few lines: parse, call, print)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from noops import __version__
from noops.cli.common import Ctx, emit, make_ctx, pass_ctx

F = TypeVar("F", bound=Callable[..., Any])


def output_options(func: F) -> F:
    """``--json`` and ``--verbose`` on a command; they update the shared context."""

    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
    @click.option("-v", "--verbose", is_flag=True, help="Explain each step and show tool output.")
    @functools.wraps(func)
    def wrapper(*args: Any, as_json: bool, verbose: bool, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Ctx)
        if ctx is not None:
            ctx.json = ctx.json or as_json
            ctx.verbose = ctx.verbose or verbose
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), envvar="NOOPS_HOME",
              help="Where noops keeps its data (default /var/lib/noops as root).")
@click.version_option(__version__, prog_name="noops")
@click.pass_context
def cli(click_ctx: click.Context, home: Path | None) -> None:
    """noops: point it at a source folder; get a built, patched, running, guarded, observed app."""
    click_ctx.obj = make_ctx(home, False, False)


# -- build ---------------------------------------------------------------------------------
@cli.command()
@click.argument("path", type=click.Path(path_type=Path, file_okay=False))
@click.option("-t", "--tag", help="Image name[:tag] (default: the folder's name, :latest).")
@click.option("--push", "push_ref", help="Also push to REGISTRY/NAME[:TAG].")
@click.option("--insecure", is_flag=True, help="Push over plain HTTP (a registry on localhost).")
@click.option("--compression", type=click.Choice(["gzip", "zstd"]),
              help="Layer compression (default: gzip, or NOOPS_COMPRESSION).")
@output_options
@pass_ctx
def build(ctx: Ctx, path: Path, tag: str | None, push_ref: str | None, insecure: bool,
          compression: str | None) -> None:
    """Build PATH into an OCI image: detect, build under runc, export. No Dockerfile."""
    from noops.build.lifecycle import build_image
    from noops.settings import Settings

    settings = Settings(ctx.settings.environ,
                        {"home": ctx.settings.home, "compression": compression})
    report = build_image(settings, path, tag=tag, log=ctx.logger())
    if push_ref:
        from noops.oci.registry import push

        result = push(ctx.store, report.digest, push_ref, insecure=insecure)
        report.pushed = _push_json(result)
    data = report.to_json()

    def human(con: Console) -> None:
        new = sum(1 for layer in report.layers if layer["new_blob"])
        con.print(f"[bold green]built[/] {report.name}  [dim]{report.digest}[/]")
        con.print(f"  buildpack {report.buildpack} on stack {report.stack}; "
                  f"{len(report.layers)} layers, {new} new; {report.timings['total_s']:.1f}s")
        for proc in report.processes:
            con.print(f"  process [bold]{proc['type']}[/]: {' '.join(proc['command'])}"
                      f"  [dim]({proc['source']})[/]")
        if report.pushed:
            con.print(f"  pushed {report.pushed['reference']}")
        con.print(f"  run it: [bold]noops run {report.name} -p 8080[/]")

    emit(ctx, data, human)


def _push_json(result: Any) -> dict[str, Any]:
    return {"reference": result.reference, "digest": result.digest,
            "uploaded": list(result.uploaded), "mounted": list(result.mounted),
            "skipped": list(result.skipped)}


@cli.command()
@click.argument("image")
@click.argument("ref")
@click.option("--insecure", is_flag=True, help="Plain HTTP (a registry on localhost).")
@output_options
@pass_ctx
def push(ctx: Ctx, image: str, ref: str, insecure: bool) -> None:
    """Push local IMAGE to REF (REGISTRY/NAME[:TAG]): only missing blobs are sent."""
    from noops.oci.registry import push as push_image

    result = push_image(ctx.store, image, ref, insecure=insecure)
    data = _push_json(result)
    emit(ctx, data, lambda con: con.print(
        f"pushed {result.reference} [dim]{result.digest}[/]: {len(result.uploaded)} uploaded, "
        f"{len(result.mounted)} mounted, {len(result.skipped)} already there"))


@cli.command()
@click.argument("registry")
@click.option("-u", "--username", prompt=True, help="Registry user name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--insecure", is_flag=True, help="Plain HTTP (a registry on localhost).")
@pass_ctx
def login(ctx: Ctx, registry: str, username: str, password_stdin: bool, insecure: bool) -> None:
    """Check credentials for REGISTRY (HOST[:PORT]) and save them for push and pull."""
    from noops.oci.registry import login as registry_login

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True)
    path = registry_login(registry, username, password, insecure=insecure)
    ctx.console.print(f"logged in to {registry}; credentials saved in {path} (mode 0600)")


@cli.command()
@click.argument("ref")
@click.option("-t", "--tag", help="Local name for the pulled image.")
@click.option("--insecure", is_flag=True, help="Plain HTTP (a registry on localhost).")
@output_options
@pass_ctx
def pull(ctx: Ctx, ref: str, tag: str | None, insecure: bool) -> None:
    """Pull REF from a registry into the local store."""
    from noops.oci.registry import pull as pull_image

    desc = pull_image(ref, ctx.store, tag_as=tag, insecure=insecure)
    emit(ctx, {"reference": ref, "digest": desc.digest},
         lambda con: con.print(f"pulled {ref} [dim]{desc.digest}[/]"))


# -- images --------------------------------------------------------------------------------
@cli.command()
@output_options
@pass_ctx
def images(ctx: Ctx) -> None:
    """List the images in the local store."""
    store = ctx.store
    rows: list[dict[str, Any]] = []
    for name, desc in store.tags():
        img = store.image(desc.digest)
        rows.append({"name": name, "digest": desc.digest, "size": img.size,
                     "created": img.config.get("created"),
                     "stack": img.labels.get("dev.noops.stack")})

    def human(con: Console) -> None:
        table = Table("NAME", "DIGEST", "SIZE", "STACK", box=None)
        for row in rows:
            table.add_row(row["name"], row["digest"][7:19], _size(row["size"]), row["stack"] or "")
        con.print(table if rows else "no images yet: try `noops build ./examples/flask`")

    emit(ctx, rows, human)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


@cli.command()
@click.argument("image")
@output_options
@pass_ctx
def inspect(ctx: Ctx, image: str) -> None:
    """Show an image: processes, buildpacks, run image, layers, labels."""
    from noops.build.inspect import inspect_image

    data = inspect_image(ctx.store, image)

    def human(con: Console) -> None:
        con.print(f"[bold]{image}[/]  [dim]{data['digest']}[/]")
        run = data.get("runImage") or {}
        con.print(f"  run image: {run.get('image')}  top layer {str(run.get('topLayer'))[:19]}")
        for proc in data.get("processes", []):
            con.print(f"  process {proc['type']}: {' '.join(proc['command'])}")
        for bp in data.get("buildpacks", []):
            con.print(f"  buildpack {bp['id']}@{bp['version']}")
        table = Table("LAYER", "DIFF ID", "SIZE", box=None)
        for layer in data["layers"]:
            table.add_row(layer["created_by"], layer["diff_id"][7:19], _size(layer["size"]))
        con.print(table)

    emit(ctx, data, human)


@cli.command()
@click.argument("image")
@click.option("--run-image", help="Rebase onto this run image (default: the stack's :stable).")
@click.option("--force", is_flag=True, help="Skip the distro/arch/name validation.")
@click.option("-t", "--tag", help="Tag the result as this (default: IMAGE's own name).")
@click.option("--insecure", is_flag=True, help="Plain HTTP for registry images.")
@output_options
@pass_ctx
def rebase(ctx: Ctx, image: str, run_image: str | None, force: bool, tag: str | None,
           insecure: bool) -> None:
    """Swap IMAGE's OS layers for a newer run image in seconds; app layers stay byte-identical."""
    from noops.build.rebase import rebase_image

    result = rebase_image(ctx.settings, ctx.store, image, run_image=run_image, force=force,
                          tag=tag, insecure=insecure)
    emit(ctx, result.to_json(), lambda con: con.print(
        f"[bold green]rebased[/] {result.name} [dim]{result.old_digest[:19]} → "
        f"{result.digest[:19]}[/] onto {result.run_image} "
        f"({result.swapped} base layer(s) swapped, {result.kept} kept) in {result.seconds:.2f}s"))


@cli.command()
@click.argument("image")
@click.option("--summary", is_flag=True, help="A table of components instead of the document.")
@pass_ctx
def sbom(ctx: Ctx, image: str, summary: bool) -> None:
    """Print IMAGE's CycloneDX SBOM (OS packages and app dependencies)."""
    from noops.build.inspect import image_sbom

    doc = image_sbom(ctx.settings, ctx.store, image)
    if not summary:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    table = Table("TYPE", "NAME", "VERSION", "SOURCE", box=None)
    for comp in doc.get("components", []):
        source = next((p["value"] for p in comp.get("properties", [])
                       if p["name"] == "noops:source"), "")
        table.add_row(comp.get("type", ""), comp["name"], comp.get("version", ""), source)
    ctx.console.print(table)


@cli.command()
@click.argument("image")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="Host port the app listens on (sets PORT).")
@click.option("--process", "process_type", default=None, help="Process type (default: web).")
@click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE for the app; repeatable.")
@pass_ctx
def run(ctx: Ctx, image: str, port: int, process_type: str | None, env: tuple[str, ...]) -> None:
    """Run IMAGE in the foreground under runc; Ctrl-C stops it cleanly."""
    from noops.runtime.local import run_foreground

    extra = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
        extra[key] = value
    code = run_foreground(ctx.settings, ctx.store, image, port=port, process_type=process_type,
                          env=extra, log=ctx.logger())
    raise SystemExit(code)


# -- stacks --------------------------------------------------------------------------------
@cli.group()
def stack() -> None:
    """Base images (build + run) made from Debian packages."""


@stack.command("build")
@click.argument("which", type=click.Choice(["python", "node", "static", "all"]), default="all")
@click.option("--run-only", is_flag=True, help="Rebuild only the run image(s): then `noops rebase`.")
@output_options
@pass_ctx
def stack_build(ctx: Ctx, which: str, run_only: bool) -> None:
    """Build (or rebuild, to pick up Debian security updates) a stack's images."""
    from noops.build.stacks import STACKS, build_stack

    ids = list(STACKS) if which == "all" else [which]
    kinds = ("run",) if run_only else ("build", "run")
    results = [build_stack(ctx.settings, ctx.store, s, ctx.logger(), kinds) for s in ids]
    data = [r.__dict__ for r in results]

    def human(con: Console) -> None:
        for r in results:
            con.print(f"[bold green]stack {r.stack}[/]: {r.build}, {r.run} ({r.seconds:.0f}s)")

    emit(ctx, data, human)


@stack.command("list")
@output_options
@pass_ctx
def stack_list(ctx: Ctx) -> None:
    """Show the stacks and the images their :stable tags point at."""
    from noops.build.stacks import STACKS, stack_refs
    from noops.errors import ImageError

    rows = []
    for sid, sdef in STACKS.items():
        row: dict[str, Any] = {"stack": sid, "description": sdef.description}
        for kind, ref in zip(("build", "run"), stack_refs(sid), strict=True):
            try:
                img = ctx.store.image(ref)
                row[kind] = {"ref": ref, "digest": img.digest,
                             "released": img.labels.get("io.buildpacks.base.released")}
            except ImageError:
                row[kind] = None
        rows.append(row)

    def human(con: Console) -> None:
        table = Table("STACK", "RUN IMAGE", "RELEASED", "DESCRIPTION", box=None)
        for r in rows:
            run_info = r["run"]
            table.add_row(r["stack"], run_info["digest"][7:19] if run_info else "(not built)",
                          run_info["released"] if run_info else "", r["description"])
        con.print(table)

    emit(ctx, rows, human)
