"""Content-addressed images: the OCI layout store, reproducible layers, registries, runc bundles."""

from noops.oci.bundle import ContainerSpec, Mount, Runc, write_config
from noops.oci.image import Image
from noops.oci.layer import LayerSpec, TarResult, source_date_epoch, write_tar
from noops.oci.model import Descriptor
from noops.oci.reference import Reference, normalize_local, parse_reference
from noops.oci.store import ImageStore
from noops.oci.unpack import LayerCache, mount_rootfs, unmount

_REGISTRY = ("PushResult", "find_credentials", "login", "pull", "push", "remote_image")


def __getattr__(name: str) -> object:
    """The registry client (and httpx) load only when used: most commands never need them."""
    if name in _REGISTRY:
        from noops.oci import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'noops.oci' has no attribute {name!r}")


__all__ = [
    "ContainerSpec",
    "Descriptor",
    "Image",
    "ImageStore",
    "LayerCache",
    "LayerSpec",
    "Mount",
    "PushResult",
    "Reference",
    "Runc",
    "TarResult",
    "find_credentials",
    "login",
    "mount_rootfs",
    "normalize_local",
    "parse_reference",
    "pull",
    "push",
    "remote_image",
    "source_date_epoch",
    "unmount",
    "write_config",
    "write_tar",
]
