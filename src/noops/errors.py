"""The one error tree of noops.

Every failure a user can cause or fix is a :class:`NoopsError` whose message says what went
wrong and what to do. Foreign exceptions are translated where they enter noops
(``raise BuildError(...) from exc``); the CLI prints ``str(error)`` and exits with
``error.exit_code``, never with a traceback.

::

    NoopsError                    exit 1   generic
    ├── UsageError                exit 2   bad arguments, unknown image names, invalid files
    ├── ToolMissingError          exit 3   a host tool (runc, mmdebstrap, ...) is not installed
    ├── ImageError                exit 4   OCI store / image format problems
    │   └── RegistryError         exit 5   the registry refused or failed
    ├── BuildError                exit 6   detect / build / export failed
    │   └── DetectError           exit 7   no buildpack group matched the source
    ├── RebaseError               exit 8   rebase refused (validation) or failed
    ├── ContainerError            exit 9   runc failed to create or run a container
    ├── StateError                exit 10  the state store failed (noops.state.errors)
    │   └── TransitionError       (409)    an illegal release status move
    ├── DeployError               exit 11  a release failed its checks (noops.runtime.rollout)
    └── GateError                 exit 10  gateway configuration (noops.gate)
        ├── PkiError              exit 12  the built-in CA (noops.gate.pki)
        │   └── CertificateRejected  (403)  a client or server certificate failed validation
        ├── IdentityError         (400)    users, TOTP, sessions, OIDC (noops.gate.identity)
        ├── TrustConfigError, PolicyError  exit 2   invalid trust or policy files
        └── AuditError            exit 12  the audit log cannot be written or read
"""

from __future__ import annotations

__all__ = [
    "BuildError",
    "ContainerError",
    "DetectError",
    "ImageError",
    "NoopsError",
    "RebaseError",
    "RegistryError",
    "ToolMissingError",
    "UsageError",
]


class NoopsError(Exception):
    """Root of every error noops raises on purpose. ``str(err)`` is meant for the user."""

    exit_code: int = 1
    http_status: int = 500


class UsageError(NoopsError):
    exit_code = 2
    http_status = 400


class ToolMissingError(NoopsError):
    """A host program noops drives is missing; the message names the Debian package."""

    exit_code = 3
    http_status = 503

    def __init__(self, tool: str, package: str | None = None, why: str = "") -> None:
        pkg = package or tool
        reason = f" ({why})" if why else ""
        super().__init__(
            f"{tool} is not installed{reason}. Install it with: apt-get install -y {pkg} "
            f"(or run `make deps` in the noops checkout)."
        )
        self.tool = tool
        self.package = pkg


class ImageError(NoopsError):
    exit_code = 4
    http_status = 404


class RegistryError(ImageError):
    exit_code = 5
    http_status = 502


class BuildError(NoopsError):
    exit_code = 6
    http_status = 422


class DetectError(BuildError):
    exit_code = 7


class RebaseError(NoopsError):
    exit_code = 8
    http_status = 409


class ContainerError(NoopsError):
    exit_code = 9
    http_status = 500
