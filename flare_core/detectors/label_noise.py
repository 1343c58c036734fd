"""Label noise, not a backdoor: flagged parts of several classes whose labels the model contradicts, each
with images of many other classes.

FLARE's stages flag a group of a class that stands apart in the model's representation.  A clean data set with
mislabelled images (scraped captions, crowd labels) has such groups in every class: a shirt labelled *bag*
sits with the shirts.  They look like poison whose backdoor did not take, and the model itself shows the
difference.  All-to-all poison relabels the images of *one* source class to each target (class c to c + 1),
so where the model does not obey the label it gives each class's part one other class.  All-to-one poison
comes from every class, but lies in one class.  Mislabelled images lie in every class and come from every
class, so the classes the model gives them instead are spread, in many classes at once.

:func:`contradicted_classes` finds the classes of such a split: at least ``min_classes`` (3) classes with
flagged groups that the model mostly contradicts (it predicts another class for at least ``min_contradicted``
of them, and for at least ``min_count`` samples), where either the class it gives them most often holds at most
``max_top_share`` of those predictions (the median over those classes: spread), or one class is given at least
``min_shared_share`` (0.2) of the contradicted samples of ``min_shared_classes`` (4) or more classes' parts (a
stage may split off, in each class, the mislabelled images of one or two distinctive true classes only: each
part is then given few classes, but the same ones across many classes, where an attacker maps each source class
to one target).  Groups, not whole classes, so that mislabelled images in the class that also holds obeyed
poison count, and the poison stays flagged.

Measured (``benchmarks/results/clean_unusual.json``; ground truth):
- a clean Fashion-MNIST with 10 % symmetric label noise: flagged parts in all 10 classes, 99.5-100 %
  contradicted, top shares 0.15-0.37 (one class 1.0), median 0.23; 3,465 flags before the rule, 0 after;
- the poison of the cached all-to-all models whose backdoor did not take (3 or more contradicted classes):
  median top shares 0.84-0.96; on the 43 benchmark models with saved final flags the rule, applied to each
  class's flags as a whole, finds nothing, and re-run by groups on the all-to-all models most at risk it
  changes no flag;
- a clean CIFAR-10 with 10 % symmetric label noise (narrow ResNet, 4 epochs): the tail-group stage flagged
  1,340 samples in 9 classes (78 % mislabelled), each class's part the mislabelled images of one to three true
  classes (top shares 0.35-0.96, median 0.58: not spread), with *automobile* given to six classes' parts and
  *truck*, *ship* and *frog* to three each; the ground-truth poison of the benchmark's all-to-all models (11
  Fashion-MNIST, and the CIFAR-10 ones in ``benchmarks/NOTES.md``, session 29) shares a given class between at
  most two classes' parts, hence ``min_shared_classes`` 4.

What it cannot tell apart:
- poison whose backdoor did not take, relabelled from many source classes into three or more targets (the
  model reads it as mislabelled data, as it reads label noise);
- in a data set that has label noise, the poison of an all-to-one backdoor that did not take (its groups are
  contradicted and spread like the mislabelled images beside it);
- asymmetric label noise (one class's images mislabelled as one other class: the model gives them one class,
  as it gives an all-to-all attack that did not take), which stays flagged where FLARE splits it off.
"""
from __future__ import annotations

import numpy as np

DEFAULT_MIN_CONTRADICTED = 0.5
DEFAULT_MAX_TOP_SHARE = 0.5
DEFAULT_MIN_CLASSES = 3
DEFAULT_MIN_COUNT = 10
DEFAULT_MIN_SHARED_SHARE = 0.2
DEFAULT_MIN_SHARED_CLASSES = 4


def contradicted_classes(flagged: np.ndarray, y: np.ndarray, predicted: np.ndarray, *,
                         groups: np.ndarray | None = None,
                         min_contradicted: float = DEFAULT_MIN_CONTRADICTED,
                         max_top_share: float = DEFAULT_MAX_TOP_SHARE, min_classes: int = DEFAULT_MIN_CLASSES,
                         min_count: int = DEFAULT_MIN_COUNT,
                         min_shared_share: float = DEFAULT_MIN_SHARED_SHARE,
                         min_shared_classes: int = DEFAULT_MIN_SHARED_CLASSES) -> dict[int, dict[str, float]]:
    """The classes of a label-noise split: ``{class: {"flagged", "contradicted", "top_share", "classes_given"}}``
    (see the module docstring), or ``{}``.  At least ``min_classes`` classes' parts must be contradicted, and
    either spread (median ``top_share`` at most ``max_top_share``) or share a class given (one class the model
    gives at least ``min_shared_share`` of the contradicted samples of ``min_shared_classes`` or more classes'
    parts: an attacker maps each source class to one target).  ``predicted``: the model's class for each sample
    (argmax of its logits).  A class's part is its flagged samples; given ``groups`` (a group id per sample:
    FLARE's cluster or the latent stage's leaf), only its flagged groups that the model mostly contradicts (so
    mislabelled images in the class that also holds an all-to-one attack's obeyed poison count).  ``flagged``:
    the part's size; ``contradicted``: the share of it predicted as another class; ``top_share``: the share of
    those the most common other class holds; ``classes_given``: how many other classes hold at least a tenth of
    them."""
    flagged, y, predicted = np.asarray(flagged, bool), np.asarray(y), np.asarray(predicted)
    if not (len(flagged) == len(y) == len(predicted)):
        raise ValueError(f"flagged, y and predicted must have one entry per sample; got {len(flagged)}, "
                         f"{len(y)} and {len(predicted)}")
    groups = _checked_groups(groups, len(y))
    if min_classes < 1:
        raise ValueError(f"min_classes must be at least 1; got {min_classes}")
    k = int(max(int(y.max(initial=0)), int(predicted.max(initial=0)))) + 1
    found: dict[int, dict[str, float]] = {}
    shares = []
    for c in np.unique(y[flagged]):
        part = _class_part(flagged, y, predicted, groups, int(c), min_contradicted)
        other = part & (predicted != c)
        n_other = int(other.sum())
        if n_other < min_count or n_other < min_contradicted * int(part.sum()):
            continue
        given = np.bincount(predicted[other], minlength=k) / n_other
        found[int(c)] = {"flagged": int(part.sum()), "contradicted": round(n_other / int(part.sum()), 3),
                         "top_share": round(float(given.max()), 3), "classes_given": int((given >= 0.1).sum())}
        shares.append(given)
    if len(found) < min_classes:
        return {}
    spread = np.median([f["top_share"] for f in found.values()]) <= max_top_share
    # one class given to the parts of many classes: its images were relabelled into many classes
    shared = int(((np.asarray(shares) >= min_shared_share).sum(axis=0)).max()) >= min_shared_classes
    return found if spread or shared else {}


def _checked_groups(groups: np.ndarray | None, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups must have one entry per sample; got {len(groups)} for {n} samples")
    return groups


def _class_part(flagged: np.ndarray, y: np.ndarray, predicted: np.ndarray, groups: np.ndarray | None, c: int,
                min_contradicted: float) -> np.ndarray:
    """Class ``c``'s flagged samples; given ``groups``, those of its flagged groups whose samples the model
    mostly (at least ``min_contradicted``) predicts as another class."""
    in_c = flagged & (y == c)
    if groups is None:
        return in_c
    out = np.zeros(len(y), dtype=bool)
    for g in np.unique(groups[in_c]):
        members = in_c & (groups == g)
        if (predicted[members] != c).sum() >= min_contradicted * members.sum():
            out |= members
    return out


def contradicted_mask(flagged: np.ndarray, y: np.ndarray, predicted: np.ndarray, classes,
                      groups: np.ndarray | None = None,
                      min_contradicted: float = DEFAULT_MIN_CONTRADICTED) -> np.ndarray:
    """What the rule unflags in ``classes``: the flagged samples the model predicts as another class; or, given
    ``groups`` (a group id per sample: FLARE's cluster or the latent stage's leaf), every flagged sample of each
    (class, group) whose flagged samples the model mostly contradicts (at least ``min_contradicted`` of them).
    Groups keep together what a stage split off together: a few of its samples the model gives their label by
    a small margin go with the rest, and a group the model obeys (poison whose backdoor took) stays flagged."""
    flagged, y, predicted = np.asarray(flagged, bool), np.asarray(y), np.asarray(predicted)
    groups = _checked_groups(groups, len(y))
    if groups is None:
        return flagged & np.isin(y, list(classes)) & (predicted != y)
    out = np.zeros(len(y), dtype=bool)
    for c in classes:
        out |= _class_part(flagged, y, predicted, groups, int(c), min_contradicted)
    return out


def label_noise_drop(flagged: np.ndarray, y: np.ndarray, predicted: np.ndarray, groups: np.ndarray | None,
                     min_classes: int = DEFAULT_MIN_CLASSES) -> tuple[np.ndarray, dict[int, dict[str, float]]]:
    """(what to unflag, the classes found): :func:`contradicted_classes` then :func:`contradicted_mask`, both by
    ``groups``; nothing when ``min_classes`` is 0 (the rule off) or nothing is flagged."""
    none = np.zeros(len(y), dtype=bool)
    if not min_classes or not np.asarray(flagged).any():
        return none, {}
    noisy = contradicted_classes(flagged, y, predicted, groups=groups, min_classes=min_classes)
    if not noisy:
        return none, {}
    return contradicted_mask(flagged, y, predicted, noisy, groups=groups), noisy
