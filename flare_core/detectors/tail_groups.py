"""FLARE default's tail-group stage: small, tight islands of atypical samples inside a class.

Why it exists.  At low poison rates (0.5 % of the data: ~300 samples all-to-one, ~30 per class
all-to-all) the poisoned samples are neither a population the per-layer clustering separates nor one
the latent stage's class bisection splits off (held-out d' 3-4 for WaNet 0.5 %, a cluster too small to
measure for all-to-all).  They are, however, each other's nearest neighbours inside their labelled class
(a poisoned sample's 10 nearest samples of its class in the penultimate features are 83-100 % poisoned
on the Fashion-MNIST 0.5 % models), atypical in that class, and set apart from the genuine samples
around them.  Genuine sub-populations are one or two of these, never all three: a class's natural
sub-modes (sandals with and without heels) are tight but sit inside the class's bulk; its rare odd
samples are atypical but diverse, each odd in its own way.

The stage runs only when the other stages flagged under ``TAIL_MAX_FLAGGED_SHARE`` (1 %) of the samples:
it is for the small poison sets they miss (see that constant for what it did on CIFAR-10 without the gate).
Per class (pure functions, no state):

1. robust-standardise the class's penultimate features, each column's scale floored at ``sd_floor``
   (0.2) of its SD as the class atypicality's is, and take ``n_components`` (20) principal components, as
   the latent stage does;
2. cluster with HDBSCAN (``min_cluster_size`` 15, ``min_samples`` 10, leaf selection: the finest
   stable clusters, which is what a group of 20-40 samples is);
3. keep a cluster as poison when it holds under ``max_share`` (35 %) of the class and
   - **purity** (the share of its members' 10 nearest samples of the class that are members too) is at
     least ``min_purity`` (0.85),
   - **island** (the median over members of the distance to the 5th nearest non-member over the
     distance to the 5th nearest other member) is at least ``min_island`` (1.75), and
   - its members' median **atypicality** (:func:`.scoring.class_atypicality`, ~1 for a typical sample)
     is at least ``min_atypicality`` (1.75), and
   - that deviation is not one feature's: at most ``max_one_feature_share`` (90 %) of it lies in the
     group's strongest single feature (:func:`one_feature_share`).  A feature nearly silent in the class
     has a tiny MAD, so the few samples it fires for score robust z-scores of ~1,000 in it, dominate the
     class's principal components and form an "island" of one channel: the CIFAR-10 narrow ResNet's studio
     frogs and close-up ships (session 17);

   or keep it as **relabelled** (when the model's logits are given): the fewest classes that are the
   strongest other class (:func:`strongest_other_class`: what the model rates highest after the label)
   of ``min_other_share`` (80 %) of its members are that of under ``max_other_base`` (2 %) of the rest of
   the class.  Dirty-label poison the model has not fully pulled into its target class keeps its source
   class there (Fashion-MNIST WaNet 1 %, 10 epochs: poisoned sneakers, bags and trousers labelled
   T-shirt, in groups too loose for the island bars: purity 0.75-0.95, island 1.2-1.7);
3b. **misfit groups** (when the logits are given): for each other class the model *classifies* at least
   ``MISFIT_MIN_SIZE`` (10) of the class's samples as, those samples are a candidate of their own, kept
   when their purity reaches ``DEFAULT_MIN_MISFIT_PURITY`` (0.7), their island ``DEFAULT_MIN_MISFIT_ISLAND``
   (1.25), and that class is the strongest other class of under ``DEFAULT_MAX_MISFIT_BASE`` (5 %, for ten
   classes) of the rest of the class.  This is the poison of a dirty-label backdoor that did not take:
   the model still fits it as its source class, so HDBSCAN's density clusters (15 samples at least, each
   a dense core) miss groups of 20-35 samples spread over their source class's region (Fashion-MNIST
   BadNets all-to-all 0.5 %, 10 epochs, ASR 3.8 %: 157 of its 300 poisoned samples were missed, 22-36
   per class, all of them classified as their source class by the model).  A class's genuine misfits
   (ambiguous or mislabelled images) are each odd in their own way, and its usual confusions (shirts
   classified as T-shirts) have a high base;
4. **join**: samples of the class most of whose 10 nearest samples are flagged join the flagged ones
   (:func:`.latent.join_neighbours`), the poisoned samples at the edge of an island.

Calibration (``python3 -m benchmarks.tail_calibration``, benchmarks/results/tail_calibration.json):
over the 29 Fashion-MNIST small-CNN models of the benchmark (clean, BatchNorm and GroupNorm; every attack
at 0.5 %, 1 %, 5-10 %) HDBSCAN found 1,078 candidate clusters, 889 of them genuine.  No genuine one met
all three bars; the closest was a 15-sample cluster at purity 0.82, island 1.61, atypicality 1.85 (8 %
short of the bars), and the tight bulk sub-modes (the shirts' ~300-sample sub-mode in every model) reach
island 1.53 at atypicality <= 1.70.  72 poisoned clusters were kept (11,237 poisoned and 11 genuine
samples).  The bars were chosen on ten of those models (the 0.5 % ones, WaNet 1 % at 10 epochs and the
two clean controls) and the other nineteen were checked after, with the same outcome.  Margins are
narrow on both sides (kept poisoned islands start at island 1.75, atypicality 1.77): the bars are a
measured choice, not a law, which is why every kept group's statistics and the strongest rejected
candidates are recorded and ``latent_tail_groups='off'`` exists.

The relabelled rule (session 9) was set after looking at the candidates of all 29 Fashion-MNIST models
(with a single other class; the covering set came after, for groups of mixed footwear), so those are not
held out for it; CIFAR-10 is.  No genuine candidate meets it: on Fashion-MNIST the nearest has 88 % of its
members' strongest other class in 4.2 % of the rest of its class (twice the bar), on CIFAR-10 8.9 %.  It
kept 17 poisoned Fashion-MNIST groups the island bars refused.  Three models trained after it was fixed
(WaNet 1 % on another seed, BadNets all-to-all 0.5 % at 20 epochs, a 10-epoch clean control): 5 more
poisoned groups kept by it, no genuine one.

The misfit rule (session 15) was set on the misfit candidates of all 39 cached Fashion-MNIST models
(1,414 with 8 members or more, 1,286 of them genuine; ``benchmarks/results/tail_calibration.json`` has
the ones with 10 or more), so none of those is held out for it; the CIFAR-10 models are.  The genuine
candidates with 10 members or more and a base under 5 % reach purity 0.62 and island 1.15 at most
(Fashion-MNIST GroupNorm clean: 37 T-shirts classified as bags); those with purity over 0.7 are a
class's usual confusions (about 900 shirts classified as T-shirts, base 0.20-0.23, island <= 1.17).  The
bars keep 25 candidates: 907 poisoned samples and 27 genuine ones in them.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from flare_core.detectors.latent import DEFAULT_COMPONENTS, DEFAULT_MINORITY, join_neighbours
from flare_core.detectors.scoring import ATYPICALITY_SD_FLOOR

#: HDBSCAN's smallest cluster and its density parameter for the per-class islands.
TAIL_MIN_CLUSTER_SIZE = 15
TAIL_MIN_SAMPLES = 10
#: A kept group: its members' neighbours are mostly members ...
DEFAULT_MIN_PURITY = 0.85
#: ... it is set apart from the samples around it ...
DEFAULT_MIN_ISLAND = 1.75
#: ... and its members are atypical in their class ...
DEFAULT_MIN_ATYPICALITY = 1.75
#: ... in more than one feature: an island whose deviation from its class (the members' mean squared robust
#: z-score per penultimate feature) lies over 90 % in a single feature is one channel that is nearly silent
#: in the class firing for a sub-mode of it (:func:`one_feature_share`).  Session 17: the held-out
#: CIFAR-10 groups of genuine frogs, dogs and ships the island bars kept had shares of 0.998-1.0 (a channel whose
#: class MAD is 0.0001-0.0007 against a median of 0.2, so one activation of 0.3-0.7 scores a z of ~1,000);
#: the 82 poisoned island candidates of 32 Fashion-MNIST models had 0.06-0.57 (median 0.14), and the bar
#: changes no Fashion-MNIST flag (``python3 -m benchmarks.one_feature_check --cifar ROOT``).
DEFAULT_MAX_ONE_FEATURE_SHARE = 0.9
#: A group is kept also when it is *relabelled*: the model sees a few other classes in it (the strongest
#: other classes, :func:`strongest_other_class`, of this share of its members) ...
DEFAULT_MIN_OTHER_SHARE = 0.8
#: ... which under this share of the rest of its class have (:func:`relabelled_statistics`): the bar for
#: ten classes, 0.18 of the share one class would have if second choices were spread evenly.  With K
#: classes the stage uses :func:`other_base_bar` (K), so that many-class datasets, where any one other
#: class is rare, do not pass it by default (only K = 10 is calibrated).
DEFAULT_MAX_OTHER_BASE = 0.02
OTHER_BASE_FACTOR = 0.18
#: A *misfit group* (step 3b): the samples of a class the model classifies as one other class, kept when
#: they are at least this many ...
MISFIT_MIN_SIZE = 10
#: ... and close together and set apart in the class's penultimate features (purity, island as above), which
#: the genuine misfits of a class (ambiguous or mislabelled images, each odd in its own way) are not.
DEFAULT_MIN_MISFIT_PURITY = 0.7
DEFAULT_MIN_MISFIT_ISLAND = 1.25
#: ... and the class they are seen as is the strongest other class of under this share of the rest of their
#: class (for ten classes; :func:`other_base_bar` scales it as the relabelled rule's bar): a class's usual
#: confusions (shirts seen as T-shirts: ~900 of 6,000 shirts, base 0.20-0.23) are large enough to be tight.
DEFAULT_MAX_MISFIT_BASE = 0.05
MISFIT_BASE_FACTOR = 0.45
#: Neighbours for purity, and the rank of the neighbour distances the island compares.
PURITY_NEIGHBOURS = 10
ISLAND_RANK = 5
#: The stage runs only when the other stages flagged under this share of the samples.  It is for the small
#: poison sets they miss; where they found a population it invented groups on a held-out dataset (CIFAR-10
#: narrow ResNet, Trojan 10 %: 37 genuine frog close-ups; BadNets all-to-all 10 %: 224 genuine samples), whose
#: class atypicality is far heavier-tailed (medians of 30-75 in the kept and rejected groups) than on the
#: Fashion-MNIST models the bars were set on.
TAIL_MAX_FLAGGED_SHARE = 0.01
#: Classes with fewer rows are not searched (too few for a group and a background).
MIN_CLASS_ROWS = 100
#: Step 1 scales each class column by ``max(1.4826 MAD, TAIL_SD_FLOOR x SD)``
#: (:func:`.preprocess.robust_standardize`), the floor of the class atypicality the island bar reads, so that a
#: channel nearly silent in a class cannot make a sub-mode of it an island on its own.  Session 19, from
#: ``python3 -m benchmarks.one_feature_check --cifar ROOT`` (against ``--sd-floor 0``) on 11 CIFAR-10 models:
#: the genuine island candidates passing the other bars go 7 -> 0 even without the one-feature bar, and the stage's
#: poisoned flags 144 -> 199 (Blended all-to-all 1 %: 44 -> 99 of 110 flags); on Fashion-MNIST every
#: class column of the low-rate and clean models has MAD / SD >= 0.254, so the floor does not act there.
TAIL_SD_FLOOR = ATYPICALITY_SD_FLOOR
#: At most this many rows of a class are clustered (a seeded random sample); the rest can still join.
MAX_CLUSTERED_ROWS = 20000


def class_components(P: np.ndarray, n_components: int = DEFAULT_COMPONENTS,
                     random_state: Optional[int] = 0) -> np.ndarray:
    """The class's robustly standardised penultimate features reduced to ``n_components`` (PCA)."""
    from flare_core.detectors.preprocess import robust_standardize

    return standardised_components(robust_standardize(np.asarray(P, dtype=np.float64))[0], n_components,
                                   random_state)


def standardised_components(Z: np.ndarray, n_components: int = DEFAULT_COMPONENTS,
                            random_state: Optional[int] = 0) -> np.ndarray:
    """:func:`class_components` of features already robustly standardised (``Z``)."""
    from sklearn.decomposition import PCA

    k = min(n_components, Z.shape[1], len(Z))
    return PCA(k, random_state=random_state).fit_transform(Z) if k < Z.shape[1] else Z


def one_feature_share(Z: np.ndarray, members: np.ndarray) -> float:
    """The share of a group's deviation from its class that lies in its strongest single feature.

    ``Z``: the class's robustly standardised features (n, D), so a row is its deviation from the class's
    median; ``members`` (bool, n).  The group's mean squared z-score per feature, the largest of them over
    their sum: 1/D when the group deviates evenly, 1.0 when one feature carries all of it.  0 for an empty
    group or one that does not deviate at all."""
    members = np.asarray(members, dtype=bool)
    if not members.any():
        return 0.0
    per_feature = np.mean(np.square(np.asarray(Z, dtype=np.float64)[members]), axis=0)
    total = float(per_feature.sum())
    return float(per_feature.max() / total) if total > 0 else 0.0


def strongest_other_class(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) the class each sample's logits rate highest *after its label*: what the model sees in the
    sample besides the class it was labelled.  Dirty-label poison keeps its source class here while the
    model learns the trigger (Fashion-MNIST WaNet 1 %, 10 epochs: 84 % of the poisoned samples), and a
    genuine class has a few usual ones (T-shirts: shirt, pullover, dress in 99 % of them)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    masked = logits.copy()
    masked[np.arange(len(labels)), labels] = -np.inf
    return np.argmax(masked, axis=1)


def other_base_bar(n_classes: int, factor: float = OTHER_BASE_FACTOR) -> float:
    """The relabelled rule's ``max_other_base`` for ``n_classes`` classes: ``factor / (K - 1)`` (0.02 for
    ten classes; 0 for two, where the other class is always the same one).  With ``MISFIT_BASE_FACTOR``:
    the misfit rule's ``max_misfit_base`` (0.05 for ten classes)."""
    return factor / (n_classes - 1) if n_classes > 2 else 0.0


def relabelled_statistics(other: np.ndarray, members: np.ndarray,
                          cover: float = DEFAULT_MIN_OTHER_SHARE) -> dict[str, Any]:
    """What the model sees in the group besides its label: ``other_classes``, the fewest strongest other
    classes (most common first) that cover ``cover`` of the members; ``other_share``, the share of the
    members they cover; ``other_base``, the share of the rest of the class whose strongest other class is
    one of them.  (A group of poisoned sneakers labelled T-shirt: sneaker and ankle boot cover 100 % of
    it and 1 % of the genuine T-shirts.)"""
    members = np.asarray(members, dtype=bool)
    other = np.asarray(other, dtype=np.int64)
    if not members.any() or members.all():
        return {"other_classes": [], "other_share": 0.0, "other_base": 1.0}
    values, counts = np.unique(other[members], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    covered = np.cumsum(counts[order]) / members.sum()
    t = int(np.searchsorted(covered, cover - 1e-12)) + 1
    chosen = values[order][:t]
    return {"other_classes": [int(v) for v in chosen], "other_share": float(covered[t - 1]),
            "other_base": float(np.mean(np.isin(other[~members], chosen)))}


def group_statistics(F: np.ndarray, members: np.ndarray, atypicality: np.ndarray,
                     neighbours: Optional[np.ndarray] = None, other: Optional[np.ndarray] = None,
                     other_cover: float = DEFAULT_MIN_OTHER_SHARE) -> dict[str, Any]:
    """Purity, island and median atypicality of the rows ``members`` (bool) of ``F`` (see the module
    docstring); purity and island are 0 when the group or the rest is too small to measure.
    ``neighbours``: the (n, PURITY_NEIGHBOURS) nearest other rows of every row of ``F``, when the caller
    has them (one query per class instead of one per candidate).  ``other``: every row's
    :func:`strongest_other_class`, which adds :func:`relabelled_statistics` (covering ``other_cover``)."""
    from scipy.spatial import cKDTree

    members = np.asarray(members, dtype=bool)
    m, rest = int(members.sum()), int((~members).sum())
    stats = {"size": m, "purity": 0.0, "island": 0.0,
             "atypicality": float(np.median(atypicality[members])) if m else 0.0}
    if other is not None:
        stats.update(relabelled_statistics(other, members, other_cover))
    if m <= ISLAND_RANK or rest < ISLAND_RANK or len(F) <= PURITY_NEIGHBOURS:
        return stats
    inside = F[members]
    if neighbours is None:
        neighbours = nearest_rows(F)
    stats["purity"] = float(members[neighbours[members]].mean())
    d_in = cKDTree(inside).query(inside, k=ISLAND_RANK + 1)[0][:, ISLAND_RANK]
    d_out = cKDTree(F[~members]).query(inside, k=ISLAND_RANK)[0][:, ISLAND_RANK - 1]
    stats["island"] = float(np.median(d_out / np.maximum(d_in, np.finfo(np.float64).tiny)))
    return stats


def nearest_rows(F: np.ndarray, k: int = PURITY_NEIGHBOURS) -> np.ndarray:
    """(n, k) positions of every row's ``k`` nearest other rows of ``F``."""
    from scipy.spatial import cKDTree

    return cKDTree(F).query(F, k=k + 1)[1][:, 1:]


def tail_group_rule(stats: dict[str, Any], n_class: int, *, min_purity: float = DEFAULT_MIN_PURITY,
                    min_island: float = DEFAULT_MIN_ISLAND, min_atypicality: float = DEFAULT_MIN_ATYPICALITY,
                    max_one_feature_share: float = DEFAULT_MAX_ONE_FEATURE_SHARE,
                    max_share: float = DEFAULT_MINORITY, min_other_share: float = DEFAULT_MIN_OTHER_SHARE,
                    max_other_base: float = DEFAULT_MAX_OTHER_BASE) -> Optional[str]:
    """Step 3's rule on one group's :func:`group_statistics`: ``'island'`` (pure, set apart and atypical
    in more than one feature; the last only when the statistics have ``one_feature_share``),
    ``'relabelled'`` (its members share a strongest other class the rest of the class almost never has;
    only when the statistics have ``other_share``), or None (not kept)."""
    if stats["size"] >= max_share * n_class:
        return None
    if (stats["purity"] >= min_purity and stats["island"] >= min_island
            and stats["atypicality"] >= min_atypicality
            and stats.get("one_feature_share", 0.0) <= max_one_feature_share):
        return "island"
    if "other_share" in stats and stats["other_share"] >= min_other_share and stats["other_base"] < max_other_base:
        return "relabelled"
    return None


def misfit_group_rule(stats: dict[str, Any], n_class: int, *, min_misfit_purity: float = DEFAULT_MIN_MISFIT_PURITY,
                      min_misfit_island: float = DEFAULT_MIN_MISFIT_ISLAND,
                      max_misfit_base: float = DEFAULT_MAX_MISFIT_BASE, max_share: float = DEFAULT_MINORITY,
                      min_misfit_size: int = MISFIT_MIN_SIZE) -> Optional[str]:
    """Step 3b's rule on a misfit group's :func:`group_statistics` (with the relabelled statistics):
    ``'misfit'`` when it has at least ``min_misfit_size`` members, under ``max_share`` of the class, its
    purity and island reach their bars and its ``other_base`` is under ``max_misfit_base``; else None."""
    if stats["size"] < min_misfit_size or stats["size"] >= max_share * n_class:
        return None
    if (stats["purity"] >= min_misfit_purity and stats["island"] >= min_misfit_island
            and stats.get("other_base", 1.0) < max_misfit_base):
        return "misfit"
    return None


def misfit_groups(other: np.ndarray, misfit: np.ndarray, min_size: int = MISFIT_MIN_SIZE) -> list[tuple[int, np.ndarray]]:
    """The candidate misfit groups of one class: for each other class ``o`` the model gives at least
    ``min_size`` of the class's rows (``misfit``: rows whose top logit is not their label, so their
    :func:`strongest_other_class` ``other`` is the class the model gives them), ``(o, member mask)``."""
    other = np.asarray(other, dtype=np.int64)
    misfit = np.asarray(misfit, dtype=bool)
    values, counts = np.unique(other[misfit], return_counts=True)
    return [(int(o), misfit & (other == o)) for o, c in zip(values, counts) if c >= min_size]


def is_tail_group(stats: dict[str, Any], n_class: int, **rule: float) -> bool:
    """Whether :func:`tail_group_rule` keeps the group."""
    return tail_group_rule(stats, n_class, **rule) is not None


def stage_settings(n_classes: Optional[int] = None, sd_floor: float = TAIL_SD_FLOOR,
                   **rule: float) -> dict[str, Any]:
    """Every bar the stage applies, as :func:`tail_group_detect` would with these arguments (the defaults of
    :func:`tail_group_rule` and :func:`misfit_group_rule`, the class-count bars of :func:`other_base_bar` when
    ``n_classes`` is known, then ``rule``'s overrides), plus the clustering and standardising settings and the
    gate: what a run records so that its flags can be traced to the rule that made them."""
    import inspect

    bars: dict[str, Any] = {}
    for fn in (tail_group_rule, misfit_group_rule):
        bars.update({k: v.default for k, v in inspect.signature(fn).parameters.items()
                     if v.kind is inspect.Parameter.KEYWORD_ONLY})
    if n_classes is not None:
        bars.update(max_other_base=other_base_bar(n_classes),
                    max_misfit_base=other_base_bar(n_classes, MISFIT_BASE_FACTOR))
    unknown = sorted(set(rule) - set(bars))
    if unknown:
        raise ValueError(f"Unknown tail-group bar(s) {', '.join(unknown)}; the bars are {', '.join(sorted(bars))}.")
    bars.update(rule)
    return {**bars, "sd_floor": sd_floor, "min_cluster_size": TAIL_MIN_CLUSTER_SIZE, "min_samples": TAIL_MIN_SAMPLES,
            "n_components": DEFAULT_COMPONENTS, "min_class_rows": MIN_CLASS_ROWS,
            "runs_when_others_flagged_under": TAIL_MAX_FLAGGED_SHARE}


def tail_groups_in_class(P: np.ndarray, atypicality: np.ndarray, *, other: Optional[np.ndarray] = None,
                         misfit: Optional[np.ndarray] = None, random_state: Optional[int] = 0, keep_rows: bool = False,
                         sd_floor: float = TAIL_SD_FLOOR,
                         **rule: float) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Steps 1-4 for one class: (flagged rows, group id per row (-1 = none), one record per candidate
    cluster with its statistics, whether it was kept and by which rule).  ``other``: the rows'
    :func:`strongest_other_class` (enables the relabelled rule); ``misfit`` (with ``other``): the rows the
    model classifies as another class than their label (enables step 3b's misfit groups, whose records
    have ``"candidate": "misfit"`` and the ``seen_as`` class); ``rule``: the bars of
    :func:`tail_group_rule` and :func:`misfit_group_rule`; ``keep_rows``: each record also holds its
    members' row positions (for the calibration); ``sd_floor``: step 1's floor on each column's robust
    scale, as a share of its SD."""
    import hdbscan

    P = np.asarray(P, dtype=np.float64)
    atypicality = np.asarray(atypicality, dtype=np.float64)
    n = len(P)
    groups = np.full(n, -1, dtype=np.int64)
    if n < MIN_CLASS_ROWS:
        return np.zeros(n, dtype=bool), groups, []
    from flare_core.detectors.preprocess import robust_standardize

    Z = robust_standardize(P, sd_floor)[0]
    F = standardised_components(Z, random_state=random_state)
    rows = np.arange(n)
    if n > MAX_CLUSTERED_ROWS:
        rows = np.sort(np.random.default_rng(random_state).choice(n, MAX_CLUSTERED_ROWS, replace=False))
    labels = hdbscan.HDBSCAN(min_cluster_size=TAIL_MIN_CLUSTER_SIZE, min_samples=TAIL_MIN_SAMPLES,
                             cluster_selection_method="leaf").fit(F[rows]).labels_
    F_rows, Z_rows = F[rows], Z[rows]
    neighbours = nearest_rows(F_rows)
    misfit_rule = {k: v for k, v in rule.items() if "misfit" in k or k == "max_share"}
    rule = {k: v for k, v in rule.items() if "misfit" not in k}
    records = []
    seed = np.zeros(n, dtype=bool)
    n_kept = 0
    for k in np.unique(labels[labels >= 0]):
        members = labels == k
        if members.sum() >= rule.get("max_share", DEFAULT_MINORITY) * len(rows):
            continue  # a bulk cluster of the class, not a candidate
        stats = group_statistics(F_rows, members, atypicality[rows], neighbours,
                                 None if other is None else np.asarray(other)[rows],
                                 rule.get("min_other_share", DEFAULT_MIN_OTHER_SHARE))
        stats["one_feature_share"] = one_feature_share(Z_rows, members)
        why = tail_group_rule(stats, len(rows), **rule)
        kept = why is not None
        records.append({**{key: round(v, 3) if isinstance(v, float) else v for key, v in stats.items()},
                        "kept": kept, "rule": why, **({"rows": rows[members]} if keep_rows else {})})
        if kept:
            seed[rows[members]] = True
            groups[rows[members]] = n_kept
            n_kept += 1
    if misfit is not None and other is not None:
        # step 3b: the rows the model gives one other class, as a candidate of their own (the dirty-label
        # poison of a backdoor that did not take is fitted as its source class, too spread for HDBSCAN)
        other_rows = np.asarray(other)[rows]
        for o, members in misfit_groups(other_rows, np.asarray(misfit, dtype=bool)[rows],
                                        int(misfit_rule.get("min_misfit_size", MISFIT_MIN_SIZE))):
            stats = group_statistics(F_rows, members, atypicality[rows], neighbours, other_rows)
            stats["one_feature_share"] = one_feature_share(Z_rows, members)  # recorded; the misfit rule ignores it
            why = misfit_group_rule(stats, len(rows), **misfit_rule)
            kept = why is not None
            records.append({"candidate": "misfit", "seen_as": o,
                            **{key: round(v, 3) if isinstance(v, float) else v for key, v in stats.items()},
                            "kept": kept, "rule": why, **({"rows": rows[members]} if keep_rows else {})})
            if kept:
                fresh = members & ~seed[rows]  # rows already in a kept cluster stay in its group
                seed[rows[members]] = True
                groups[rows[fresh]] = n_kept
                n_kept += 1
    flagged = seed.copy()
    if seed.any():
        joined = join_neighbours(F, seed)
        if joined.any():  # a joined row takes the group of its nearest flagged row
            from scipy.spatial import cKDTree

            _, nb = cKDTree(F[seed]).query(F[joined], k=1)
            groups[joined] = groups[np.flatnonzero(seed)[np.asarray(nb).reshape(-1)]]
        flagged |= joined
    return flagged, groups, records


def tail_group_detect(P: np.ndarray, y: np.ndarray, atypicality: np.ndarray, *, logits: Optional[np.ndarray] = None,
                      random_state: Optional[int] = 0, sd_floor: float = TAIL_SD_FLOOR,
                      **rule: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The stage over every class: (flagged (N,), group id per sample within its class (-1 = none),
    evidence per class: the candidates' statistics, the kept groups and how many samples joined).
    ``logits`` (N, K): the model's outputs, which enable the relabelled rule."""
    P = np.asarray(P)  # float32 stays float32: tail_groups_in_class converts a class at a time
    y = np.asarray(y)
    atypicality = np.asarray(atypicality, dtype=np.float64)
    other = misfit = None
    if logits is not None:
        other = strongest_other_class(logits, y)
        misfit = np.argmax(np.asarray(logits), axis=1) != y
        K = np.asarray(logits).shape[1]
        rule = {"max_other_base": other_base_bar(K), "max_misfit_base": other_base_bar(K, MISFIT_BASE_FACTOR),
                **rule}
    flagged = np.zeros(len(P), dtype=bool)
    groups = np.full(len(P), -1, dtype=np.int64)
    evidence: dict[str, Any] = {}
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        f, g, records = tail_groups_in_class(P[idx], atypicality[idx], random_state=random_state, sd_floor=sd_floor,
                                             other=None if other is None else other[idx],
                                             misfit=None if misfit is None else misfit[idx], **rule)
        flagged[idx], groups[idx] = f, g
        kept = [r for r in records if r["kept"]]
        strongest = sorted((r for r in records if not r["kept"]), key=lambda r: -r["island"])[:3]
        evidence[str(int(c))] = {"candidates": len(records), "kept": kept, "strongest_rejected": strongest,
                                 "n_flagged": int(f.sum()),
                                 "n_joined": int(f.sum()) - sum(r["size"] for r in kept)}
    return flagged, groups, evidence
