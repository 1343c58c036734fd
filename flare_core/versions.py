"""Versions of the packages that shape a result, recorded in every run."""
from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("flare-workbench", "torch", "torchvision", "numpy", "scikit-learn", "joblib", "umap-learn", "hdbscan", "numba", "grad-cam")


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
