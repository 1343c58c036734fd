"""The HTML report and the summary tables, on tiny synthetic run folders."""
import re

import numpy as np
import pytest
import torch

from flare_core.report import GENERATOR_TAG, build_report, class_table, detection_table, example_indices, per_class_confusion
from test_app_support import make_dataset, make_run


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


def test_class_table_counts_and_decisions(run):
    run.set_decisions([0], "remove")  # class 0, not flagged
    run.set_decisions([19], "keep")  # class 0, flagged
    t = class_table(run)
    assert t["samples"].tolist() == [20, 20, 20]
    assert t["flagged"].tolist() == [3, 3, 3]
    assert t["marked keep"].tolist() == [1, 0, 0] and t["marked remove"].tolist() == [1, 0, 0]
    assert t["to remove"].tolist() == [3, 3, 3]
    assert t["poisoned (truth)"].tolist() == [4, 3, 2]


def test_per_class_confusion_sums_to_class_sizes(run):
    c = per_class_confusion(run)
    assert (c[["TP", "FP", "FN", "TN"]].sum(axis=1) == 20).all()
    assert c.loc[0, "FN"] == 1 and c.loc[2, "FP"] == 1 and c.loc[1, "TPR"] == 1.0


def test_tables_without_truth_are_none(tmp_path):
    r = make_run(tmp_path / "r", truth=False)
    assert per_class_confusion(r) is None and detection_table(r) is None
    assert "poisoned (truth)" not in class_table(r).columns


def test_detection_table_one_row_per_detector(run):
    pytest.importorskip("flare_core.metrics")
    t = detection_table(run)
    assert list(t.index) == ["flare", "ac"]
    assert t.loc["flare", "tp"] == 8 and t.loc["flare", "fp"] == 1 and t.loc["flare", "fn"] == 1
    run.set_decisions([59], "keep")  # the false alarm
    assert detection_table(run, after_review=True).loc["flare", "fp"] == 0


def test_example_indices_round_robin_over_classes(run):
    idx = example_indices(run, 4)
    labels = run.manifest["label"].to_numpy()[idx]
    assert len(idx) == 4 and set(labels[:3].tolist()) == {0, 1, 2}
    assert run.removal_mask()[idx].all()
    assert len(example_indices(run, 0)) == 0


def test_report_is_self_contained_and_complete(run, tmp_path):
    pytest.importorskip("flare_core.metrics")
    ds = make_dataset(run)
    before = ds.images.copy()
    out = build_report(run, tmp_path / "out" / "report.html", dataset=ds, n_examples=5)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert text.count("Plotly.newPlot") == 1 + 1 + 3  # bar + global + 3 classes
    assert len(re.findall(r"<script type=.text/javascript.>", text)) >= 1
    assert not re.search(r"<script[^>]*\ssrc=", text) and "src='http" not in text and 'src="http' not in text
    assert text.count("src='data:image/png;base64,") == 5
    assert "Counts per class" in text and "Detection quality" in text and "Versions" in text
    assert "Grad-CAM overlays need the model" in text
    assert np.array_equal(ds.images, before)
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp files left


def test_the_report_replaces_only_an_earlier_report(run, tmp_path):
    from flare_core.errors import FlareError

    out = build_report(run, tmp_path / "report.html")
    build_report(run, out)  # an earlier report is replaced
    old_style = tmp_path / "old.html"  # written before reports carried the generator tag
    old_style.write_text(out.read_text().replace(GENERATOR_TAG, ""))
    build_report(run, old_style)
    assert GENERATOR_TAG in old_style.read_text()
    for name, content, says in [("model.pt", b"weights", "does not end in .html"),
                                ("notes.html", b"<html><body>my notes</body></html>", "is not a FLARE report")]:
        target = tmp_path / name
        target.write_bytes(content)
        with pytest.raises(FlareError, match=says):
            build_report(run, target)
        assert target.read_bytes() == content
    (tmp_path / "folder.html").mkdir()
    with pytest.raises(FlareError, match="is a folder"):
        build_report(run, tmp_path / "folder.html")


def test_report_without_dataset_or_truth(tmp_path):
    r = make_run(tmp_path / "r", truth=False, baselines=())
    text = build_report(r, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Example images need the dataset" in text and "Detection quality" not in text


def test_report_lists_the_samples_the_model_fits_worst_when_the_run_has_losses(tmp_path):
    from flare_core.report import least_fitted_table

    r = make_run(tmp_path / "loss", losses=True)
    tbl = least_fitted_table(r, n=5)
    top = np.argsort(-r.losses(), kind="stable")[:5]
    assert list(tbl["index"]) == top.tolist() and list(tbl["loss"]) == sorted(tbl["loss"], reverse=True)
    assert list(tbl["next class"]) == [r.classes[int(c)] for c in r.next_classes()[top]]
    text = build_report(r, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<h2>Samples the model fits worst</h2>" in text
    plain = make_run(tmp_path / "plain")
    assert least_fitted_table(plain) is None
    assert "fits worst</h2>" not in build_report(plain, tmp_path / "p.html").read_text(encoding="utf-8")


def test_report_lists_the_likely_mislabelled_per_class_least_fitted_first(tmp_path):
    from flare_core.report import label_noise_indices, label_noise_table

    noise = [3, 7, 11, 20, 21, 45]  # classes 0, 0, 0, 1, 1, 2
    r = make_run(tmp_path / "noise", losses=True, flag=False, label_noise=noise)
    tbl = label_noise_table(r)
    assert tbl["class"].tolist() == list(r.classes) and tbl["likely mislabelled"].tolist() == [3, 2, 1]
    assert tbl["share of class"].tolist() == ["15.0%", "10.0%", "5.0%"]
    assert tbl["model says (top 3)"].iloc[0] == f"{r.classes[1]} 3"  # make_run's next class is label + 1
    idx = label_noise_indices(r, 4)
    labels, loss = r.manifest["label"].to_numpy(), r.losses()
    assert sorted(labels[idx[:3]].tolist()) == [0, 1, 2] and r.label_noise()[idx].all()
    assert idx[0] == max([3, 7, 11], key=lambda i: loss[i]) and idx[3] in noise
    ds = make_dataset(r)
    text = build_report(r, tmp_path / "r.html", dataset=ds, n_examples=4).read_text(encoding="utf-8")
    section = text.split("<h2>Likely mislabelled samples (not flagged)</h2>")[1].split("<h2>")[0]
    assert section.count("src='data:image/png;base64,") == 4
    assert [int(i) for i in re.findall(r"alt='sample (\d+)'", section)] == idx.tolist()
    for quiet in (make_run(tmp_path / "plain", losses=True), make_run(tmp_path / "none", label_noise=[])):
        assert label_noise_table(quiet) is None
        assert "Likely mislabelled" not in build_report(quiet, tmp_path / "q.html").read_text(encoding="utf-8")


def test_report_with_model_has_cam_overlays(run, tmp_path):
    pytest.importorskip("flare_core.gradcam")
    pytest.importorskip("flare_core.metrics")
    from flare_core.models.loaded import LoadedModel

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    model = LoadedModel(module=net, kind="module", num_classes=3)
    text = build_report(run, tmp_path / "r.html", dataset=make_dataset(run), model=model, n_examples=3).read_text()
    assert text.count("src='data:image/png;base64,") == 6 and "alt='Grad-CAM" in text


def test_manifest_with_decisions_adds_columns_and_leaves_run_unchanged(run):
    from flare_core.report import manifest_with_decisions

    run.set_decisions([0], "remove")
    run.set_decisions([19], "keep")
    before = run.manifest.copy()
    m = manifest_with_decisions(run)
    assert m["decision"].iat[0] == "remove" and m["decision"].iat[19] == "keep" and m["decision"].iat[1] == ""
    assert m["removed"].iat[0] == 1 and m["removed"].iat[19] == 0 and m["removed"].sum() == 9
    assert run.manifest.equals(before) and "decision" not in run.manifest.columns


def test_how_found_names_a_dataset_wide_split_that_was_not_flagged():
    from types import SimpleNamespace

    from flare_core.report import how_found

    wide = {"7": {"share": 0.3075, "fitted_better": 0.54}, "1": {"share": 0.2917, "fitted_better": 0.45}}
    rep = {"representation": "layers", "found": False, "subspace": 4,
           "evidence": {"found": False, "latent": {"used": True, "classes": [], "dataset_wide_split": wide}}}
    run = SimpleNamespace(meta={"detector": {"report": {"report": rep}}}, classes=[str(k) for k in range(8)])
    sentence = how_found(run)[0]
    assert sentence.startswith("No FLARE stage found")
    assert "2 classes split into two far-apart populations" in sentence and "1 (29%), 7 (31%) of the class" in sentence
    del rep["evidence"]["latent"]["dataset_wide_split"]
    assert "far-apart" not in how_found(run)[0]


def test_how_found_names_label_noise_that_was_not_flagged():
    from types import SimpleNamespace

    from flare_core.report import how_found

    noisy = {"2": {"flagged": 259, "contradicted": 0.996, "top_share": 0.295, "classes_given": 4},
             "0": {"flagged": 369, "contradicted": 0.995, "top_share": 0.221, "classes_given": 5}}
    rep = {"representation": "layers", "found": False, "subspace": 4,
           "evidence": {"found": False, "latent": {"used": True, "classes": [], "label_noise": noisy,
                                                   "label_noise_unflagged": 4272}}}
    run = SimpleNamespace(meta={"detector": {"report": {"report": rep}}}, classes=["top", "trouser", "pullover"])
    sentence = how_found(run)[0]
    assert sentence.startswith("No FLARE stage found") and "2 classes had parts" in sentence
    assert "top (100% of 369; 5 classes), pullover (100% of 259; 4 classes)" in sentence  # in class order
    assert "those 4,272 samples were not flagged" in sentence and "Likely mislabelled" in sentence
    del rep["evidence"]["latent"]["label_noise"]
    assert "contradicts" not in how_found(run)[0]


def test_how_found_names_the_latent_stage_and_lists_split_classes():
    from types import SimpleNamespace

    from flare_core.report import how_found

    leaves = [{"size": 60, "median_loss": 0.06, "flagged": False, "reference": True},
              {"size": 60, "median_loss": 0.0004, "flagged": True, "reference": False}]
    classes = [{"class": 0, "splits": [{"dprime": 11.1, "candidate": "k-means cluster, k=4"}], "leaves": leaves, "n_flagged": 60, "reason": "split"},
               {"class": 1, "splits": [{"dprime": 3.2}], "leaves": leaves[:1], "n_flagged": 0, "reason": "did not split"},
               {"class": 2, "splits": [], "leaves": [], "n_flagged": 0, "reason": "fewer than 200 samples"}]
    rep = {"representation": "latent", "found": True, "subspace": 4,
           "evidence": {"found": True, "latent": {"used": True, "classes": classes}}}
    run = SimpleNamespace(meta={"detector": {"report": {"report": rep}}}, classes=["a", "b", "c"])
    sentence, table = how_found(run)
    assert "latent stage" in sentence and "per-layer" not in sentence
    assert list(table["class"]) == ["a", "b"] and list(table["flagged"]) == [60, 0]
    # which candidate split the class (runs from before the record had it read as the plain split)
    assert list(table["split by"]) == ["k-means cluster, k=4", "2-means"]
    rep["representation"] = "layers+latent"
    assert "per-layer" in how_found(run)[0] and "latent" in how_found(run)[0]
    assert "joined" not in how_found(run)[0]
    rep["evidence"]["latent"]["joined"] = [{"class": 0, "joined": 1280}, {"class": 1, "joined": 0}]
    assert "1,280 more sample(s) joined" in how_found(run)[0]
    assert "1,280 because their nearest class-mates" in how_found(run)[0]
    assert "linear classifier" not in how_found(run)[0]
    rep["evidence"]["latent"]["joined"] = [{"class": 0, "joined": 50, "joined_neighbours": 8, "joined_linear": 42}]
    sentence = how_found(run)[0]
    assert "50 more sample(s) joined" in sentence and "8 because their nearest" in sentence
    assert "42 because a linear classifier" in sentence
    rep["evidence"]["latent"]["joined"] = [{"class": 0, "joined": 42, "joined_neighbours": 0, "joined_linear": 42}]
    assert "nearest class-mates" not in how_found(run)[0]
    rep["evidence"]["latent"]["joined"] = [{"class": 0, "joined": 1280}, {"class": 1, "joined": 0}]
    rep["representation"] = "tail"
    rep["evidence"]["latent"]["tail_groups"] = {"classes": {"1": {"kept": [
        {"size": 31, "purity": 0.98, "island": 2.46, "atypicality": 2.3, "kept": True}]}, "2": {"kept": []}}}
    sentence = how_found(run)[0]
    assert "tail-group stage: a small, tight island" in sentence and "latent stage" not in sentence
    assert "kept 1 island(s)" in sentence and "b (31, 0.98, 2.46, 2.30)" in sentence
    assert "relabelled" not in sentence
    rep["evidence"]["latent"]["tail_groups"]["classes"]["2"]["kept"] = [
        {"size": 22, "purity": 0.75, "island": 1.2, "atypicality": 3.2, "kept": True, "rule": "relabelled",
         "other_classes": [0, 1], "other_share": 1.0, "other_base": 0.009}]
    sentence = how_found(run)[0]
    assert "kept 1 island(s)" in sentence and "kept 1 relabelled group(s)" in sentence
    assert "c: 22, a / b, 100%, 0.9%" in sentence and "near-copies" not in sentence
    assert "misfit" not in sentence
    rep["evidence"]["latent"]["tail_groups"]["classes"]["2"]["kept"].append(
        {"candidate": "misfit", "seen_as": 1, "size": 25, "purity": 0.93, "island": 1.7, "atypicality": 2.2,
         "kept": True, "rule": "misfit", "other_classes": [1], "other_share": 1.0, "other_base": 0.007})
    sentence = how_found(run)[0]
    assert "kept 1 misfit group(s)" in sentence and "c -> b: 25, 0.93, 1.70, 0.7%" in sentence
    assert "kept 1 relabelled group(s)" in sentence  # the misfit group is not counted as relabelled
    rep["evidence"]["latent"]["tail_groups"]["classes"]["2"]["kept"].pop()
    rep["evidence"]["latent"]["tail_groups"]["classes"]["1"]["kept"][0]["near_copy_ratio"] = 0.05
    assert "1 kept group(s) are near-copies of one image" in how_found(run)[0] and "b (31 samples, 0.05)" in how_found(run)[0]
    rep["evidence"]["latent"]["tail_groups"]["classes"]["1"]["kept"][0]["near_copy_ratio"] = 0.9
    assert "near-copies" not in how_found(run)[0]
    rep.update(found=False, representation="layers")
    assert how_found(run)[0].startswith("No FLARE stage")
    assert how_found(SimpleNamespace(meta={}, classes=[])) == ("", None)


def test_cross_check_table_says_why_each_per_layer_group_was_kept_or_refused():
    from types import SimpleNamespace

    from flare_core.report import cross_check_table

    records = [{"group": 1, "n": 3600, "classes": [{"class": 0, "n": 3600, "dprime": 2.2}], "median_dprime": 2.2,
                "loss_ratio": 4000.0, "kept": True, "kept_by": "loss", "checked": True},
               {"group": 2, "n": 300, "classes": [{"class": 1, "n": 300, "dprime": 0.9}], "median_dprime": 0.9,
                "loss_ratio": 2.9, "kept": False, "kept_by": None, "checked": True},
               {"group": 3, "n": 12, "classes": [], "median_dprime": None, "kept": True, "checked": False},
               {"group": 4, "n": 261, "classes": [], "median_dprime": None, "pooled_dprime": 4.9, "loss_ratio": 0.19,
                "kept": True, "kept_by": "pooled separation", "checked": True}]
    rep = {"representation": "layers", "found": True,
           "evidence": {"latent": {"used": True, "classes": [], "layer_groups_checked": records}}}
    run = SimpleNamespace(meta={"detector": {"report": {"report": rep}}}, classes=["a", "b"])
    t = cross_check_table(run)
    assert list(t["samples"]) == [3600, 300, 12, 261] and list(t["classes tested"]) == ["a", "b", "-", "-"]
    assert "fits it far better" in t["decision"][0] and t["decision"][1].startswith("refused")
    # a record from before the loss rule (no kept_by) still reads as kept
    assert t["decision"][2] == "kept"
    assert "across its classes" in t["decision"][3] and t["pooled d'"][3] == 4.9
    rep["evidence"]["latent"]["layer_groups_checked"] = []
    assert cross_check_table(run) is None
    assert cross_check_table(SimpleNamespace(meta={}, classes=[])) is None


def test_report_captions_read_the_thresholds_the_run_used(run, tmp_path):
    leaves = [{"size": 17, "median_loss": 0.06, "flagged": False, "reference": True},
              {"size": 3, "median_loss": 0.0004, "flagged": True, "reference": False}]
    classes = [{"class": 0, "splits": [{"dprime": 9.0}], "leaves": leaves, "n_flagged": 3, "reason": "split"}]
    params = {"mode": "default", "latent_separation": 6.25, "latent_loss_ratio": 7.5, "latent_confirm": 4.25,
              "latent_confirm_loss": 12.0}
    run.meta["detector"]["report"] = {"params": params, "report": {
        "representation": "layers+latent", "found": True, "subspace": 4, "params": params,
        "score": "flagged first; unflagged by atypicality",
        "evidence": {"found": True, "latent": {"used": True, "classes": classes, "layer_groups_checked": [
            {"group": 1, "n": 3, "classes": [{"class": 0, "n": 3, "dprime": 5.0}], "median_dprime": 5.0,
             "loss_ratio": 20.0, "kept": True, "kept_by": "separation", "checked": True}]}}}}
    text = build_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "d' &ge; 6.25" in text and "fitted 7.5x better than the reference part" in text
    assert "d' &ge; 4.25) or fitted 12.0x better" in text and "10x" not in text  # a run from before the pooled test
    params["latent_confirm_pooled"] = 2.5
    text = build_report(run, tmp_path / "r2.html").read_text(encoding="utf-8")
    assert "d' &ge; 4.25; for a group too thin to test class by class, pooled d' &ge; 2.5) or fitted 12.0x" in text
    assert "flagged first; unflagged by atypicality" in text  # how the scores rank, under Detector


@pytest.mark.parametrize("losses", [False, True])
def test_report_with_nothing_flagged_says_it_is_no_proof_and_points_only_to_lists_it_has(tmp_path, losses):
    r = make_run(tmp_path / "none", flag=False, losses=losses)
    text = build_report(r, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "nothing is flagged. That is not proof of a clean set (see the highest scores" in text
    assert ("the samples the model fits worst below" in text) == losses == ("fits worst</h2>" in text)


def test_class_name_is_the_name_or_the_number():
    from flare_core.run_folder import class_name

    assert class_name(["cat", "dog"], 1) == "dog" and class_name(["cat"], 3) == "3" and class_name([], -1) == "-1"


def test_how_found_names_the_classes_holding_a_minority_mode():
    from types import SimpleNamespace

    from flare_core.report import how_found

    rep = {"representation": "layers", "found": False, "evidence": {"found": False, "minority_modes": {
        "used": True, "classes": {"0": {"holds": True, "n_members": 497, "weight": 0.108},
                                  "1": {"holds": False, "n_members": 0, "weight": 0.46}}}}}
    run = SimpleNamespace(meta={"detector": {"report": {"report": rep}}}, classes=["airplane", "car"])
    sentence = how_found(run)[0]
    assert "No FLARE stage found" in sentence
    assert "In airplane (497 samples, 11% of the class), a light, separate group" in sentence
    assert "car" not in sentence
    rep.update(representation="minority", found=True)
    rep["evidence"]["minority_modes"]["classes"]["0"].update(flagged=True, fitted_better=7304.31)
    sentence = how_found(run)[0]
    assert sentence.startswith("Flagged by the minority-mode stage")
    assert "Flagged as a minority mode: airplane (497 samples, 11% of the class, fitted 7.3e+03x better" in sentence
    assert "It is not flagged on that alone" not in sentence
    rep.update(representation="layers", found=False)
    rep["evidence"]["minority_modes"]["classes"]["0"]["holds"] = False
    assert "top singular direction" not in how_found(run)[0]
    rep["evidence"]["minority_modes"] = {"used": False, "why_not": "minority_modes='off'"}
    assert "top singular direction" not in how_found(run)[0]


def test_how_found_names_the_least_fitted_seed_when_only_the_input_pattern_stage_flagged():
    from types import SimpleNamespace

    from flare_core.report import how_found

    seed = {"rule": "least fitted (highest training loss)", "share": 0.002, "n": 100, "n_flagged_before": 0,
            "n_flagged": 64}
    pattern = {"used": True, "view": "highpass", "n_positives": 100, "separated": 0.65, "min_separated": 0.3,
               "n_new": 250, "new_per_class": {"0": 250}, "seed": seed}
    rep = {"representation": "input-pattern", "found": True, "evidence": {"found": True, "input_pattern": pattern}}
    run = SimpleNamespace(meta={"detector": {"report": {"report": rep}}}, classes=["plane", "car"])
    sentence = how_found(run)[0]
    assert sentence.startswith("Flagged by the input-pattern stage") and "per-layer" not in sentence
    assert "began with the 100 samples the model fits worst (its top 0.2% by training loss" in sentence
    assert "separates 65% of them (30% needed" in sentence
    assert "it flagged 250 sample(s) that carry the same pattern (plane 250; 64 of them from that seed)" in sentence
    # a clean model: the seed shares nothing, so the run says no stage found anything and why this one did not
    rep.update(representation="layers", found=False)
    pattern.update(separated=0.02, n_new=0, new_per_class={}, seed={**seed, "n_flagged": 0},
                   why_not="the samples the model fits worst (the seed) do not share a pixel pattern")
    sentence = how_found(run)[0]
    assert sentence.startswith("No FLARE stage found") and "separates 2% of them (30% needed" in sentence
    assert sentence.endswith("so nothing was flagged by it.") and "carry the same pattern" not in sentence


def test_trigger_sentence_names_a_trigger_the_model_did_not_learn_among_the_reasons_it_moves_nothing():
    from types import SimpleNamespace

    from flare_core.report import trigger_sentence

    tested = {0: {"moved_in": 0.0, "moved_in_control": 0.0}}
    run = SimpleNamespace(flag_triggers=lambda: tested, class_name=lambda c: ["airplane", "car"][int(c)])
    text = trigger_sentence(run)
    assert text.startswith("Those of airplane (0%) do not move")
    assert "a trigger the model did not learn" in text and "share a trigger" not in text
