"""The build container: a buildpack's commands run inside the stack's build image, under runc.

One overlay root filesystem per build (the build image's layers plus a throw-away upper
directory); every command is a fresh ``runc run`` on it as the CNB user, with ``/workspace``
(the app), ``/layers`` and ``/cache`` bind-mounted from the host. The host network is shared so
package managers can download, and the host's CA bundle and resolver are made visible, so
builds work behind the same proxies as the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from noops.errors import BuildError
from noops.oci.bundle import ContainerSpec, Mount, Runc, write_config
from noops.oci.image import Image
from noops.oci.unpack import LayerCache, mount_rootfs, unmount
from noops.settings import Settings

__all__ = ["BuildContainer", "CommandFailed", "chown_tree"]

# Host settings that package managers inside the build container should see as well.
_PASSTHROUGH = (
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "UV_INDEX_URL",
    "npm_config_registry", "NPM_CONFIG_REGISTRY", "GOPROXY", "GOSUMDB", "GONOSUMDB",
)


class CommandFailed(BuildError):
    """A build command exited non-zero; ``output`` holds its last lines."""

    def __init__(self, what: str, code: int, output: str) -> None:
        super().__init__(f"{what} failed (exit code {code}):\n{output}")
        self.code = code
        self.output = output


class BuildContainer:
    def __init__(self, settings: Settings, layer_cache: LayerCache, build_image: Image,
                 workspace: Path, layers: Path, cache: Path, work: Path,
                 log: Callable[[str], None]) -> None:
        self.settings = settings
        self.runc = Runc(settings.get("runc"))
        self.image = build_image
        self.workspace, self.layers, self.cache = workspace, layers, cache
        self.work = work
        self.log = log
        self._layer_dirs = layer_cache.ensure(build_image)
        self.rootfs = work / "rootfs"
        self.commands_run: list[str] = []

    def __enter__(self) -> BuildContainer:
        mount_rootfs(self._layer_dirs, self.rootfs, upper=self.work / "upper")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        unmount(self.rootfs)

    def _mounts(self) -> list[Mount]:
        mounts = [
            Mount("/workspace", str(self.workspace), options=("rbind", "rw")),
            Mount("/layers", str(self.layers), options=("rbind", "rw")),
            Mount("/cache", str(self.cache), options=("rbind", "rw")),
        ]
        for host in ("/etc/resolv.conf", "/etc/hosts"):
            if Path(host).exists():
                mounts.append(Mount(host, host))
        bundle = self.settings.get("build_ca_bundle")
        if bundle and Path(bundle).is_file():
            mounts.append(Mount("/etc/ssl/certs/ca-certificates.crt", str(Path(bundle).resolve())))
        return mounts

    def run(self, args: list[str], *, what: str, env: dict[str, str] | None = None,
            cwd: str = "/workspace", tail: int = 30) -> str:
        """Run ``args`` in the build container; stream output to the log; return all of it.

        Raises :class:`CommandFailed` with the last ``tail`` lines when it exits non-zero.
        """
        full_env = {k: v for k, v in self.image.env.items()}
        full_env.update({k: self.settings.environ[k] for k in _PASSTHROUGH
                         if k in self.settings.environ})
        full_env.update({
            "HOME": "/tmp", "CNB_LAYERS_DIR": "/layers", "CNB_APP_DIR": "/workspace",
            "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
            "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
            "NODE_EXTRA_CA_CERTS": "/etc/ssl/certs/ca-certificates.crt",
            "SOURCE_DATE_EPOCH": self.settings.environ.get("SOURCE_DATE_EPOCH", "315532801"),
        })
        full_env.update(env or {})
        spec = ContainerSpec(
            args=args, env=full_env, cwd=cwd, readonly_rootfs=False, mounts=self._mounts(),
            host_network=bool(self.settings.get("build_network")), hostname="noops-build",
            pids_limit=None, tmp_size="2g",
        )
        bundle = Path(tempfile.mkdtemp(dir=self.work, prefix="bundle-"))
        write_config(bundle, self.rootfs, spec)
        container_id = f"noops-build-{uuid.uuid4().hex[:12]}"
        self.commands_run.append(" ".join(args))
        lines: deque[str] = deque(maxlen=tail)
        collected: list[str] = []
        read_fd, write_fd = os.pipe()

        def pump() -> None:
            with os.fdopen(read_fd, "rb") as reader:
                for raw in reader:
                    line = raw.decode(errors="replace").rstrip("\n")
                    lines.append(line)
                    collected.append(line)
                    self.log(f"   {line}")

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        try:
            code = self.runc.run(bundle, container_id, stdout=write_fd, stderr=write_fd)
        finally:
            os.close(write_fd)
            thread.join(timeout=30)
            shutil.rmtree(bundle, ignore_errors=True)
        if code != 0:
            raise CommandFailed(what, code, "\n".join(lines))
        return "\n".join(collected)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give a host directory tree to the CNB user (the build runs as it)."""
    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(path)], check=True)
