"""Generate ``benchmarks/RESULTS.md`` (and its plots) from the raw results in ``benchmarks/results/``.

    python3 -m benchmarks.report
"""
from __future__ import annotations

import json
import re
import logging
from pathlib import Path
from typing import Optional

from benchmarks.common import BENCH, PLOTS, RESULTS, ZOO, fmt_num, fmt_pct, md_table, read_json

logger = logging.getLogger(__name__)

DET_ORDER = ("flare", "flare-faithful", "ac", "ss", "art-ac", "art-ss")
ISSUE3 = {"tpr": 0.98, "fpr": 0.01, "clean_flagged": 0.005, "low_rate_tpr": 0.90}


def _pub(attack: str, mode: str) -> str:
    from benchmarks.detect_matrix import PUBLISHED, PUBLISHED_CLEAN_FLAGGED

    if attack == "none":
        return f"{PUBLISHED_CLEAN_FLAGGED:.2f} % flagged"
    v = PUBLISHED.get((attack, mode))
    return f"{v[0]:.2f} / {v[1]:.2f}" if v else "-"


def _cell(r: Optional[dict]) -> str:
    if r is None:
        return "-"
    if r.get("note", "").startswith(("FAILED", "not run")):
        return "n/a"
    if r.get("attack") == "none":
        return f"{fmt_pct(r.get('flagged_fraction'))} % fl."
    return f"{fmt_pct(r.get('tpr'), 1)} / {fmt_pct(r.get('fpr'), 3)}"


def _by_model(rows: list) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r["model"], {})[r["detector"]] = r
    return out


def _label(r: dict) -> str:
    if r["attack"] == "none":
        return "clean (no poison)"
    mode = "" if r["mode"] == "all-to-one" else " all-to-all"
    return f"{r['attack']}{mode} {100 * float(r['rate']):g} %"


def _trained(record: Optional[dict]) -> str:
    """'epochs, BA / ASR %' of a zoo model from its MANIFEST record ('-' when unknown)."""
    if not record:
        return "-"
    spec = record.get("spec") or {}
    ba, asr = record.get("benign_accuracy"), record.get("attack_success_rate")
    arch = spec.get("arch")
    own = "" if arch in (None, "small-cnn", "narrow-resnet", "resnet18-cifar") else f"{arch}, "
    seed = f"seed {spec['seed']}, " if spec.get("seed") not in (None, 0) else ""
    return (f"{own}{seed}{spec.get('epochs', '-')} ep., {fmt_pct(ba) if ba is not None else '-'} / "
            f"{fmt_pct(asr) if asr is not None else '-'}")


def _speed_note(r: dict) -> str:
    """A speed row's note; the detector row also says where its time went (the fit's own phase seconds)."""
    note = r.get("note", "") or ""
    if r.get("torch_threads") == 1:
        note = (note + "; " if note else "") + "1 torch thread (the machine was shared)"
    ph = r.get("phases")
    if ph:
        order = ("umap", "hdbscan", "decision", "placing", "latent", "confirm", "join", "other")
        parts = [f"{k} {ph[k]:.1f}" for k in order if ph.get(k)]
        note = (note + "; " if note else "") + (f"{ph.get('prefixes_tried', '?')} prefixes tried; s: "
                                                + ", ".join(parts))
        if r.get("latent_stage") is False:
            note += " (without the latent stage)"
    return note


def detection_tables(rows: list, machine_note: str, models: Optional[dict] = None) -> str:
    """TPR / FPR table and F1 / AUROC table, one row per model; ``models`` (the zoo MANIFEST's records)
    adds how each model was trained: epochs, and its BA / ASR (a detector reads what the model learnt)."""
    by = _by_model(rows)
    dets = [d for d in DET_ORDER if any(d in v for v in by.values())]
    t1, t2 = [], []
    for model, cells in by.items():
        any_r = next(iter(cells.values()))
        t1.append([_label(any_r), any_r.get("n_poisoned", "-")]
                  + ([_trained(models.get(model))] if models is not None else [])
                  + [_cell(cells.get(d)) for d in dets]
                  + [_pub(any_r["attack"], any_r["mode"]) if any_r.get("rate") in (0.1, 0.0) else "-",
                     f"`{any_r.get('command', '')}`"])
        t2.append([_label(any_r)] + [
            f"{fmt_num(cells[d].get('f1'))} / {fmt_num(cells[d].get('auroc'))}" if d in cells else "-" for d in dets])
    h1 = ["model", "poisoned"] + (["model trained: epochs, BA / ASR %"] if models is not None else []) \
        + [f"{d} TPR/FPR %" for d in dets] + ["paper FLARE (CIFAR-10 RN-18)", "command"]
    h2 = ["model"] + [f"{d} F1 / AUROC" for d in dets]
    return (f"{machine_note}\n\nTPR / FPR in % (clean control: % of samples flagged).\n\n" + md_table(h1, t1)
            + "\n\nF1 / AUROC (AUROC from each detector's continuous score; ART's ActivationDefence has none):\n\n"
            + md_table(h2, t2))


def loss_notes(rows: list) -> list:
    """Automatic, factual checks: where FLARE default misses the issue's targets or loses to a baseline."""
    notes = []
    by = _by_model(rows)
    for model, cells in by.items():
        f = cells.get("flare")
        if f is None or f.get("note", "").startswith(("FAILED", "not run")):
            if f is not None:
                notes.append(f"`{model}`: FLARE default did not run ({f['note']}).")
            continue
        if f["attack"] == "none":
            if f["flagged_fraction"] > ISSUE3["clean_flagged"]:
                notes.append(f"`{model}`: FLARE default flags {fmt_pct(f['flagged_fraction'])} % of a clean "
                             f"dataset (target <= 0.5 %).")
            continue
        low = float(f["rate"]) < 0.05
        tpr_t = ISSUE3["low_rate_tpr"] if low else ISSUE3["tpr"]
        if (f.get("tpr") or 0) < tpr_t or (not low and (f.get("fpr") or 0) > ISSUE3["fpr"]):
            notes.append(f"`{model}`: FLARE default TPR {fmt_pct(f.get('tpr'))} % / FPR {fmt_pct(f.get('fpr'))} % "
                         f"misses the issue-3 target (TPR >= {100 * tpr_t:g} %" + ("" if low else ", FPR <= 1 %") + ").")
        for d, r in cells.items():
            if d == "flare" or r.get("f1") is None:
                continue
            chance = r["n_poisoned"] / r["n"] if r["n"] else 0
            better_than_chance = (r.get("precision") or 0) > 1.5 * chance
            if better_than_chance and (r.get("f1") or 0) > (f.get("f1") or 0) + 0.01:
                notes.append(f"`{model}`: **{d} beats FLARE default** on F1 ({fmt_num(r['f1'])} vs "
                             f"{fmt_num(f.get('f1'))}; {d}: TPR {fmt_pct(r.get('tpr'))} % at FPR {fmt_pct(r.get('fpr'))} %, "
                             f"precision {fmt_pct(r.get('precision'))} % where {fmt_pct(chance)} % of the samples are poisoned).")
            if (r.get("auroc") or 0) >= 0.6 and (r.get("auroc") or 0) > (f.get("auroc") or 0) + 0.01:
                notes.append(f"`{model}`: {d} ranks the samples better than FLARE default's scores (AUROC "
                             f"{fmt_num(r['auroc'])} vs {fmt_num(f.get('auroc'))}).")
    return notes


def _plot_f1(rows: list, path: Path, title: str) -> bool:
    by = _by_model(rows)
    if not by:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(by)
    dets = [d for d in DET_ORDER if any(d in v for v in by.values())]
    M = np.full((len(models), len(dets)), np.nan)
    for i, m in enumerate(models):
        for j, d in enumerate(dets):
            r = by[m].get(d)
            if r is None:
                continue
            if r.get("attack") == "none":
                v = r.get("flagged_fraction")
                M[i, j] = 1 - min(1.0, 10 * v) if v is not None else np.nan  # clean: 1 = nothing flagged
            elif r.get("f1") is not None:
                M[i, j] = r["f1"]
    fig, ax = plt.subplots(figsize=(1.3 * len(dets) + 3, 0.45 * len(models) + 1.5))
    im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(dets)), dets, rotation=30, ha="right")
    def _row_label(m: str) -> str:  # the attack, plus the training length when the model name carries it
        suffix = m.rsplit("-", 1)[-1]
        extra = f" ({suffix[1:]} epochs)" if suffix[:1] == "e" and suffix[1:].isdigit() else ""
        extra += " (GroupNorm CNN)" if suffix == "gn" else ""
        return _label(next(iter(by[m].values()))) + extra

    ax.set_yticks(range(len(models)), [_row_label(m) for m in models])
    for i in range(len(models)):
        for j in range(len(dets)):
            if not np.isnan(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if M[i, j] < 0.5 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_purification(rows: list, path: Path) -> bool:
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [r["model"].replace("fmnist-", "") for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, title in ((axes[0], "ba", "benign accuracy %"), (axes[1], "asr", "attack success rate %")):
        for k, (src, c) in enumerate((("poisoned", "tab:red"), ("purified", "tab:blue"), ("ceiling", "tab:green"))):
            vals = [100 * (r.get(f"{src}_{key}") or 0) for r in rows]
            ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=src, color=c)
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(80, 95)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


SETTING = """\
## Setting, and how it differs from the paper

- **Paper** (Hou et al., arXiv 2411.19479): CIFAR-10 (original PNG/pickle pixels), ResNet-18 trained to
  convergence on a GPU (hundreds of epochs in the usual BackdoorBox-style setup), L = 20 BatchNorm layers.
- **Ours, CPU rows**: Fashion-MNIST 28x28 grayscale, the project's `small-cnn` (5 BatchNorm layers, ~70k
  parameters), **4 epochs** of SGD on a **2-core CPU shared with other jobs** (wall times are inflated by the
  load; CPU seconds are given where measured). Five BN layers means a 5-column abnormality matrix, so the
  subspace search has few prefixes to try.
- **Ours, CIFAR-10 CPU rows**: CIFAR-10 from a **JPEG** ImageFolder (pixels differ slightly from the
  original release), the project's `narrow-resnet` (the CIFAR ResNet-18 layout, 20 BatchNorm layers as in
  the paper, but widths 16-32-64-128, ~0.7 M parameters instead of 11 M), **4 epochs** on the shared 2-core
  CPU (about 30 minutes a model), so BA is far below a converged ResNet-18's (~94 %); see the zoo table.
- **Ours, GPU rows** (when present): CIFAR-10 from a **JPEG** ImageFolder (pixels differ slightly from the
  original release), the standard CIFAR ResNet-18, but only as many epochs as fit in ~9 minutes on one H100
  for eight models (recorded per row), so the models are less converged than the paper's.
- Attacks are the project's own lab implementations (BadNets 3x3 checkerboard, Blended noise alpha, a
  Trojan-*style* fixed glyph - not TrojanNN's optimised trigger -, WaNet without noise mode, SIG
  clean-label at 5 % because the target class is only 10 % of the data), target class 0, seed 0.
- ART's defences run unmodified through its public API on the same model (wrapped so that ART's "last
  layer" is the penultimate features) and the same input tensors; ART's SpectralSignatureDefense is given
  the same poison-rate guess (the true rate; 10 % for the clean control) as our SS; ART's ActivationDefence
  uses `nb_clusters=2, nb_dims=10, reduce='PCA', cluster_analysis='smaller'`, which flags the smaller
  cluster of *every* class (hence its high FPR), while our AC flags it only when under 35 % of the class.
"""


def _trigger_summary(rows: list) -> str:
    """One paragraph on the minority modes' trigger test (``moved_in`` of ``ranking_check``): what it gives on
    the modes that are poison and on those that are not, and on the control population (the lighter mixture
    component of every class without a mode, ``--all-classes``), judged by the stage's own rule."""
    import numpy as np

    from flare_core.detectors.minority_mode import MIN_MOVED_IN, carries_trigger

    modes = [(r["model"], c, e) for r in rows for c, e in (r.get("minority_modes") or {}).items()
             if e.get("holds") and "moved_in" in e]
    if not modes:
        return ""
    a2a = [m for m in modes if "-a2a-" in m[0]]
    poison = [m for m in modes if m not in a2a and m[2].get("members_poisoned", 0) > 0.5 * m[2]["n_members"]]
    genuine = [m for m in modes if m[2].get("members_poisoned", 0) <= 0.5 * m[2]["n_members"]]

    def rng(ms):
        v = [m[2]["moved_in"] for m in ms]
        return f"{100 * min(v):.1f}-{100 * max(v):.1f} %" if v else "-"

    def passing(ms):
        return sum(bool(carries_trigger(m[2])) for m in ms)

    out = (f" **Trigger test** (`flare_core/features/mode_trigger.py`: the members' mean image difference added to "
           f"200 images of each other class; a mode carries a trigger when that moves at least {100 * MIN_MOVED_IN:.0f} "
           f"points more of them into the class than the control, a perturbation as strong from a random subset of the "
           f"class): modes that are mostly poison, all-to-one: {rng(poison)} moved in ({passing(poison)} of "
           f"{len(poison)} carry a trigger by the rule); all-to-all: {rng(a2a)} ({passing(a2a)} of {len(a2a)}; the "
           f"trigger sends only the previous class's images there, about a ninth of the probe); modes that are not "
           f"poison: {rng(genuine)} ({passing(genuine)} of {len(genuine)}).")
    comps = [(e["n_poisoned"], e["lighter_component"]) for r in rows for e in (r.get("minority_modes") or {}).values()
             if "moved_in" in (e.get("lighter_component") or {})]
    free = [g for k, g in comps if k == 0]
    mixed = [g for k, g in comps if k > 0 and g["poisoned"] <= 0.5 * g["n"]]
    if free:
        margin = [g["moved_in"] - g["moved_in_control"] for g in free]
        out += (f" Control population (`--all-classes`: the lighter mixture component of each class that holds no "
                f"mode): in the {len(free)} classes without poison, {passing([(0, 0, g) for g in free])} "
                f"carry a trigger by the rule (largest margin {100 * max(margin):.1f} points, median moved in "
                f"{100 * float(np.median([g['moved_in'] for g in free])):.1f} %).")
    if mixed:
        out += (f" In classes holding poison, {passing([(0, 0, g) for g in mixed])} of {len(mixed)} components that "
                "are mostly not poison do: the clean half of a class poisoned half-way (its difference is the trigger "
                "negated, which the model obeys too), and whole genuine groups of a few low-rate all-to-all models. So "
                "a group's trigger says the class has a backdoor tied to its difference, not which side of it is "
                "poison: the stage asks it only of a light minority mode.")
    return out


SCALE_STAGES = ("load", "features", "shortcut", "mode_trigger", "detector", "flag_trigger", "views", "export")


def scale_run_section(data: Optional[dict]) -> list:
    """RESULTS' section for benchmarks/scale_run.py: the whole pipeline at a large N, time and memory by stage."""
    if not data or not data.get("rows"):
        return []
    rows, memory = [], []
    for r in data["rows"]:
        t = r.get("timings", {})
        other = t.get("total", 0) - sum(t.get(k, 0) for k in SCALE_STAGES)
        peaks = r.get("peak_anon_over_start_mb", {})
        rows.append([f"{r['n']:,}", r.get("label") or "-", f"`{r['commit']}`", r.get("image_limit_env") or "default",
                     *[fmt_num(t.get(k), 1) if k in t else "-" for k in SCALE_STAGES], fmt_num(other, 1),
                     fmt_num(t.get("total"), 1), r.get("peak_rss_mb"), max(peaks.values(), default=None),
                     r.get("data_mb"), r.get("run_folder_mb"), f"{r['n_flagged']:,}", fmt_pct(r.get("tpr")),
                     fmt_pct(r.get("fpr"), 3), f"`{r['command']}`"])
        memory.append([f"{r['n']:,}", r.get("label") or "-",
                       ", ".join(f"{k} {v:,.0f}" for k, v in peaks.items() if k != "start")])
    return ["## The whole pipeline at a large N (2-core CPU)",
            "`benchmarks/scale_run.py`: one `run_analysis` (what `flare purify` runs: FLARE default with its trigger "
            "tests, per-class views, export, run folder) in a fresh process, over N samples of Fashion-MNIST: "
            "copies of the 60,000 training images, each copy after the first shifted by up to 2 pixels per image "
            "and lightly noised, then the lab's BadNets poisoning of the whole set (10 %, all-to-one, target 0), "
            "an uncompressed `.npz`. The model is the zoo's `fmnist-badnets-10` small CNN, trained on the 60,000. "
            "Seconds by stage are the run's own (`run.json` `timings`); *other* is the rest of the total (building "
            "the manifest, the run folder's files). *Peak RSS* is the process's `ru_maxrss`; *peak anonymous over "
            "start* is its largest RssAnon above the process's start (after the interpreter, before imports), "
            "sampled every 50 ms. Raw: `benchmarks/results/scale_run.json`.",
            md_table(["N", "code", "commit", "FLARE_IMAGE_RAM_MB", *[f"{k} s" for k in SCALE_STAGES], "other s",
                      "total s", "peak RSS MB", "peak anonymous MB over start", "data MB", "run folder MB",
                      "flagged", "TPR %", "FPR %", "command"], rows),
            "Peak anonymous memory (MB over the process's start) by the progress stage the pipeline was in, in the "
            "order they ran (a stage's peak includes what earlier stages still hold):",
            md_table(["N", "code", "peak anonymous MB over start, by stage"], memory)]


def dashboard_pages_section(data: Optional[dict]) -> list:
    """RESULTS' section for benchmarks/dashboard_pages.py: every page of the dashboard on a large run."""
    if not data or not data.get("runs"):
        return []
    rows = []
    for r in data["runs"]:
        by = {(x["page"], x["visit"]): x for x in r["rows"]}
        for page in dict.fromkeys(x["page"] for x in r["rows"]):
            first, again = by.get((page, 1), {}), by.get((page, 2), {})
            errors = sorted(set(first.get("errors", []) + again.get("errors", [])))
            rows.append([f"{r['n_samples']:,}", r.get("label") or "-", f"`{r['commit']}`", page,
                         first.get("seconds", "-"), again.get("seconds", "-"), "; ".join(errors) or "none",
                         f"`{r['command']}`"])
    return ["## Every dashboard page on a large run (headless Chromium, 2-core CPU)",
            "`benchmarks/dashboard_pages.py`: the app started on a run folder (`FLARE_OPEN_RUN`), each page opened "
            "in turn in one browser session and timed from the navigation to an idle page (no script running, no "
            "spinner, every plot drawn), twice: the first visit reads the run (and on Inspect loads the model and "
            "the dataset), the second is going back to a page. *Errors*: any exception or error box the page "
            "showed. Raw: `benchmarks/results/dashboard_pages.json`.",
            md_table(["N", "code", "commit", "page", "first visit s", "second visit s", "errors", "command"], rows)]


def build(results: Path = RESULTS, out: Path = BENCH / "RESULTS.md", plots: Path = PLOTS, zoo: Path = ZOO) -> Path:
    """Write the Markdown report from ``results`` (plots into ``plots``, linked relative to ``out``)."""
    results, out, plots = Path(results), Path(out), Path(plots)
    rel = lambda p: __import__("os").path.relpath(p, out.parent)  # noqa: E731
    parts = ["# FLARE Workbench benchmark results",
             "Generated by `python3 -m benchmarks.report` from the raw files in `benchmarks/results/` "
             "(regenerate everything with `python3 -m benchmarks.run_all`). Every table gives the command that "
             "reproduces its numbers.", SETTING]

    # ---- foundation
    fnd = read_json(results / "foundation.json", None)
    if fnd:
        rows = [[r["attack"], fmt_pct(r["benign_accuracy"]), fmt_pct(r["attack_success_rate"]),
                 f"{r['attack_seconds']:.0f} + {r['train_seconds']:.0f} = {r['total_seconds']:.0f}",
                 fmt_num(r.get("train_cpu_seconds"), 0), str(r.get("load_average_1min") or "-"),
                 f">= {100 * r['ba_target']:g} / >= {100 * r['asr_target']:g} / < 600 s",
                 "yes" if (r["meets_ba"] and r["meets_asr"] and r["meets_time"]) else
                 "**no** (" + ", ".join(k for k in ("ba", "asr", "time") if not r[f"meets_{k}"]) + ")",
                 f"`{r['command']}`"] for r in fnd["rows"]]
        parts += ["## Issue 2: attack + train on the 2-core CPU (Fashion-MNIST, 10 %, all-to-one, small-cnn, 4 epochs)",
                  md_table(["attack", "BA %", "ASR %", "attack + train wall s", "train CPU s", "load avg (start, end)",
                            "target BA / ASR / time", "met", "command"], rows),
                  "Wall time on the 2-core machine; the load average at the start and end of each training says how busy it was "
                  "(about 2 = the training itself on both cores); "
                  "the CPU seconds of the training process are the load-independent cost."]

    # ---- detection matrix
    zoo_models = (read_json(Path(zoo) / "MANIFEST.json", None) or {}).get("models") or {}
    det = read_json(results / "detect_matrix.json", None)
    if det and det.get("rows"):
        rows = [r for r in det["rows"] if not str(r["model"]).startswith("cifar")]
        crows = [r for r in det["rows"] if str(r["model"]).startswith("cifar")]
        ten = [r for r in rows if float(r["rate"]) >= 0.05 or r["attack"] == "none"]
        low = [r for r in rows if 0 < float(r["rate"]) < 0.05]
        parts += ["## Detection matrix: Fashion-MNIST, small-cnn (2-core CPU)",
                  detection_tables(ten, "Poison rate 10 % (SIG 5 %) and the clean control.", zoo_models)]
        if _plot_f1(ten, plots / "detect_f1_fmnist.png", "F1 per cell (clean row: 1 - 10 x flagged share)"):
            parts.append(f"![F1 heatmap]({rel(plots / 'detect_f1_fmnist.png')})")
        if low:
            parts += ["### Low poison rates (1 % and 0.5 %)", detection_tables(low, "Same detectors. The `-e10` / `-e20` rows are the same poisoned sets trained "
                                                       "for 10 / 20 epochs instead of 2, because at 2 epochs those backdoors had "
                                                       "not taken (see the ASR column).", zoo_models)]
            if _plot_f1(low, plots / "detect_f1_fmnist_low.png", "F1 per cell, low poison rates"):
                parts.append(f"![F1 heatmap, low rates]({rel(plots / 'detect_f1_fmnist_low.png')})")
        notes = loss_notes(rows)
        if not any(r["detector"] == "flare" for r in rows):
            notes.insert(0, "FLARE default has no results in this matrix (not run).")
        parts += ["### Where FLARE default loses or misses a target (automatic checks)",
                  "\n".join(f"- {n}" for n in notes) if notes else "- none in the cells measured: FLARE default meets "
                  "every target there and no baseline has a better F1. Cells not in the table were not run."]
        if crows:
            parts += ["## Detection matrix: CIFAR-10 (JPEG), narrow ResNet (2-core CPU)",
                      detection_tables(crows, "The CIFAR ResNet-18 layout (20 BN layers) at widths 16-32-64-128, "
                                       "trained on the CPU (epochs, BA and ASR per model in the third column: 4 epochs, and 12 for the -e12 "
                                       "entries, whose 4-epoch models had learnt their trigger only partly); the paper's column "
                                       "is its standard ResNet-18, trained to convergence on the original pixels.", zoo_models)]
            if _plot_f1(crows, plots / "detect_f1_cifar_cpu.png", "F1 per cell, CIFAR-10 narrow ResNet (CPU)"):
                parts.append(f"![F1 heatmap CIFAR CPU]({rel(plots / 'detect_f1_cifar_cpu.png')})")
            cnotes = loss_notes(crows)
            parts += ["### CIFAR-10: where FLARE default loses or misses a target (automatic checks)",
                      "\n".join(f"- {n}" for n in cnotes) if cnotes else "- none in the cells measured."]

    # ---- GPU CIFAR
    gdir = results / "gpu_cifar"
    gfiles = sorted(gdir.glob("*.json")) if gdir.is_dir() else []
    grows, gmodels, gdev = [], {}, None
    for f in gfiles:
        d = read_json(f, {})
        if "models" in d and "rows" in d:
            grows, gmodels, gdev = d["rows"], d["models"], d.get("device")
    if grows:
        grows = [r for r in grows if "attack" in r]
        mrows = [[m, v.get("epochs", "-"), fmt_pct(v.get("benign_accuracy")), fmt_pct(v.get("attack_success_rate")),
                  v.get("train_seconds", "-")] for m, v in gmodels.items()]
        parts += [f"## Detection matrix: CIFAR-10 (JPEG), ResNet-18 - from the GPU machine ({gdev})",
                  "These rows were measured on the H100 by `python3 benchmarks/gpu_cifar.py --data CIFAR --out OUT` "
                  "(results copied into `benchmarks/results/gpu_cifar/`), not on the 2-core CPU.",
                  md_table(["model", "epochs", "BA %", "ASR %", "train s"], mrows),
                  detection_tables(grows, "")]
        notes = loss_notes(grows)
        if notes:
            parts += ["Automatic checks (GPU rows):", "\n".join(f"- {n}" for n in notes)]
        if _plot_f1(grows, plots / "detect_f1_cifar_gpu.png", "F1 per cell, CIFAR-10 ResNet-18 (H100)"):
            parts.append(f"![F1 heatmap CIFAR]({rel(plots / 'detect_f1_cifar_gpu.png')})")

    # ---- purification
    pur = [read_json(p) for p in sorted((results / "purification").glob("*.json"))] if (results / "purification").is_dir() else []
    if pur:
        rows = [[r["model"].replace("fmnist-", ""), fmt_pct(r["poisoned_ba"]), fmt_pct(r["poisoned_asr"]),
                 f"{r['flare_flagged']} ({r['purified_poison_left']} poison left)", fmt_pct(r["purified_ba"]),
                 fmt_pct(r["purified_asr"]), fmt_pct(r["ceiling_ba"]), fmt_pct(r["ceiling_asr"]),
                 fmt_num(r.get("ba_gap_to_ceiling_points"), 2), r.get("retrain_epochs", "-"), "yes" if r["meets_issue3"] else "**no**",
                 f"`{r['command']}`"] for r in pur]
        clean = {("CIFAR-10 narrow ResNet" if r["model"].startswith("cifar-") else "Fashion-MNIST small-cnn"):
                 r.get("clean_model_ba") for r in pur}
        parts += ["## Purification outcome (purified and ceiling models share the poisoned model's architecture, epochs and seed)",
                  "Clean zoo models (untouched training set, 4 epochs): "
                  + ", ".join(f"{k} BA {fmt_pct(v)} %" for k, v in sorted(clean.items())) + ". Issue 3 target: "
                  "retraining on `OUT/purified` gives ASR < 2 % and BA within 1 point of a clean model; the clean "
                  "model compared is the ceiling (ground-truth clean subset, same recipe as the purified retraining).",
                  md_table(["attack", "poisoned BA", "poisoned ASR", "FLARE flagged", "purified BA", "purified ASR",
                            "ceiling BA", "ceiling ASR", "BA gap to ceiling (pts)", "retrain epochs", "issue 3 met", "command"], rows)]
        spread = [r for r in pur if len(r.get("seeds") or []) > 1]
        if spread:
            def ms(r, k):
                v = [100 * x for x in r[f"{k}_by_seed"]]
                return f"{100 * r[k + '_mean']:.2f} ± {100 * r[k + '_sd']:.2f} ({min(v):.2f}-{max(v):.2f})"

            srows = [[r["model"].replace("fmnist-", ""), len(r["seeds"]), ms(r, "purified_asr"), ms(r, "ceiling_asr"),
                      ms(r, "purified_ba"), ms(r, "ceiling_ba"), fmt_num(r.get("ba_gap_to_ceiling_points_mean"), 2),
                      "yes" if r["meets_issue3_mean"] else "**no**", f"`{r['command_seeds']}`"] for r in spread]
            parts += ["### Over several retraining seeds",
                      "The same purified set and the same ceiling subset, retrained with the zoo seed and the next "
                      "ones (only initialisation and batch order change): mean ± sd (min-max) in %, issue 3 judged "
                      "on the means.",
                      md_table(["attack", "seeds", "purified ASR", "ceiling ASR", "purified BA", "ceiling BA",
                                "BA gap (pts, mean)", "issue 3 met (means)", "command"], srows)]
        if _plot_purification(pur, plots / "purification.png"):
            parts.append(f"![purification]({rel(plots / 'purification.png')})")

    # ---- speed
    sp = read_json(results / "speed" / "speed.json", None)
    if sp:
        rows = [[r["dataset"], r["n"], r["stage"], fmt_num(r["seconds"], 2), fmt_num(r.get("cpu_seconds"), 1),
                 fmt_num(r.get("rss_before_mb"), 0),
                 fmt_num(r.get("peak_rss_mb"), 0), _speed_note(r)] for r in sp["rows"]]
        parts += ["## Speed and memory (2-core shared CPU)",
                  f"Command: `{sp.get('command')}`. Each stage runs in a fresh process; peak RSS is that process's "
                  "`ru_maxrss` (interpreter + torch + data + the stage), 'before' its resident size just before the "
                  f"stage. Load average during the run: {sp.get('load_average')}."
                  + "".join(f" The {label} rows: `{cmd}`." for label, cmd in (sp.get("cifar_commands") or {}).items())
                  + (" On the clean data the BadNets model has nothing to find, so FLARE default's subspace search "
                     "tries every prefix of the 20 columns: the worst case for the detector stage."
                     if "cifar10 (clean data)" in (sp.get("cifar_commands") or {}) else ""),
                  md_table(["dataset", "N", "stage", "wall s", "CPU s", "RSS before MB", "peak RSS MB", "note"], rows),
                  f"![time vs N]({rel(plots / 'speed_loglog.png')})"]
        pr_ = sp.get("pass_over_forward") or {}
        if not pr_:  # results written before the per-pass table (and the quick smoke run)
            parts.append("**Feature pass / plain forward pass** (same data, batch 256): "
                         + ", ".join(f"N={k}: x{v}" for k, v in (sp.get("feature_pass_over_forward") or {}).items()))
        if pr_:
            prow = [[key, label, f"x{v['wall']}", "-" if v.get("cpu") is None else f"x{v['cpu']}"]
                    for key, cell in pr_.items() for label, v in cell.items()]
            parts += ["Each pass over the data against the plain forward pass (wall time, and CPU time where measured: "
                      "CPU time is not load-free either: the worker runs two torch threads, which spin while the other jobs "
                      "hold the cores, so both grow under load - read them with the load average). `features+latent` is what "
                      "`flare purify` runs for FLARE default: the abnormality features, the penultimate features "
                      "and the logits from one forward pass.",
                      md_table(["dataset, N", "pass", "wall / forward", "CPU / forward"], prow)]
        nb = sp.get("numba") or {}
        if nb:
            parts.append("**Numba / UMAP cold vs warm start** (import + first UMAP fit on 2,000 x 8 + first HDBSCAN, "
                         "fresh process): " + "; ".join(f"{k}: {json.dumps(v)}" for k, v in nb.items()))
        pr = sp.get("profile")
        if pr:
            parts.append(f"**Profile of one full run** (`run_analysis`, FLARE default, views and export on, "
                         f"N={pr['n']}): {pr['seconds']} s; stage timings {json.dumps(pr.get('timings'))}. "
                         "Top functions: `benchmarks/results/speed/profile_full_run.txt`.")
    # ---- profile of one full run (benchmarks/profile_run.py)
    prof = sorted((Path(results) / "profile").glob("*.json")) if (Path(results) / "profile").is_dir() else []
    if prof:
        rows = []
        for f in prof:
            r = read_json(f, {})
            t = r.get("timings", {})
            rows.append([f.stem, r.get("wall_seconds"), t.get("features"), t.get("detector"), t.get("views"),
                         fmt_num((r.get("load_average") or [None])[0], 1), f"`{r.get('command')}`"])
        parts += ["## Where the time of one full run goes (cProfile of `run_analysis`, FLARE default + views)",
                  md_table(["profile", "wall s", "features s", "detector s", "views s", "load", "command"], rows),
                  "Top functions by cumulative and own time: the `.txt` file beside each JSON in "
                  "`benchmarks/results/profile/`. What changed because of it: see the notes below."]
    # ---- separability upper bound (benchmarks/separability.py)
    sep = read_json(Path(results) / "separability.json", None)
    if sep:
        rows = [[r["model"], r["n_subset"], fmt_num(r["auroc_layers"], 4), fmt_num(r["auroc_channels"], 4),
                 fmt_num(r["auroc_pooled_target_class"], 4), f"`{r['command']}`"] for r in sep["rows"]]
        parts += ["## Is the poison in the representation at all? (supervised upper bound)",
                  "Held-out (3-fold) logistic-regression AUROC for 'poisoned' from each representation; the "
                  "detectors are unsupervised, this only says whether the signal exists.",
                  md_table(["model", "samples", "FLARE per-layer columns", "per-channel view",
                            "penultimate, target class", "command"], rows)]
    cal = read_json(Path(results) / "latent_calibration.json", None)
    if cal and cal.get("summary"):
        rows = [[k, kind, v["count"], fmt_num(v["min"], 2), fmt_num(v["median"], 2), fmt_num(v["max"], 2)]
                for k, per in cal["summary"].items() for kind, v in per.items()]
        alone: dict = {}
        for r in cal.get("latent_stage_alone", []):
            alone.setdefault(r["model"], {})[r["max_clusters"]] = r
        arows = [[m] + [f"{fmt_pct(v[k]['tpr'])} / {v[k]['fpr_percent']:.3f}" if k in v and v[k]["tpr"] is not None
                        else (f"{v[k]['flagged']} flagged" if k in v else "-") for k in cal.get("settings", [])]
                 for m, v in alone.items()]
        parts += ["## Latent stage calibration (held-out d' of every per-class split it tests)",
                  f"Command: `{cal.get('command')}`. Every split the latent stage (`flare_core/detectors/latent.py`) "
                  "tests, on every class of every Fashion-MNIST model, for the plain 2-means split "
                  "(`latent_max_clusters=2`) and with the candidate splits (6, the default: when the 2-means split "
                  "falls short of 6.5, every k-means cluster, k = 3..6, against the rest of its class). A split is "
                  "*genuine-only* when both sides hold < 2 % poison, *poison-vs-genuine* when one side holds >= 90 % "
                  "and the other <= 10 %. The threshold 6.5 sits above every first split of a genuine-only class "
                  "(the bag class, two real kinds of bag, reaches 6.07 and is balanced, so the loss test also guards "
                  "it; unbalanced ones stay <= 5.12 with either setting).",
                  md_table(["max_clusters", "kind of split", "count", "min d'", "median d'", "max d'"], rows)]
        if arows:
            parts += ["What the latent stage alone flags (TPR % / FPR %; the clean control: samples flagged), "
                      "by setting:",
                      md_table(["model"] + [f"max_clusters={k}" for k in cal.get("settings", [])], arows)]
    # ---- the tail-group stage's calibration (benchmarks/tail_calibration.py)
    tc = read_json(results / "tail_calibration.json", None)
    if tc and tc.get("all"):
        def _closest(rs: list, keys: tuple) -> str:
            return "; ".join(f"{r['model']} class {r['class']}: {r['size']} samples, "
                             + ", ".join(f"{k} {r[k]:.3g}" for k in keys if k in r) for r in rs[:2]) or "-"
        rows = []
        for key, what in [("chosen_on", "Fashion-MNIST, island bars chosen on"), ("checked_after", "Fashion-MNIST, checked after"),
                          ("cifar", "CIFAR-10 narrow ResNet (held out, ungated)")]:
            sm = tc.get(key) or {}
            if not sm.get("candidates"):
                continue
            by_rule = sm.get("poisoned_kept_by_rule") or {}
            rows.append([what, sm["candidates"], sm["genuine"], sm["poisoned"], len(sm["genuine_kept"]),
                         f"{sm['poisoned_kept']} ({by_rule.get('island', '-')} / {by_rule.get('relabelled', '-')})",
                         f"{sm['poison_in_kept']} / {sm['genuine_in_kept']}",
                         _closest(sm.get("genuine_closest") or [], ("purity", "island", "atypicality")),
                         _closest(sm.get("genuine_closest_relabelled") or [], ("other_share", "other_base"))])
        parts += ["## Tail-group stage calibration (every candidate cluster of every class)",
                  f"Command: `{tc.get('command')}`. The stage (`flare_core/detectors/tail_groups.py`) clusters each "
                  "class's penultimate features (HDBSCAN, leaf clusters of >= 15) and keeps a cluster as an *island* "
                  "(purity >= 0.85, island >= 1.75, median atypicality >= 1.75) or as *relabelled* (the fewest "
                  "classes the model rates next after the label for 80 % of its members are that of under 2 % of "
                  "the rest of the class). A candidate is genuine when under half of it is poisoned. In a run the "
                  "stage is gated (it runs only when the other stages flagged under 1 %); this table is ungated.",
                  md_table(["models", "candidates", "genuine", "poisoned", "genuine kept", "poisoned kept (island / relabelled)",
                            "samples in kept: poisoned / genuine", "genuine nearest the island bars",
                            "genuine nearest the relabelled bars"], rows)]
        mrows = []
        for key, what in [("all", "Fashion-MNIST (the bars were set on these)"),
                          ("cifar", "CIFAR-10 narrow ResNet (held out, ungated)")]:
            m = (tc.get(key) or {}).get("misfit") or {}
            if not m.get("candidates"):
                continue
            mrows.append([what, m["candidates"], m["genuine"], m["poisoned"], len(m["genuine_kept"]),
                          m["poisoned_kept"], f"{m['poison_in_kept']} / {m['genuine_in_kept']}",
                          _closest(m.get("genuine_closest") or [], ("purity", "island", "other_base")),
                          _closest(m.get("genuine_tightest") or [], ("purity", "island", "other_base"))])
        if mrows:
            parts += ["*Misfit groups* (step 3b: the samples of a class the model classifies as one other class, at "
                      "least 10; kept at purity >= 0.7, island >= 1.25 and a base under 5 %, i.e. that class is the "
                      "strongest other class of under 5 % of the rest of the class):",
                      md_table(["models", "candidates", "genuine", "poisoned", "genuine kept", "poisoned kept",
                                "samples in kept: poisoned / genuine", "genuine nearest the bars (base under 5 %)",
                                "genuine tightest (any base)"], mrows)]
    # ---- the island rule's one-feature bar and the stage's floored scale (benchmarks/one_feature_check.py)
    for name, what in [("one_feature_check_floor0.json", "the stage before session 19 (plain robust z-scores)"),
                       ("one_feature_check.json", "the stage as it runs now (column scales floored at 0.2 SD, "
                                                  "session 19)")]:
        ofc = read_json(results / name, None)
        if not (ofc and ofc.get("summary")):
            continue
        orows = []
        for key, label in [("fmnist", "Fashion-MNIST small CNN"), ("cifar", "CIFAR-10 narrow ResNet")]:
            sm = ofc["summary"].get(key) or {}
            if not sm.get("models"):
                continue
            orows.append([label, sm["models"], sm["candidates"], sm["island_like_poisoned"],
                          fmt_num(sm["island_like_poisoned_max_share"]), sm["island_like_genuine"],
                          fmt_num(sm["island_like_genuine_min_share"]),
                          f"{sm['flagged_without_bar']} ({sm['poisoned_without_bar']}) -> "
                          f"{sm['flagged_with_bar']} ({sm['poisoned_with_bar']})",
                          ", ".join(sm["changed_models"]) or "none"])
        parts += [f"*The island rule's one-feature bar*, {what}: an island is refused when over 90 % of its "
                  "deviation from its class (mean squared robust z-score per penultimate feature) lies in one "
                  f"feature. Command: `{ofc.get('command')}` (the stage alone, ungated, on the cached models, with "
                  "the bar and without it):",
                  md_table(["models", "count", "candidates", "poisoned passing the other island bars",
                            "their largest share", "genuine passing them", "their smallest share",
                            "stage flags without -> with the bar (poisoned)", "models whose flags change"], orows)]
    af = read_json(results / "atypicality_floor.json", None)
    fm = [r["min_mad_to_sd"] for r in (af or {}).get("rows", []) if r["model"].startswith("fmnist")]
    if fm:
        parts += [f"A floor of 0.2 SD acts only on class columns whose 1.4826 MAD / SD is under 0.2. On the {len(fm)} "
                  f"Fashion-MNIST models of `{af['command']}` the smallest ratio is {min(fm):.3f}, so the floored "
                  "stage is the plain one there, sample for sample (their caches were not rebuilt for the floored "
                  "run above)."]
    # ---- Spectral Signatures' direction in FLARE's ranking of unflagged samples (benchmarks/ranking_check.py)
    rc = read_json(results / "ranking_check.json", None)
    if rc and rc.get("rows"):
        def _modes(r: dict) -> str:
            held = [(c, e) for c, e in (r.get("minority_modes") or {}).items() if e.get("holds")]
            return "; ".join(f"class {c}: {e['n_members']}"
                             + (f" ({e['members_poisoned']} poisoned" if "members_poisoned" in e else " (")
                             + f"; {e['n_poisoned']} in class), w {e['weight']:.3f}, gain {e['bic_gain']:.2f}"
                             + (f", fitted {e['fitted_better']:.3g}x" if "fitted_better" in e else "")
                             + (f", moves {100 * e['moved_in']:.1f} % in (control {100 * e['moved_in_control']:.1f} %)"
                                if "moved_in" in e else "")
                             for c, e in held) or "none"

        rrows = [[r["model"], r["n_poisoned"]] + [fmt_num(r.get(f"auroc_{k}"), 3)
                                                   for k in ("atypicality", "spectral", "mean_rank", "minority_tier")]
                 + [_modes(r)] for r in rc["rows"]]
        genuine = [e for r in rc["rows"] for e in (r.get("minority_modes") or {}).values()
                   if e.get("n_poisoned") == 0 and "weight" in e]
        parts += ["## Spectral Signatures' direction in FLARE's ranking of the samples it does not flag",
                  f"Command: `{rc.get('command')}`. AUROC of the poison over all samples (as if nothing were flagged) "
                  "under the class atypicality alone (FLARE default's ranking of unflagged samples up to session 19), "
                  "under Spectral Signatures' score, under the mean of their ranks (session 19's study, not adopted), "
                  "and under FLARE default's ranking since session 20 (`minority_tier`: the atypicality, with the members "
                  "of a class's minority mode along its top singular direction first; `flare_core/detectors/"
                  "minority_mode.py`). Last column: the classes holding a minority mode (members with posterior > 0.5, "
                  "how many of them are poisoned, the poisoned samples of that class, the mode's weight w and BIC gain "
                  "per sample, and, where the cache has the logits, how many times better the model fits the members "
                  "than the rest of the class: the stage flags a mode at 100x, when the other stages flagged under 1 % "
                  "and nothing in that class). The rule was fixed "
                  "on the 14 models cached at the start of session 20; the rest are held out (benchmarks/NOTES.md)."
                  + (f" Classes without poison: {sum(e['holds'] for e in genuine)} of {len(genuine)} hold a minority mode."
                     if genuine else "") + _trigger_summary(rc["rows"]),
                  md_table(["model", "poisoned", "atypicality", "spectral (SS)", "mean of ranks",
                            "FLARE default (minority tier)", "minority modes"], rrows)]
    # ---- where FLARE default's detector time goes, per model (phase seconds of the detection matrix runs)
    if det and det.get("rows"):
        phases = ("umap", "hdbscan", "latent", "tail_groups", "join", "confirm")
        prow = []
        for r in det["rows"]:
            ph = r.get("phase_seconds") or {}
            if r["detector"] != "flare" or not ph:
                continue
            rest = ph.get("total", r["seconds"]) - sum(ph.get(k, 0) for k in phases)
            prow.append([r["model"], r["n"], fmt_num(ph.get("total", r["seconds"]), 1), ph.get("prefixes_tried", "-")]
                        + [fmt_num(ph[k], 1) if k in ph else "-" for k in phases]
                        + [fmt_num(rest, 1) if rest >= 0 else "- (workers)"])
        if prow:
            parts += ["## Where FLARE default's detector time goes, per model",
                      "Seconds of each stage of `FlareDetector.fit` in the detection-matrix runs above (same commands), "
                      "on the shared 2-core CPU; `-` = the stage did not run (the tail-group stage runs only when the "
                      "other stages flagged under 1 %). The feature pass is not included (see the speed section). Rows run "
                      "since session 25 may have tried prefixes in worker processes (`n_jobs='auto'`, next section): "
                      "their UMAP and HDBSCAN seconds are summed over the workers and can exceed the total (the last "
                      "column then reads '- (workers)').",
                      md_table(["model", "N", "total s", "prefixes tried"] + [f"{k} s" for k in phases] + ["other s"], prow)]
    # ---- the subspace search in worker processes (benchmarks/search_parallel.py)
    sp_ = read_json(results / "search_parallel.json", None)
    if sp_ and sp_.get("models"):
        rows = [[m, e["n"], e["columns"], k, r["workers"], r["tries"], fmt_num(r["wall_s"], 1), fmt_num(r["speedup"], 2),
                 {None: "(reference)", True: "yes", False: "**no**"}[r["identical_to_one_process"]],
                 "-" if r.get("mb_sent") is None else f"{r['rows_sent']:,} / {fmt_num(r['mb_sent'], 1)}",
                 f"`{e['command']}`"]
                for m, e in sp_["models"].items() for k, r in e["runs"].items()]
        parts += ["## The subspace search in worker processes (`n_jobs`)",
                  "FLARE default's layer stage alone (UMAP + HDBSCAN over the column prefixes) on a cached abnormality "
                  "matrix, in one process and with worker processes (`flare_core/detectors/execution.py`: the first "
                  "prefix in the process, the rest side by side, read back in order). *Identical*: flags, scores, "
                  "clusters, embedding, chosen subspace and the record of every try equal the one-process run's. "
                  "`auto` (what the CLI and the dashboard use) takes workers only where the first try's time says "
                  "they save at least 30 s: not on Fashion-MNIST's 4 prefixes. 2-core CPU, nothing else running. The "
                  "same one-process search has taken 287-376 s on this machine (sessions 25-27), so read the "
                  "speed-up as 1.4-1.8x. Since session 27 the workers are loky's reusable executor (see NOTES).",
                  md_table(["model", "N", "columns", "n_jobs", "workers", "tries", "wall s", "speed-up", "identical",
                            "rows a try / MB sent in all", "command"], rows)]
        if sp_.get("payload"):
            pl = sp_["payload"]
            parts += ["What one worker try is sent (its pickle, the second prefix of a synthetic 20-column matrix with "
                      "10 classes): since session 26 only the rows the try clusters, with their classes and positions "
                      "(FLARE default clusters at most `sample_size` = 20,000, stratified by class; the chosen "
                      "prefix's other samples are placed in the calling process), so it does not grow with N; "
                      "session 25's search sent the whole prefix with every label and sample index. "
                      f"Command: `{pl['command']}`.",
                      md_table(["N", "rows sent", "MB sent", "MB sent before (session 25)"],
                               [[r["n"], r["clustered_rows"], fmt_num(r["mb_sent"], 1), fmt_num(r["mb_before"], 1)]
                                for r in pl["rows"]])]
    # ---- the shortcut stage's calibration (benchmarks/shortcut_probe.py)
    sp = read_json(results / "shortcut_probe.json", None)
    if sp:
        def _q(r: dict, key: str) -> str:
            q = r.get(key) or {}
            return " / ".join(fmt_num(q.get(k), 2) for k in ("0.5", "0.99", "0.999")) if q else "-"

        srows = sorted(sp.values(), key=lambda r: (not r["found"], r["model"]))
        rows = [[r["model"], fmt_pct(r.get("asr")),
                 f"{fmt_pct(r['strongest']['smooth']['moved_in'], 1)} (class {r['strongest']['smooth']['class']})",
                 f"{fmt_pct(r['strongest']['sharpen']['moved_in'], 1)} (class {r['strongest']['sharpen']['class']})",
                 "yes" if r["found"] else "no",
                 "-" if not r["found"] else f"{r['flagged']} ({r['flagged_poisoned']} poisoned)",
                 "-" if r.get("tpr") is None else f"{fmt_pct(r['tpr'])} / {fmt_pct(r['fpr'], 3)}",
                 _q(r, "drop_poisoned_q"), _q(r, "drop_genuine_q"),
                 "-" if not r.get("timing") else
                 f"{r['timing']['stage_seconds_reusing_logits']:.1f} s = {r['timing']['reusing_logits_over_plain_pass']:.2f}x"]
                for r in srows]
        parts += ["## FLARE default's shortcut stage: does the model obey smoothing or sharpening as a trigger?",
                  "Command: `python3 -m benchmarks.shortcut_probe --all [--cifar ROOT]`. Probe: 200 images of each "
                  "class, classified before and after the transform; the share of the images of other classes it "
                  "moves into one class (the strongest class in brackets). A shortcut is a share of at least 50 %. "
                  "Where one is found, the stage alone (without FLARE's other stages) flags the samples labelled "
                  "with that class whose label log-probability falls at least 3 nats under the opposite transform, "
                  "to another class; TPR / FPR % of that alone, and the drop (nats) of the poisoned and genuine "
                  "members of the class at the median / 99th / 99.9th percentile. The bars (50 %, 3 nats, the "
                  "transforms' strengths) were chosen on the Fashion-MNIST WaNet models of this table, so those are "
                  "calibration models; the CIFAR-10 ones are held out.",
                  md_table(["model", "ASR %", "smoothing moves in", "sharpening moves in", "shortcut",
                            "stage flags", "stage alone TPR / FPR %", "drop poisoned q50 / 99 / 99.9",
                            "drop genuine q50 / 99 / 99.9", "cost (`--timing`)"], rows),
                  "Cost: the stage's seconds in the pipeline (the probe, and the counter test reusing the feature "
                  "pass's logits) and their ratio to one plain forward pass over the whole dataset, one thread, "
                  "measured with `--timing` on a quiet machine (load average in `shortcut_probe.json`)."]
    # ---- the samples the model fits worst (benchmarks/loss_ranking.py)
    lr = read_json(results / "loss_ranking.json", None)
    if lr and lr.get("rows"):
        lrows = sorted(lr["rows"], key=lambda r: -r["loss_auroc"])
        rows = [[r["model"], fmt_pct(r.get("attack_success_rate")), fmt_num(r["loss_auroc"]), fmt_num(r.get("flare_auroc")),
                 fmt_num(r["median_loss_poisoned"]), fmt_num(r["median_loss_genuine"]),
                 f"{fmt_pct(r['top_tpr'])} / {fmt_pct(r['top_fpr'])}"] for r in lrows]
        parts += ["## The samples the model fits worst: where a backdoor that did not take leaves its poison",
                  f"Command: `{lr.get('command')}`. Every sample ranked by the loss of its label (the `loss` column of a "
                  "run's manifest; the Inspect page's *Least fitted by the model*). FLARE reads what the model learnt; "
                  "where the model did not learn the trigger (ASR near a clean model's), the poison is mislabelled data "
                  "to it, not fitted, and this ranking finds it. Where the backdoor took, the poison is fitted better "
                  "than the genuine samples (AUROC at or under 0.5). Top 1 %: TPR / FPR in % if the 1 % highest-loss "
                  "samples were flagged (no threshold learnt from the ground truth). A reference for the analyst's "
                  "list, not a detector: it would flag about 1 % of any data set, poisoned or not.",
                  md_table(["model", "ASR %", "loss AUROC", "FLARE default AUROC", "median loss, poisoned",
                            "median loss, genuine", "top 1 %: TPR / FPR %"], rows)]
    # ---- a clean dataset pooled from two sources (benchmarks/second_source.py)
    ss_ = read_json(results / "second_source.json", None)
    if ss_ and ss_.get("rows"):
        def _flags(r: dict) -> str:
            per = r.get("flagged_per_class") or {}
            return (f"{r['n_flagged']:,} ({r['flagged_second_source']:,} second-source; "
                    f"{len(per)} class{'es' if len(per) != 1 else ''})") if r["n_flagged"] else "0"

        def _tvs(r: dict) -> str:
            wide = r.get("dataset_wide_split") or {}
            return ", ".join(f"{w['next_class_tv']:.2f}" for _, w in sorted(wide.items(), key=lambda kv: int(kv[0]))) or "-"

        rows = [[name, f"{e['second_source']:,} of {e['n']:,}", _flags(e["without_wide_rule"]), _flags(e["default"]),
                 _tvs(e["default"]), f"`{e['default']['command']}`"]
                for name, e in ss_["rows"].items()]
        parts += ["## A clean dataset pooled from two sources: FLARE default's dataset-wide rule",
                  f"Command: `{ss_['command']}`. A *clean* Fashion-MNIST (every label right, no trigger) in which a share "
                  "of every class's images comes from a second source: `invert` = 255 - x (a white background), `dim` "
                  "= a second scanner (contrast x0.6, a grey floor of 60, noise sd 8). A small CNN trained on it by "
                  "`flare train` (4 epochs, seed 0); `flare purify` with FLARE default, and with its dataset-wide rule "
                  "off (`--param latent_wide_share=0`: the behaviour before session 27). Every flag is a false alarm. "
                  "The rule (`flare_core/detectors/latent.py`, `widely_flagged_classes`): two or more classes with "
                  "flagged parts of >= 5 % of the class, fitted less than 10x better than the rest, whose next class "
                  "after the label is distributed like the rest's (median total variation <= 0.2) are a second source, "
                  "not poison; last column: that distance per class of the split.",
                  md_table(["row", "second-source images", "flagged, rule off", "flagged, FLARE default",
                            "next-class TV of the split's classes", "command (default)"], rows)]
        pois = (ss_.get("poisoned") or {}).get("models") or {}
        if pois:
            many = {m: e for m, e in pois.items() if len(e["classes"]) >= 2}
            one = {m: e for m, e in pois.items() if len(e["classes"]) == 1}
            every = [v for e in many.values() for v in e["classes"].values()]
            singles = [v for e in one.values() for v in e["classes"].values()]
            text = (f"The same distance between the poisoned and the genuine samples of a class, on the cached "
                    f"benchmark models (ground truth; `{ss_['poisoned']['command']}`): ")
            if many:
                text += (f"poison in two or more classes (all-to-all, {len(many)} models): median over a model's "
                         f"classes {min(e['median'] for e in many.values()):.2f}-"
                         f"{max(e['median'] for e in many.values()):.2f}, class by class {min(every):.2f}-{max(every):.2f}")
            if one:
                text += (f"; poison in one class ({len(one)} models, never a dataset-wide split): "
                         f"{min(singles):.2f}-{max(singles):.2f}")
            parts.append(text + ".")
    # ---- clean but unusual data sets (benchmarks/clean_unusual.py)
    cu = read_json(results / "clean_unusual.json", None)
    if cu and cu.get("rows"):
        what = {"label-noise": "labels moved to another class", "label-flip": "labels moved to a look-alike class",
                "duplicates": "near-duplicates and their originals", "longtail": "images in classes under 500"}

        def _cu_flags(e: dict, d: Optional[dict]) -> str:
            if not d:
                return "-"
            if "tpr" in d:  # a poisoned row: the marked images are the poison
                return (f"TPR {100 * d['tpr']:.1f} %; {d['flagged_noise'] + d['flagged_other']:,} genuine flagged "
                        f"({d['flagged_noise']:,} mislabelled)")
            per = d.get("flagged_per_class") or {}
            return (f"{d['n_flagged']:,} ({100 * d['n_flagged'] / e['n']:.2f} %; {d['flagged_marked']:,} marked; "
                    f"{len(per)} class{'es' if len(per) != 1 else ''})") if d["n_flagged"] else "0"

        rows = []
        for name, e in cu["rows"].items():
            kind = name.rsplit("-", 1)[0].removeprefix("cifar-").removeprefix("digits-")
            marked = (f"{e['marked']:,} poisoned (BadNets 1 %; BA {100 * e['benign_accuracy']:.1f} %, ASR "
                      f"{100 * e['attack_success_rate']:.1f} %) + {e['noise']:,} relabelled genuine"
                      if name.startswith("noisy-") else f"{e['marked']:,} {what.get(kind, '')}")
            rows.append([name, f"{e['n']:,}", marked,
                         "-" if e.get("train_accuracy") is None else f"{100 * e['train_accuracy']:.1f}",
                         _cu_flags(e, e.get("without_label_noise_rule")), _cu_flags(e, e["default"]),
                         f"`{e['default']['command']}`"])
        parts += ["## Clean but unusual data sets: label noise, near-duplicates, a long tail",
                  f"Command: `{cu['command']}`. A *clean* Fashion-MNIST (no trigger) with one property of scraped data "
                  "the clean control lacks: symmetric label noise (a share of the labels moved to another class), asymmetric "
                  "label noise (a share of each of three pairs of look-alike classes labelled as the other one), "
                  "near-duplicates (a share of the images replaced by ten jittered copies each of a few others, with "
                  "their original's label), or a long tail (class sizes falling geometrically from 6,000 to 60); and "
                  "the converse, a poisoned zoo training set with label noise added to its genuine samples "
                  "(`noisy-...`). A small CNN trained on it by `flare train` (4 epochs, seed 0; the `cifar-` rows: "
                  "CIFAR-10 with the same label noise and the CIFAR clean control's narrow ResNet, 4 epochs; the `digits-` "
                  "rows: scikit-learn's digits, 1,437 images, the same small CNN and recipe), then "
                  "`flare purify` "
                  "(FLARE default; for the label-noise rows also with the label-noise rule off, "
                  "`--param label_noise_classes=0`). On the clean rows every flag is a false alarm; *marked* counts "
                  "the flags on the images that carry the quirk.",
                  md_table(["row", "images", "marked", "train accuracy %", "flagged, label-noise rule off",
                            "flagged, FLARE default", "command (default)"], rows)]
        if cu.get("note"):
            parts.append(cu["note"])
    # ---- the latent cross-check, on and off (benchmarks/confirm_study.py)
    cs = read_json(results / "confirm_study.json", None)
    if cs and cs.get("rows"):
        def _g(x) -> str:
            return "-" if x is None else f"{x:.3g}"

        def _r(x: dict) -> str:
            return (f"{x['flagged']} flagged" if x.get("tpr") is None
                    else f"{100 * x['tpr']:.1f} / {x['fpr_percent']:.3f}")

        rows = []
        for r in cs["rows"]:
            groups = "; ".join(
                f"{g['n']} samples, {100 * g['poison_share']:.0f} % poison, d' {g['median_dprime']}, "
                f"fitted {_g(g.get('loss_ratio'))}x better, "
                f"{('kept by ' + g['kept_by']) if g['kept'] and g.get('kept_by') else ('kept' if g['kept'] else 'refused')}"
                for g in r["groups_checked"]) or "-"
            sep = r.get("separation_only")
            rows.append([r["model"], _r(r["default"]), _r(sep) if sep else "-", _r(r["cross_check_off"]), groups])
        from flare_core.detectors.latent import DEFAULT_CONFIRM_LOSS_RATIO as now

        # rows written before the default moved from 10 to 100 do not record it; a row's default column
        # is today's unless it kept a group on loss at a ratio under today's bar
        stale = [r["model"] for r in cs["rows"] if r.get("latent_confirm_loss", 10.0) != now and any(
            g.get("kept_by") == "loss" and (g.get("loss_ratio") or 0) < now for g in r["groups_checked"])]
        older = [r["model"] for r in cs["rows"] if r.get("latent_confirm_loss", 10.0) != now]
        parts += ["## FLARE default's latent cross-check: by separation, by loss, off",
                  f"Command: `{cs.get('command')}`. FLARE default keeps a group its per-layer stage found when it is "
                  "a population of its own in its classes' penultimate features (median held-out d' >= 4.5) or "
                  f"when the model fits its main class part {now:g}x better than the rest of that class "
                  "(`latent_confirm_loss`; a group too small for a held-out d' needs that signature). "
                  "`latent_confirm_loss=0` is the separation test alone (the default until this study; small "
                  "groups kept unchecked), `latent_confirm=0` keeps every group. TPR / FPR % (clean models: "
                  "samples flagged), and every group tested: its d', how much better the model fits its largest "
                  "class part than the rest of that class, and the rule that kept it."
                  + (f" {len(older)} of these rows were run when the bar was 10x; "
                     + (f"in {', '.join(stale)} a group was kept on loss under {now:g}x." if stale else
                        f"none of them kept a group on loss under {now:g}x.") if older else "")
                  + " The three columns compare the cross-check's settings with every other stage as it was when "
                    "the study ran (before the tail-group stage and the join step's linear rule on most rows): "
                    "FLARE default's numbers today are the detection matrix's above.",
                  md_table(["model", "FLARE default", "separation only", "cross-check off", "groups tested"], rows)]

    # ---- dashboard timings (benchmarks/dashboard_timings.py)
    dash = read_json(BENCH / "dashboard_timings.json", None)
    if dash:
        b = dash.get("browser", {})
        cs = b.get("class_switch_6000_points_in_browser", {})
        st_ = b.get("app_start_to_usable_page_s", {})
        demo = b.get("app_start_on_the_builtin_demo_s", {})
        zoom = b.get("global_view_zoom_redraw_ms", {})
        rows = [["class switch, 6,000 points (median / max ms)", f"{cs.get('new_class_drawn_median_ms')} / "
                 f"{cs.get('new_class_drawn_max_ms')}", "< 1,000 ms"],
                ["global view 60,000 points: first render / zoom redraw (ms)",
                 f"{b.get('global_view_60000_points_first_render_ms')} / {zoom.get('median_ms')}", "interactive"],
                ["warm start to a usable page, run reopened (s)", st_.get("warm_median"), "< 5 s"],
                ["start with nothing to reopen: Load page shown / demo loaded (s)",
                 f"{demo.get('load_page_shown_warm_median')} / {demo.get('demo_loaded_warm_median')}", "< 5 s"],
                ["Explore first render (s)", b.get("explore_first_render_s"), "-"]]
        parts += ["## Dashboard timings (headless Chromium, software WebGL, 2-core CPU)",
                  f"Command: `python3 benchmarks/dashboard_timings.py`; raw: `benchmarks/dashboard_timings.json` "
                  f"(machine: {json.dumps(dash.get('machine', {}))}).",
                  md_table(["what", "measured", "target"], rows)]
    # ---- dataset uploads (benchmarks/upload_timings.py)
    up = read_json(Path(results) / "upload_timings.json", None)
    if up:
        rows = [[c["mode"], f"{c['n_files']:,}", c.get("upload_mb"), c.get("upload_s", "-"), c.get("to_loaded_s", "-"),
                 c.get("outcome")] for c in up["cases"]]
        parts += ["## Dataset uploads on the Load page (headless Chromium, 2-core CPU)",
                  f"Command: `{up.get('command')}`; raw: `benchmarks/results/upload_timings.json` "
                  f"({up.get('machine')}; {up.get('note') or 'no note'}). A folder is sent one request per file, a "
                  "zip in one; folders of more than 500 files are refused (`flare_core.server_paths.MAX_FOLDER_FILES`) "
                  "because past that files went missing on the way.",
                  md_table(["upload", "files", "MB", "upload done (s)", "page shows the data (s)", "outcome"], rows)]
        if up.get("archives"):
            parts += ["Dataset archives through the same upload function, in-process (no browser): stored and "
                      "unpacked (`flare_core.server_paths.open_dataset_upload`), then loaded.",
                      md_table(["archive", "MB", "unpack (s)", "load (s)", "images", "command"],
                               [[a["file"], a["upload_mb"], a["unpack_s"], a["load_s"], f"{a['samples_loaded']:,}",
                                 f"`{a['command']}`"] for a in up["archives"]])]
    # ---- loading image-file datasets (benchmarks/image_loading.py)
    il = read_json(Path(results) / "image_loading.json", None)
    if il and il.get("rows"):
        def _over(r: dict, key: str):
            return round(r[key] - r["baseline_rss_anon_mb"], 1) if key in r else "-"

        rows = [[r["dataset"], r.get("label") or "-", f"`{r['commit']}`", r.get("memory_limit_mb") or "-",
                 r.get("outcome", "ok"), "-" if "images_on_disk" not in r else
                 ("the .npz itself (memory-mapped)" if r.get("images_file") else
                  "disk (memory-mapped)" if r["images_on_disk"] else "RAM"), r.get("load_s", "-"),
                 _over(r, "load_peak_rssanon_mb"), r.get("load_peak_rssfile_mb", "-"), r.get("features_s", "-"),
                 _over(r, "features_peak_rssanon_mb"), r.get("vm_hwm_mb", "-"), r.get("group_peak_mb") or "-",
                 f"`{r['command']}`"] for r in il["rows"] if "outputs" not in r]
        parts += ["## Loading image-file and .npz datasets: memory and time (2-core CPU)",
                  "Each row is one fresh process (`benchmarks/image_loading.py`), sampling its own `/proc/self/status` "
                  "every 10 ms. *Anonymous* memory (RssAnon) is what only RAM or swap can hold; *file-backed* "
                  "(RssFile: the interpreter's libraries and, when the images are memory-mapped, the image file's "
                  "pages) the kernel can drop and read again. The anonymous columns are the peak above the process's "
                  "own start (interpreter, torch, flare_core: `baseline_rss_anon_mb` in the raw rows). `features` is "
                  "the pass `flare purify` runs (abnormality features, penultimate features and logits in one forward "
                  "pass; an untrained narrow ResNet, batch 256). A memory limit is a cgroup the process runs in (RAM "
                  "and page cache together, as the kernel counts them; its peak in the last column). The synthetic "
                  "sets: smooth random RGB JPEGs in 10 classes (100,000 of 64x64: 1.2 GB of pixels; 10,000 of "
                  "224x224: 1.4 GB); the synthetic `.npz` holds 100,000 64x64 RGB images (1.2 GB; blocky random pixels with "
                  "fine noise, so zlib packs them to 70 % as it packs photos), saved by `numpy.savez` (uncompressed), "
                  "`numpy.savez_compressed`, or uncompressed channel-first (N, 3, H, W). Without `--image-ram-mb` the "
                  "limit on images in memory is the default (2 GB; since `bc22386` at most a quarter of the memory "
                  "the process may take, so 180 MB inside a 1 GB group). The *before* rows ran this script in a git "
                  "worktree of the commit shown. Raw: "
                  "`benchmarks/results/image_loading.json`.",
                  md_table(["dataset", "code", "commit", "memory limit MB", "outcome", "images held in", "load s",
                            "load: peak anonymous MB over start", "load: peak file-backed MB", "features s",
                            "features: peak anonymous MB over start", "VmHWM MB", "group peak MB", "command"], rows)]

        def _held(r: dict) -> str:
            return "; ".join(f"{k} {v['mb']:,} MB in {'a temporary file' if v['on_disk'] else 'RAM'}"
                             for k, v in r["outputs"].items() if v["mb"] >= 1) or "-"

        rows = [[r["dataset"], r.get("arch", "narrow-resnet") + (" + per-channel" if r.get("channels") else ""),
                 r.get("label") or "-", f"`{r['commit']}`", r.get("image_ram_mb") if r.get("image_ram_mb") is not None
                 else "default", r.get("memory_limit_mb") or "-", r.get("outcome", "ok"),
                 _held(r) if "outputs" in r else "-", r.get("features_s", "-"), _over(r, "features_peak_rssanon_mb"),
                 r.get("features_peak_rssfile_mb", "-"), r.get("group_peak_mb") or "-", f"`{r['command']}`"]
                for r in il["rows"] if "outputs" in r or r.get("arch", "narrow-resnet") != "narrow-resnet"]
        if rows:
            parts += ["### The feature pass's own outputs",
                      "The same measurement of the `features` stage, for the arrays the pass itself returns: the "
                      "penultimate features and logits (and, with `--channels`, the per-channel view). Until `8833242` "
                      "they were gathered as a list of batches and joined at the end; since then each is one array "
                      "written a batch at a time, in RAM or, past the limit on one array in memory "
                      "(`FLARE_IMAGE_RAM_MB`, default as above), in a memory-mapped temporary file. `wide-head` is "
                      "a memory probe defined in the script: two small convolutions, then 512 penultimate features as "
                      "ResNet-18 has, so 500,000 samples return the 977 MB of penultimate features ResNet-18 would, in "
                      "seconds of compute instead of hours on this CPU. Rows whose label says another process ran beside them have memory "
                      "columns that hold, and times that do not; the *timing run* rows ran alone.",
                      md_table(["dataset", "model", "code", "commit", "FLARE_IMAGE_RAM_MB", "memory limit MB",
                                "outcome", "outputs held", "features s", "features: peak anonymous MB over start",
                                "features: peak file-backed MB", "group peak MB", "command"], rows)]
    # ---- the detectors' memory on float32 features (benchmarks/detector_memory.py)
    dm = read_json(Path(results) / "detector_memory.json", None)
    if dm and dm.get("rows"):
        rows = [[r["case"], f"{r['n']:,} x {r['d']}", r["input_mb"], r.get("label") or "-", f"`{r['commit']}`",
                 r["seconds"], r["peak_over_start_mb"], f"`{r['command']}`"] for r in dm["rows"] if r["case"] != "views"]
        parts += ["## The detectors' memory on the penultimate features (2-core CPU)",
                  "Each row is one fresh process (`benchmarks/detector_memory.py`) that opens synthetic float32 "
                  "features memory-mapped, as the feature pass returns them past the limit on one array in memory, "
                  "runs one detector (or one of FLARE default's readers of the features: `atypicality`, `minority`, "
                  "`latent`; or `channels`, the preparation of its opt-in per-channel stage, with the features "
                  "taken as a 4,800-column per-channel view, standardised whole before `e8b22aa` and 64 columns "
                  "at a time since) and samples its own RssAnon every 10 ms; the peak is given above the process's start "
                  "(which is before the detector's imports: scikit-learn, hdbscan and the rest are in it, the same "
                  "in every row). Until `d954167` each converted the whole matrix to a float64 copy first; since "
                  "then they convert one class at a time. The *before* rows ran this script in a git worktree of "
                  "the commit shown. Raw: `benchmarks/results/detector_memory.json`.",
                  md_table(["detector", "features", "input MB", "code", "commit", "seconds",
                            "peak anonymous MB over start", "command"], rows)]
        views = [r for r in dm["rows"] if r["case"] == "views"]
        if views:
            rows = [[f"{r['n']:,} x {r['d']}", r.get("classes", 10), f"{r['view_class0_rows']:,}",
                     f"{r['view_class0_embedded']:,}", r.get("label") or "-", f"`{r['commit']}`", r["seconds"],
                     r["peak_over_start_mb"], fmt_pct(r["planted_recall"], 1),
                     fmt_pct(r["planted_precision"], 1), f"`{r['command']}`"] for r in views]
            parts += ["## The per-class views of large classes (2-core CPU)",
                      "`benchmarks/detector_memory.py --cases views`: the dashboard's per-class views "
                      "(`class_views`, UMAP + HDBSCAN of each class) on the same synthetic float32 features, "
                      "memory-mapped, in classes of N / classes rows; 1 % of all rows, in class 0, are moved off "
                      "the rest. Since `8618309` a class of more than 20,000 rows is embedded on 20,000 of them and "
                      "the others are placed by their 10 nearest embedded rows; before, every row was embedded. "
                      "*Planted recall / precision*: of class 0's view, the cluster holding most of the moved rows, "
                      "its share of them and their share of it (no flags are given, so the moved rows are sampled "
                      "like any other). Seconds and memory are for all classes' views. The *before* rows ran in a git "
                      "worktree of the commit shown with this script copied in (hence `+changes`).",
                      md_table(["features", "classes", "class 0 rows", "embedded", "code", "commit", "seconds",
                                "peak anonymous MB over start", "planted recall %", "planted precision %", "command"],
                               rows)]
    parts += scale_run_section(read_json(Path(results) / "scale_run.json", None))
    parts += dashboard_pages_section(read_json(Path(results) / "dashboard_pages.json", None))
    extra = BENCH / "NOTES.md"
    if extra.is_file():
        parts.append(extra.read_text())
    man = read_json(Path(zoo) / "MANIFEST.json", None)
    if man:
        def _epochs(m: dict):
            cli = m.get("cli_equivalent") or ""
            found = re.search(r"--epochs (\d+)", cli if isinstance(cli, str) else " ".join(map(str, cli)))
            return (m.get("spec") or {}).get("epochs") or (int(found.group(1)) if found else "-")

        rows = [[n, (m.get("spec") or {}).get("attack") or "-",
                 m["spec"].get("rate") if (m.get("spec") or {}).get("attack") else "-", _epochs(m),
                 fmt_pct(m.get("benign_accuracy")), fmt_pct(m.get("attack_success_rate")),
                 m.get("train_seconds_wall"), f"`{m.get('command')}`"] for n, m in man["models"].items()]
        parts += ["## Model zoo (`benchmarks/zoo/MANIFEST.json`)",
                  "The `clean-unusual-` and `second-source-` models are trained by their benchmarks "
                  "(`benchmarks/clean_unusual.py`, `benchmarks/second_source.py`) on data with a quirk and no attack "
                  "(the poisoned `noisy-` row's attack is its zoo model's); their command says which.",
                  md_table(["model", "attack", "rate", "epochs", "BA %", "ASR %", "train wall s", "command"], rows)]
    text = "\n\n".join(parts) + "\n"
    out.write_text(text)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(build())
