"""Versions of the packages a detector result depends on (recorded in every report)."""
from __future__ import annotations

import platform
from importlib import metadata

_PACKAGES = ("numpy", "scipy", "scikit-learn", "umap-learn", "hdbscan", "numba", "pynndescent")


def package_versions() -> dict[str, str]:
    """``{package: version}`` for Python and the numerical packages; missing ones read 'not installed'."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
