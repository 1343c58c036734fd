"""The `flare` command line: the same engine as the dashboard, headless.

Every error is one line (``flare: error: ...``); ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.expanduser("~/.cache/flare-workbench/numba"))

logger = logging.getLogger("flare")


# ---- helpers ----------------------------------------------------------------------------------------------------
class TqdmProgress:
    """A ProgressCallback drawing one tqdm bar per stage on stderr."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total or None, desc=f"{stage:>16}", unit="it", leave=True, file=sys.stderr,
                            dynamic_ncols=True)
        if self.bar is not None:
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _floats(text: Optional[str]) -> Optional[tuple]:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"flare: error: expected comma-separated numbers, got {text!r}")


def _size(text: Optional[str]) -> Optional[tuple]:
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        vals = tuple(int(p) for p in parts if p)
    except ValueError:
        raise SystemExit(f"flare: error: --size takes H,W or one number, got {text!r}")
    return vals * 2 if len(vals) == 1 else vals


def _params(items: Sequence[str]) -> tuple:
    out = []
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"flare: error: --param takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            pass
        out.append((k.strip().replace("-", "_"), v))
    return tuple(out)


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    from flare_core.models import ARCHITECTURES

    p.add_argument("--model", required=required, help="TorchScript file, torch.export .pt2, or a state_dict (.pt/.pth/.safetensors) with --arch")
    p.add_argument("--arch", default=None, help=f"architecture of a state_dict: {', '.join(sorted(ARCHITECTURES))}, or torchvision:<name>")
    p.add_argument("--size", default=None, help="model input size H,W (default: the model's description, else the data's own)")
    p.add_argument("--channels", type=int, default=None, choices=(1, 3), help="model input channels")
    p.add_argument("--mean", default=None, help="per-channel mean, e.g. 0.4914,0.4822,0.4465 (default: no normalisation)")
    p.add_argument("--std", default=None, help="per-channel std")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")


def _add_data_args(p: argparse.ArgumentParser, flag: str = "--data", required: bool = True) -> None:
    from flare_core.data import FORMATS

    p.add_argument(flag, required=required, help="ImageFolder, CSV manifest, CIFAR batches, MNIST IDX, .npz, or builtin:fashion-mnist / builtin:digits")
    p.add_argument("--format", dest="data_format", default=None, choices=sorted(FORMATS), help="override format detection")
    p.add_argument("--split", default="train", help="train or test, for sources that hold both (default train)")


def _preprocessing(args) -> Optional[dict]:
    pre = {"size": _size(args.size), "channels": args.channels, "mean": _floats(args.mean), "std": _floats(args.std)}
    pre = {k: v for k, v in pre.items() if v is not None}
    return pre or None


# ---- subcommands ------------------------------------------------------------------------------------------------
def cmd_attack(args) -> int:
    from flare_core.attacks import poison_dataset, poison_test_set
    from flare_core.atomic import atomic_dir
    from flare_core.data import lab, load_dataset, load_test_set
    from flare_core.data.writers import check_no_overlap, save_imagefolder, save_npz

    ds = load_dataset(args.data, format=args.data_format, split=args.split)
    check_no_overlap(ds, Path(args.out).absolute(), other_inputs={"test data": args.test_data})
    params = dict(_params(args.param))
    poisoned, truth = poison_dataset(ds, args.attack, rate=args.rate, target=args.target, mode=args.mode,
                                     seed=args.seed, params=params)
    test = None
    if args.test_data or args.data.startswith("builtin:"):
        test_src = args.test_data or args.data
        test = load_test_set(test_src, format=args.data_format if args.test_data is None else None)
    with atomic_dir(args.out, overwrite=args.overwrite, marker=lab.GROUND_TRUTH, what="poisoned dataset") as tmp:
        if args.out_format == "imagefolder":
            save_imagefolder(poisoned, tmp / lab.TRAIN_FOLDER)
        else:
            save_npz(poisoned, tmp / lab.TRAIN_NPZ)
        truth.to_json(tmp / lab.GROUND_TRUTH)
        if test is not None:
            ptest = poison_test_set(test, args.attack, target=args.target, mode=args.mode, seed=args.seed, params=params)
            save_npz(test, tmp / lab.TEST_CLEAN)
            save_npz(ptest, tmp / lab.TEST_POISONED)
    print(f"{args.attack}: poisoned {len(truth.poisoned_indices)} of {len(ds)} samples ({args.mode}, target {args.target}) -> {args.out}")
    return 0


def cmd_train(args) -> int:
    import torch

    from flare_core.data import lab_poisoned_test, load_dataset, load_test_set
    from flare_core.metrics import attack_success_rate, benign_accuracy
    from flare_core.models import save_checkpoint, train_model
    from flare_core.errors import FlareError
    from flare_core.models.loading import check_checkpoint_target, sidecar_path
    from flare_core.models.preprocessing import Preprocessing
    from flare_core.models.training import evaluate

    inputs = [args.data, args.test_data, args.poisoned_test]
    check_checkpoint_target(args.out, inputs)  # before the training
    if args.metrics_out and os.path.realpath(args.metrics_out) in {
            os.path.realpath(p) for p in inputs + [args.out, sidecar_path(args.out)] if p}:
        raise FlareError(f"--metrics-out {args.metrics_out} would replace an input or the model; choose another name.")
    ds = load_dataset(args.data, format=args.data_format, split=args.split)
    prog = TqdmProgress(not args.quiet)
    kwargs = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size),
                                ("optimizer", args.optimizer)) if v is not None}
    device = _device(args.device)
    import time

    t0 = time.perf_counter()
    model, history = train_model(ds, arch=args.arch, seed=args.seed, device=device, progress=prog, **kwargs)
    prog.close()
    seconds = time.perf_counter() - t0
    pre = Preprocessing()
    result = {"arch": args.arch, "train_seconds": round(seconds, 1), "n_train": len(ds), "history": history}
    model.eval()
    if args.test_data:
        test = load_test_set(args.test_data)
        _, pred = evaluate(model, test, pre, device=device)
        result["benign_accuracy"] = benign_accuracy(pred, test.labels)
    poisoned_test = args.poisoned_test or lab_poisoned_test(args.test_data)  # a lab folder holds its own
    if poisoned_test:
        ptest = load_test_set(poisoned_test)
        _, pred = evaluate(model, ptest, pre, device=device)
        result["attack_success_rate"] = attack_success_rate(pred, ptest.labels)
    model = model.to("cpu")
    h, w, c = ds.image_shape
    save_checkpoint(model, args.out, arch=args.arch, num_classes=ds.num_classes, in_channels=c, image_size=(h, w),
                    preprocessing=pre, classes=list(ds.classes), extra={"trained_on": str(args.data), "result": result})
    msg = [f"saved {args.out}", f"{seconds:.0f}s"]
    if "benign_accuracy" in result:
        msg.append(f"BA {100 * result['benign_accuracy']:.2f}%")
    if "attack_success_rate" in result:
        msg.append(f"ASR {100 * result['attack_success_rate']:.2f}%")
    print("; ".join(msg))
    if args.metrics_out:
        from flare_core.atomic import write_json

        write_json(args.metrics_out, result)
    del torch
    return 0


def cmd_evaluate(args) -> int:
    from flare_core.data import lab_poisoned_test, load_test_set
    from flare_core.metrics import attack_success_rate, benign_accuracy
    from flare_core.models import load_model
    from flare_core.models.training import evaluate
    from flare_core.pipeline import check_fit

    model = load_model(args.model, arch=args.arch, preprocessing=_preprocessing(args), device=_device(args.device))
    out = {}
    test = load_test_set(args.test_data)
    check_fit(model, test)
    _, pred = evaluate(model.module, test, model.preprocessing, device=model.device)
    out["benign_accuracy"] = benign_accuracy(pred, test.labels)
    poisoned_test = args.poisoned_test or lab_poisoned_test(args.test_data)  # a lab folder holds its own
    if poisoned_test:
        ptest = load_test_set(poisoned_test)
        _, pred = evaluate(model.module, ptest, model.preprocessing, device=model.device)
        out["attack_success_rate"] = attack_success_rate(pred, ptest.labels)
    print(json.dumps(out, indent=2))
    return 0


def _absolute(path: Optional[str]) -> Optional[str]:
    """An existing file or folder as an absolute path (run.json records where the inputs are, so the dashboard
    and `flare report` find them from any working directory); anything else (``builtin:``) as given."""
    return str(Path(path).absolute()) if path and Path(path).exists() else path


def cmd_purify(args) -> int:
    from flare_core.data import lab_ground_truth
    from flare_core.pipeline import AnalysisConfig, run_analysis

    pre = _preprocessing(args) or {}
    ground_truth = args.ground_truth or lab_ground_truth(args.data, args.split)
    if ground_truth and not args.ground_truth:
        logger.info("Using the lab folder's ground truth %s", ground_truth)
    config = AnalysisConfig(
        model=_absolute(args.model), data=_absolute(args.data), arch=args.arch, data_format=args.data_format, split=args.split,
        size=pre.get("size"), channels=pre.get("channels"), mean=pre.get("mean"), std=pre.get("std"),
        device=_device(args.device), batch_size=args.batch_size, detector=args.method,
        baselines=tuple(b for b in (args.baselines.split(",") if args.baselines else []) if b),
        ground_truth=_absolute(ground_truth), seed=args.seed, views=not args.no_views, params=_params(args.param),
        trigger_test=not args.no_trigger_test,
    )
    prog = TqdmProgress(not args.quiet)
    run = run_analysis(config, args.out, progress=prog, overwrite=args.overwrite, export=not args.no_export)
    prog.close()
    res = run.meta["result"]
    print(f"{args.method}: flagged {res['n_flagged']} of {run.n_samples} samples"
          f" (per class {res['flagged_per_class']}); run folder {run.path}")
    from flare_core.report import how_found

    sentence, _ = how_found(run)
    if sentence and res["n_flagged"]:
        print(f"  {sentence}")
    elif not res["n_flagged"]:
        from flare_core.report import detector_report, not_poison_sentence

        wide = not_poison_sentence(detector_report(run), run.classes).strip()
        if wide:
            print(f"  {wide}")
    from flare_core.report import trigger_sentence

    triggers = trigger_sentence(run)
    if triggers:
        print(f"  {triggers}")
    if not res["n_flagged"]:
        print("  Nothing flagged is not proof of a clean set: the highest scores"
              + (" and the highest losses (manifest column 'loss': samples the model does not fit, where a "
                 "backdoor that did not take leaves its poison)" if run.losses() is not None else "")
              + " are where to look.")
    for det, m in (run.meta.get("evaluation") or {}).items():
        auroc = m.get("auroc")
        print(f"  {det:>16}: TPR {100 * m['tpr']:.2f}%  FPR {100 * m['fpr']:.2f}%  F1 {m['f1']:.3f}"
              + (f"  AUROC {auroc:.3f}" if auroc is not None else ""))
    return 0


def cmd_layers(args) -> int:
    from flare_core.features import list_layers
    from flare_core.models import load_model

    model = load_model(args.model, arch=args.arch, preprocessing=_preprocessing(args), device=_device(args.device))
    for info in list_layers(model):
        print(f"{info.name}\t{info.kind}\t{info.channels}\t{info.stats}")
    return 0


def cmd_demo(args) -> int:
    from flare_core.demo import prepare_demo

    demo = prepare_demo(progress=TqdmProgress(not args.quiet))
    print(json.dumps({k: str(v) for k, v in demo.__dict__.items()}, indent=2))
    return 0


def cmd_report(args) -> int:
    from flare_core.errors import FlareError
    from flare_core.pipeline import load_dataset_of, load_model_of
    from flare_core.report import build_report, check_report_target
    from flare_core.run_folder import RunFolder

    check_report_target(Path(args.out))  # before the run's data and model are loaded
    run = RunFolder(args.run)
    dataset = model = missing = None
    if args.no_images:
        missing = "the report was built with --no-images."
    else:  # the run's own dataset and model, for example images and Grad-CAM overlays
        try:
            dataset = load_dataset_of(run)
            model = load_model_of(run)
        except (FlareError, OSError, KeyError) as e:
            missing = str(e)
            print(f"flare: the report has {'no Grad-CAM overlays' if dataset is not None else 'no example images'}: "
                  f"{e}", file=sys.stderr)
    path = build_report(run, args.out, dataset=dataset, model=model, missing=missing)
    print(f"report written to {path}")
    return 0


def cmd_dashboard(args) -> int:
    app = Path(__file__).resolve().parent.parent / "app.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port)]
    if args.run:
        from flare_core import server_paths
        from flare_core.errors import FlareError
        from flare_core.run_folder import RunFolder

        run = Path(args.run).absolute()
        RunFolder(run)  # not a run, or a damaged one: one line here, not a dashboard that opens on something else
        if not server_paths.is_allowed(run):
            roots = server_paths.allowed_roots()
            wider = os.pathsep.join(map(str, roots + [run.parent]))
            raise FlareError(f"{run} is outside the folders the dashboard may read ({', '.join(map(str, roots))}); "
                             f"start it with {server_paths.ROOTS_ENV}={wider}.")
        os.environ["FLARE_OPEN_RUN"] = str(run)
    os.execv(sys.executable, cmd)
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (the usage line and one sentence on a bad value, as for other arguments)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value:g}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from flare_core.attacks import ATTACKS
    from flare_core.detectors.registry import DETECTORS
    from flare_core.models import ARCHITECTURES

    p = argparse.ArgumentParser(prog="flare", description="FLARE Workbench: find and remove backdoor-poisoned training samples.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("purify", help="run FLARE (or a baseline) and write a run folder with the purified dataset")
    _add_model_args(s)
    _add_data_args(s)
    s.add_argument("--out", required=True, help="output run folder (written atomically)")
    s.add_argument("--method", default="flare", choices=sorted(DETECTORS), help="detector (default flare)")
    s.add_argument("--baselines", default="", help=f"comma-separated extra detectors to run beside it: {','.join(sorted(DETECTORS))}")
    s.add_argument("--ground-truth", default=None, help="the lab's ground_truth.json: adds TPR/FPR/F1 to run.json "
                   "(default: the one in DATA when DATA is a flare attack output folder)")
    s.add_argument("--param", action="append", default=[], help="detector parameter KEY=VALUE (repeatable)")
    s.add_argument("--batch-size", type=_positive_int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-views", action="store_true", help="skip the per-class views (dashboard plots)")
    s.add_argument("--no-trigger-test", action="store_true",
                   help="skip testing whether each class's flagged samples share a trigger (two small model passes "
                        "per class with flags; FLARE default's own minority-mode test is a detector setting: "
                        "--param minority_modes=rank|off)")
    s.add_argument("--no-export", action="store_true", help="do not write OUT/purified")
    s.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is an earlier run folder (one with run.json); a folder FLARE did not write is never replaced")
    s.set_defaults(func=cmd_purify)

    s = sub.add_parser("attack", help="make a poisoned dataset with ground truth (the backdoor lab)")
    s.add_argument("attack", choices=sorted(ATTACKS))
    _add_data_args(s)
    s.add_argument("--out", required=True, help="output folder: train.npz, ground_truth.json, test_clean.npz, test_poisoned.npz")
    s.add_argument("--test-data", default=None, help="clean test set to poison for ASR (default: the builtin's test split)")
    s.add_argument("--rate", type=float, default=0.1, help="poisoned fraction of the whole dataset (0.001-0.2)")
    s.add_argument("--target", type=int, default=0)
    s.add_argument("--mode", default="all-to-one", choices=["all-to-one", "all-to-all"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--param", action="append", default=[], help="trigger parameter KEY=VALUE (repeatable)")
    s.add_argument("--out-format", default="npz", choices=["npz", "imagefolder"])
    s.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is an earlier output of flare attack (one with ground_truth.json); a folder FLARE did not write is never replaced")
    s.set_defaults(func=cmd_attack)

    s = sub.add_parser("train", help="train a classifier and save a loadable checkpoint with its description")
    _add_data_args(s)
    s.add_argument("--arch", default="small-cnn", choices=sorted(a for a in ARCHITECTURES), help="built-in architecture")
    s.add_argument("--out", required=True, help="checkpoint path (.pt or .safetensors); a .json description is written beside it")
    s.add_argument("--epochs", type=_positive_int, default=None)
    s.add_argument("--lr", type=_positive_float, default=None)
    s.add_argument("--batch-size", type=_positive_int, default=None)
    s.add_argument("--optimizer", default=None, choices=["sgd", "adam"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--test-data", default=None, help="clean test set: report benign accuracy")
    s.add_argument("--poisoned-test", default=None, help="poisoned test set from `flare attack`: report attack success rate "
                   "(default: test_poisoned.npz when --test-data is a flare attack output folder)")
    s.add_argument("--metrics-out", default=None, help="write the training result as JSON here")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="benign accuracy and attack success rate of a model")
    _add_model_args(s)
    s.add_argument("--test-data", required=True)
    s.add_argument("--poisoned-test", default=None,
                   help="triggered test set for the attack success rate (default: test_poisoned.npz when --test-data "
                        "is a flare attack output folder)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("layers", help="list the layers FLARE reads from a model")
    _add_model_args(s)
    s.set_defaults(func=cmd_layers)

    s = sub.add_parser("demo", help="prepare the built-in demo scenario (poisoned Fashion-MNIST or digits)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("report", help="write the HTML report of a run folder")
    s.add_argument("run")
    s.add_argument("--out", required=True, help="the HTML file to write (.html; replaces only an earlier report)")
    s.add_argument("--no-images", action="store_true",
                   help="do not reload the run's dataset and model (no example images or Grad-CAM overlays)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("dashboard", help="open the dashboard (Streamlit)")
    s.add_argument("run", nargs="?", default=None, help="a run folder to open")
    s.add_argument("--port", type=_positive_int, default=8501)
    s.set_defaults(func=cmd_dashboard)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from flare_core.errors import FlareError

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except FlareError as e:
        if debug:
            raise
        print(f"flare: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flare: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: still one line unless --debug
        if debug:
            raise
        print(f"flare: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
