"""Detection matrix: every detector on every zoo model, scored against the lab's ground truth.

For each model the expensive passes are done once and cached in ``benchmarks/cache/<model>/``
(abnormality features, pooled penultimate features); then FLARE (default and faithful), our Activation
Clustering and Spectral Signatures, and ART's ActivationDefence and SpectralSignatureDefense run on the
same model and data. Per cell: TPR, FPR, precision, F1, AUROC (from scores), flagged count, seconds.

    python3 -m benchmarks.detect_matrix                       # the default Fashion-MNIST matrix
    python3 -m benchmarks.detect_matrix fmnist-badnets-10     # one row
    python3 -m benchmarks.detect_matrix --force ...           # recompute cached cells

Raw results: ``benchmarks/results/detect/<model>.json`` (one per model) and the aggregated
``benchmarks/results/detect_matrix.{csv,json}``.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import CACHE, RESULTS, ZOO, machine, read_json, write_csv, write_json
from benchmarks.zoo import FMNIST_SPECS, ZooEntry, ZooSpec, build, cifar_specs, data_option

logger = logging.getLogger(__name__)

OUR_DETECTORS = ("flare", "flare-faithful", "ac", "ss")
ART_DETECTORS = ("art-ac", "art-ss")
ALL_DETECTORS = OUR_DETECTORS + ART_DETECTORS

MATRIX_10 = ("fmnist-clean", "fmnist-badnets-10", "fmnist-blended-10", "fmnist-trojan-10", "fmnist-wanet-10",
             "fmnist-sig-5", "fmnist-badnets-a2a-10", "fmnist-blended-a2a-10", "fmnist-wanet-10-e10",
             "fmnist-clean-gn", "fmnist-badnets-10-gn", "fmnist-clean-e10")
MATRIX_LOW = ("fmnist-badnets-1", "fmnist-blended-1", "fmnist-wanet-1",
              "fmnist-badnets-0.5", "fmnist-blended-0.5", "fmnist-wanet-0.5",
              "fmnist-blended-0.5-e10", "fmnist-wanet-1-e10", "fmnist-wanet-0.5-e10", "fmnist-wanet-0.5-e20",
              "fmnist-trojan-1-e10", "fmnist-trojan-0.5-e10", "fmnist-sig-1-e10", "fmnist-badnets-a2a-1-e10",
              "fmnist-blended-a2a-1-e10", "fmnist-sig-0.5-e10", "fmnist-badnets-a2a-0.5-e10",
              "fmnist-blended-a2a-0.5-e10", "fmnist-wanet-1-e10-s1", "fmnist-badnets-a2a-0.5-e20",
              "fmnist-badnets-a2a-0.5-e20-s1", "fmnist-wanet-0.5-e40", "fmnist-sig-0.5-e30",
              "fmnist-badnets-a2a-0.5-e40", "fmnist-sig-0.5-e30-s1")

#: The CIFAR-10 (CPU, narrow ResNet) rows measured; the 4-epoch Blended / WaNet models had half-learnt backdoors,
#: BadNets all-to-all and 1 % at 4 epochs none (not run), so those attacks are trained 12 epochs.
MATRIX_CIFAR = ("cifar-clean", "cifar-badnets-10", "cifar-trojan-10", "cifar-blended-10", "cifar-wanet-10",
                "cifar-blended-10-e12", "cifar-wanet-10-e12", "cifar-sig-5-e12", "cifar-blended-a2a-10-e12",
                "cifar-badnets-a2a-10-e12", "cifar-badnets-1-e12", "cifar-blended-1-e12", "cifar-trojan-1-e12",
                "cifar-trojan-0.5-e12", "cifar-wanet-1-e12", "cifar-sig-1-e12", "cifar-sig-0.5-e12",
                "cifar-badnets-a2a-1-e12", "cifar-badnets-0.5-e12", "cifar-blended-0.5-e12", "cifar-wanet-0.5-e12",
                "cifar-blended-a2a-1-e12", "cifar-badnets-a2a-0.5-e12", "cifar-blended-a2a-0.5-e12",
                "cifar-clean-e12", "cifar-clean-e12-s1", "cifar-badnets-1-e30", "cifar-blended-1-e30",
                "cifar-badnets-0.5-e30", "cifar-badnets-0.5")

# Hou et al. (arXiv 2411.19479), CIFAR-10 ResNet-18, FLARE: (TPR %, FPR %). No poison: 2.89 % flagged.
PUBLISHED = {
    ("badnets", "all-to-one"): (100.0, 0.00),
    ("blended", "all-to-one"): (99.97, 0.00),
    ("trojan", "all-to-one"): (100.0, 0.01),
    ("wanet", "all-to-one"): (93.68, 0.00),
    ("badnets", "all-to-all"): (100.0, 0.00),
    ("blended", "all-to-all"): (99.57, 0.00),
}
PUBLISHED_CLEAN_FLAGGED = 2.89

COLUMNS = ["model", "dataset", "arch", "attack", "mode", "rate", "n", "n_poisoned", "detector", "tpr", "fpr",
           "precision", "f1", "auroc", "n_flagged", "flagged_fraction", "seconds", "subspace", "note", "machine",
           "command"]


def _load(entry: ZooEntry, device: str):
    from flare_core.data import load_dataset
    from flare_core.models import load_model

    return load_model(entry.model, device=device), load_dataset(entry.train)


def _truth(entry: ZooEntry, n: int) -> np.ndarray:
    if entry.ground_truth is None:
        return np.zeros(n, dtype=bool)
    from flare_core.attacks import GroundTruth

    return GroundTruth.from_json(entry.ground_truth).mask(n)


def cached_arrays(name: str, specs: dict, cache_dir: Path = CACHE) -> tuple:
    """(labels, poisoned mask, penultimate features, logits or None) of a zoo model whose feature pass is
    cached under ``cache_dir / name`` (the studies that read the caches instead of running a detector)."""
    entry = build(specs[name])
    _, dataset = _load(entry, "cpu")
    y = np.asarray(dataset.labels)
    logits = Path(cache_dir) / name / "logits.npy"
    return (y, _truth(entry, len(y)), np.load(Path(cache_dir) / name / "pooled.npy"),
            np.load(logits) if logits.is_file() else None)


def cached_features(entry: ZooEntry, model, dataset, cache_dir: Path, batch_size: int = 256) -> tuple:
    """(abnormality (N, L), layer names, pooled (N, D), seconds of each pass); computed once per model."""
    from flare_core.features import extract_abnormality_features, extract_pooled_features

    cache_dir.mkdir(parents=True, exist_ok=True)
    fa, fp, meta_p = cache_dir / "abnormality.npy", cache_dir / "pooled.npy", cache_dir / "features.json"
    meta = read_json(meta_p, None)
    sha = getattr(model, "sha256", None)
    if meta and meta.get("model_sha256") == sha and fa.is_file() and fp.is_file():
        return np.load(fa), meta["layers"], np.load(fp), meta["seconds"]
    feats = extract_abnormality_features(model, dataset, batch_size=batch_size, out=str(fa))
    t0 = time.perf_counter()
    pooled, layer = extract_pooled_features(model, dataset, batch_size=batch_size)
    pooled_s = time.perf_counter() - t0
    tmp = cache_dir / f".pooled.{os.getpid()}.npy"
    np.save(tmp, pooled)
    os.replace(tmp, fp)
    meta = {"model_sha256": sha, "layers": list(feats.layer_names), "pooled_layer": layer,
            "seconds": {"abnormality": round(feats.seconds, 2), "pooled": round(pooled_s, 2)}}
    write_json(meta_p, meta)
    return np.asarray(feats.values), meta["layers"], pooled, meta["seconds"]


def _direct(name: str, seed: int, params: dict):
    if name in ("flare", "flare-faithful"):
        from flare_core.detectors.flare import FlareDetector

        return FlareDetector(mode="faithful" if name == "flare-faithful" else "default", random_state=seed, **params)
    if name == "ac":
        from flare_core.detectors.activation_clustering import ActivationClustering

        return ActivationClustering(random_state=seed, **params)
    if name == "ss":
        from flare_core.detectors.spectral import SpectralSignatures

        return SpectralSignatures(**params)
    raise KeyError(name)


def cached_logits(entry: ZooEntry, model, dataset, cache_dir: Path, batch_size: int = 256) -> np.ndarray:
    """(N, K) logits of the training set (FLARE default's latent stage reads them), cached per model."""
    from flare_core.features import extract_latent_features

    path = cache_dir / "logits.npy"
    meta = read_json(cache_dir / "features.json", {}) or {}
    if path.is_file() and meta.get("model_sha256") == getattr(model, "sha256", None):
        return np.load(path)
    logits = extract_latent_features(model, dataset, batch_size=batch_size).logits
    tmp = cache_dir / f".logits.{os.getpid()}.npy"
    np.save(tmp, logits)
    os.replace(tmp, path)
    return logits


def cached_shortcut(entry: ZooEntry, model, dataset, cache_dir: Path, seed: int = 0,
                    logits: Optional[np.ndarray] = None):
    """FLARE default's shortcut evidence (probe + counter test), cached per model as ``shortcut.npz``."""
    import json

    from flare_core.features.shortcuts import ShortcutEvidence, shortcut_evidence

    path = cache_dir / "shortcut.npz"
    sha = getattr(model, "sha256", None)
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        if meta.get("model_sha256") == sha and meta.get("seed") == seed:
            return ShortcutEvidence(moved_in={k: np.asarray(v) for k, v in meta["moved_in"].items()},
                                    sampled=meta["sampled"], bar=meta["bar"], transform=meta["transform"],
                                    counter=meta["counter"], target=meta["target"], drop=z["drop"],
                                    after_class=z["after_class"], seconds=meta["seconds"])
    ev = shortcut_evidence(model, dataset, seed=seed, logits=logits)  # as the pipeline: the pass's logits
    meta = {"model_sha256": sha, "seed": seed, "moved_in": {k: v.tolist() for k, v in ev.moved_in.items()},
            "sampled": ev.sampled, "bar": ev.bar, "transform": ev.transform, "counter": ev.counter,
            "target": ev.target, "seconds": ev.seconds}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".shortcut.{os.getpid()}.npz"
    np.savez(tmp, drop=ev.drop, after_class=ev.after_class, meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)
    return ev


def run_our_detector(name: str, X: np.ndarray, pooled: np.ndarray, labels: np.ndarray, seed: int = 0,
                     params: Optional[dict] = None, logits: Optional[np.ndarray] = None,
                     shortcut=None, mode_trigger=None, images: Optional[np.ndarray] = None) -> dict:
    """Fit one registered detector on the input it declares; flagged, scores, seconds, subspace, report."""
    try:
        from flare_core.detectors.registry import DETECTORS

        spec = DETECTORS[name]
        try:
            est = spec.factory(random_state=seed, **(params or {}))
        except TypeError:  # a deterministic detector without random_state (SpectralSignatures)
            est = spec.factory(**(params or {}))
        inp = X if spec.input == "abnormality" else pooled
        extra = {"latent": pooled, "logits": logits} if (spec.uses_latent and logits is not None) else {}
        if spec.uses_latent and shortcut is not None and getattr(est, "mode", "") == "default":
            extra["shortcut"] = shortcut
        if spec.uses_latent and mode_trigger is not None and getattr(est, "mode", "") == "default":
            extra["mode_trigger"] = mode_trigger
        if spec.uses_latent and images is not None and getattr(est, "mode", "") == "default":
            extra["images"] = images  # as the pipeline: the input-pattern stage reads the pixels
    except ImportError:  # registry not there yet: the estimators directly (the classes the registry wraps)
        est, inp = _direct(name, seed, params or {}), (X if name.startswith("flare") else pooled)
        extra = {}
    t0 = time.perf_counter()
    est.fit(inp, labels, **extra)
    seconds = time.perf_counter() - t0
    return {"flagged": np.asarray(est.flagged_, dtype=bool), "scores": np.asarray(est.scores_, dtype=float),
            "seconds": seconds, "subspace": getattr(est, "subspace_", None),
            "phase_seconds": (getattr(est, "report_", None) or {}).get("seconds"),
            "params": {k: v for k, v in (est.get_params() if hasattr(est, "get_params") else {}).items()
                       if isinstance(v, (int, float, str, bool, type(None)))}}


def _row(spec: ZooSpec, n: int, truth: np.ndarray, det: str, res: dict, command: str, mach: str) -> dict:
    from flare_core.metrics import detection_metrics

    scores = res.get("scores")
    if scores is not None and not np.all(np.isfinite(scores)):
        scores = np.nan_to_num(scores, nan=0.0, posinf=1e300, neginf=-1e300)
    m = detection_metrics(res["flagged"], truth, scores)
    return {
        "model": spec.name, "dataset": "fashion-mnist" if spec.data.startswith("builtin:fashion") else spec.data,
        "arch": spec.arch, "attack": spec.attack or "none", "mode": spec.mode if spec.attack else "-",
        "rate": spec.rate if spec.attack else 0.0, "n": n, "n_poisoned": int(truth.sum()), "detector": det,
        "tpr": m["tpr"], "fpr": m["fpr"], "precision": m["precision"], "f1": m["f1"], "auroc": m["auroc"],
        "n_flagged": m["n_flagged"], "flagged_fraction": m["n_flagged"] / n, "seconds": round(res["seconds"], 2),
        "subspace": res.get("subspace"), "note": res.get("note", ""), "machine": mach, "command": command,
        **({"phase_seconds": res["phase_seconds"]} if res.get("phase_seconds") else {}),
    }


def run_model(entry: ZooEntry, detectors: Sequence[str] = ALL_DETECTORS, *, device: str = "cpu", seed: int = 0,
              cache: Path = CACHE, out_dir: Path = RESULTS / "detect", force: bool = False,
              command: Optional[str] = None, machine_label: str = "cpu-2core") -> list:
    """All detector cells of one zoo model (cached in ``out_dir/<model>.json`` unless ``force``)."""
    spec = entry.spec
    out_path = Path(out_dir) / f"{spec.name}.json"
    done = read_json(out_path, None)
    have = {r["detector"]: r for r in (done or {}).get("rows", [])}
    todo = [d for d in detectors if force or d not in have]
    if not todo:
        return [have[d] for d in detectors]
    command = command or f"python3 -m benchmarks.detect_matrix {spec.name} --force{data_option(spec)}"
    model, dataset = _load(entry, device)
    truth = _truth(entry, len(dataset))
    X, layers, pooled, feat_s = cached_features(entry, model, dataset, Path(cache) / spec.name)
    logits = cached_logits(entry, model, dataset, Path(cache) / spec.name) if "flare" in todo else None
    shortcut = (cached_shortcut(entry, model, dataset, Path(cache) / spec.name, seed, logits=logits)
                if "flare" in todo else None)
    mode_trigger = None
    if "flare" in todo:  # as the pipeline: the minority modes' trigger test (model passes only where a mode is)
        from flare_core.features.mode_trigger import mode_trigger_evidence

        mode_trigger = mode_trigger_evidence(model, dataset, pooled, logits=logits, random_state=seed)
    rate = spec.rate if spec.attack else 0.1
    extra = {}
    for det in todo:
        logger.info("%s: %s", spec.name, det)
        if det in ART_DETECTORS:
            if det not in extra:
                from benchmarks.art_baselines import run_art

                # ART's SS removes the top eps_multiplier * expected_pp_poison of each class; given the same
                # poison-rate guess as our SS (the true rate, 0.1 for the clean control).
                extra.update(run_art(model, dataset, expected_poison=rate, seed=seed))
            res = extra[det]
        else:
            try:
                res = run_our_detector(det, X, pooled, dataset.labels, seed=seed, logits=logits,
                                       shortcut=shortcut, mode_trigger=mode_trigger, images=dataset.images)
            except Exception as e:  # a broken detector must not stop the matrix: record it
                logger.exception("%s failed on %s", det, spec.name)
                res = {"flagged": np.zeros(len(dataset), bool), "scores": None, "seconds": 0.0,
                       "note": f"FAILED: {type(e).__name__}: {e}"}
        have[det] = _row(spec, len(dataset), truth, det, res, command, machine_label)
        mine = set(todo[:todo.index(det) + 1])  # cells this call computed; others may come from other processes
        now = {r["detector"]: r for r in (read_json(out_path, None) or {}).get("rows", [])}
        have = {**now, **{d: have[d] for d in mine}, **{d: r for d, r in have.items() if d not in now and d not in mine}}
        rows = [have[d] for d in detectors if d in have] + [r for d, r in have.items() if d not in detectors]
        write_json(out_path, {"model": spec.name, "spec": spec.__dict__, "layers": layers,
                              "feature_seconds": feat_s, "machine": machine(), "rows": rows})  # after every cell
    return [have[d] for d in detectors]


def collect(out_dir: Path = RESULTS / "detect") -> list:
    rows = []
    for p in sorted(Path(out_dir).glob("*.json")):
        rows += read_json(p, {}).get("rows", [])
    return rows


def write_aggregate(rows: list, results: Path = RESULTS) -> None:
    write_csv(Path(results) / "detect_matrix.csv", rows, COLUMNS)
    write_json(Path(results) / "detect_matrix.json", {"rows": rows, "published_flare_cifar10_resnet18": {
        f"{a}/{m}": {"tpr": t, "fpr": f} for (a, m), (t, f) in PUBLISHED.items()},
        "published_clean_flagged_percent": PUBLISHED_CLEAN_FLAGGED})


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.detect_matrix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="zoo entries (default: the 10 %% matrix and the clean control)")
    p.add_argument("--low-rates", action="store_true", help="also the 1 %% and 0.5 %% rows")
    p.add_argument("--detectors", default=",".join(ALL_DETECTORS))
    p.add_argument("--force", action="store_true", help="recompute cells already in the results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cifar", default=None, help="CIFAR-10 ImageFolder root (enables the cifar-* entries)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
    names = args.models or list(MATRIX_10) + (list(MATRIX_LOW) if args.low_rates else [])
    dets = [d for d in args.detectors.split(",") if d]
    specs = dict(FMNIST_SPECS)
    if args.cifar:
        specs.update(cifar_specs(args.cifar))
    for n in names:
        if n not in specs:
            p.error(f"unknown model {n!r}" + (" (cifar-* entries need --cifar ROOT)" if n.startswith("cifar") else ""))
        entry = build(specs[n])
        for r in run_model(entry, dets, seed=args.seed, force=args.force):
            print(f"{n:>24} {r['detector']:>15} TPR {r['tpr']} FPR {r['fpr']:.4f} F1 {r['f1']} AUROC {r['auroc']}"
                  f" ({r['seconds']}s) {r['note']}")
    write_aggregate(collect())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
