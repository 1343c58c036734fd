"""Smoke test of the benchmark harness (benchmarks/): a tiny end-to-end run on scikit-learn digits.

Not the benchmark itself (that takes hours): 2 small models x 2 detectors, one purification, one speed row.
"""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("art")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    pytest.importorskip("flare_core.detectors.registry")
    from benchmarks.run_all import run_quick

    work = tmp_path_factory.mktemp("bench")
    md = run_quick(work, detectors=("flare", "art-ss"), speed_stages=("features",))
    return work, md


def test_report_lists_every_model_with_its_command(quick):
    work, md = quick
    text = md.read_text()
    assert "## Detection matrix" in text and "## Purification outcome" in text and "## Model zoo" in text
    assert "python3 -m benchmarks.zoo digits-badnets-10 --retrain" in text
    assert "python3 -m benchmarks.run_all --quick" in text
    assert (work / "plots" / "detect_f1_fmnist.png").stat().st_size > 0


def test_matrix_has_one_row_per_cell_with_valid_metrics(quick):
    work, _ = quick
    with open(work / "results" / "detect_matrix.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["model"], r["detector"]) for r in rows) == [
        ("digits-badnets-10", "art-ss"), ("digits-badnets-10", "flare"),
        ("digits-clean", "art-ss"), ("digits-clean", "flare")]
    gt = json.loads((work / "zoo" / "digits-badnets-10" / "ground_truth.json").read_text())
    for r in rows:
        assert 0.0 <= float(r["fpr"]) <= 1.0
        if r["model"] == "digits-clean":
            assert int(r["n_poisoned"]) == 0 and r["tpr"] == ""
        else:
            assert int(r["n_poisoned"]) == gt["n_poisoned"] == len(gt["poisoned_indices"]) > 0
            assert 0.0 <= float(r["tpr"]) <= 1.0
    art_ss = next(r for r in rows if r["model"] == "digits-badnets-10" and r["detector"] == "art-ss")
    assert art_ss["auroc"] != ""  # scored with ART's own spectral_signature_scores


def test_zoo_manifest_records_how_each_model_was_made(quick):
    work, _ = quick
    man = json.loads((work / "zoo" / "MANIFEST.json").read_text())["models"]
    assert set(man) == {"digits-clean", "digits-badnets-10"}
    for name, m in man.items():
        assert m["command"] == f"python3 -m benchmarks.zoo {name} --retrain"
        assert m["spec"]["seed"] == 0 and m["spec"]["epochs"] >= 1 and m["machine"]["cpu_count"] >= 1
        assert (work / "zoo" / name / "model.pt").is_file() and (work / "zoo" / name / "model.json").is_file()


def test_purification_accounts_for_every_sample(quick):
    work, _ = quick
    r = json.loads((work / "results" / "purification" / "digits-badnets-10.json").read_text())
    assert r["purified_n"] + r["flare_flagged"] == r["n_train"]
    assert 0 <= r["purified_poison_left"] <= r["n_poisoned"]
    assert r["ceiling_n"] == r["n_train"] - r["n_poisoned"]
    for k in ("poisoned_ba", "purified_ba", "ceiling_ba", "purified_asr", "ceiling_asr"):
        assert 0.0 <= r[k] <= 1.0


def test_purification_seed_spread_adds_a_second_seed_and_reuses_its_models(quick):
    from benchmarks import purification
    from benchmarks.zoo import ZooSpec, build

    work, _ = quick
    path = work / "results" / "purification" / "digits-badnets-10.json"
    r = json.loads(path.read_text())
    assert r["seeds"] == [0, 1]
    assert "Over several retraining seeds" in quick[1].read_text()
    assert "`python3 -m benchmarks.purification digits-badnets-10 --seeds 2`" in quick[1].read_text()
    for k in ("purified_ba", "purified_asr", "ceiling_ba", "ceiling_asr"):
        assert r[f"{k}_by_seed"][0] == r[k]  # the row's own seed is the first
        assert r[f"{k}_mean"] == pytest.approx(sum(r[f"{k}_by_seed"]) / 2, abs=1e-5)
    assert r["meets_issue3_mean"] == (r["purified_asr_mean"] < 0.02 and r["ba_gap_to_ceiling_points_mean"] <= 1.0)
    seed1 = work / "zoo" / "digits-badnets-10" / "derived" / "purified-seed1"
    m = json.loads((seed1 / "metrics.json").read_text())
    assert m["seed"] == 1 and m["n_train"] == r["purified_n"]
    assert not (work / "cache" / "digits-badnets-10" / "purified-rebuilt").exists()  # scratch removed
    before = (seed1 / "model.pt").stat().st_mtime_ns
    spec = ZooSpec(name="digits-badnets-10", data="builtin:digits", attack="badnets", rate=0.1, epochs=4)
    again = purification.seed_spread(build(spec, zoo=work / "zoo", cache=work / "cache"), r, (0, 1),
                                     zoo=work / "zoo", cache=work / "cache", out_dir=work / "results" / "purification")
    assert (seed1 / "model.pt").stat().st_mtime_ns == before and again["purified_asr_by_seed"] == r["purified_asr_by_seed"]


def test_rerun_reuses_models_and_leaves_the_data_unchanged(quick):
    from benchmarks.zoo import ZooSpec, build

    work, _ = quick
    model = work / "zoo" / "digits-badnets-10" / "model.pt"
    data = work / "cache" / "digits-badnets-10" / "train.npz"
    before = (_sha(model), _sha(data), model.stat().st_mtime_ns)
    spec = ZooSpec(name="digits-badnets-10", data="builtin:digits", attack="badnets", rate=0.1, epochs=4)
    build(spec, zoo=work / "zoo", cache=work / "cache")
    assert (_sha(model), _sha(data), model.stat().st_mtime_ns) == before


def test_speed_row_measured_in_a_subprocess(quick):
    work, _ = quick
    sp = json.loads((work / "results" / "speed" / "speed.json").read_text())
    (row,) = sp["rows"]
    assert row["stage"] == "features" and row["n"] == 500 and row["seconds"] > 0
    assert row["peak_rss_mb"] >= row["rss_before_mb"] > 0


def test_art_wrapper_keeps_logits_and_exposes_penultimate_features():
    import torch

    from benchmarks.art_baselines import PenultimateLast
    from flare_core.models import build_model

    torch.manual_seed(0)
    m = build_model("small-cnn", 3, 1, (16, 16)).eval()
    w = PenultimateLast(m).eval()
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(w(x), m(x))
        assert list(dict(w.named_children())) == ["body"]
        assert w.body(x).shape == (4, m.classifier.in_features)
    assert not np.shares_memory(x.numpy(), w(x).detach().numpy())


def test_loss_notes_name_a_baseline_that_beats_flare_on_f1_or_ranks_better():
    from benchmarks.report import loss_notes

    base = {"model": "m", "attack": "badnets", "rate": 0.1, "n": 1000, "n_poisoned": 100, "note": ""}
    flare = dict(base, detector="flare", tpr=0.99, fpr=0.0, f1=0.99, precision=1.0, auroc=0.80)
    good_ranker = dict(base, detector="ss", tpr=0.5, fpr=0.1, f1=0.40, precision=0.4, auroc=0.95)
    assert loss_notes([flare, good_ranker]) == [
        "`m`: ss ranks the samples better than FLARE default's scores (AUROC 0.950 vs 0.800)."]
    better_f1 = dict(good_ranker, f1=0.95, auroc=0.5)
    note = loss_notes([dict(flare, f1=0.9), better_f1])[0]
    assert "**ss beats FLARE default** on F1" in note
    assert "ss: TPR 50.00 % at FPR 10.00 %, precision 40.00 % where 10.00 % of the samples are poisoned" in note
    assert loss_notes([flare, dict(good_ranker, auroc=0.805)]) == []  # within 0.01


def test_tail_calibration_summary_counts_kept_genuine_and_poisoned_clusters():
    from benchmarks.tail_calibration import summary

    rows = [
        {"model": "m", "class": 0, "size": 30, "purity": 0.95, "island": 2.4, "atypicality": 2.2, "kept": True,
         "poisoned": 29, "poisoned_share": 0.967, "class_poisoned": 30},
        {"model": "m", "class": 1, "size": 300, "purity": 0.94, "island": 1.5, "atypicality": 1.5, "kept": False,
         "poisoned": 0, "poisoned_share": 0.0, "class_poisoned": 0},
        {"model": "m", "class": 2, "size": 20, "purity": 0.9, "island": 1.8, "atypicality": 1.9, "kept": True,
         "poisoned": 0, "poisoned_share": 0.0, "class_poisoned": 0},
    ]
    s = summary(rows)
    assert (s["candidates"], s["genuine"], s["poisoned"], s["poisoned_kept"]) == (3, 2, 1, 1)
    assert [r["class"] for r in s["genuine_kept"]] == [2]
    assert s["poison_in_kept"] == 29 and s["genuine_in_kept"] == 1 + 20
    assert s["genuine_closest"][0]["class"] == 2 and s["genuine_closest"][0]["margin"] >= 1.0


def test_tail_calibration_summary_counts_kept_groups_by_rule_and_the_nearest_relabelled_genuine():
    from benchmarks.tail_calibration import summary

    base = {"model": "m", "class": 0, "purity": 0.7, "island": 1.2, "atypicality": 1.2, "class_poisoned": 60}
    rows = [
        {**base, "size": 30, "kept": True, "rule": "island", "poisoned": 30, "poisoned_share": 1.0,
         "other_classes": [3], "other_share": 1.0, "other_base": 0.3},
        {**base, "size": 25, "kept": True, "rule": "relabelled", "poisoned": 25, "poisoned_share": 1.0,
         "other_classes": [7, 9], "other_share": 0.96, "other_base": 0.01},
        {**base, "size": 17, "kept": False, "rule": None, "poisoned": 0, "poisoned_share": 0.0,
         "other_classes": [2], "other_share": 0.88, "other_base": 0.042},
        {**base, "size": 40, "kept": False, "rule": None, "poisoned": 0, "poisoned_share": 0.0,
         "other_classes": [2, 4], "other_share": 0.8, "other_base": 0.6},
    ]
    s = summary(rows)
    assert s["poisoned_kept_by_rule"] == {"island": 1, "relabelled": 1}
    assert [r["other_base"] for r in s["genuine_closest_relabelled"]] == [0.042, 0.6]


def test_tail_calibration_summary_keeps_misfit_candidates_apart():
    from benchmarks.tail_calibration import summary

    base = {"model": "m", "class": 0, "atypicality": 1.2, "class_poisoned": 60, "other_classes": [3], "other_share": 1.0}
    cluster = {**base, "size": 30, "purity": 0.9, "island": 1.9, "kept": True, "rule": "island", "poisoned": 30,
               "poisoned_share": 1.0, "other_base": 0.3}
    misfits = [
        {**base, "candidate": "misfit", "seen_as": 3, "size": 25, "purity": 0.9, "island": 1.6, "kept": True,
         "rule": "misfit", "poisoned": 24, "poisoned_share": 0.96, "other_base": 0.01},
        {**base, "candidate": "misfit", "seen_as": 8, "size": 37, "purity": 0.62, "island": 1.15, "kept": False,
         "rule": None, "poisoned": 0, "poisoned_share": 0.0, "other_base": 0.003},
        {**base, "candidate": "misfit", "seen_as": 0, "size": 900, "purity": 0.75, "island": 1.17, "kept": False,
         "rule": None, "poisoned": 0, "poisoned_share": 0.0, "other_base": 0.2},
    ]
    s = summary([cluster] + misfits)
    assert s["candidates"] == 1 and s["poison_in_kept"] == 30  # the cluster numbers hold clusters only
    m = s["misfit"]
    assert (m["candidates"], m["genuine"], m["poisoned"], m["poisoned_kept"]) == (3, 2, 1, 1)
    assert m["poison_in_kept"] == 24 and m["genuine_in_kept"] == 1
    assert [r["size"] for r in m["genuine_closest"]] == [37]  # the 900 are over the base bar
    assert m["genuine_closest"][0]["margin"] == pytest.approx(0.886, abs=1e-3)
    assert m["genuine_tightest"][0]["size"] == 900


def test_report_has_the_tail_calibration_and_the_detector_stage_seconds(tmp_path):
    from benchmarks import report
    from benchmarks.common import write_json

    res = tmp_path / "results"
    g = {"model": "fmnist-clean", "class": 6, "size": 17, "purity": 0.82, "island": 1.61, "atypicality": 1.85,
         "other_share": 0.88, "other_base": 0.042}
    sm = {"candidates": 10, "genuine": 8, "poisoned": 2, "genuine_kept": [], "genuine_closest": [g],
          "genuine_closest_relabelled": [g], "poisoned_kept": 2, "poisoned_kept_by_rule": {"island": 1, "relabelled": 1},
          "poison_in_kept": 55, "genuine_in_kept": 0}
    write_json(res / "tail_calibration.json", {"command": "python3 -m benchmarks.tail_calibration", "chosen_on": sm,
                                               "checked_after": sm, "cifar": {"candidates": 0}, "all": sm, "rows": []})
    row = {"model": "fmnist-wanet-1-e10", "dataset": "fashion-mnist", "arch": "small-cnn", "attack": "wanet",
           "mode": "all-to-one", "rate": 0.01, "n": 60000, "n_poisoned": 600, "detector": "flare", "tpr": 0.49,
           "fpr": 0.0, "precision": 1.0, "f1": 0.65, "auroc": 0.97, "n_flagged": 293, "flagged_fraction": 0.005,
           "seconds": 60.0, "subspace": 5, "note": "", "machine": "cpu-2core", "command": "x",
           "phase_seconds": {"umap": 30.0, "latent": 13.5, "tail_groups": 9.0, "total": 60.0, "prefixes_tried": 1}}
    write_json(res / "detect_matrix.json", {"rows": [row]})
    text = report.build(res, tmp_path / "RESULTS.md", tmp_path / "plots", tmp_path / "zoo").read_text()
    assert "## Tail-group stage calibration" in text and "| 10 | 8 | 2 | 0 | 2 (1 / 1) | 55 / 0 |" in text
    assert "other_base 0.042" in text and "CIFAR-10 narrow ResNet" not in text  # no CIFAR candidates: no row
    assert "## Where FLARE default's detector time goes" in text
    assert "| fmnist-wanet-1-e10 | 60000 | 60.0 | 1 | 30.0 | - | 13.5 | 9.0 | - | - | 7.5 |" in text


def test_loss_ranking_row_ranks_unfitted_poison_and_reports_the_top_share(tmp_path):
    from benchmarks.common import write_json
    from benchmarks.loss_ranking import model_row

    rng = np.random.default_rng(0)
    n, k = 2000, 4
    y = rng.integers(0, k, n)
    poisoned = np.arange(0, n, 100)  # 20 samples (1 %) the model does not fit: their label's logit is low
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 6.0
    logits[poisoned, y[poisoned]] -= 12.0
    c = tmp_path / "cache" / "m"
    c.mkdir(parents=True)
    np.save(c / "logits.npy", logits)
    np.savez(c / "train.npz", y=y)
    write_json(c / "ground_truth.json", {"poisoned_indices": poisoned.tolist()})
    before = logits.copy()
    row = model_row("m", cache=tmp_path / "cache", results=tmp_path / "results", zoo=tmp_path / "zoo")
    assert row["loss_auroc"] == 1.0 and row["top_tpr"] == 1.0 and row["top_fpr"] == 0.0
    assert row["median_loss_poisoned"] > row["median_loss_genuine"] and row["flare_auroc"] is None
    np.testing.assert_array_equal(np.load(c / "logits.npy"), before)
    write_json(c / "ground_truth.json", {"poisoned_indices": []})
    assert model_row("m", cache=tmp_path / "cache", results=tmp_path / "results", zoo=tmp_path / "zoo") is None


def test_one_feature_check_summary_counts_island_like_candidates_and_changed_models():
    from benchmarks.one_feature_check import summary

    def cand(share, poisoned, purity=0.95):
        return {"size": 30, "purity": purity, "island": 2.5, "atypicality": 3.0, "one_feature_share": share,
                "kept": share <= 0.9, "rule": "island", "poisoned_share": poisoned}
    models = [
        {"model": "a", "with_bar": {"flagged": 30, "poisoned": 30}, "without_bar": {"flagged": 30, "poisoned": 30},
         "candidates": [cand(0.2, 1.0), cand(0.4, 1.0), cand(0.99, 0.0, purity=0.5)]},
        {"model": "b", "with_bar": {"flagged": 0, "poisoned": 0}, "without_bar": {"flagged": 25, "poisoned": 0},
         "candidates": [cand(0.999, 0.0), cand(0.05, 0.0, purity=0.5)]},
    ]
    s = summary(models)
    assert s["island_like_poisoned"] == 2 and s["island_like_poisoned_max_share"] == 0.4
    assert s["island_like_genuine"] == 1 and s["island_like_genuine_min_share"] == 0.999  # purity 0.5 is not island-like
    assert s["changed_models"] == ["b"]
    assert (s["flagged_without_bar"], s["flagged_with_bar"]) == (55, 30)


def test_a_floor_under_the_smallest_mad_to_sd_changes_nothing_and_a_silent_column_has_a_ratio_near_zero():
    from benchmarks.atypicality_floor import min_mad_to_sd
    from flare_core.detectors.scoring import class_atypicality

    rng = np.random.default_rng(0)
    P = rng.normal(size=(400, 8))
    y = np.repeat([0, 1], 200)
    before = P.copy()
    r = min_mad_to_sd(P, y)
    assert 0.5 < r < 1.5
    np.testing.assert_allclose(class_atypicality(P, y, sd_floor=0.9 * r), class_atypicality(P, y, sd_floor=0.0))
    assert not np.allclose(class_atypicality(P, y, sd_floor=2.0 * r), class_atypicality(P, y, sd_floor=0.0))
    silent = P.copy()
    silent[:, 0] = np.abs(rng.normal(size=400)) * 1e-3
    silent[:10, 0] = 0.7  # one near-silent channel firing for ten samples of class 0
    assert min_mad_to_sd(silent, y) < 0.1
    np.testing.assert_array_equal(P, before)


def test_floored_columns_counts_the_class_columns_a_floor_raises():
    from benchmarks.one_feature_check import floored_columns

    rng = np.random.default_rng(1)
    P = rng.normal(size=(400, 6))
    y = np.repeat([0, 1], 200)
    assert floored_columns(P, y, 0.2) == 0
    P[:200, 0] = 0.0
    P[:6, 0] = 1.0  # class 0's column 0: MAD 0, SD > 0 -> raised by any floor
    assert floored_columns(P, y, 0.2) == 1


def test_ranking_check_finds_a_poison_along_a_class_top_direction_and_keeps_shapes():
    """A poison population displaced along one direction of its class: the spectral score (and so the
    mean of ranks) ranks it near the top; every ranking has one value per sample; the input is untouched."""
    from sklearn.metrics import roc_auc_score

    from benchmarks.ranking_check import rankings

    rng = np.random.default_rng(2)
    P = rng.normal(size=(1200, 10))
    y = np.repeat([0, 1, 2], 400)
    truth = np.zeros(len(y), bool)
    truth[:40] = True
    P[:40, 3] += 5.0  # 10 % of class 0, along one feature
    before = P.copy()
    r, modes, member = rankings(P, y)
    assert set(r) == {"atypicality", "spectral", "mean_rank", "minority_tier"}
    assert all(v.shape == (len(y),) and np.all(np.isfinite(v)) for v in r.values())
    assert roc_auc_score(truth, r["spectral"]) > 0.95 and roc_auc_score(truth, r["mean_rank"]) > 0.9
    # the minority-mode test finds the displaced population in class 0 alone, and the tier ranks it first
    assert modes["0"]["holds"] and not modes["1"]["holds"] and not modes["2"]["holds"]
    assert roc_auc_score(truth, r["minority_tier"]) > 0.99
    assert member.shape == (len(y),) and not member[y != 0].any()
    np.testing.assert_array_equal(P, before)


def test_ranking_check_build_refuses_to_train_a_missing_zoo_model(tmp_path):
    """``--build`` runs a feature pass; a zoo model that was never trained is an error, not a silent training."""
    import dataclasses

    from benchmarks.ranking_check import ensure_cache
    from benchmarks.zoo import FMNIST_SPECS

    spec = dataclasses.replace(FMNIST_SPECS["fmnist-clean"], name="fmnist-never-trained")
    with pytest.raises(SystemExit, match="fmnist-never-trained is not trained; train it first"):
        ensure_cache("fmnist-never-trained", {"fmnist-never-trained": spec}, cache=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing generated or trained


def test_trigger_summary_separates_poison_genuine_and_all_to_all_modes():
    """The RESULTS paragraph on the minority modes' trigger test reads ranking_check's rows: all-to-one poison
    modes, all-to-all ones and modes that are not poison are reported apart and judged by the stage's rule;
    the control population is split into classes without poison and mostly clean groups of poisoned classes;
    without any test there is no paragraph."""
    from benchmarks.report import _trigger_summary

    def mode(n, poisoned, moved):
        return {"holds": True, "n_members": n, "members_poisoned": poisoned, "moved_in": moved, "moved_in_control": 0.01}

    rows = [{"model": "cifar-blended-1-e30", "minority_modes": {"0": mode(497, 475, 0.31)}},
            {"model": "cifar-badnets-a2a-10-e12", "minority_modes": {"1": mode(520, 520, 0.14)}},
            {"model": "fmnist-badnets-10-gn", "minority_modes": {
                "1": mode(581, 0, 0.017),
                "2": {"holds": False, "n_poisoned": 0,
                      "lighter_component": {"moved_in": 0.17, "moved_in_control": 0.01, "n": 2000, "poisoned": 0}},
                "0": {"holds": False, "n_poisoned": 6000,
                      "lighter_component": {"moved_in": 0.97, "moved_in_control": 0.1, "n": 5999, "poisoned": 5999}},
                "3": {"holds": False, "n_poisoned": 3000,
                      "lighter_component": {"moved_in": 0.85, "moved_in_control": 0.0, "n": 2500, "poisoned": 2}}}}]
    text = _trigger_summary(rows)
    assert "all-to-one: 31.0-31.0 % moved in (1 of 1 carry a trigger by the rule)" in text
    assert "all-to-all: 14.0-14.0 % (0 of 1;" in text
    assert "not poison: 1.7-1.7 % (0 of 1)" in text
    assert "in the 1 classes without poison, 0 carry a trigger by the rule (largest margin 16.0 points" in text
    assert "1 of 1 components that are mostly not poison do" in text  # the poisoned component is left out
    assert _trigger_summary([{"model": "m", "minority_modes": {"0": {"holds": False}}}]) == ""


def test_search_payload_measures_a_worker_try_that_does_not_grow_with_n():
    """The benchmark's measurement of what one worker try is sent runs against the search's own internals:
    above ``sample_size`` the try carries the clustered rows only, below it every row."""
    from benchmarks.search_parallel import payload

    small, large = payload(5_000, columns=4), payload(60_000, columns=4)
    assert small["clustered_rows"] == 5_000 and large["clustered_rows"] == 20_000
    assert large["mb_sent"] < large["mb_before"] / 2  # 20,000 rows of 3 columns (+ labels, positions) vs 60,000
    assert small["mb_sent"] <= small["mb_before"]


def test_second_source_restyles_a_share_of_the_images_and_leaves_the_input_unchanged():
    from benchmarks.second_source import second_source

    x = np.random.default_rng(0).integers(0, 256, size=(2000, 4, 4, 1), dtype=np.uint8)
    x0 = x.copy()
    inv, pick = second_source(x, 0.3, "invert")
    np.testing.assert_array_equal(x, x0)
    assert 0.25 < pick.mean() < 0.35
    np.testing.assert_array_equal(inv[pick], 255 - x[pick])
    np.testing.assert_array_equal(inv[~pick], x[~pick])
    dim, pick2 = second_source(x, 0.3, "dim")
    np.testing.assert_array_equal(pick, pick2)  # the same images, whatever the source
    assert dim[pick].min() >= 20 and dim.dtype == np.uint8  # the grey floor of 60, less the noise
    with pytest.raises(ValueError, match="invert"):
        second_source(x, 0.3, "sepia")


def test_label_noise_moves_a_share_of_the_labels_to_another_class_and_leaves_the_input_unchanged():
    from benchmarks.clean_unusual import label_noise

    y = np.arange(3000) % 10
    y0 = y.copy()
    noisy, pick = label_noise(y, 0.1, 10)
    np.testing.assert_array_equal(y, y0)
    assert 0.08 < pick.mean() < 0.12
    assert (noisy[pick] != y[pick]).all() and (noisy[~pick] == y[~pick]).all()
    assert set(np.unique(noisy[pick])) == set(range(10))  # every class receives some


def test_near_duplicates_are_jittered_copies_with_their_originals_label():
    from benchmarks.clean_unusual import near_duplicates

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(1000, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 10, 1000)
    x0, y0 = x.copy(), y.copy()
    xd, yd, marked = near_duplicates(x, y, 0.1, copies=10)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    assert marked.sum() == 10 + 100  # 10 originals and their 100 copies
    changed = (xd != x).any(axis=(1, 2, 3))
    assert changed.sum() == 100 and not changed[~marked].any()
    originals = np.flatnonzero(marked & ~changed)
    assert len(originals) == 10
    for i in np.flatnonzero(changed):  # each copy is close to one original (up to a one-pixel shift and noise) ...
        err = [np.abs(np.roll(np.roll(x[o].astype(float), dy, 0), dx, 1) - xd[i]).mean()
               for o in originals for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        best = originals[int(np.argmin(err)) // 9]
        assert min(err) < 8 and yd[i] == y[best]  # ... and carries its label


def test_long_tail_keeps_geometrically_falling_class_sizes():
    from benchmarks.clean_unusual import long_tail

    y = np.repeat(np.arange(10), 600)
    keep = long_tail(y, 100, 10, head=600)
    sizes = np.bincount(y[keep], minlength=10)
    assert sizes[0] == 600 and sizes[-1] == 6 and (np.diff(sizes) < 0).all()
    assert len(np.unique(keep)) == len(keep)


def test_label_flip_swaps_a_share_of_each_look_alike_pair_only():
    from benchmarks.clean_unusual import label_flip

    y = np.arange(10_000) % 10
    flipped, pick = label_flip(y, 0.2, pairs=((0, 6), (2, 4)))
    assert set(np.unique(y[pick])) == {0, 6, 2, 4}
    pairs = {0: 6, 6: 0, 2: 4, 4: 2}
    assert all(flipped[i] == pairs[y[i]] for i in np.flatnonzero(pick))
    np.testing.assert_array_equal(flipped[~pick], y[~pick])
    assert all(0.15 < pick[y == c].mean() < 0.25 for c in (0, 6, 2, 4))


def test_chosen_rows_defaults_to_all_and_names_unknown_rows():
    from benchmarks.common import chosen_rows

    assert chosen_rows([], ("a", "b")) == ["a", "b"] and chosen_rows(["b"], ("a", "b")) == ["b"]
    with pytest.raises(SystemExit, match="unknown row.*c; choose from a, b"):
        chosen_rows(["c"], ("a", "b"))


@pytest.mark.timeout(900)
def test_the_gpu_cifar_script_runs_end_to_end_on_the_cpu(tmp_path):
    """``benchmarks/gpu_cifar.py`` is what a lent GPU runs, with minutes of device time to spend: on a tiny
    JPEG ImageFolder and the CPU, it trains, measures BA / ASR, and runs every detector on each model."""
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "cifar10"
    for split, n in (("train", 24), ("test", 6)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            base = rng.integers(0, 256, 3)  # a colour per class, so the classes are learnable
            for i in range(n):
                img = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:04d}.jpg")
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "gpu_cifar.py"), "--data", str(root),
                           "--out", str(out), "--device", "cpu", "--epochs", "1", "--workers", "1",
                           "--models", "cifar-badnets-10,cifar-clean", "--budget", "800"],
                          capture_output=True, text=True, timeout=880, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "gpu_cifar.json").read_text())
    assert set(summary["models"]) == {"cifar-badnets-10", "cifar-clean"}
    bad = summary["models"]["cifar-badnets-10"]
    assert bad["epochs"] == 1 and 0.0 <= bad["benign_accuracy"] <= 1.0 and 0.0 <= bad["attack_success_rate"] <= 1.0
    assert bad["layers"] == 20  # the CIFAR ResNet-18's BN layers
    assert summary["models"]["cifar-clean"]["attack_success_rate"] is None
    rows = summary["rows"]
    want = {"flare", "flare-faithful", "ac", "ss", "art-ac", "art-ss"}
    for model in ("cifar-badnets-10", "cifar-clean"):
        got = {r["detector"]: r for r in rows if r["model"] == model}
        assert set(got) == want, (model, sorted(got))
        for det, r in got.items():
            assert not str(r.get("note") or "").startswith(("FAILED", "not run")), (model, det, r["note"])
            assert r["n"] == 240 and 0 <= r["n_flagged"] <= 240
    assert sum(r["n_poisoned"] for r in rows if r["model"] == "cifar-badnets-10") == 6 * 24
    with open(out / "gpu_cifar.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_image_loading_measures_a_load_and_a_feature_pass_in_a_fresh_process(tmp_path, monkeypatch):
    from PIL import Image

    from benchmarks import image_loading

    rng = np.random.default_rng(0)
    for i in range(24):
        (tmp_path / "d" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "d" / f"c{i % 3}" / f"{i}.png")
    on_disk = image_loading.run_case("tiny", tmp_path / "d", ["load", "features"], image_ram_mb=0)
    in_ram = image_loading.run_case("tiny", tmp_path / "d", ["load"], image_ram_mb=None)
    assert on_disk["outcome"] == "ok" and on_disk["n"] == 24 and on_disk["image_shape"] == [16, 16, 3]
    assert on_disk["images_on_disk"] and not in_ram["images_on_disk"]
    assert on_disk["features_s"] > 0 and on_disk["layers"] == 20 and "features_s" not in in_ram
    assert on_disk["load_peak_rssanon_mb"] >= on_disk["baseline_rss_anon_mb"] > 0
    assert on_disk["commit"] and on_disk["memory_limit_mb"] is None
    assert on_disk["outputs"]["penultimate"]["on_disk"] and on_disk["outputs"]["logits"]["shape"] == [24, 3]
    probe = image_loading.run_case("tiny", tmp_path / "d", ["load", "features"], image_ram_mb=None, arch="wide-head",
                                   channels=True)
    assert probe["layers"] == 2 and probe["outputs"]["penultimate"]["shape"] == [24, 512]
    assert probe["outputs"]["per_channel"]["shape"] == [24, 48] and not probe["outputs"]["per_channel"]["on_disk"]


def test_detector_memory_measures_detectors_on_mapped_float32_features(tmp_path, monkeypatch):
    from benchmarks import detector_memory

    monkeypatch.setattr(detector_memory, "SYNTHETIC_ROOT", tmp_path)
    folder = detector_memory.make_features(600, 16)
    assert np.load(folder / "pooled.npy", mmap_mode="r").dtype == np.float32
    for case in ("ss", "latent"):
        row = detector_memory.run_case(folder, case)
        assert row["case"] == case and row["seconds"] > 0 and row["input_mb"] == round(600 * 16 * 4 / 2**20, 1)
        assert row["peak_rss_anon_mb"] >= row["baseline_rss_anon_mb"] > 0 and row["commit"]
    views = detector_memory.run_case(detector_memory.make_features(600, 16, classes=2), "views")
    assert views["view_class0_rows"] == 300 and views["view_class0_embedded"] == 300  # under the sample size
    assert 0 < views["planted_recall"] <= 1 and 0 < views["planted_precision"] <= 1


def test_scale_run_moves_each_image_by_its_own_small_offset():
    from benchmarks import scale_run

    images = np.zeros((400, 28, 28, 1), dtype=np.uint8)
    images[:, 10, 12] = 200
    out = scale_run.shifted(images, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == np.uint8
    where = [np.argwhere(o[..., 0]) for o in out]
    assert all(len(w) == 1 and out[i][tuple(w[0])][0] == 200 for i, w in enumerate(where))
    offsets = {(int(w[0][0]) - 10, int(w[0][1]) - 12) for w in where}
    assert offsets == {(a, b) for a in range(-2, 3) for b in range(-2, 3)}
    assert images.sum() == 400 * 200  # the input is not written to
    np.testing.assert_array_equal(scale_run.augmented_copy(images, 0), images)
    first, again = scale_run.augmented_copy(images, 1), scale_run.augmented_copy(images, 1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, images) and not np.array_equal(first, scale_run.augmented_copy(images, 2))


def test_scale_run_measures_the_whole_pipeline_by_stage(tmp_path, monkeypatch):
    from benchmarks import scale_run

    monkeypatch.setattr(scale_run, "SYNTHETIC_ROOT", tmp_path / "data")
    monkeypatch.setattr(scale_run, "OUT", tmp_path / "scale_run.json")
    assert scale_run.main(["--n", "1500", "--no-views"]) == 0
    folder = tmp_path / "data" / "scale-fmnist-badnets-1500"
    with np.load(folder / "train.npz") as z:
        assert sorted(z.files) == ["classes", "x", "y"] and z["x"].shape == (1500, 28, 28, 1)
    truth = json.loads((folder / "ground_truth.json").read_text())
    assert truth["n_total"] == 1500 and len(truth["poisoned_indices"]) == 150 and truth["target"] == 0
    before = _sha(folder / "train.npz")
    row = json.loads((tmp_path / "scale_run.json").read_text())["rows"][0]
    assert row["n"] == 1500 and not row["views"] and row["export"] and row["commit"]
    assert {"load", "features", "detector", "export", "total"} <= set(row["timings"])
    assert "views" not in row["timings"] and row["peak_anon_over_start_mb"]["features"] > 0
    assert 0 <= row["tpr"] <= 1 and 0 <= row["fpr"] <= 1 and row["n_flagged"] == sum(row["flagged_per_class"])
    assert row["run_folder_mb"] > row["data_mb"] * 0.5  # the purified copy is in the run folder
    # made once: a second run reuses the data set, which no run writes to
    assert scale_run.make_dataset(1500) == folder and _sha(folder / "train.npz") == before
    section = "\n".join(__import__("benchmarks.report", fromlist=["x"]).scale_run_section(
        json.loads((tmp_path / "scale_run.json").read_text())))
    assert "| 1,500 |" in section and "python3 -m benchmarks.scale_run --n 1500 --no-views" in section
