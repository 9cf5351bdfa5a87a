"""Zero-trust administration: the CA, users, devices, the identity provider, the policy and the
audit log.

The front door enforces what these commands set, on its next request: a locked user's sessions
and websockets end, a revoked device is refused, an applied policy is in force within a quarter
of a second. Data lives under ``$NOOPS_HOME/gate``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from noops.cli.app import cli, output_options
from noops.cli.common import Ctx, emit, pass_ctx
from noops.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from noops.gate.identity import IdentityStore
    from noops.gate.pki import CertificateAuthority
    from noops.gate.policy import PolicyStore


def _gate_dir(ctx: Ctx) -> Path:
    path = ctx.settings.home / "gate"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _ca(ctx: Ctx) -> CertificateAuthority:
    from noops.gate.mtls import load_or_create_ca

    return load_or_create_ca(_gate_dir(ctx) / "ca")


def _identities(ctx: Ctx) -> IdentityStore:
    from noops.gate.identity import IdentityStore

    return IdentityStore(_gate_dir(ctx) / "identity.db")


def _secret(prompt: str, from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
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
@click.option("--totp", "with_totp", is_flag=True, help="Also provision an authenticator (TOTP).")
@output_options
@pass_ctx
def users_add(ctx: Ctx, name: str, groups: tuple[str, ...], password_stdin: bool, with_totp: bool) -> None:
    """Add a local user (password of at least 12 characters)."""
    password = _secret("Password", password_stdin)
    if len(password) < 12:
        raise UsageError("passwords need at least 12 characters")
    store = _identities(ctx)
    user = store.add_user(name, password, groups)
    data: dict[str, object] = {"name": user.name, "groups": list(user.groups)}
    if with_totp:
        data.update(_provision_totp(store, name))
    emit(ctx, data, lambda con: _print_user(con, data))


def _provision_totp(store: IdentityStore, name: str) -> dict[str, str]:
    secret, uri = store.provision_totp(name)
    return {"totp_secret": secret, "otpauth_uri": uri}


def _print_user(con: Console, data: dict[str, object]) -> None:
    con.print(f"added user {data['name']}")
    if "totp_secret" in data:
        con.print(f"authenticator secret: {data['totp_secret']}\n"
                  f"add it to an authenticator app, or scan: {data['otpauth_uri']}")


@users.command("totp")
@click.argument("name")
@output_options
@pass_ctx
def users_totp(ctx: Ctx, name: str) -> None:
    """Provision a new authenticator (TOTP) for NAME; the old one stops working."""
    data = _provision_totp(_identities(ctx), name)
    emit(ctx, data, lambda con: con.print(f"authenticator secret: {data['totp_secret']}\n"
                                          f"scan: {data['otpauth_uri']}"))


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


@cli.group()
def policy() -> None:
    """The gateway's access policy (routes, requirements, minimum trust scores)."""


def _policies(ctx: Ctx) -> PolicyStore:
    from noops.gate.policy import PolicyStore

    return PolicyStore(_gate_dir(ctx) / "policy")


@policy.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@output_options
@pass_ctx
def policy_apply(ctx: Ctx, file: Path) -> None:
    """Validate FILE and make it the policy in force (the gateway reloads it atomically)."""
    import getpass

    version = _policies(ctx).apply(file.read_text(), actor=getpass.getuser())
    emit(ctx, {"version": version}, lambda con: con.print(f"policy {version} applied"))


@policy.command("show")
@pass_ctx
def policy_show(ctx: Ctx) -> None:
    """Print the policy in force (the built-in default when none was applied)."""
    from noops.gate.pep import DEFAULT_POLICY
    from noops.gate.policy import PolicyError

    store = _policies(ctx)
    try:
        version = store.current().version
        text = (store.directory / "versions" / f"{version.split(':', 1)[1]}.toml").read_text()
    except (PolicyError, OSError):
        text = DEFAULT_POLICY
    click.echo(text, nl=False)


@policy.command("history")
@output_options
@pass_ctx
def policy_history(ctx: Ctx) -> None:
    """Every applied version: when, by whom, replacing what."""
    changes = _policies(ctx).history()
    rows = [{"time": c.time, "actor": c.actor, "version": c.version, "previous": c.previous}
            for c in changes]

    def show(con: Console) -> None:
        for r in rows:
            con.print(f"{r['time']:.0f} {r['actor']} {r['version']}")

    emit(ctx, rows, show)


@cli.group()
def oidc() -> None:
    """The identity provider browsers may sign in with (OpenID Connect, code flow with PKCE)."""


@oidc.command("set")
@click.argument("issuer")
@click.option("--client-id", required=True, help="The client registered at the provider.")
@click.option("--client-secret-stdin", is_flag=True, help="Read the client secret from stdin.")
@click.option("--name", default="your identity provider", show_default=True,
              help='What the sign-in page calls it ("Sign in with NAME").')
@click.option("--scope", "scopes", multiple=True,
              help="Scopes to ask for; repeatable (default: openid email profile).")
@click.option("--refresh-every", "refresh_s", type=click.FloatRange(min=1), default=300.0,
              show_default=True, help="Seconds between checks of each sign-in with the provider "
              "(its refresh token); a refused check ends the sign-in's sessions.")
@click.option("--no-check", is_flag=True, help="Do not fetch the provider's discovery document.")
@output_options
@pass_ctx
def oidc_set(ctx: Ctx, issuer: str, client_id: str, client_secret_stdin: bool, name: str,
             scopes: tuple[str, ...], refresh_s: float, no_check: bool) -> None:
    """Sign browsers in with the provider ISSUER; the front door takes it on its next sign-in.

    Register https://auth.localhost:PORT/.noops/oidc/callback (and each app host's, for sign-ins
    on an app's own page) as redirect URIs at the provider. The client secret is stored sealed
    with the gateway's key (gate/secret.key), never in clear. When the provider issues refresh
    tokens (some want the scope offline_access), each sign-in is checked with it every
    --refresh-every seconds and ends when the provider refuses."""
    from noops.gate._identity_db import OIDCError
    from noops.gate._oidc_config import DEFAULT_SCOPES, OidcConfig, save_oidc
    from noops.gate.identity import OIDCProvider

    secret = _secret("Client secret", client_secret_stdin)
    if not secret:
        raise UsageError("the client secret is empty: give the one the provider issued")
    config = OidcConfig(issuer, client_id, secret, name, tuple(dict.fromkeys(("openid", *scopes)))
                        if scopes else DEFAULT_SCOPES, refresh_s)
    try:
        provider = OIDCProvider(issuer, client_id, secret, "https://auth.localhost/.noops/oidc/callback")
        try:
            if not no_check:
                provider.discover()
        finally:
            provider.close()
    except OIDCError as exc:
        raise UsageError(f"{exc} (--no-check stores it anyway)") from exc
    save_oidc(_gate_dir(ctx) / "oidc.toml", config)
    emit(ctx, {"issuer": issuer, "client_id": client_id, "name": name, "scopes": list(config.scopes),
               "refresh_s": refresh_s},
         lambda con: con.print(f"browsers sign in with {name} ({issuer}); the client secret is sealed"))


@oidc.command("show")
@output_options
@pass_ctx
def oidc_show(ctx: Ctx) -> None:
    """The configured provider (without its secret)."""
    from noops.gate._oidc_config import load_oidc

    config = load_oidc(_gate_dir(ctx) / "oidc.toml")
    data: dict[str, Any] | None = None if config is None else {
        "issuer": config.issuer, "client_id": config.client_id, "name": config.name,
        "scopes": list(config.scopes), "refresh_s": config.refresh_s,
        "client_secret": "sealed" if config.sealed else "in clear"}

    def show(con: Console) -> None:
        if data is None:
            con.print("no identity provider: browsers sign in with noops users only")
            return
        for key, value in data.items():
            con.print(f"{key}: {' '.join(value) if isinstance(value, list) else value}")

    emit(ctx, data, show)


@oidc.command("remove")
@pass_ctx
def oidc_remove(ctx: Ctx) -> None:
    """Stop offering the provider (sessions it started stay until they end or are revoked)."""
    path = _gate_dir(ctx) / "oidc.toml"
    if not path.exists():
        raise UsageError("no identity provider is configured")
    path.unlink()
    ctx.console.print("the identity provider is removed; browsers sign in with noops users only")


@cli.command()
@click.option("--verify", "check", is_flag=True, help="Check the hash chain of the whole log.")
@click.option("--user", help="Only decisions about this user (or SPIFFE ID).")
@click.option("--outcome", type=click.Choice(["allow", "deny", "step_up", "read_only", "login",
                                              "logout"]), help="Only this outcome.")
@click.option("-n", "--limit", default=50, show_default=True, help="Newest N records.")
@output_options
@pass_ctx
def audit(ctx: Ctx, check: bool, user: str | None, outcome: str | None, limit: int) -> None:
    """The gateway's decision log: one record per request, allowed or denied, with the score."""
    from noops.gate.audit import read_newest_first, verify

    path = _gate_dir(ctx) / "audit"
    if not check:
        if not (path / "decisions.jsonl").exists():
            emit(ctx, [], lambda con: con.print("no audit records yet"))
            return
        # read-only: opening an AuditLog (a writer) would cut a line the front door is writing
        rows: list[dict[str, Any]] = []
        for entry in read_newest_first(path / "decisions.jsonl"):
            if len(rows) >= limit:
                break
            if (user is None or entry.get("user") == user) and \
                    (outcome is None or entry.get("outcome") == outcome):
                rows.append(entry)

        def show(con: Console) -> None:
            for r in rows:
                con.print(_audit_line(r), markup=False)

        emit(ctx, rows, show)
        return
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


def _audit_line(r: dict[str, Any]) -> str:
    """One decision as a line: time, outcome, who, request, score and reason codes."""
    extra: dict[str, Any] = r["extra"] if isinstance(r.get("extra"), dict) else {}
    request = f"{r.get('method') or ''} {extra.get('host', '')}{r.get('path') or ''}".strip()
    reasons = ",".join(str(x) for x in r.get("reasons") or [])
    return (f"{str(r.get('time', ''))[:19]}  {r.get('outcome')!s:14} {r.get('user') or '-':20} "
            f"{request}  score={r.get('score')}  {reasons}")
