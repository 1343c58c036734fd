"""Where the poison of a backdoor that did not take sits: the samples the model fits worst.

FLARE reads what the model learnt.  When the model did not learn the trigger (ASR near a clean model's),
the poisoned samples are, to the model, mislabelled images it could not fit, and no detector that reads the
model's representation of the trigger can see them.  Their loss can: this ranks every sample of each cached
zoo model by the cross-entropy of its label (``flare_core.detectors.latent.sample_loss``, the ``loss``
column of a run's manifest and the Inspect page's *Least fitted by the model* list) and reports

* the AUROC of that ranking for "poisoned", beside FLARE default's own score AUROC (the detection matrix);
* what flagging the top 1 % by loss would do (TPR, FPR): no threshold is learnt from the ground truth.

It is a reference for the analyst's list, not a detector: on a model that learnt its backdoor the poison
is fitted *better* than the genuine samples and sits at the bottom of this list.

    python3 -m benchmarks.detect_matrix MODELS ... --detectors flare   # fills the caches
    python3 -m benchmarks.loss_ranking                                  # -> results/loss_ranking.json
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import CACHE, RESULTS, ZOO, read_json, write_json

TOP_SHARE = 0.01


def _labels(cache: Path) -> Optional[np.ndarray]:
    for name, key in (("meta.npz", "labels"), ("train.npz", "y")):
        if (cache / name).is_file():
            with np.load(cache / name) as d:
                if key in d:
                    return np.asarray(d[key])
    return None


def model_row(name: str, cache: Path = CACHE, results: Path = RESULTS, zoo: Path = ZOO) -> Optional[dict]:
    """One row for the cached model ``name`` (None when it has no logits, labels or poison)."""
    from sklearn.metrics import roc_auc_score

    from flare_core.detectors.latent import sample_loss

    c = Path(cache) / name
    gt = read_json(c / "ground_truth.json", None)
    y = _labels(c)
    if gt is None or y is None or not (c / "logits.npy").is_file() or not gt.get("poisoned_indices"):
        return None
    truth = np.zeros(len(y), dtype=bool)
    truth[np.asarray(gt["poisoned_indices"], dtype=np.int64)] = True
    loss = sample_loss(np.load(c / "logits.npy"), y)
    top = np.zeros(len(y), dtype=bool)
    top[np.argsort(-loss, kind="stable")[: int(round(TOP_SHARE * len(y)))]] = True
    det = read_json(Path(results) / "detect" / f"{name}.json", {}) or {}
    flare = next((r for r in det.get("rows", []) if r.get("detector") == "flare"), {})
    made = ((read_json(Path(zoo) / "MANIFEST.json", {}) or {}).get("models") or {}).get(name) or {}
    return {"model": name, "n": int(len(y)), "n_poisoned": int(truth.sum()),
            "attack_success_rate": made.get("attack_success_rate"), "epochs": (made.get("spec") or {}).get("epochs"),
            "loss_auroc": round(float(roc_auc_score(truth, loss)), 4),
            "median_loss_poisoned": float(np.median(loss[truth])), "median_loss_genuine": float(np.median(loss[~truth])),
            "top_share": TOP_SHARE, "top_tpr": round(float(top[truth].mean()), 4),
            "top_fpr": round(float(top[~truth].mean()), 5),
            "flare_tpr": flare.get("tpr"), "flare_auroc": flare.get("auroc")}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.loss_ranking", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="cached zoo entries (default: every one with logits)")
    args = p.parse_args(argv)
    names = args.models or sorted(d.name for d in Path(CACHE).iterdir() if (d / "logits.npy").is_file())
    rows = [r for r in (model_row(n) for n in names) if r is not None]
    write_json(RESULTS / "loss_ranking.json", {"command": "python3 -m benchmarks.loss_ranking", "rows": rows})
    for r in rows:
        print(f"{r['model']:28s} loss AUROC {r['loss_auroc']:.3f} (FLARE {r['flare_auroc']}); top 1 %: "
              f"TPR {100 * r['top_tpr']:.1f} % FPR {100 * r['top_fpr']:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
