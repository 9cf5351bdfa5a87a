"""Zero-trust administration: the CA, users, devices and the audit log.

These commands manage what the gateway will enforce; until the front door enforces policy (see
CHANGELOG), they prepare identities and certificates. Data lives under ``$NOOPS_HOME/gate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from noops.cli.app import cli, output_options
from noops.cli.common import Ctx, emit, pass_ctx
from noops.errors import UsageError

if TYPE_CHECKING:
    from noops.gate.identity import IdentityStore
    from noops.gate.pki import CertificateAuthority


def _gate_dir(ctx: Ctx) -> Path:
    path = ctx.settings.home / "gate"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _ca(ctx: Ctx) -> CertificateAuthority:
    from noops.gate.pki import CertificateAuthority

    directory = _gate_dir(ctx) / "ca"
    if (directory / "ca.json").exists():
        return CertificateAuthority.load(directory)
    return CertificateAuthority.create(directory)


def _identities(ctx: Ctx) -> IdentityStore:
    from noops.gate.identity import IdentityStore

    return IdentityStore(_gate_dir(ctx) / "identity.db")


def _secret(prompt: str, from_stdin: bool) -> str:
    if from_stdin:
        return click.get_text_stream("stdin").readline().rstrip("\r\n")
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=True))


@cli.group()
def ca() -> None:
    """The built-in certificate authority (root + intermediate, SPIFFE IDs)."""


@ca.command("export")
@pass_ctx
def ca_export(ctx: Ctx) -> None:
    """Print the CA bundle (PEM) for users' and tools' trust stores."""
    click.echo(_ca(ctx).export_ca_bundle().decode(), nl=False)


@cli.group()
def users() -> None:
    """Local users of the gateway (argon2id passwords, lockout, TOTP)."""


@users.command("add")
@click.argument("name")
@click.option("-g", "--group", "groups", multiple=True, help="Group membership; repeatable.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@output_options
@pass_ctx
def users_add(ctx: Ctx, name: str, groups: tuple[str, ...], password_stdin: bool) -> None:
    password = _secret("Password", password_stdin)
    if len(password) < 12:
        raise UsageError("passwords need at least 12 characters")
    user = _identities(ctx).add_user(name, password, groups)
    emit(ctx, {"name": user.name, "groups": list(user.groups)},
         lambda con: con.print(f"added user {name}"))


@users.command("lock")
@click.argument("name")
@pass_ctx
def users_lock(ctx: Ctx, name: str) -> None:
    """Refuse NAME's logins and revoke every session at once."""
    _identities(ctx).lock_user(name)
    ctx.console.print(f"locked {name}; their sessions are revoked")


@cli.group()
def device() -> None:
    """Device certificates (client certificates for enrolled devices)."""


@device.command("enroll")
@click.argument("name")
@click.option("--user", "user", required=True, help="Whose device it is.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="PKCS#12 file to write.")
@click.option("--password-stdin", is_flag=True, help="Read the bundle password from stdin.")
@pass_ctx
def device_enroll(ctx: Ctx, name: str, user: str, output: Path | None,
                  password_stdin: bool) -> None:
    """Issue a device certificate for USER's device NAME as a password-protected PKCS#12."""
    password = _secret("Bundle password", password_stdin)
    bundle = _ca(ctx).enroll_device(name, user, password=password)
    out = output or Path(f"{user}-{name}.p12")
    out.write_bytes(bundle)
    out.chmod(0o600)
    ctx.console.print(f"wrote {out} (import it into the device's browser or keychain)")


@device.command("revoke")
@click.argument("name")
@click.option("--user", "user", required=True)
@click.option("--reason", default="unspecified", show_default=True)
@pass_ctx
def device_revoke(ctx: Ctx, name: str, user: str, reason: str) -> None:
    """Revoke every certificate of USER's device NAME (listed in the CA's CRL at once)."""
    serials = _ca(ctx).revoke(f"{user}/{name}", reason)
    ctx.console.print(f"revoked {len(serials)} certificate(s) of {user}/{name}")


@cli.command()
@click.option("--verify", "check", is_flag=True, help="Check the hash chain of the whole log.")
@output_options
@pass_ctx
def audit(ctx: Ctx, check: bool) -> None:
    """The gateway's decision log."""
    from noops.gate.audit import verify

    path = _gate_dir(ctx) / "audit"
    if not check:
        raise UsageError("use `noops audit --verify`; decision queries come with the gateway")
    if not path.exists():
        emit(ctx, {"ok": True, "records": 0},
             lambda con: con.print("no audit records yet"))
        return
    result = verify(path)
    emit(ctx, {"ok": result.ok, "records": result.records,
               "first_bad_index": result.first_bad_index, "reason": result.reason},
         lambda con: con.print(f"chain ok: {result.records} records" if result.ok else
                               f"[red]chain broken[/] at record {result.first_bad_index}: "
                               f"{result.reason}"))
    if not result.ok:
        raise SystemExit(14)
