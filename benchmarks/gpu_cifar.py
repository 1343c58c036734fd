"""CIFAR-10 ResNet-18 rows on one GPU (the published setting), within about 9 minutes on an H100.

Trains the standard CIFAR ``resnet18-cifar`` (from scratch, SGD lr 0.1 Nesterov, cosine per step, batch 256,
weight decay 5e-4, random crop + flip, bf16 autocast, channels_last) on the lab's poisoned CIFAR-10 for
BadNets, Blended, Trojan-style, WaNet (10 %), SIG (5 %: clean-label, the target class is only 10 %),
BadNets and Blended all-to-all (10 %), and the clean set; then runs the detection matrix on each model:
abnormality and penultimate features on the GPU, FLARE default / faithful, our AC / SS in CPU worker
processes overlapping with the next training, and ART's ActivationDefence / SpectralSignatureDefense
(if ``art`` is importable). Epochs are chosen from the measured speed of the first epoch so the whole run
fits in ``--budget`` seconds; the epochs used are recorded.

    python3 benchmarks/gpu_cifar.py --data PATH/cifar10 (ImageFolder with train/ test/, or the .tar.gz) --out OUT

Writes ``OUT/gpu_cifar.json`` (rows like ``results/detect_matrix.json`` plus per-model BA/ASR/epochs),
``OUT/gpu_cifar.csv`` and ``OUT/detect/<model>.json`` as each model finishes (partial results survive a
timeout). Copy ``OUT/*`` into ``benchmarks/results/gpu_cifar/`` to have RESULTS.md include them.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

logger = logging.getLogger("gpu_cifar")

MODELS = [  # name, attack, rate, mode
    ("cifar-badnets-10", "badnets", 0.1, "all-to-one"),
    ("cifar-blended-10", "blended", 0.1, "all-to-one"),
    ("cifar-trojan-10", "trojan", 0.1, "all-to-one"),
    ("cifar-wanet-10", "wanet", 0.1, "all-to-one"),
    ("cifar-badnets-a2a-10", "badnets", 0.1, "all-to-all"),
    ("cifar-blended-a2a-10", "blended", 0.1, "all-to-all"),
    ("cifar-sig-5", "sig", 0.05, "all-to-one"),
    ("cifar-clean", None, 0.0, "-"),
]
DETECTORS_CPU = ("flare", "ac", "ss", "flare-faithful")


# --------------------------------------------------------------------------- data
def _resolve_data(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
        dest = Path(tempfile.mkdtemp(prefix="cifar10-"))
        with tarfile.open(p) as t:
            t.extractall(dest, filter="data")
        p = dest
    for cand in [p] + sorted(x for x in p.rglob("*") if x.is_dir() and (x / "train").is_dir()):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    raise SystemExit(f"no train/ and test/ folders under {p}")


def load_cifar(root: Path, cache: Path):
    from flare_core.data import load_dataset, save_npz

    out = []
    for split in ("train", "test"):
        c = cache / f"{split}.npz"
        if not c.is_file():
            save_npz(load_dataset(str(root), split=split), c)
        out.append(load_dataset(str(c)))
    return out


# --------------------------------------------------------------------------- training
def train_gpu(ds, epochs: int, seed: int, device: str, batch_size: int = 256, lr: float = 0.1,
              time_per_epoch_cb=None):
    """ResNet-18 (CIFAR) trained with bf16 autocast on the GPU; returns (model in eval mode, history)."""
    import torch
    import torch.nn.functional as F

    from flare_core.models import build_model
    from flare_core.models.training import augment_batch, lr_at, make_optimizer

    torch.manual_seed(seed)
    model = build_model("resnet18-cifar", ds.num_classes, 3, (32, 32)).to(device).to(memory_format=torch.channels_last)
    opt = make_optimizer("sgd", model, lr, 5e-4, 0.9)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(ds.images)).to(device)
    y_all = torch.from_numpy(ds.labels).to(device)
    n = len(ds)
    steps = epochs * math.ceil(n / batch_size)
    step = 0
    hist = {"epoch_seconds": [], "train_loss": []}
    for ep in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        tot = torch.zeros((), device=device)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            if len(idx) < 2:
                continue
            x = x_all[idx].permute(0, 3, 1, 2).float().div_(255)
            x = augment_batch(x, 4, True, gen).contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr, "cosine")
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.detach() * len(idx)
            step += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        hist["epoch_seconds"].append(round(time.perf_counter() - t0, 2))
        hist["train_loss"].append(float(tot) / n)
        if time_per_epoch_cb is not None:
            time_per_epoch_cb(hist["epoch_seconds"][-1])
    model.eval()
    return model, hist


# --------------------------------------------------------------------------- detection (CPU workers)
def _cpu_detect(job: dict) -> dict:
    """Run our CPU detectors on saved features; writes job['out'] incrementally. (Runs in a worker.)"""
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))
    from benchmarks.detect_matrix import run_our_detector
    from flare_core.metrics import detection_metrics

    X = np.load(job["abnormality"])
    pooled = np.load(job["pooled"])
    z = np.load(job["meta"])
    labels, truth = z["labels"], z["truth"].astype(bool)
    rows = []
    for det in job["detectors"]:
        t0 = time.perf_counter()
        try:
            r = run_our_detector(det, X, pooled, labels, seed=0)
            scores = r["scores"]
            if scores is not None and not np.all(np.isfinite(scores)):
                scores = np.nan_to_num(scores, nan=0.0, posinf=1e300, neginf=-1e300)
            m = detection_metrics(r["flagged"], truth, scores)
            note, sub = "", r.get("subspace")
        except Exception as e:  # record, keep going
            m, note, sub = {}, f"FAILED: {type(e).__name__}: {e}", None
        rows.append({**job["row"], "detector": det, "tpr": m.get("tpr"), "fpr": m.get("fpr"),
                     "precision": m.get("precision"), "f1": m.get("f1"), "auroc": m.get("auroc"),
                     "n_flagged": m.get("n_flagged"), "flagged_fraction": (m.get("n_flagged") or 0) / len(labels),
                     "seconds": round(time.perf_counter() - t0, 2), "subspace": sub, "note": note})
        Path(job["out"]).write_text(json.dumps({"rows": rows}, indent=1))
    return {"name": job["row"]["model"], "rows": rows}


def _art_rows(model, ds, truth, row: dict, rate: float) -> list:
    from flare_core.metrics import detection_metrics
    from flare_core.models.loaded import LoadedModel
    from flare_core.models.preprocessing import Preprocessing

    try:
        from benchmarks.art_baselines import run_art
    except ImportError as e:
        return [{**row, "detector": d, "note": f"not run: {e}"} for d in ("art-ac", "art-ss")]
    lm = LoadedModel(module=model, kind="module", num_classes=ds.num_classes, preprocessing=Preprocessing(),
                     arch="resnet18-cifar", device=str(next(model.parameters()).device))
    out = []
    try:
        res = run_art(lm, ds, expected_poison=rate or 0.1)
    except Exception as e:
        return [{**row, "detector": d, "note": f"FAILED: {type(e).__name__}: {e}"} for d in ("art-ac", "art-ss")]
    for d, r in res.items():
        m = detection_metrics(r["flagged"], truth, r["scores"])
        out.append({**row, "detector": d, "tpr": m["tpr"], "fpr": m["fpr"], "precision": m["precision"], "f1": m["f1"],
                    "auroc": m["auroc"], "n_flagged": m["n_flagged"], "flagged_fraction": m["n_flagged"] / len(ds),
                    "seconds": round(r["seconds"], 2), "note": r["note"]})
    return out


# --------------------------------------------------------------------------- driver
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, default=540, help="seconds for the whole run (default 540)")
    p.add_argument("--train-share", type=float, default=0.6, help="share of the budget for training")
    p.add_argument("--epochs", type=int, default=None, help="fixed epochs (default: from the budget)")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--models", default=",".join(m[0] for m in MODELS))
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (smoke test)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=3, help="CPU detection worker processes")
    p.add_argument("--no-art", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    deadline = t_start + args.budget
    import torch

    from benchmarks.detect_matrix import COLUMNS
    from flare_core.attacks import poison_dataset, poison_test_set
    from flare_core.features import extract_abnormality_features, extract_pooled_features
    from flare_core.metrics import attack_success_rate, benign_accuracy
    from flare_core.models.loaded import LoadedModel
    from flare_core.models.preprocessing import Preprocessing
    from flare_core.models.training import evaluate

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    (out / "detect").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-cifar-"))
    root = _resolve_data(args.data)
    train, test = load_cifar(root, work)
    if args.limit:
        train = train.subset(np.sort(np.random.default_rng(0).permutation(len(train))[:args.limit]))
    logger.info("data ready in %.1fs (%d train, %d test)", time.perf_counter() - t_start, len(train), len(test))
    wanted = [m for m in MODELS if m[0] in args.models.split(",")]
    epochs = args.epochs
    pool = mp.get_context("spawn").Pool(args.workers)
    pending, summary = [], {"models": {}, "rows": []}
    pre = Preprocessing()

    def write_summary():
        rows = []
        for f in sorted((out / "detect").glob("*.json")):
            rows += json.loads(f.read_text()).get("rows", [])
        summary["rows"] = rows
        summary["elapsed_seconds"] = round(time.perf_counter() - t_start, 1)
        summary["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        summary["versions"] = {"python": sys.version.split()[0], "torch": torch.__version__}
        summary["command"] = "python3 benchmarks/gpu_cifar.py " + " ".join(sys.argv[1:] if argv is None else argv)
        (out / "gpu_cifar.json").write_text(json.dumps(summary, indent=1, default=float))
        import csv

        with open(out / "gpu_cifar.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k) for k in COLUMNS})

    for i, (name, attack, rate, mode) in enumerate(wanted):
        if time.perf_counter() > deadline - 30:
            summary["models"][name] = {"note": "not run: out of time"}
            continue
        t0 = time.perf_counter()
        if attack:
            ds, gt = poison_dataset(train, attack, rate=rate, mode=mode, target=0, seed=0)
            ptest = poison_test_set(test, attack, mode=mode, target=0, seed=0)
            truth = gt.mask(len(ds))
        else:
            ds, ptest, truth = train, None, np.zeros(len(train), bool)
        if epochs is None:  # time one epoch, then fix epochs for every model from the budget
            probe_t = []
            model, hist = train_gpu(ds, 1, 0, args.device, time_per_epoch_cb=probe_t.append)
            per_epoch = probe_t[-1] * 0.9  # the first epoch includes cudnn autotuning
            train_budget = args.budget * args.train_share - (time.perf_counter() - t_start)
            epochs = int(max(2, min(args.max_epochs, train_budget / (per_epoch * len(wanted)))))
            logger.info("epoch %.1fs -> %d epochs per model", per_epoch, epochs)
            summary["epochs_chosen_from"] = {"first_epoch_seconds": probe_t[-1], "train_budget_s": train_budget}
        model, hist = train_gpu(ds, epochs, 0, args.device)
        train_s = time.perf_counter() - t0
        _, pred = evaluate(model, test, pre, batch_size=1024, device=args.device)
        ba = benign_accuracy(pred, test.labels)
        asr = None
        if ptest is not None:
            _, pp = evaluate(model, ptest, pre, batch_size=1024, device=args.device)
            asr = attack_success_rate(pp, ptest.labels)
        lm = LoadedModel(module=model, kind="module", num_classes=10, preprocessing=pre, arch="resnet18-cifar",
                         device=args.device)
        tf = time.perf_counter()
        feats = extract_abnormality_features(lm, ds, batch_size=1024, out=str(work / f"{name}-abn.npy"))
        pooled, _ = extract_pooled_features(lm, ds, batch_size=1024)
        feat_s = time.perf_counter() - tf
        np.save(work / f"{name}-pooled.npy", pooled)
        np.savez(work / f"{name}-meta.npz", labels=ds.labels, truth=truth)
        row = {"model": name, "dataset": "cifar10-jpeg", "arch": "resnet18-cifar", "attack": attack or "none",
               "mode": mode, "rate": rate, "n": len(ds), "n_poisoned": int(truth.sum()),
               "machine": summary.get("device") or (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"),
               "command": "python3 benchmarks/gpu_cifar.py --data CIFAR --out OUT"}
        art_rows = [] if args.no_art else _art_rows(model, ds, truth, row, rate)
        job = {"abnormality": str(work / f"{name}-abn.npy"), "pooled": str(work / f"{name}-pooled.npy"),
               "meta": str(work / f"{name}-meta.npz"), "detectors": list(DETECTORS_CPU), "row": row,
               "out": str(work / f"{name}-cpu.json")}
        pending.append((name, pool.apply_async(_cpu_detect, (job,)), art_rows, job["out"]))
        summary["models"][name] = {"attack": attack, "rate": rate, "mode": mode, "epochs": epochs,
                                   "benign_accuracy": ba, "attack_success_rate": asr,
                                   "train_seconds": round(train_s, 1), "feature_seconds": round(feat_s, 1),
                                   "epoch_seconds": hist["epoch_seconds"], "layers": len(feats.layer_names)}
        logger.info("%s: BA %.4f ASR %s, %d epochs in %.0fs", name, ba, asr, epochs, train_s)
        (out / "detect" / f"{name}.json").write_text(json.dumps({"rows": art_rows}, indent=1, default=float))
        write_summary()
        del model, lm
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    # collect detection results until the deadline; whatever is unfinished is recorded as such
    for name, res, art_rows, partial in pending:
        left = max(1.0, deadline - time.perf_counter())
        try:
            rows = res.get(timeout=left)["rows"]
        except mp.TimeoutError:
            rows = json.loads(Path(partial).read_text())["rows"] if Path(partial).is_file() else []
            done = {r["detector"] for r in rows}
            rows += [{"model": name, "detector": d, "note": "not run: out of time"} for d in DETECTORS_CPU
                     if d not in done]
        (out / "detect" / f"{name}.json").write_text(json.dumps({"rows": art_rows + rows}, indent=1, default=float))
        write_summary()
    pool.terminate()
    write_summary()
    logger.info("done in %.0fs", time.perf_counter() - t_start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
