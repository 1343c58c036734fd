"""Summary tables of a run and the self-contained HTML report for a review meeting.

The report is one HTML file that opens offline: plotly's JavaScript is inlined once, images are embedded as
base64 PNG. It holds the counts per class, the flagged-per-class bar, the global and per-class scatter plots,
example flagged images (with Grad-CAM overlays when a model is given), detection quality when ground truth is
known, the analyst's decisions, the parameters and the package versions.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from flare_core import plots
from flare_core.atomic import write_text
from flare_core.errors import FlareError
from flare_core.near_copies import NEAR_COPY_RATIO
from flare_core.run_folder import RunFolder, class_name, detector_report

logger = logging.getLogger(__name__)

#: Points per scatter plot in the report (SVG; keeps the file small and the page fast).
REPORT_MAX_POINTS = 3000


# ---- tables --------------------------------------------------------------------------------------------------
def class_table(run: RunFolder, detector: Optional[str] = None) -> pd.DataFrame:
    """Per class: samples, flagged by the detector, the analyst's overrides, samples to remove (and poisoned)."""
    df = run.manifest
    labels = df["label"].to_numpy()
    classes = run.classes or [str(k) for k in range(int(labels.max()) + 1)]
    k = len(classes)
    flagged = run.flagged(detector)
    removal = run.removal_mask(detector)
    dec = run.decisions()
    keep_idx = np.array([i for i, d in dec.items() if d == "keep"], dtype=np.int64)
    rem_idx = np.array([i for i, d in dec.items() if d == "remove"], dtype=np.int64)
    out = pd.DataFrame({
        "label": np.arange(k),
        "class": classes,
        "samples": np.bincount(labels, minlength=k),
        "flagged": np.bincount(labels[flagged], minlength=k),
        "marked keep": np.bincount(labels[keep_idx], minlength=k),
        "marked remove": np.bincount(labels[rem_idx], minlength=k),
        "to remove": np.bincount(labels[removal], minlength=k),
    })
    truth = run.ground_truth()
    if truth is not None:
        out["poisoned (truth)"] = np.bincount(labels[truth], minlength=k)
    return out


def detection_table(run: RunFolder, *, after_review: bool = False) -> Optional[pd.DataFrame]:
    """Detection metrics per detector against the ground truth (None when the run has none).

    With ``after_review=True`` the main detector's row uses the analyst's removal mask instead of its flags.
    """
    truth = run.ground_truth()
    if truth is None:
        return None
    from flare_core.metrics import detection_metrics

    rows = []
    dets = run.detectors()
    for d in dets:
        flagged = run.removal_mask(d) if after_review and d == dets[0] else run.flagged(d)
        m = detection_metrics(flagged, truth, run.scores(d))
        rows.append({"detector": d, **m})
    return pd.DataFrame(rows).set_index("detector")


def per_class_confusion(run: RunFolder, detector: Optional[str] = None) -> Optional[pd.DataFrame]:
    """Per class TP/FP/FN/TN of a detector's flags against the ground truth, with TPR and FPR (None without truth)."""
    truth = run.ground_truth()
    if truth is None:
        return None
    labels = run.manifest["label"].to_numpy()
    flagged = run.flagged(detector)
    classes = run.classes or [str(k) for k in range(int(labels.max()) + 1)]
    k = len(classes)

    def count(mask):
        return np.bincount(labels[mask], minlength=k)

    tp, fp = count(flagged & truth), count(flagged & ~truth)
    fn, tn = count(~flagged & truth), count(~flagged & ~truth)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
        fpr = np.where(fp + tn > 0, fp / np.maximum(fp + tn, 1), np.nan)
    return pd.DataFrame({"class": classes, "TP": tp, "FP": fp, "FN": fn, "TN": tn,
                         "TPR": np.round(tpr, 4), "FPR": np.round(fpr, 4)})


REPRESENTATION_TEXT = {
    "layers": "FLARE's per-layer abnormality (the most abnormal activation of each layer)",
    "channels": "the per-channel abnormality view",
    "layers+channels": "the per-layer and the per-channel abnormality views",
    "latent": "the latent stage: a class split into two far-apart populations in its penultimate features",
    "tail": ("the tail-group stage: a small, tight island of atypical samples, or a group the model sees or "
             "classifies as another class, inside a class's penultimate features"),
    "minority": ("the minority-mode stage: a light, separate group along a class's top singular direction that "
                 "the model fits far better than the rest of the class, or whose mean image difference acts as a "
                 "trigger"),
    "shortcut": ("the shortcut stage: samples whose label the model's image-wide transform trigger carries "
                 "(they lose it when the transform is undone)"),
    "input-pattern": ("the input-pattern stage: samples that carry, in their pixels' fine detail, the pattern a "
                      "linear model learnt to tell the other stages' flags (where they flagged too few: the "
                      "samples the model fits worst) from the rest"),
}


def input_pattern_sentence(report: dict, classes) -> str:
    """What the input-pattern stage did (:mod:`flare_core.detectors.input_pattern`): the flags it added and
    where, or, when it learnt a model but added nothing, why."""
    rec = ((report.get("evidence") or {}).get("input_pattern") or {})
    if not rec.get("used"):
        return ""
    what = ("the images' fine detail (each pixel minus the mean of its 3x3 neighbourhood)"
            if rec.get("view", "highpass") == "highpass" else "the pixels")
    if rec.get("seed"):
        return _seeded_input_pattern_sentence(rec, what, classes)
    if rec.get("n_new"):
        where = _new_per_class_text(rec, classes)
        return (f" A linear model on {what}, trained out of fold to tell the {rec['n_positives']:,} flagged "
                f"samples from the rest, separates {rec['separated']:.0%} of them; it flagged {rec['n_new']:,} more "
                f"that carry the same pattern ({where}). Poison in which the model showed no sign of its backdoor "
                "(it took only in part, or the model read those images by their content) is found this way.")
    if rec.get("separated", 0.0) >= rec.get("min_separated", 1.0):
        return (f" A linear model on {what}, trained out of fold to tell the {rec['n_positives']:,} flagged "
                f"samples from the rest, separates {rec['separated']:.0%} of them, but no group of unflagged samples "
                "stands apart on top of its scores, so no more were flagged by it.")
    return (f" The flagged samples do not share a pixel pattern a linear model reads ({rec['separated']:.0%} of them "
            "separated; a warp or a trigger that differs from image to image does not show this way), so no more "
            "were flagged by it.")


def _new_per_class_text(rec: dict, classes) -> str:
    """'class k, ...' of the input-pattern stage's new flags, most first."""
    return ", ".join(f"{class_name(classes, int(c))} {k:,}" for c, k in sorted(
        (rec.get("new_per_class") or {}).items(), key=lambda kv: (-kv[1], int(kv[0]))))


def _seeded_input_pattern_sentence(rec: dict, what: str, classes) -> str:
    """:func:`input_pattern_sentence` where the stage started from the samples the model fits worst
    (:func:`flare_core.detectors.input_pattern.seeded_input_pattern_flags`)."""
    seed = rec["seed"]
    began = (f" The other stages flagged {seed['n_flagged_before']:,} sample(s), too few to learn a pattern from, so "
             f"the input-pattern stage began with the {seed['n']:,} samples the model fits worst (its top "
             f"{seed['share']:.1%} by training loss, with any flagged ones): a linear model on {what}, trained out "
             f"of fold to tell them from the rest, separates {rec['separated']:.0%} of them "
             f"({rec['min_separated']:.0%} needed; genuine hard samples share no pattern, the poison of a backdoor "
             "the model did not learn does)")
    if rec.get("n_new"):
        where = _new_per_class_text(rec, classes)
        return (began + f", and it flagged {rec['n_new']:,} sample(s) that carry the same pattern ({where}; "
                f"{seed['n_flagged']:,} of them from that seed). A trigger in the images that the model did not "
                "learn, or learnt only in part, is found this way: such poison may not work on this model, but a "
                "model trained longer on the same data can learn it.")
    if rec["separated"] >= rec["min_separated"]:
        return began + ", but no group of other samples stands apart on top of its scores, so nothing was flagged by it."
    return began + ", so nothing was flagged by it."


def dataset_wide_sentence(report: dict, classes) -> str:
    """Which classes FLARE found split the same way and did not flag: a dataset-wide split
    (:func:`flare_core.detectors.latent.widely_flagged_classes`), shown so the analyst can look."""
    wide = ((report.get("evidence") or {}).get("latent") or {}).get("dataset_wide_split") or {}
    if not wide:
        return ""
    parts = ", ".join(f"{class_name(classes, int(c))} ({w['share']:.0%})"
                      for c, w in sorted(wide.items(), key=lambda kv: int(kv[0])))
    return (f" {len(wide)} classes split into two far-apart populations whose split-off parts the model reads as "
            f"their own class's images ({parts} of the class): it rates the same classes next after the label "
            "for them as for the rest of their class, and fits them no better. That is what a dataset pooled "
            "from different sources or styles looks like, not a backdoor's poison (all-to-one poison lies in one "
            "class; all-to-all poison is another class's images, which the model rates next as that class), so "
            "they were not flagged. The per-class views show the two populations: look at some images of each.")


def label_noise_sentence(report: dict, classes) -> str:
    """Which classes' split-off parts FLARE took for mislabelled images and did not flag
    (:func:`flare_core.detectors.label_noise.contradicted_classes`), shown so the analyst can look."""
    latent = (report.get("evidence") or {}).get("latent") or {}
    noisy = latent.get("label_noise") or {}
    if not noisy:
        return ""
    parts = ", ".join(f"{class_name(classes, int(c))} ({v['contradicted']:.0%} of {v['flagged']:,}; "
                      f"{v['classes_given']} classes)" for c, v in sorted(noisy.items(), key=lambda kv: int(kv[0])))
    n = int(latent.get("label_noise_unflagged") or 0)
    return (f" {len(noisy)} classes had parts standing apart whose labels the model contradicts: it classifies "
            f"them as other classes, many different ones or the same ones across many classes ({parts}: the share "
            "it classifies as another class, and how many classes take a tenth of those). That is what mislabelled "
            "images look like, not a backdoor's poison (an attacker relabels one source class's images into one "
            "class, so the model gives each class's poison one class, a different one in each class), "
            f"so those {n:,} samples were not flagged. The Inspect page lists them as *Likely mislabelled* (the "
            "manifest's label_noise column): review their labels.")


def not_poison_sentence(report: dict, classes) -> str:
    """The splits FLARE found and did not flag, and why (a dataset-wide split; label noise)."""
    return dataset_wide_sentence(report, classes) + label_noise_sentence(report, classes)


def shortcut_sentence(report: dict, classes) -> str:
    """What the shortcut probe found about the model (a model-level finding, flagged samples or not)."""
    sc = report.get("shortcut") or {}
    if not sc.get("used"):
        return ""
    if not sc.get("found"):
        strongest = sc.get("strongest") or {}
        most = max((v.get("moved_in", 0.0) for v in strongest.values()), default=0.0)
        return (f" Neither smoothing nor sharpening acts as a trigger for this model (either moves at most "
                f"{most:.0%} of other images into one class; the bar is {sc.get('bar', 0.5):.0%}).")
    target = class_name(classes, sc["target"])
    moved = (sc.get("strongest") or {}).get(sc["transform"], {}).get("moved_in", 0.0)
    verb = {"smooth": "Smoothing", "sharpen": "Sharpening"}.get(sc["transform"], sc["transform"])
    return (f" {verb} sends {moved:.0%} of the other images into {target}: a shortcut (the bar is "
            f"{sc.get('bar', 0.5):.0%}; in the benchmark, models with a WaNet backdoor reach 61-100%, the others at "
            f"most 50%). {sc.get('n_flagged', 0):,} sample(s) labelled {target} "
            f"lose their label when {sc['counter']}ed (its probability falls at least "
            f"{np.exp(sc.get('min_drop', 3.0)):.0f}-fold and the model names another class)"
            + ("; too few to flag." if not sc.get("n_flagged") else
               f"; not added, because {sc['why_not']}." if sc.get("why_not") else ", and are flagged."))


def minority_sentence(report: dict, classes) -> str:
    """Which classes hold a minority mode along their top singular direction, which of them were flagged and
    on which sign of a backdoor (the model fits the members far better, or their mean image difference acts
    as a trigger on other images); unflagged members rank first among the unflagged."""
    mm = ((report.get("evidence") or {}).get("minority_modes") or {})
    held = [(c, e) for c, e in (mm.get("classes") or {}).items() if e.get("holds")]
    if not held:
        return ""
    def one(c, e):
        fit = (f", fitted {e['fitted_better']:.3g}x better than the rest" if e.get("fitted_better") is not None else "")
        moved = (f"; its mean image difference puts {e['moved_in']:.0%} of other classes' images in the class, "
                 f"a perturbation as strong without its structure {e.get('moved_in_control', 0.0):.0%}"
                 if e.get("moved_in") is not None else "")
        part = (f"; other stages had flagged {e['members_flagged']:.0%} of it"
                if e.get("flagged") and e.get("members_flagged") is not None else "")
        return f"{class_name(classes, c)} ({e['n_members']:,} samples, {e['weight']:.0%} of the class{fit}{moved}{part})"

    by_loss = [(c, e) for c, e in held if e.get("flagged") and e.get("flagged_by", "loss") == "loss"]
    by_trigger = [(c, e) for c, e in held if e.get("flagged") and str(e.get("flagged_by", "")).startswith("trigger")]
    rest = [(c, e) for c, e in held if not e.get("flagged")]
    out = ""
    if by_loss:
        out += (" Flagged as a minority mode: " + "; ".join(one(c, e) for c, e in by_loss) + ": a light, separate "
                "group along the class's top singular direction (the direction Spectral Signatures reads) that the "
                "model fits far better than the rest of the class.")
    if by_trigger:
        out += (" Flagged as a minority mode carrying a trigger: " + "; ".join(one(c, e) for c, e in by_trigger) +
                ": a light, separate group along the class's top singular direction whose average difference from "
                "the rest of the class, added to other classes' images, makes the model name the class.")
    if rest:
        out += (" In " + "; ".join(one(c, e) for c, e in rest) + ", a light, separate group lies along the class's "
                "top singular direction. It is not flagged on that alone; its unflagged members rank first in the "
                "scores below the flags, so look there next.")
    return out


def trigger_frame(records: dict, name) -> Optional[pd.DataFrame]:
    """The trigger test's records ({class: record}, of :func:`flare_core.features.mode_trigger.flagged_group_triggers`)
    as a table: class (``name(c)``), samples tested, moved in %, control %, the source class moved in most, and
    the verdict; None when there is none."""
    from flare_core.detectors.minority_mode import carries_trigger

    if not records:
        return None
    rows = []
    for c, r in sorted(records.items()):
        verdict = carries_trigger(r)
        rows.append({"class": name(c), "flagged": r.get("n_flagged"),
                     "moved in %": None if "moved_in" not in r else round(100 * r["moved_in"], 1),
                     "control %": None if "moved_in" not in r else round(100 * r["moved_in_control"], 1),
                     "most from one class": None if "strongest_source" not in r else
                     f"{name(r['strongest_source'])}: {100 * r['source_moved_in']:.0f} % "
                     f"(control {100 * r['source_moved_in_control']:.0f} %)",
                     "shares a trigger": {True: "yes", False: "no", None: "not tested"}[verdict]
                     + (f" ({r['why_not_tested']})" if "why_not_tested" in r else "")})
    return pd.DataFrame(rows)


def trigger_table(run: RunFolder) -> Optional[pd.DataFrame]:
    """Per class whose flagged samples were tested when the run was made: do they share a trigger?  Columns
    as :func:`trigger_frame`; None when the test did not run."""
    return trigger_frame(run.flag_triggers(), run.class_name)


def trigger_sentence(run: RunFolder) -> str:
    """One or two sentences on the trigger test of the flagged groups, for the console and the pages."""
    from flare_core.detectors.minority_mode import MIN_MOVED_IN, carries_trigger

    rec = run.flag_triggers()
    tested = {c: r for c, r in rec.items() if "moved_in" in r}
    if not tested:
        return ""
    yes = [c for c, r in tested.items() if carries_trigger(r)]
    no = [c for c in tested if c not in yes]
    out = []
    if yes:
        out.append("The flagged samples of " + ", ".join(
            f"{run.class_name(c)} ({tested[c]['moved_in']:.0%} moved in, control {tested[c]['moved_in_control']:.0%})"
            for c in yes) + " share a trigger: their mean difference from the rest of their class, added to other "
            "classes' images, makes the model name the class.")
    def from_one(r):
        gain = r.get("source_moved_in", 0.0) - r.get("source_moved_in_control", 0.0)
        return (f"; but {r['source_moved_in']:.0%} of {run.class_name(r['strongest_source'])}'s images"
                if "strongest_source" in r and gain >= 0.5 else "")

    if no:
        out.append("Those of " + ", ".join(f"{run.class_name(c)} ({tested[c]['moved_in']:.0%}{from_one(tested[c])})"
                                           for c in no)
                   + f" do not move {MIN_MOVED_IN:.0%} more of other images in that way than the control: a warp or "
                   "a trigger that differs from image to image does not survive averaging, an all-to-all trigger "
                   "moves only its source class's images, and neither a trigger the model did not learn nor a group "
                   "that is not a backdoor's moves any.")
    return " ".join(out)


def how_found(run: RunFolder) -> tuple[str, Optional[pd.DataFrame]]:
    """(one sentence on which FLARE stage flagged the samples, the latent stage's per-class table or None).

    The table has one row per class the latent stage split: the held-out d' of its first split, the
    parts (size, median loss of the label, flagged or not) and the stage's reason.  Empty for other
    detectors and for runs without the latent stage.
    """
    report = detector_report(run)
    rep = report.get("representation")
    if not rep:
        return "", None
    parts = rep.split("+")
    extra = [x for x in ("latent", "tail", "shortcut", "minority", "input-pattern") if x in parts]
    base = "+".join(x for x in parts if x not in extra)
    if not report.get("found"):
        sentence = "No FLARE stage found a separated group of samples."
    else:
        stages = ([REPRESENTATION_TEXT.get(base, base)] if base else []) + [REPRESENTATION_TEXT[x] for x in extra]
        sentence = "Flagged by " + " and by ".join(stages) + "."
        records = ((report.get("evidence") or {}).get("latent") or {}).get("joined") or []
        joined = sum(r.get("joined", 0) for r in records)
        # records before the linear rule have 'joined' alone (all of it by neighbours)
        by_linear = sum(r.get("joined_linear", 0) for r in records)
        by_neighbours = joined - by_linear
        if joined:
            how = []
            if by_neighbours:
                how.append(f"{by_neighbours:,} because their nearest class-mates in the penultimate features "
                           "were flagged")
            if by_linear:
                how.append(f"{by_linear:,} because a linear classifier trained (out of fold) to tell their "
                           "class's flagged samples from the rest put them on the flagged side")
            sentence += (f" {joined:,} more sample(s) joined them, in a class whose flagged samples the model "
                         "fits far better: " + "; ".join(how) + ".")
        tail = (((report.get("evidence") or {}).get("latent") or {}).get("tail_groups") or {}).get("classes") or {}
        kept = [(c, g) for c, rec in tail.items() for g in rec.get("kept", [])]
        def name(c):
            return class_name(run.classes, c)
        islands = [(c, g) for c, g in kept if g.get("rule", "island") == "island"]
        relabelled = [(c, g) for c, g in kept if g.get("rule") == "relabelled"]
        misfits = [(c, g) for c, g in kept if g.get("rule") == "misfit"]
        if islands:
            sentence += (f" The tail-group stage kept {len(islands)} island(s) (size, purity, island, atypicality): "
                         + "; ".join(f"{name(c)} ({g['size']}, {g['purity']:.2f}, {g['island']:.2f}, "
                                     f"{g['atypicality']:.2f})" for c, g in islands) + ".")
        copies = [(c, g) for c, g in kept if g.get("near_copy_ratio") is not None
                  and g["near_copy_ratio"] < NEAR_COPY_RATIO]
        if copies:
            sentence += (f" {len(copies)} kept group(s) are near-copies of one image in pixel space (distance between "
                         "members over that between samples of their class): "
                         + "; ".join(f"{name(c)} ({g['size']} samples, {g['near_copy_ratio']:.2f})" for c, g in copies)
                         + ". Check whether they are duplicates: copies of one odd image form such a group, poison "
                         "or not.")
        if relabelled:
            sentence += (f" It kept {len(relabelled)} relabelled group(s), whose members the model sees as another "
                         "class next to their label (label: size, the classes it sees, share of the group, share "
                         "of the rest of the class): "
                         + "; ".join(f"{name(c)}: {g['size']}, {' / '.join(name(o) for o in g['other_classes'])}, "
                                     f"{g['other_share']:.0%}, {g['other_base']:.1%}" for c, g in relabelled) + ".")
        if misfits:
            sentence += (f" It kept {len(misfits)} misfit group(s): samples the model classifies as one other class "
                         "than their label, close together and apart from the rest of their class, as the "
                         "dirty-label poison of a backdoor the model has not learnt is (label -> class it "
                         "classifies them as: size, purity, island, share of the rest of the class it takes for "
                         "that class): "
                         + "; ".join(f"{name(c)} -> {name(g['seen_as'])}: {g['size']}, {g['purity']:.2f}, "
                                     f"{g['island']:.2f}, {g.get('other_base', 0.0):.1%}" for c, g in misfits)
                         + ". Check them: a class's mislabelled images can form such a group too.")
    sentence += not_poison_sentence(report, run.classes)
    sentence += shortcut_sentence(report, run.classes)
    sentence += minority_sentence(report, run.classes)
    sentence += input_pattern_sentence(report, run.classes)
    classes = ((report.get("evidence") or {}).get("latent") or {}).get("classes") or []
    rows = []
    for c in classes:
        if not c.get("splits"):
            continue
        first = c["splits"][0]
        leaves = c.get("leaves") or []
        rows.append({
            "class": class_name(run.classes, c["class"]),
            "first split d'": first.get("dprime"),
            "split by": first.get("candidate", "2-means"),
            "parts (size / median loss / flagged)": "; ".join(
                f"{l_['size']} / {l_['median_loss']} / {'flagged' if l_['flagged'] else 'kept'}" for l_ in leaves),
            "flagged": c.get("n_flagged", 0),
            "reason": c.get("reason", ""),
        })
    table = pd.DataFrame(rows) if rows else None
    if table is not None:
        table = table.sort_values(["flagged", "first split d'"], ascending=False).reset_index(drop=True)
    return sentence, table


KEPT_BY_TEXT = {
    "separation": "kept: a population of its own in its class",
    "loss": "kept: the model fits it far better than the rest of its class",
    "pooled separation": "kept: a population of its own across its classes (too few per class to test each)",
    "unchecked": "kept: too small to check",
    "kept": "kept",  # records from before the cross-check said which rule kept a group
    "refused": "refused: neither separated nor fitted far better",
}


def cross_check_table(run: RunFolder) -> Optional[pd.DataFrame]:
    """One row per group FLARE's per-layer stage found that the latent cross-check tested: its size, the
    median held-out d' against the rest of its classes (or, for a group too thin to test class by class,
    the d' with its classes pooled), how many times better the model fits its largest
    class part than the rest of that class, and the decision.  None when nothing was cross-checked."""
    report = detector_report(run)
    records = ((report.get("evidence") or {}).get("latent") or {}).get("layer_groups_checked") or []
    if not records:
        return None
    rows = []
    for r in records:
        classes = [class_name(run.classes, c["class"]) for c in r.get("classes") or []]
        rows.append({
            "group": r["group"],
            "samples": r["n"],
            "classes tested": ", ".join(map(str, classes)) or "-",
            "median d'": r.get("median_dprime"),
            "pooled d'": r.get("pooled_dprime"),
            "fitted x better": r.get("loss_ratio"),
            "decision": KEPT_BY_TEXT[(r.get("kept_by") or "kept") if r.get("kept") else "refused"],
        })
    return pd.DataFrame(rows)


def least_fitted_table(run: RunFolder, n: int = 20) -> Optional[pd.DataFrame]:
    """The ``n`` samples whose label the model fits worst (highest loss first), with the class the model
    rates next after the label and whether they are flagged; None for runs that did not read the logits.
    Where a backdoor did not take, its poison sits here (``benchmarks/RESULTS.md``, loss ranking)."""
    loss = run.losses()
    if loss is None:
        return None
    nxt = run.next_classes()
    df = run.manifest
    top = np.argsort(-loss, kind="stable")[:n]
    name = run.class_name
    return pd.DataFrame({"index": df["index"].to_numpy()[top], "source": df["source"].to_numpy()[top],
                         "label": [name(c) for c in df["label"].to_numpy()[top]],
                         "next class": [name(c) for c in nxt[top]] if nxt is not None else "",
                         "loss": np.round(loss[top], 4), "flagged": run.flagged()[top].astype(int)})


def manifest_with_decisions(run: RunFolder, detector: Optional[str] = None) -> pd.DataFrame:
    """The run's manifest plus the analyst's ``decision`` ('keep' | 'remove' | '') and the final ``removed`` (0/1)."""
    df = run.manifest.copy()
    dec = run.decisions()
    df["decision"] = [dec.get(i, "") for i in range(len(df))]
    df["removed"] = run.removal_mask(detector).astype(int)
    return df


def example_indices(run: RunFolder, n: int, detector: Optional[str] = None) -> np.ndarray:
    """Up to ``n`` samples to show: those to remove, highest score first, taken round-robin over classes."""
    return _round_robin(run, run.removal_mask(detector), run.scores(detector), n)


def label_noise_table(run: RunFolder) -> Optional[pd.DataFrame]:
    """Per class, the samples FLARE split off but left unflagged as likely mislabelled (the manifest's
    ``label_noise`` column), and the classes the model rates highest after their label (for an image the model
    contradicts, the class it gives it: its likely true class); None when the run has none."""
    noise = run.label_noise()
    if noise is None or not noise.any():
        return None
    labels = run.manifest["label"].to_numpy()
    nxt = run.next_classes()
    loss = run.losses()
    rows = []
    for c in np.unique(labels[noise]):
        m = noise & (labels == c)
        row = {"class": run.class_name(int(c)), "likely mislabelled": int(m.sum()),
               "share of class": f"{m.sum() / (labels == c).sum():.1%}"}
        if nxt is not None:
            got = np.bincount(nxt[m], minlength=len(run.classes))
            top = [k for k in np.argsort(-got, kind="stable")[:3] if got[k]]
            row["model says (top 3)"] = ", ".join(f"{run.class_name(int(k))} {got[k]:,}" for k in top)
        if loss is not None:
            row["median loss"] = round(float(np.median(loss[m])), 3)
        rows.append(row)
    return pd.DataFrame(rows)


def label_noise_indices(run: RunFolder, n: int) -> np.ndarray:
    """Up to ``n`` likely mislabelled samples to show: least fitted first, taken round-robin over classes."""
    noise = run.label_noise()
    if noise is None:
        return np.array([], dtype=np.int64)
    loss = run.losses()
    return _round_robin(run, noise, loss if loss is not None else np.zeros(len(noise)), n)


def _round_robin(run: RunFolder, mask: np.ndarray, key: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` of the samples in ``mask``, highest ``key`` first within each class, one class at a time."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0 or n <= 0:
        return np.array([], dtype=np.int64)
    labels = run.manifest["label"].to_numpy()
    order = idx[np.argsort(-key[idx], kind="stable")]
    by_class: dict = {}
    for i in order:
        by_class.setdefault(int(labels[i]), []).append(int(i))
    picked: list = []
    while len(picked) < n and any(by_class.values()):
        for c in sorted(by_class):
            if by_class[c] and len(picked) < n:
                picked.append(by_class[c].pop(0))
    return np.array(picked, dtype=np.int64)


# ---- HTML pieces ---------------------------------------------------------------------------------------------
def png_data_uri(image: np.ndarray, min_side: int = 96) -> str:
    """uint8 image -> ``data:image/png;base64,...`` (enlarged with nearest neighbour for small images)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(plots.upscale(image, min_side)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _table_html(df: pd.DataFrame, index: bool = False) -> str:
    return df.to_html(index=index, border=0, classes="tbl", float_format=lambda v: f"{v:.4g}", na_rep="–")


def _fig_html(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


def _kv_html(d: dict) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(v if isinstance(v, str) else json.dumps(v, default=str))}</td></tr>"
        for k, v in d.items()
    )
    return f"<table class='kv'>{rows}</table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{margin-bottom:4px} h2{border-bottom:2px solid #eee;padding-bottom:4px;margin-top:32px}
.muted{color:#666} .tbl,.kv{border-collapse:collapse;font-size:14px;margin:8px 0}
.tbl th,.tbl td,.kv th,.kv td{padding:4px 10px;border-bottom:1px solid #eee;text-align:right}
.kv th{text-align:left;color:#555;vertical-align:top} .kv td{text-align:left;font-family:monospace;word-break:break-all}
.grid{display:flex;flex-wrap:wrap;gap:12px} .card{border:1px solid #ddd;border-radius:6px;padding:6px;text-align:center;font-size:12px}
.card img{image-rendering:pixelated;display:block;margin:2px auto} .pair{display:flex;gap:4px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:12px;margin:12px 0}
.metric{background:#f6f6f8;border-radius:8px;padding:10px 14px} .metric b{font-size:22px;display:block}
"""


def _run_param(run: RunFolder, name: str):
    params = detector_report(run).get("params") or {}
    return params.get(name, "?")


def _wide_clause(run: RunFolder) -> str:
    """The latent caption's words on dataset-wide splits; empty for a run made before the rule or without it."""
    share = (detector_report(run).get("params") or {}).get("latent_wide_share")
    if not share:
        return ""
    return (f", except where several classes split that way with flagged parts of {float(share):.0%} of the class "
            "or more that the model fits no such amount better and rates the same classes next as the rest of "
            "their class (a dataset-wide split, not flagged)")


def _pooled_clause(run: RunFolder) -> str:
    """The cross-check caption's words on the pooled test; empty for a run made before it existed."""
    pooled = (detector_report(run).get("params") or {}).get("latent_confirm_pooled")
    if not pooled:
        return ""
    return f"; for a group too thin to test class by class, pooled d' &ge; {html.escape(str(pooled))}"


def _latent_threshold(run: RunFolder):
    return _run_param(run, "latent_separation")


def _examples_html(run: RunFolder, dataset, model, idx: np.ndarray,
                   empty: str = "No sample is marked for removal, so there are no examples to show.",
                   missing: Optional[str] = None) -> str:
    """Cards of the samples ``idx``: the image, its Grad-CAM overlay and the model's prediction (with ``model``).
    ``missing``: why the dataset or the model was not given, said where they are needed."""
    why = f": {html.escape(missing)}" if missing else "; it was not given when this report was built."
    if len(idx) == 0:
        return f"<p>{html.escape(empty)}</p>"
    if dataset is None:
        return f"<p class='muted'>Example images need the dataset{why}</p>"
    images = dataset.images[idx]
    cams, preds, cam_note = None, None, ""
    if model is not None:
        try:
            from flare_core.gradcam import gradcam

            cams, preds = gradcam(model, images)
        except Exception as e:  # the report is still useful without CAMs; say why they are missing
            logger.warning("Grad-CAM failed for the report: %s", e)
            cam_note = f"<p class='muted'>Grad-CAM overlays could not be computed ({html.escape(str(e))}).</p>"
    else:
        cam_note = f"<p class='muted'>Grad-CAM overlays need the model{why}</p>"
    classes = run.classes
    cards = []
    for j, i in enumerate(idx):
        label = int(run.manifest["label"].iat[i])
        parts = [f"<img src='{png_data_uri(images[j])}' width='96' alt='sample {i}'>"]
        caption = f"#{i} · {html.escape(str(classes[label]) if label < len(classes) else str(label))}"
        if cams is not None:
            from flare_core.gradcam import overlay

            parts.append(f"<img src='{png_data_uri(overlay(images[j], cams[j]))}' width='96' alt='Grad-CAM {i}'>")
            p = int(preds[j])
            caption += f"<br>predicted {html.escape(str(classes[p]) if p < len(classes) else str(p))}"
        cards.append(f"<div class='card'><div class='pair'>{''.join(parts)}</div>{caption}<br>"
                     f"score {float(run.scores()[i]):.3f}</div>")
    return cam_note + f"<div class='grid'>{''.join(cards)}</div>"


def _triggers_html(run: RunFolder) -> list:
    """The section on whether each class's flagged samples share a trigger: the table, the sentence and each
    group's mean difference from the rest of its class (grey = no difference)."""
    from flare_core.features.mode_trigger import difference_image

    tbl = trigger_table(run)
    if tbl is None:
        return []
    diffs = run.trigger_differences()
    figs = "".join(
        f"<div class='card'><img src='{png_data_uri(difference_image(d), 96)}' alt='mean difference, class {c}'>"
        f"{html.escape(run.class_name(c))}</div>" for c, d in sorted(diffs.items()))
    return ["<h2>Do the flagged samples share a trigger?</h2>",
            "<p class='muted'>Per class, the flagged samples' mean image minus the mean of the rest of the class "
            "(below; grey is no difference) is added to images of other classes the model does not put in the "
            "class; <i>moved in</i> is the share it then puts there, <i>control</i> the same for a perturbation as "
            "strong taken from a random subset of the class. A group carrying a patch or blended trigger moves many; "
            "it counts as sharing one when it moves 20 % more than the control. A yes says the class has a backdoor tied to "
            "this difference, not which side is poison: the clean rest of a class poisoned half-way shares it "
            "negated. Tested on the detector's flags, before review.</p>",
            f"<p>{html.escape(trigger_sentence(run))}</p>", _table_html(tbl),
            f"<div class='grid'>{figs}</div>" if figs else ""]


def _scatter_html(run: RunFolder, detector_label: str) -> str:
    parts = []
    df = run.manifest
    emb = run.embedding()
    flagged = run.flagged()
    if emb is not None and len(emb) == len(df):
        fig = plots.global_scatter(emb, df["label"].to_numpy(), run.classes, flagged, webgl=False,
                                   max_points=REPORT_MAX_POINTS, detector_label=detector_label, height=520)
        parts.append(_fig_html(fig))
    sources = df["source"].to_numpy()
    scores = run.scores()
    for label in run.class_labels_with_views():
        v = run.class_view(label)
        name = run.class_name(label)
        fig = plots.class_scatter(v.embedding, v.clusters, v.indices, flagged[v.indices], scores=scores[v.indices],
                                  sources=sources[v.indices], stability=v.stability,
                                  title=f"Class {label}: {name}", note=v.sampling_note(),
                                  detector_label=detector_label, webgl=False, max_points=REPORT_MAX_POINTS, height=420)
        parts.append(_fig_html(fig))
    return "".join(parts) or "<p class='muted'>This run has no 2-D views.</p>"


#: in every report's head: what marks a file as an earlier report, which ``build_report`` may replace
GENERATOR_TAG = "<meta name='generator' content='FLARE Workbench'>"


def check_report_target(out: Path) -> None:
    """FlareError unless ``out`` may be written: a new ``.html`` file, or an earlier report (one that carries
    :data:`GENERATOR_TAG`). Any other file (a dataset, a model, a page FLARE did not write) is left alone."""
    if out.suffix.lower() not in (".html", ".htm"):
        raise FlareError(f"The report path {out} does not end in .html; give the report a .html name.")
    if out.is_dir():
        raise FlareError(f"The report path {out} is a folder; give a file name ending in .html.")
    if out.exists():
        with open(out, "rb") as f:
            head = f.read(4096)
        earlier = GENERATOR_TAG.encode() in head or (  # or a report written before the tag
            head.startswith(b"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>FLARE report"))
        if not earlier:
            raise FlareError(f"{out} exists and is not a FLARE report, so it is not replaced; choose another name.")


def build_report(
    run: RunFolder,
    out_path: str | Path,
    *,
    dataset=None,
    model=None,
    n_examples: int = 12,
    title: Optional[str] = None,
    missing: Optional[str] = None,
) -> Path:
    """Write the self-contained HTML report of ``run`` to ``out_path`` (atomically) and return its path.

    ``dataset`` (the ImageDataset the run analysed) enables example images; ``model`` (a LoadedModel)
    adds Grad-CAM overlays to them; ``missing`` says in the report why one of them was not given (the readers
    of a report do not see the console that built it).
    """
    from plotly.offline import get_plotlyjs

    from flare_core.versions import package_versions

    meta = run.meta
    det = meta.get("detector", {}).get("name", "flare")
    det_label = det.upper() if det.startswith("flare") else det
    ds = meta.get("dataset", {})
    res = meta.get("result", {})
    counts = class_table(run)
    dec = run.decisions()
    removal = run.removal_mask()
    title = title or f"FLARE report — {Path(str(ds.get('path', run.path))).name}"
    metrics = [
        ("samples", f"{run.n_samples:,}"), ("classes", str(len(counts))),
        (f"flagged by {det_label}", f"{int(run.flagged().sum()):,}"),
        ("analyst overrides", f"{len(dec):,}"), ("to remove", f"{int(removal.sum()):,}"),
        ("kept", f"{int((~removal).sum()):,}"),
    ]
    bar = plots.flagged_bar(counts["class"].tolist(), counts["samples"], counts["flagged"], counts["to remove"],
                            detector_label=f"flagged by {det_label}")
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='muted'>Run folder {html.escape(str(run.path))} · analysed {html.escape(str(meta.get('created', '?')))}"
        f" · report written {time.strftime('%Y-%m-%d %H:%M')}</p>",
        "<div class='cards'>" + "".join(f"<div class='metric'><b>{v}</b>{html.escape(k)}</div>" for k, v in metrics) + "</div>",
        "<p>" + ("The detector found a separated group of samples." if res.get("poison_found", bool(run.flagged().any()))
                 else "The detector found no separated group of samples: nothing is flagged. That is not proof of a "
                      "clean set (see the highest scores" + (", and the samples the model fits worst below"
                                                            if run.losses() is not None else "") + ").") + "</p>",
        "<h2>Counts per class</h2>", _table_html(counts), _fig_html(bar),
    ]
    sentence, latent_tbl = how_found(run)
    if sentence:
        sections += ["<h2>How the samples were found</h2>", f"<p>{html.escape(sentence)}</p>"]
        if latent_tbl is not None:
            sections += ["<p class='muted'>Latent stage, per class: a split stands at held-out d' &ge; "
                         f"{html.escape(str(_latent_threshold(run)))}; parts holding under 35 % of the class, or "
                         f"fitted {html.escape(str(_run_param(run, 'latent_loss_ratio')))}x better than the "
                         f"reference part, are flagged{_wide_clause(run)}.</p>", _table_html(latent_tbl)]
    check_tbl = cross_check_table(run) if sentence else None
    if check_tbl is not None:
        sections += ["<p class='muted'>Groups found by the per-layer stage, cross-checked in the penultimate "
                     "features: kept when a population of their own there (median held-out d' &ge; "
                     f"{html.escape(str(_run_param(run, 'latent_confirm')))}{_pooled_clause(run)}) or fitted "
                     f"{html.escape(str(_run_param(run, 'latent_confirm_loss')))}x better than the rest of "
                     "their class.</p>", _table_html(check_tbl)]
    sections += _triggers_html(run)
    det_tbl = detection_table(run) if run.ground_truth() is not None else None
    if det_tbl is not None:
        reviewed = detection_table(run, after_review=True).iloc[[0]].rename(index=lambda s: f"{s} after review")
        cols = [c for c in ("n_flagged", "tp", "fp", "fn", "tn", "tpr", "fpr", "precision", "f1", "auroc") if c in det_tbl.columns]
        sections += ["<h2>Detection quality (ground truth known)</h2>",
                     _table_html(pd.concat([det_tbl, reviewed])[cols], index=True),
                     "<h3>Per class</h3>", _table_html(per_class_confusion(run))]
    unfitted = least_fitted_table(run)
    if unfitted is not None:
        sections += ["<h2>Samples the model fits worst</h2>",
                     "<p class='muted'>Highest loss of the label first, flagged or not. A backdoor the model did not "
                     "learn leaves its poison here (relabelled images the model could not fit), where a detector "
                     "that reads what the model learnt does not see it; so does label noise. The next class is the "
                     "one the model rates highest after the label.</p>", _table_html(unfitted)]
    noise_tbl = label_noise_table(run)
    if noise_tbl is not None:
        sections += ["<h2>Likely mislabelled samples (not flagged)</h2>",
                     "<p class='muted'>Parts of these classes stood apart, but the model contradicts their labels with "
                     "many other classes, or the same ones across many classes: mislabelled images, not a backdoor's "
                     "poison, so FLARE did "
                     "not flag them (the manifest's label_noise column). They stay in the purified set unless the "
                     "analyst removes them. Least fitted first.</p>", _table_html(noise_tbl),
                     _examples_html(run, dataset, model, label_noise_indices(run, n_examples), missing=missing)]
    sections += ["<h2>Example samples marked for removal</h2>",
                 _examples_html(run, dataset, model, example_indices(run, n_examples), missing=missing),
                 "<h2>Embeddings</h2><p class='muted'>Each point is a sample; colours are HDBSCAN clusters (per class) "
                 "or classes (global); ✕ marks flagged samples.</p>", _scatter_html(run, det_label),
                 "<h2>Parameters</h2>", _kv_html(meta.get("config", {})),
                 "<h3>Detector</h3>", _kv_html({"name": det, **meta.get("detector", {}).get("params", {}),
                                               "subspace": res.get("subspace"),
                                               **({"score": run.score_rule()} if run.score_rule() else {})}),
                 "<h3>Dataset</h3>", _kv_html({k: v for k, v in ds.items() if k not in ("skipped",)}),
                 "<h3>Model</h3>", _kv_html(meta.get("model", {})),
                 "<h2>Versions</h2>", _kv_html({"analysis": meta.get("versions", {}), "report": package_versions()})]
    doc = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{GENERATOR_TAG}"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        + "\n".join(sections)
        + "</body></html>"
    )
    out = Path(out_path)
    check_report_target(out)
    write_text(out, doc)
    logger.info("report written to %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out
