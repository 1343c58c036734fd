"""Memory and time of loading an image-file dataset (ImageFolder) and running FLARE's feature pass over it.

Each case runs in a fresh process that samples its own /proc/self/status every 10 ms: ``RssAnon`` (memory that
only RAM or swap can hold) and ``RssFile`` (file pages mapped into the process, which the kernel can drop and
re-read, such as a memory-mapped image array). The peak of each is reported, with the kernel's high-water mark
``VmHWM`` (their sum). Stages: ``load`` (``flare_core.data.load_dataset``), then ``features`` (FLARE's
abnormality features with the penultimate features and logits in one pass, ``extract_abnormality_features(
latent=True)``, as ``flare purify`` runs it, written to a memory-mapped .npy) with an untrained narrow ResNet
(the pass costs the same whatever the weights), or ``--arch``: a name of the project's registry (``resnet18-cifar``:
512 penultimate features, 4,800 BatchNorm channels), or ``wide-head``, a memory probe defined here (two small
convolutions with BatchNorm, then 512 penultimate features as ResNet-18 has: the outputs of a pass at a million
samples, for a few minutes of compute); ``--channels`` also takes the per-channel view (FLARE default's opt-in
``use_channels``).

Datasets: the JPEG CIFAR-10 training folder (``--cifar``), a synthetic ImageFolder of N RGB JPEGs of
``--side`` pixels (default 64; ``--synthetic N``, made once under ~/.cache/flare-data), and a synthetic ``.npz``
of N such images (``--npz N``: saved uncompressed as ``numpy.savez`` does; ``--npz-compressed`` as
``numpy.savez_compressed``; ``--channel-first`` stores them (N, 3, H, W)). Written to
benchmarks/results/image_loading.json; each row carries the commit it ran on, so rows from before and after a
change sit side by side.

    python3 -m benchmarks.image_loading [--cifar DIR] [--synthetic 100000] [--npz 100000] [--stages load,features]
        [--side 64] [--mixed] [--npz-compressed] [--channel-first] [--arch NAME] [--channels] [--image-ram-mb MB]
        [--memory-limit-mb MB] [--label TEXT]

``--memory-limit-mb`` runs the measured process in a cgroup-v1 memory group of that size (root only): a load
that needs more memory than that is killed by the kernel, which the row then records.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import code_commit, read_json, write_json  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "image_loading.json"
SYNTHETIC_ROOT = Path.home() / ".cache" / "flare-data"


def make_synthetic(n: int, side: int = 64, classes: int = 10, seed: int = 0, mixed: bool = False) -> Path:
    """An ImageFolder of ``n`` smooth random RGB JPEGs (``side`` x ``side``), made once and reused. ``mixed``: as
    scraped folders are, 60 % at that size and the rest of random sizes within 25 % of it."""
    import numpy as np
    from PIL import Image

    root = SYNTHETIC_ROOT / (f"synthetic-mixed-{n}-{side}" if mixed else f"synthetic-{n}-{side}")
    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        h = w = side
        if mixed and rng.random() >= 0.6:
            h, w = (int(v) for v in rng.integers(int(side * 0.75), int(side * 1.25) + 1, 2))
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        img.save(root / f"class{i % classes}" / f"{i:07d}.jpg", quality=90)
    done.write_text(str(n))
    return root


def make_synthetic_npz(n: int, side: int = 64, classes: int = 10, seed: int = 0, compressed: bool = False,
                       channel_first: bool = False) -> Path:
    """An ``.npz`` of ``n`` blocky random RGB images with fine noise (``side`` x ``side``, ``x`` and ``y``), made once and reused."""
    import numpy as np

    name = f"synthetic-{n}-{side}{'-chw' if channel_first else ''}{'-compressed' if compressed else ''}.npz"
    path = SYNTHETIC_ROOT / name
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    shape = (n, 3, side, side) if channel_first else (n, side, side, 3)
    x = np.empty(shape, dtype=np.uint8)
    cell = -(-side // 8)
    for start in range(0, n, 4096):
        small = rng.integers(0, 256, (min(4096, n - start), 8, 8, 3), dtype=np.uint8)
        block = small.repeat(cell, axis=1).repeat(cell, axis=2)[:, :side, :side]
        block |= rng.integers(0, 16, block.shape, dtype=np.uint8)  # fine noise: zlib packs it as it packs photos
        x[start:start + len(block)] = block.transpose(0, 3, 1, 2) if channel_first else block
    y = np.arange(n, dtype=np.int64) % classes
    SYNTHETIC_ROOT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    (np.savez_compressed if compressed else np.savez)(tmp, x=x, y=y)
    tmp.rename(path)
    return path


def _status_kb(fields=("RssAnon", "RssFile", "VmHWM")) -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in fields:
                out[key] = int(rest.split()[0])
    return out


class PeakSampler:
    """Samples RssAnon and RssFile every ``interval`` seconds on a thread; ``peak_mb()`` gives their peaks."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak, self._stop = interval, {"RssAnon": 0, "RssFile": 0}, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = _status_kb()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], now.get(k, 0))
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self) -> dict:
        return {f"peak_{k.lower()}_mb": round(v / 1024, 1) for k, v in self.peak.items()}


def wide_head(num_classes: int, in_channels: int, width: int = 512):
    """The ``wide-head`` memory probe: little compute, and a penultimate layer as wide as ResNet-18's."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, width), nn.ReLU(), nn.Linear(width, num_classes))


def child(path: str, stages: list, scratch: str, arch: str = "narrow-resnet", channels: bool = False) -> dict:
    """Run the stages in this process and report time and memory (called with --child)."""
    import numpy as np
    import torch

    from flare_core.data import load_dataset

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    record = {"baseline_rss_anon_mb": round(_status_kb()["RssAnon"] / 1024, 1)}
    with PeakSampler() as s:
        t0 = time.perf_counter()
        ds = load_dataset(path)
        record["load_s"] = round(time.perf_counter() - t0, 2)
    record.update({f"load_{k}": v for k, v in s.peak_mb().items()})
    record.update(n=len(ds), image_shape=list(ds.image_shape), image_mb=round(ds.images.nbytes / 2**20, 1),
                  images_on_disk=isinstance(ds.images, np.memmap), images_file=ds.images_file)
    if "features" in stages:
        from flare_core.features import extract_abnormality_features
        from flare_core.models import build_model
        from flare_core.models.loaded import LoadedModel

        torch.manual_seed(0)
        module = (wide_head(ds.num_classes, ds.image_shape[2]) if arch == "wide-head"
                  else build_model(arch, ds.num_classes, ds.image_shape[2])).eval()
        model = LoadedModel(module=module, kind="module", num_classes=ds.num_classes)
        with PeakSampler() as s:
            t0 = time.perf_counter()
            f = extract_abnormality_features(model, ds, batch_size=256, latent=True, channels=channels,
                                             out=str(Path(scratch) / "features.npy"))
            record["features_s"] = round(time.perf_counter() - t0, 2)
        record.update({f"features_{k}": v for k, v in s.peak_mb().items()})
        record["layers"] = len(f.layer_names)
        outputs = {"penultimate": f.latent.pooled, "logits": f.latent.logits, "per_channel": f.channels}
        record["outputs"] = {k: {"shape": list(v.shape), "mb": round(v.nbytes / 2**20, 1),
                                 "on_disk": isinstance(v, np.memmap)} for k, v in outputs.items() if v is not None}
    record["vm_hwm_mb"] = round(_status_kb()["VmHWM"] / 1024, 1)
    return record


CGROUP_V1 = Path("/sys/fs/cgroup/memory")


class MemoryCgroup:
    """A cgroup-v1 memory group limited to ``limit_mb`` (RAM and page cache together, as the kernel counts
    them), for a process started with ``preexec_fn=group.enter``; removed on exit."""

    def __init__(self, limit_mb: int):
        if not (CGROUP_V1 / "memory.limit_in_bytes").is_file():
            raise SystemExit("--memory-limit-mb needs a writable cgroup-v1 memory controller at /sys/fs/cgroup/memory.")
        self.path = CGROUP_V1 / f"flare-image-loading-{os.getpid()}"
        self.limit = limit_mb * 2**20

    def __enter__(self):
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        if (self.path / "memory.memsw.limit_in_bytes").is_file():  # no escape into swap either
            (self.path / "memory.memsw.limit_in_bytes").write_text(str(self.limit))
        return self

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_mb(self) -> float:
        return round(int((self.path / "memory.max_usage_in_bytes").read_text()) / 2**20, 1)

    def __exit__(self, *exc) -> None:
        self.path.rmdir()


def run_case(name: str, path: Path, stages: list, image_ram_mb, memory_limit_mb=None, arch: str = "narrow-resnet",
             channels: bool = False) -> dict:
    import contextlib
    import tempfile

    env = dict(os.environ)
    if image_ram_mb is not None:
        env["FLARE_IMAGE_RAM_MB"] = str(image_ram_mb)
    group = MemoryCgroup(memory_limit_mb) if memory_limit_mb else None
    with tempfile.TemporaryDirectory() as scratch, (group or contextlib.nullcontext()):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.image_loading", "--child", str(path),
                               "--stages", ",".join(stages), "--scratch", scratch, "--arch", arch]
                              + (["--channels"] if channels else []),
                              cwd=REPO, env=env, capture_output=True, text=True,
                              preexec_fn=group.enter if group else None)
        wall = round(time.perf_counter() - t0, 1)
        group_peak = group.peak_mb() if group else None
    if proc.returncode != 0 and not (group and proc.returncode < 0):
        raise SystemExit(f"{name}: the measuring process failed:\n{proc.stderr[-3000:]}")
    if proc.returncode < 0:  # killed by the kernel's out-of-memory killer inside the group
        record = {"outcome": f"killed (signal {-proc.returncode}) after {wall} s: out of memory in the group",
                  "n": None}
    else:
        record = json.loads(proc.stdout.strip().splitlines()[-1])
        record["outcome"] = "ok"
    record.update(memory_limit_mb=memory_limit_mb, group_peak_mb=group_peak)
    record.update(dataset=name, path=str(path), stages=stages, image_ram_mb=image_ram_mb, arch=arch, channels=channels,
                  commit=code_commit(),
                  load_average=[round(x, 2) for x in os.getloadavg()])
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar", help="the JPEG CIFAR-10 ImageFolder (its train/ split is loaded)")
    ap.add_argument("--synthetic", type=int, default=0, help="also a synthetic ImageFolder of this many JPEGs")
    ap.add_argument("--side", type=int, default=64, help="the synthetic images' side in pixels (default 64)")
    ap.add_argument("--mixed", action="store_true", help="synthetic images of mixed sizes (60 %% at --side)")
    ap.add_argument("--npz", type=int, default=0, help="also a synthetic .npz of this many --side RGB images")
    ap.add_argument("--npz-compressed", action="store_true", help="the .npz saved with numpy.savez_compressed")
    ap.add_argument("--channel-first", action="store_true", help="the .npz's images stored (N, 3, H, W)")
    ap.add_argument("--stages", default="load,features")
    ap.add_argument("--arch", default="narrow-resnet", help="the (untrained) model of the features stage")
    ap.add_argument("--channels", action="store_true", help="the features stage also takes the per-channel view")
    ap.add_argument("--image-ram-mb", type=int, default=None, help="FLARE_IMAGE_RAM_MB for the measured process")
    ap.add_argument("--memory-limit-mb", type=int, default=None,
                    help="run the measured process in a memory cgroup of this many MB (needs cgroup v1, as root)")
    ap.add_argument("--label", default="", help="a note stored with the rows (e.g. 'before the change')")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    if args.child:
        print(json.dumps(child(args.child, stages, args.scratch, args.arch, args.channels)))
        return 0
    cases = []
    if args.cifar:
        cases.append(("cifar10 (JPEG, train)", Path(args.cifar).expanduser()))
    if args.synthetic:
        name = (f"synthetic {args.synthetic:,} RGB JPEG, 60 % {args.side}x{args.side}, the rest mixed sizes"
                if args.mixed else f"synthetic {args.synthetic:,} x {args.side}x{args.side} RGB JPEG")
        cases.append((name, make_synthetic(args.synthetic, args.side, mixed=args.mixed)))
    if args.npz:
        how = ("compressed" if args.npz_compressed else "uncompressed") + (", channel-first" if args.channel_first
                                                                            else "")
        cases.append((f"synthetic {args.npz:,} x {args.side}x{args.side} RGB .npz ({how})",
                      make_synthetic_npz(args.npz, args.side, compressed=args.npz_compressed,
                                         channel_first=args.channel_first)))
    if not cases:
        ap.error("give --cifar DIR, --synthetic N and/or --npz N")
    results = read_json(OUT, {"rows": []})
    for name, path in cases:
        record = run_case(name, path, stages, args.image_ram_mb, args.memory_limit_mb, args.arch, args.channels)
        record["label"] = args.label
        given = argv if argv is not None else sys.argv[1:]
        record["command"] = "python3 -m benchmarks.image_loading " + shlex.join(given)
        print(json.dumps(record))
        results["rows"].append(record)
        write_json(OUT, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
