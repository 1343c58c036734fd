"""The detectors the CLI and the dashboard offer: ``DETECTORS[name]`` (list them with ``sorted(DETECTORS)``).

Every factory returns an unfitted sklearn-style estimator with ``fit(X, y, progress=None)``; after
fitting it has ``flagged_`` (bool N), ``scores_`` (float N, higher = more suspicious) and ``report_``
(JSON-serialisable dict).  ``input`` says which matrix ``X`` must be: 'abnormality' (N x L, one column
per BatchNorm layer, shallow -> deep) or 'pooled' (N x D penultimate features).  ``uses_latent``: the
estimator's ``fit`` also takes ``latent=`` (penultimate features) and ``logits=`` and uses them when its
``use_latent`` parameter is 'auto' (FLARE default's latent stage); callers pass them when they have them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from flare_core.detectors.activation_clustering import ActivationClustering
from flare_core.detectors.flare import FlareDetector
from flare_core.detectors.spectral import SpectralSignatures
from flare_core.detectors.spectre import Spectre


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    label: str
    factory: Callable[..., Any]
    input: Literal["abnormality", "pooled"]
    description: str
    uses_latent: bool = False


#: The CLI and the dashboard let FLARE's subspace search use worker processes where that pays
#: (:mod:`.execution`); the estimator's own default is one process, as in scikit-learn.
APP_N_JOBS = "auto"


def _flare(**params: Any) -> FlareDetector:
    return FlareDetector(**{"mode": "default", "n_jobs": APP_N_JOBS, **params})


def _flare_faithful(**params: Any) -> FlareDetector:
    return FlareDetector(**{"n_jobs": APP_N_JOBS, **params, "mode": "faithful"})


DETECTORS: dict[str, DetectorSpec] = {
    "flare": DetectorSpec(
        "flare", "FLARE (workbench default)", _flare, "abnormality",
        "FLARE with our fixes: robust-scaled layers, adaptive cluster size, noise never benign, "
        "flags only clearly separated clusters (so a clean set can come back clean), never a whole class, "
        "per-sample scores; clusters a 20,000-sample stratified subset and places the rest by neighbours; "
        "plus a per-class latent stage on the penultimate features for blended/warping triggers at high rates, "
        "and a shortcut stage for image-wide triggers (smoothing/sharpening) the model obeys.",
        uses_latent=True),
    "flare-faithful": DetectorSpec(
        "flare-faithful", "FLARE (as published)", _flare_faithful, "abnormality",
        "FLARE as described by Hou et al.: UMAP + HDBSCAN(min_cluster_size=100), stable-split tree walk, "
        "largest cluster benign, everything else flagged. For comparison."),
    "ac": DetectorSpec(
        "ac", "Activation Clustering", ActivationClustering, "pooled",
        "Chen et al. 2018: per class, ICA to 10 dimensions and 2-means on penultimate features; "
        "flags the smaller cluster when it holds under 35% of the class."),
    "ss": DetectorSpec(
        "ss", "Spectral Signatures", SpectralSignatures, "pooled",
        "Tran et al. 2018: per class, squared projection on the top singular vector of the centred "
        "penultimate features; removes the top 1.5 * eps of every class."),
    "spectre": DetectorSpec(
        "spectre", "SPECTRE", Spectre, "pooled",
        "Hayase et al. 2021: per class, PCA, robust (MCD) whitening and QUantum Entropy scores; removes "
        "the top 1.5 * eps of every class. Slow on large classes."),
}
