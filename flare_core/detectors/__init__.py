"""Poison detectors working on numpy matrices only (no models): FLARE and the baselines.

``DETECTORS`` (in :mod:`.registry`) lists them for the CLI and the dashboard.  Heavy dependencies
(umap, hdbscan) are imported lazily, when a detector runs.
"""
from flare_core.detectors.activation_clustering import ActivationClustering
from flare_core.detectors.flare import FlareDetector, FlareResult, flare_detect
from flare_core.detectors.registry import DETECTORS, DetectorSpec
from flare_core.detectors.spectral import SpectralSignatures
from flare_core.detectors.spectre import Spectre
from flare_core.detectors.views import ClassView, class_views

__all__ = [
    "ActivationClustering",
    "ClassView",
    "DETECTORS",
    "DetectorSpec",
    "FlareDetector",
    "FlareResult",
    "SpectralSignatures",
    "Spectre",
    "class_views",
    "flare_detect",
]
