"""Do the flagged samples share a pattern in their pixels that the unflagged poison carries too?

The model-side stages find poison through what the backdoored model does with it.  Where the backdoor
took only in part (Fashion-MNIST BadNets all-to-all at 0.5 %, ASR 4 %), some classes' poison leaves no mark
there: the model fitted those samples one by one, like genuine hard ones.  But the poison still *carries
the trigger*, and a patch, a blended pattern or a sinusoid is a fixed pattern at fixed pixels that a linear
model reads from the pixels whatever the image shows.  So: train a linear classifier on the images' fine
detail (:func:`highpass_rows`: each pixel minus the mean of its 3x3 neighbourhood; logistic regression, L2,
balanced classes) with the flagged samples as positives and a random sample of the unflagged as negatives,
cross-fitted (``FOLDS`` folds: every score a sample gets comes from a model that did not see it), and

* **use it only if it reads a shared pattern**: at least ``MIN_SEPARATED`` of the held-out positives must
  score above the ``NEGATIVE_QUANTILE`` quantile of the held-out negatives.  A warp (WaNet) is not a fixed
  pixel pattern, so its flagged samples are not separated (Fashion-MNIST WaNet 0.5 % and 1 %: 0-2 % are) and the
  stage adds nothing there; a genuine clump is separated by content only as well as the class's other
  images let it;
* then flag unflagged samples only where they stand *apart* from the tail of the scores: ordering the
  scores from the top, s(1) >= s(2) >= ..., the normalised spacing ``k * (s(k) - s(k+1))`` of an
  exponential tail is exponentially distributed with the tail's scale (estimated as the median spacing over
  the top ``TAIL_ROWS`` / ln 2).  The top k are flagged when their gap to the rest is at least ``MIN_GAP``
  times that scale (the largest such gap for k up to half the rows looked at, among the k whose k-th score
  is above the negatives' quantile).  This is asked twice: over the unflagged samples of *every* class (an
  all-to-all backdoor spreads its poison over every class, and the classes where the model showed nothing
  are the point), then inside each class holding at least ``MIN_POSITIVES`` flags, against that class's own
  tail (an all-to-one backdoor's missed poison sits in the flagged class, and other classes' genuine tails
  can reach above it).  A heavy genuine tail without a group on top flags nothing.  Where no single gap
  passes, a group of at least ``WINDOW_MIN_GROUP`` whose gap read over w = k // 10 spacings is
  ``MIN_WINDOW_GAP`` times the scale is flagged (:func:`windowed_top_group`): a large group whose lower edge
  is fuzzy (session 24: Fashion-MNIST Blended 0.5 % at one epoch, seed 3, 10.1 against a largest single
  gap of 14.1; on the 38 other models checked it reaches at most 4.8, on a group the class test finds anyway,
  and 2.7 where only genuine samples are left).

Why the fine detail and not the pixels (session 23): the flagged samples are the poison the model showed,
which can come from a few source classes only (Fashion-MNIST Blended 0.5 % at 2 epochs: trousers, sandals,
sneakers and boots flagged; pullovers, dresses, coats, shirts and bags missed), and a model on the pixels
learns their *content* as well as the pattern: it ranked the missed poison at the top of its class only in
part (41 of the top 168).  Taking the smooth content away leaves a patch, a noise blend or a glyph; the same
model then ranks all 168 first in their class (gap 36 times the tail's scale; 158 flagged, no genuine
image).  On BadNets all-to-all 0.5 % the gap over all classes grows from 51-61 to 400-484 times the scale.
Where no group is left (the 28 models of the stage's domain, checked old against new on the same flags), the
largest ratio is 8.1 over all classes and 11.4 inside one class; held out, CIFAR-10 BadNets / Blended
all-to-all 1 % stand 3,561 / 2,711 times the scale apart, SIG 1 % 15.65 (benchmarks/NOTES.md, session 23).

Where the other stages flagged fewer than ``MIN_POSITIVES`` samples (a backdoor that did not take: the model
shows nothing), the positives are the samples the model fits worst instead (:func:`seeded_input_pattern_flags`:
its top ``SEED_SHARE`` by training loss, with any flags).  A trigger the model did not learn leaves its poison
fitted one sample at a time, late, so the poison is over-represented there among genuine hard samples that
share nothing; the gate is then ``SEED_MIN_SEPARATED`` of the seed, and the seed's samples past the negatives'
quantile are flagged with the group when one stands apart.  Over the 19 models of the benchmark where the other
stages flag nothing, the seed separates 53-81 % on the six CIFAR-10 BadNets / Blended rows whose backdoor did
not take (all their poison found, 0-2 genuine samples), 0-3.3 % on the clean controls, SIG 0.5 % and WaNet
(where nothing is flagged); benchmarks/NOTES.md, session 24.

The stage reads the model only through that loss: otherwise it is pixels, labels and the other stages' flags.
Pure functions; the estimator that runs it is FLARE default (``input_pattern='auto'``, ``fit(..., images=)``,
and ``latent=``/``logits=`` for the seed).
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

logger = logging.getLogger(__name__)

#: The flagged samples the classifier is trained on must number at least this many.
MIN_POSITIVES = 20
#: Negatives drawn per positive for training (from the unflagged samples), at most ``MAX_NEGATIVES`` in all
#: (the training rows are held as float32 pixels: 20,000 CIFAR-10 images are 246 MB).
NEGATIVES_PER_POSITIVE = 20
MAX_NEGATIVES = 20000
#: The training rows (positives and negatives, float32) may take at most this many bytes: large images get
#: fewer negatives (224x224x3: about 1,780 rows in all), and the stage does not run when there would be fewer
#: negatives than positives.
MAX_TRAIN_BYTES = 1 << 30
#: Cross-fitting folds.
FOLDS = 2
#: L2 strength of the logistic regression (sklearn's C) on pixels scaled to [0, 1].
C = 0.1
#: The held-out negatives' quantile a score must pass (a positive, to count as separated; a new flag too).
NEGATIVE_QUANTILE = 0.99
#: Share of held-out positives that must pass it for the stage to flag anything.
MIN_SEPARATED = 0.8
#: The top unflagged scores looked at for a gap (at least; four per positive when there are more positives).
TAIL_ROWS = 1000
#: A group on top is flagged when its gap to the rest is this many times the tail's scale.
MIN_GAP = 15.0
#: Where no single gap passes ``MIN_GAP``, a group of at least ``WINDOW_MIN_GROUP`` is also flagged when its gap
#: read over w = k // 10 spacings, k * (s(k) - s(k+w)) / w, is at least ``MIN_WINDOW_GAP`` times the tail's
#: scale (:func:`windowed_top_group`: a large group whose lower edge is fuzzy, poison and genuine interleaving).
MIN_WINDOW_GAP = 8.0
WINDOW_MIN_GROUP = 50
#: Rows scored at a time (pixels are converted to float per chunk, not for the whole dataset).
CHUNK = 4096
#: Where the other stages flagged fewer than ``MIN_POSITIVES`` samples, the seed is this share of the samples
#: (at least ``MIN_POSITIVES``) that the model fits worst (:func:`least_fitted_seed`) ...
SEED_SHARE = 0.002
#: ... and the stage flags only when at least this share of the seed separates (:func:`seeded_input_pattern_flags`).
SEED_MIN_SEPARATED = 0.3


def pixel_rows(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float32 (len(rows), H*W*C) pixels in [0, 1] of ``images[rows]`` (uint8 or float images)."""
    sub = np.asarray(images[np.asarray(rows)])
    flat = sub.reshape(len(sub), -1).astype(np.float32)
    return flat / 255.0 if np.asarray(images).dtype == np.uint8 else flat


def highpass_rows(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float32 (len(rows), H*W*C): the pixels of ``images[rows]`` in [0, 1] minus their 3x3 local mean (per
    channel, edges repeated): what is left of an image once its smooth content is taken away."""
    from scipy.ndimage import uniform_filter

    sub = np.asarray(images[np.asarray(rows)])
    x = sub.astype(np.float32)
    if np.asarray(images).dtype == np.uint8:
        x /= 255.0
    size = (1, 3, 3) + (1,) * (x.ndim - 3)  # (N, H, W[, C]): smooth over H and W only
    return (x - uniform_filter(x, size=size, mode="nearest")).reshape(len(sub), -1)


#: What the linear model reads: ``"highpass"`` (default, :func:`highpass_rows`) or ``"pixels"``.
VIEWS = {"highpass": highpass_rows, "pixels": pixel_rows}
VIEW = "highpass"


def decision_scores(model: Any, images: np.ndarray, rows: np.ndarray, view: str = VIEW) -> np.ndarray:
    """``model.decision_function`` of ``images[rows]`` in ``view``, a chunk at a time."""
    rows = np.asarray(rows)
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), CHUNK):
        part = rows[start:start + CHUNK]
        out[start:start + len(part)] = model.decision_function(VIEWS[view](images, part))
    return out


def cross_fitted_scores(images: np.ndarray, positives: np.ndarray, negatives: np.ndarray, score_rows: np.ndarray,
                        *, folds: int = FOLDS, c: float = C, random_state: Optional[int] = 0,
                        view: str = VIEW) -> tuple:
    """(held-out scores of ``positives``, of ``negatives``, scores of ``score_rows``): a logistic regression
    on ``view`` of the images (:data:`VIEWS`) per fold, trained on the other folds' positives (label 1) and
    negatives (label 0); ``score_rows`` (none of them a positive or negative) get the mean of the fold
    models' scores."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0 if random_state is None else int(random_state))
    positives, negatives, score_rows = (np.asarray(a, dtype=np.int64) for a in (positives, negatives, score_rows))
    pos_fold = rng.permutation(len(positives)) % folds
    neg_fold = rng.permutation(len(negatives)) % folds
    pos_s = np.empty(len(positives))
    neg_s = np.empty(len(negatives))
    rest_s = np.zeros(len(score_rows))
    for k in range(folds):
        train = np.concatenate([positives[pos_fold != k], negatives[neg_fold != k]])
        target = np.concatenate([np.ones((pos_fold != k).sum()), np.zeros((neg_fold != k).sum())])
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
        clf.fit(VIEWS[view](images, train), target)
        pos_s[pos_fold == k] = decision_scores(clf, images, positives[pos_fold == k], view)
        neg_s[neg_fold == k] = decision_scores(clf, images, negatives[neg_fold == k], view)
        if len(score_rows):
            rest_s += decision_scores(clf, images, score_rows, view) / folds
    return pos_s, neg_s, rest_s


def top_group(scores: np.ndarray, rows: int, min_gap: float = MIN_GAP,
              floor: float = -np.inf) -> tuple[int, float, float]:
    """(k, gap ratio, tail scale): the top-k group of ``scores`` (descending order taken here) whose
    normalised gap ``k * (s(k) - s(k+1))`` to the rest is largest relative to the tail's scale, for k up to
    half of the top ``rows`` and with the k-th score above ``floor``; k is 0 when that ratio is under
    ``min_gap`` (or no score is above ``floor``: ratio 0)."""
    srt, m, spacing, scale = _tail(scores, rows)
    if m < 2:
        return 0, 0.0, 0.0
    if scale <= 0:
        return 0, 0.0, scale
    half = max(1, m // 2)
    ratio = np.where(srt[:half] > floor, spacing[:half] / scale, 0.0)
    j = int(np.argmax(ratio))
    return (j + 1 if ratio[j] >= min_gap else 0), float(ratio[j]), scale


def _tail(scores: np.ndarray, rows: int) -> tuple[np.ndarray, int, np.ndarray, float]:
    """(scores sorted descending, m = the top rows looked at, the normalised spacings k * (s(k) - s(k+1)) for
    k = 1..m, the tail's scale: their median / ln 2); m < 2 means too few scores (spacings empty, scale 0)."""
    srt = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    m = min(len(srt) - 1, int(rows))
    if m < 2:
        return srt, m, np.empty(0), 0.0
    spacing = np.arange(1, m + 1) * (srt[:m] - srt[1:m + 1])
    return srt, m, spacing, float(np.median(spacing) / np.log(2))


def windowed_top_group(scores: np.ndarray, rows: int, min_gap: float = MIN_WINDOW_GAP, floor: float = -np.inf,
                       min_group: int = WINDOW_MIN_GROUP) -> tuple[int, float]:
    """(k, ratio): the top-k group of ``scores`` (descending order taken here), k from ``min_group`` up to half
    of the top ``rows`` with the k-th score above ``floor``, whose gap read over w = k // 10 spacings,
    ``k * (s(k) - s(k+w)) / w``, is largest relative to the tail's scale (as in :func:`top_group`); k is 0 when
    that ratio is under ``min_gap``.  Under an exponential tail the ratio is a mean of w unit-mean spacings
    (a Gamma(w) / w variable), so a wide window needs a far lower bar than a single spacing."""
    srt, m, _, scale = _tail(scores, rows)
    if m < 2:
        return 0, 0.0
    k = np.arange(int(min_group), max(1, m // 2) + 1)
    w = np.maximum(1, k // 10)
    k, w = k[k + w <= m], w[k + w <= m]
    if scale <= 0 or not len(k):
        return 0, 0.0
    ratio = np.where(srt[k - 1] > floor, k * (srt[k - 1] - srt[k - 1 + w]) / (w * scale), 0.0)
    j = int(np.argmax(ratio))
    return (int(k[j]) if ratio[j] >= min_gap else 0), float(ratio[j])


def input_pattern_flags(images: Any, labels: Any, flagged: Any, *, random_state: Optional[int] = 0,
                        min_positives: int = MIN_POSITIVES, negatives_per_positive: int = NEGATIVES_PER_POSITIVE,
                        min_separated: float = MIN_SEPARATED, min_gap: float = MIN_GAP,
                        view: str = VIEW, positives_are: str = "the flagged samples",
                        max_train_bytes: int = MAX_TRAIN_BYTES) -> tuple[np.ndarray, np.ndarray, dict]:
    """The new flags of the stage (module docstring): (bool N, the classifier's score of every sample
    (held-out for the flagged and the sampled negatives; NaN when it did not run), a JSON-able record with
    ``used``, ``view``, ``separated`` (share of held-out positives past the negatives' quantile), ``gap_ratio``
    (over all unflagged samples), ``classes`` (the test inside each class holding at least ``min_positives``
    flags: ``gap_ratio``, ``n_new``), ``n_new``, ``new_per_class`` or ``why_not``, which names the positives
    ``positives_are``).  The training rows are kept under ``max_train_bytes`` (:data:`MAX_TRAIN_BYTES`).
    Inputs are not modified."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    flagged = np.asarray(flagged, dtype=bool)
    n = len(labels)
    if images.ndim < 3 or len(images) != n:
        raise ValueError(f"images must hold one image per sample ({n}), got shape {images.shape}.")
    if flagged.shape != (n,):
        raise ValueError(f"flagged must have one entry per sample ({n}), got shape {flagged.shape}.")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {sorted(VIEWS)}, got {view!r}.")
    new = np.zeros(n, dtype=bool)
    score = np.full(n, np.nan)
    positives = np.flatnonzero(flagged)
    record: dict[str, Any] = {"used": False, "n_positives": int(len(positives))}
    if len(positives) < min_positives:
        record["why_not"] = f"fewer than {min_positives} flagged samples to learn a pattern from"
        return new, score, record
    unflagged = np.flatnonzero(~flagged)
    if len(unflagged) < 2 * min_positives:
        record["why_not"] = "too few unflagged samples to compare the flagged ones with"
        return new, score, record
    rng = np.random.default_rng(0 if random_state is None else int(random_state))
    row_bytes = 4 * int(np.prod(images.shape[1:]))
    n_neg = min(len(unflagged), negatives_per_positive * len(positives), MAX_NEGATIVES,
                max_train_bytes // row_bytes - len(positives))
    if n_neg < len(positives):
        record["why_not"] = (f"the images are too large for the stage's memory budget: {len(positives):,} positives "
                             f"and as many negatives of {row_bytes // 4:,} values each need more than "
                             f"{max_train_bytes / 2**30:.1f} GiB")
        return new, score, record
    negatives = np.sort(rng.choice(unflagged, size=n_neg, replace=False))
    rest = np.setdiff1d(unflagged, negatives, assume_unique=True)
    pos_s, neg_s, rest_s = cross_fitted_scores(images, positives, negatives, rest, random_state=random_state,
                                               view=view)
    score[positives], score[negatives], score[rest] = pos_s, neg_s, rest_s
    neg_q = float(np.quantile(neg_s, NEGATIVE_QUANTILE))
    separated = float((pos_s > neg_q).mean())
    record.update({"used": True, "view": view, "n_negatives": int(n_neg), "separated": round(separated, 4),
                   "negative_quantile": neg_q, "min_separated": min_separated, "min_gap": min_gap})
    if separated < min_separated:
        record["why_not"] = (f"{positives_are} do not share a pixel pattern a linear model reads: "
                             f"{separated:.0%} of them score above the unflagged's {NEGATIVE_QUANTILE:.0%} quantile "
                             f"(at least {min_separated:.0%} needed)")
    else:
        rows = max(TAIL_ROWS, 4 * len(positives))
        # over every unflagged sample (an all-to-all backdoor's poison in classes with no flag) ...
        k, ratio, scale, window = _group_on_top(unflagged, score, rows, min_gap, neg_q, new)
        record.update({"gap_ratio": round(ratio, 2), "window_gap_ratio": round(window, 2),
                       "tail_scale": round(scale, 4)})
        # ... and inside each class holding flags, where its own tail is the reference (an all-to-one
        # backdoor's missed poison sits in the flagged class, below other classes' genuine tails)
        per_class: dict[str, Any] = {}
        for c in np.unique(labels[flagged]):
            in_class = labels == c
            if (flagged & in_class).sum() < min_positives:
                continue
            kc, ratio_c, _, window_c = _group_on_top(np.flatnonzero(~flagged & ~new & in_class), score, rows,
                                                     min_gap, neg_q, new)
            per_class[str(int(c))] = {"gap_ratio": round(ratio_c, 2), "window_gap_ratio": round(window_c, 2),
                                      "n_new": int(kc)}
        record["classes"] = per_class
        if not new.any():
            best = max([ratio] + [e["gap_ratio"] for e in per_class.values()])
            best_w = max([window] + [e["window_gap_ratio"] for e in per_class.values()])
            record["why_not"] = (f"no group of unflagged samples stands apart on top of the scores (largest gap "
                                 f"{best:.1f} times the tail's scale, {min_gap:g} needed; over a window of spacings "
                                 f"{best_w:.1f}, {MIN_WINDOW_GAP:g} needed)")
        else:
            record["threshold"] = round(float(score[new].min()), 4)
    record = _count_new(record, labels, new)
    logger.info("input pattern (%s): %.0f%% of %d flagged separated, gap %s times the tail's scale (per class: %s), "
                "%d new flags", view, 100 * separated, len(positives), record.get("gap_ratio", "-"),
                {c: e["gap_ratio"] for c, e in record.get("classes", {}).items()}, int(new.sum()))
    return new, score, record


def _group_on_top(candidates: np.ndarray, score: np.ndarray, rows: int, min_gap: float, floor: float,
                  new: np.ndarray) -> tuple[int, float, float, float]:
    """(k, gap ratio, tail scale, windowed gap ratio): :func:`top_group` of ``score[candidates]`` above
    ``floor``, or where it finds no group :func:`windowed_top_group`; marks the group in ``new`` (in place)."""
    if len(candidates) < 3:
        return 0, 0.0, 0.0, 0.0
    order = candidates[np.argsort(-score[candidates], kind="stable")]
    k, ratio, scale = top_group(score[order], rows, min_gap, floor)
    window = 0.0
    if k == 0:
        k, window = windowed_top_group(score[order], rows, floor=floor)
    new[order[:k]] = True
    return k, ratio, scale, window


def least_fitted_seed(loss: Any, flagged: Any, share: float = SEED_SHARE, min_rows: int = MIN_POSITIVES) -> np.ndarray:
    """bool N: the ``flagged`` samples and the ``max(min_rows, round(share * N))`` samples with the highest
    ``loss`` (the model's per-sample training loss: those it fits worst; ties by index)."""
    loss = np.asarray(loss, dtype=np.float64)
    flagged = np.asarray(flagged, dtype=bool)
    if loss.ndim != 1 or flagged.shape != loss.shape:
        raise ValueError(f"loss and flagged must be 1-D with one entry per sample, got shapes {loss.shape} and "
                         f"{flagged.shape}.")
    if not np.isfinite(loss).all():
        raise ValueError("loss must be finite for every sample (check the logits for NaN or inf).")
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}.")
    seed = flagged.copy()
    k = min(len(loss), max(int(min_rows), int(round(share * len(loss)))))
    seed[np.argsort(-loss, kind="stable")[:k]] = True
    return seed


def seeded_input_pattern_flags(images: Any, labels: Any, flagged: Any, loss: Any, *,
                               random_state: Optional[int] = 0, share: float = SEED_SHARE,
                               min_separated: float = SEED_MIN_SEPARATED, min_gap: float = MIN_GAP,
                               view: str = VIEW) -> tuple[np.ndarray, np.ndarray, dict]:
    """The stage where the other stages flagged too few samples to learn from (a backdoor that did not take
    leaves the model-side stages nothing): the positives are the flagged samples and the ones the model fits
    worst (:func:`least_fitted_seed`).  Poison whose trigger the model did not learn is fitted one sample at a
    time, late, so it is over-represented there, among genuine hard samples that share nothing; the share of the
    seed that separates is then about its poisoned share (CIFAR-10 0.5-1 % rows whose backdoor did not take:
    53-81 %; clean models and SIG 0.5 %: 0-3.3 %; benchmarks/NOTES.md, session 24), so the gate is
    ``min_separated`` (0.3) instead of :data:`MIN_SEPARATED`.  When a group stands apart on top
    (:func:`input_pattern_flags`), it is flagged together with the seed's samples past the negatives' quantile
    (the seed's poison); with no group, nothing is flagged (the seed's hard samples alone are no finding).

    Returns (bool N: new flags, none of them in ``flagged``; scores; the record of :func:`input_pattern_flags`
    with ``seed``: ``rule``, ``share``, ``n`` (seed size), ``n_flagged_before``, ``n_flagged`` (seed samples
    flagged)).  Inputs are not modified."""
    flagged = np.asarray(flagged, dtype=bool)
    seed = least_fitted_seed(loss, flagged, share)
    new, score, record = input_pattern_flags(images, labels, seed, random_state=random_state,
                                             min_separated=min_separated, min_gap=min_gap, view=view,
                                             positives_are="the samples the model fits worst (the seed)")
    seeded = np.zeros_like(new)
    if new.any():
        seeded = seed & ~flagged & (score > record["negative_quantile"])
        new = new | seeded
    record["seed"] = {"rule": "least fitted (highest training loss)", "share": share, "n": int(seed.sum()),
                      "n_flagged_before": int(flagged.sum()), "n_flagged": int(seeded.sum())}
    return new, score, _count_new(record, np.asarray(labels), new)


def _count_new(record: dict, labels: np.ndarray, new: np.ndarray) -> dict:
    """``record`` with ``n_new`` and ``new_per_class`` counted from ``new``."""
    classes, counts = np.unique(labels[new], return_counts=True)
    return {**record, "n_new": int(new.sum()),
            "new_per_class": {str(int(k)): int(v) for k, v in zip(classes, counts)}}
