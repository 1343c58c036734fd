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
    assert "**ss beats FLARE default** on F1" in loss_notes([dict(flare, f1=0.9), better_f1])[0]
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
