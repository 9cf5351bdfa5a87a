"""noops: source folder in; built, patched, supervised, guarded and observed service out."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
