"""Every dashboard page under streamlit.testing.v1.AppTest, with seeded session state and tiny synthetic runs."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from flare_core.models.loaded import LoadedModel
from test_app_support import make_dataset, make_run

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("FLARE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FLARE_ROOTS", str(tmp_path))
    monkeypatch.setenv("FLARE_NO_WARMUP", "1")
    monkeypatch.delenv("FLARE_OPEN_RUN", raising=False)
    st.cache_resource.clear()
    st.cache_data.clear()
    return tmp_path


@pytest.fixture
def run(env):
    return make_run(env / "run")


def tiny_model(k: int = 3) -> LoadedModel:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, k)).eval()
    return LoadedModel(module=net, kind="module", num_classes=k, path="tiny.pt", sha256="tiny")


def app(page: str = None, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["_restored"] = True
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py")
        at.run()
    return at


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def imgs(at: AppTest) -> int:
    return len(at.get("image"))


# ---- Load ----------------------------------------------------------------------------------------------------------
def test_load_page_starts_clean(env):
    at = app()
    no_errors(at)
    assert at.title[0].value == "Load a model and a dataset"
    assert at.button(key="start_demo").label == "Start the demo"


def test_demo_button_loads_scenario_and_shows_summary(env, monkeypatch, run):
    from flare_core import demo, pipeline

    ds = make_dataset(run)
    scenario = demo.DemoScenario(source="digits", title="Tiny poisoned demo", description="for tests",
                                 model_path=env / "m.pt", data_path=env / "d.npz", ground_truth_path=env / "gt.json",
                                 test_path=env / "t.npz", poisoned_test_path=env / "pt.npz")
    monkeypatch.setattr(demo, "prepare_demo", lambda progress=None: scenario)
    monkeypatch.setattr(pipeline, "load_model_and_data", lambda config: (tiny_model(), ds))
    at = app()
    at.button(key="start_demo").click().run()
    no_errors(at)
    cfg = at.session_state["config"]
    assert cfg.model == str(env / "m.pt") and cfg.ground_truth == str(env / "gt.json")
    assert at.subheader[-1].value == "Tiny poisoned demo"
    assert [m.value for m in at.metric][:2] == ["60", "3"]
    assert imgs(at) == 6  # two thumbnails per class


def _fake_demo(env, monkeypatch, run):
    """prepare_demo and the loader replaced by a tiny scenario (no Fashion-MNIST, no torch training)."""
    from flare_core import demo, pipeline

    ds = make_dataset(run)
    scenario = demo.DemoScenario(source="digits", title="Tiny poisoned demo", description="for tests",
                                 model_path=env / "m.pt", data_path=env / "d.npz", ground_truth_path=env / "gt.json",
                                 test_path=env / "t.npz", poisoned_test_path=env / "pt.npz")
    calls = []

    def prepare(progress=None):
        calls.append(1)
        return scenario

    monkeypatch.setattr(demo, "prepare_demo", prepare)
    monkeypatch.setattr(pipeline, "load_model_and_data", lambda config: (tiny_model(), ds))
    return calls


def test_fresh_start_with_nothing_to_reopen_opens_on_the_demo(env, monkeypatch, run):
    calls = _fake_demo(env, monkeypatch, run)
    at = AppTest.from_file(APP, default_timeout=120)  # a new session: no ?run=, no FLARE_OPEN_RUN, no last run
    at.run()
    no_errors(at)
    assert calls == [1] and at.session_state["config"].model == str(env / "m.pt")
    assert at.session_state["demo_auto"] is True and "run_path" not in at.session_state
    assert "built-in demo is loaded" in at.info[0].value and "Use my own model and dataset" in at.info[0].value
    assert at.subheader[-1].value == "Tiny poisoned demo" and imgs(at) == 6
    # go straight to Analyse: the demo's model and data are the ones to analyse
    at.switch_page("pages/analyse.py")
    at.run()
    no_errors(at)
    assert at.button(key="an_run").label == "Run the analysis" and str(env / "d.npz") in at.caption[0].value
    # a rerun of the same session does not load it again
    assert calls == [1]


def test_fresh_start_reopens_a_run_instead_of_the_demo(env, monkeypatch, run):
    calls = _fake_demo(env, monkeypatch, run)
    monkeypatch.setenv("FLARE_OPEN_RUN", str(run.path))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    no_errors(at)
    assert calls == [] and at.session_state["run_path"] == str(run.path.resolve())
    assert "demo_auto" not in at.session_state


def test_a_damaged_run_named_at_start_is_not_opened_and_the_page_says_why(env, monkeypatch, run):
    # A manifest cut short used to open, and the app's first look at it (does the run know the ground truth?)
    # stopped the whole dashboard with a redacted error.
    calls = _fake_demo(env, monkeypatch, run)
    (run.path / "manifest.csv").write_text((run.path / "manifest.csv").read_text()[:400])
    monkeypatch.setenv("FLARE_OPEN_RUN", str(run.path))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    no_errors(at)
    assert "run_path" not in at.session_state and calls == [1]  # the demo opens instead
    assert f"The run {run.path} was not reopened" in at.warning[0].value and "damaged" in at.warning[0].value


def test_demo_autoload_can_be_turned_off_and_failures_are_a_warning(env, monkeypatch, run):
    calls = _fake_demo(env, monkeypatch, run)
    monkeypatch.setenv("FLARE_NO_DEMO", "1")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    no_errors(at)
    assert calls == [] and at.button(key="start_demo").label == "Start the demo"
    from flare_core import demo
    from flare_core.errors import DataError

    def broken(progress=None):
        raise DataError("Fashion-MNIST is missing.")

    monkeypatch.delenv("FLARE_NO_DEMO")
    monkeypatch.setattr(demo, "prepare_demo", broken)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception and not at.error
    assert "could not be loaded (Fashion-MNIST is missing.)" in at.warning[0].value
    assert at.title[0].value == "Load a model and a dataset"


def test_load_form_refuses_paths_outside_roots(env):
    at = app()
    at.toggle(key="own_toggle").set_value(True).run()
    at.text_input(key="model_path_input").input("/etc/passwd")
    at.text_input(key="data_path_input").input(str(env))
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    assert not at.exception
    assert any("outside the folders" in e.value for e in at.error)
    assert at.session_state["config"] is None if "config" in at.session_state else True


def test_reopen_run_folder_sets_run_and_remembers_it(env, run):
    at = app()
    at.text_input(key="reopen_input").input(str(run.path))
    at.button(key="reopen_button").click().run()
    no_errors(at)
    assert at.session_state["run_path"] == str(run.path.resolve())
    assert any("Nothing is recomputed" in s.value for s in at.success)
    remembered = json.loads((env / "cache" / "last_run.json").read_text())
    assert remembered["run"] == str(run.path.resolve())
    # a new session (reload or server restart) reopens it
    at2 = AppTest.from_file(APP, default_timeout=120)
    at2.run()
    assert at2.session_state["run_path"] == str(run.path.resolve())
    # its model and data load on request; the synthetic run names files that do not exist: said plainly
    at2.button(key="load_run_inputs").click().run()
    assert not at2.exception
    assert [e.value for e in at2.error] == ["The dataset path synthetic.npz does not exist; check the spelling or "
                                            "pass the folder or file to load."]


def test_a_reopened_run_never_loads_a_model_or_data_outside_the_allowed_folders(env, tmp_path_factory):
    # A run.json is a file: one crafted (or written elsewhere) could name any file on the server as its data.
    outside = tmp_path_factory.mktemp("outside")
    np.savez(outside / "secret.npz", x=np.zeros((60, 8, 8), np.uint8), y=np.repeat(np.arange(3), 20))
    run = make_run(env / "run", data_path=str(outside / "secret.npz"))
    at = app(run_path=str(run.path))
    at.button(key="load_run_inputs").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        f"This run's dataset {outside / 'secret.npz'} is outside the folders this server may read "
        f"({env.resolve()}); ask the administrator to add its folder to FLARE_ROOTS."]
    assert at.session_state["dataset"] is None


def test_reopen_rejects_a_non_run_folder(env):
    (env / "empty").mkdir()
    at = app()
    at.text_input(key="reopen_input").input(str(env / "empty"))
    at.button(key="reopen_button").click().run()
    assert not at.exception and any("not a FLARE run folder" in e.value for e in at.error)


# ---- Analyse -------------------------------------------------------------------------------------------------------
def test_analyse_runs_once_then_reuses_the_cached_result(env, monkeypatch):
    from flare_core import pipeline
    from flare_core.pipeline import AnalysisConfig

    calls = []

    def fake_run_analysis(config, out_dir, progress=None, overwrite=False, model=None, dataset=None, **kw):
        calls.append(config)
        for stage in ("features", "umap", "hdbscan", "views"):
            progress(stage, 0, 4)
            progress(stage, 4, 4)
        return make_run(Path(out_dir), baselines=config.baselines)

    monkeypatch.setattr(pipeline, "run_analysis", fake_run_analysis)
    cfg = AnalysisConfig(model=str(env / "m.pt"), data=str(env / "d.npz"))
    r = make_run(env / "ref")
    at = app("analyse", config=cfg, model=tiny_model(), dataset=make_dataset(r))
    no_errors(at)
    assert at.button(key="an_run").label == "Run the analysis"
    at.button(key="an_run").click().run()
    no_errors(at)
    assert len(calls) == 1 and calls[0].detector == "flare"
    run_path = Path(at.session_state["run_path"])
    assert run_path.parent == (env / "cache" / "runs").resolve()
    assert any(m.label == "flagged" and m.value == "9" for m in at.metric)
    # navigating away and back, or pressing again, never recomputes
    at.switch_page("pages/explore.py")
    at.run()
    at.switch_page("pages/analyse.py")
    at.run()
    assert at.button(key="an_run").label == "Open the cached result"
    at.button(key="an_run").click().run()
    assert len(calls) == 1 and at.session_state["run_path"] == str(run_path)


@pytest.mark.parametrize("losses", [False, True])
def test_analyse_with_nothing_flagged_says_it_is_no_proof_and_where_to_look(env, losses):
    r = make_run(env / "none", flag=False, losses=losses)
    assert not r.flagged().any()
    at = app("analyse", run_path=str(r.path), dataset=make_dataset(r))
    no_errors(at)
    text = " ".join(i.value for i in at.info)
    assert "nothing is flagged" in text and "not proof of a clean set" in text and "Highest scores" in text
    assert ("Least fitted by the model" in text) == losses


def test_analyse_with_label_noise_unflagged_says_so(env):
    from flare_core.run_folder import RunFolder

    r = make_run(env / "noise", flag=False, losses=True)
    meta = json.loads((r.path / "run.json").read_text())
    meta["detector"]["report"]["report"] = {
        "representation": "layers", "found": False,
        "evidence": {"found": False, "latent": {"used": True, "classes": [], "label_noise_unflagged": 12,
                                                 "label_noise": {"0": {"flagged": 12, "contradicted": 1.0,
                                                                       "top_share": 0.25, "classes_given": 3}}}}}
    (r.path / "run.json").write_text(json.dumps(meta))
    r = RunFolder(r.path)
    at = app("analyse", run_path=str(r.path), dataset=make_dataset(r))
    no_errors(at)
    text = " ".join(w.value for w in at.warning)
    assert "labels the model contradicts" in text and "those 12 samples were not flagged" in text


def test_analyse_without_config_points_to_load(env):
    at = app("analyse")
    no_errors(at)
    assert "Load a model and a dataset first" in at.info[0].value


# ---- Explore -------------------------------------------------------------------------------------------------------
def test_explore_class_view_selection_grid_and_bulk_marks(env, run):
    at = app("explore", run_path=str(run.path), dataset=make_dataset(run), selection=[0, 1, 57])
    no_errors(at)
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # the per-class bar and the class scatter
    fig = json.loads(charts[1].proto.spec)
    assert any(t.get("name", "").startswith("cluster 1") for t in fig["data"])
    # every class is in the figure, one shown at a time; the plot's own menu switches them in the browser
    menu = fig["layout"]["updatemenus"][0]
    assert [b["label"] for b in menu["buttons"]] == ["0: zero — 3 flagged of 20", "1: one — 3 flagged of 20",
                                                      "2: two — 3 flagged of 20"]
    assert menu["active"] == 0 and fig["layout"]["title"]["text"].startswith("Class 0: zero")
    assert {t["meta"] for t in fig["data"] if t["visible"]} == {0} and {t["meta"] for t in fig["data"]} == {0, 1, 2}
    visible, relayout = menu["buttons"][2]["args"]
    assert [v for v, t in zip(visible["visible"], fig["data"]) if v] and all(
        t["meta"] == 2 for v, t in zip(visible["visible"], fig["data"]) if v)
    assert relayout["title.text"].startswith("Class 2: two")
    assert not at.selectbox  # no server-side class selector: switching needs no rerun
    assert at.subheader[0].value == "Selection (3 samples)"
    assert imgs(at) == 3
    at.button(key="ex_remove").click().run()
    assert run.decisions() == {0: "remove", 1: "remove", 57: "remove"}
    at.button(key="ex_clear_sel").click().run()
    assert at.session_state["selection"] == []


def test_explore_switches_class_on_the_server_past_the_browser_limit(env, run, monkeypatch):
    from flare_core import plots

    monkeypatch.setattr(plots, "CLASS_MENU_MAX_POINTS", 10)  # pretend 60 samples are too many to send at once
    at = app("explore", run_path=str(run.path))
    no_errors(at)
    fig = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert "updatemenus" not in fig["layout"] and "Class 0: zero" in fig["layout"]["title"]["text"]
    at.selectbox(key="ex_class").select(2).run()
    no_errors(at)
    assert "Class 2: two" in json.loads(at.get("plotly_chart")[1].proto.spec)["layout"]["title"]["text"]


def test_explore_title_says_when_a_class_was_embedded_on_a_sample(env, run):
    p = run.path / "views" / "class_0.npz"
    with np.load(p) as z:
        arrays = dict(z)
    arrays["embedded"] = np.arange(len(arrays["indices"])) % 4 != 0  # 15 of 20 embedded, 5 placed
    np.savez(p, **arrays)
    at = app("explore", run_path=str(run.path))
    no_errors(at)
    fig = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert fig["layout"]["title"]["text"].endswith(
        "<br><sup>UMAP on 15 of 20 samples, the rest placed by their nearest neighbours</sup>")
    buttons = fig["layout"]["updatemenus"][0]["buttons"]
    assert "placed" not in buttons[1]["args"][1]["title.text"]  # class 1 was embedded whole


def test_explore_global_view(env, run):
    at = app("explore", run_path=str(run.path))
    at.radio(key="ex_view").set_value("All classes").run()
    no_errors(at)
    fig = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert len({t["legendgroup"] for t in fig["data"] if t.get("customdata")}) == 3  # one legend group per class
    assert fig["data"][0]["type"] == "scattergl"


def test_pages_without_run_explain_what_to_do(env):
    for page in ("explore", "inspect", "export"):
        at = app(page)
        no_errors(at)
        assert "No analysis is open yet" in at.info[0].value
        assert at.sidebar.markdown[0].value == "### Current analysis"  # drawn although the page stopped early


def test_a_sub_page_runs_inside_app_py_not_as_a_legacy_page(env, run):
    """AppTest turns Streamlit's legacy pages/ discovery on before every run (as a fresh server does); the page
    still runs inside app.py: its sidebar and navigation are there."""
    from streamlit.runtime.pages_manager import PagesManager

    at = app("explore", run_path=str(run.path))
    no_errors(at)
    assert at.title[0].value == "Explore" and at.sidebar.markdown[0].value == "### Current analysis"
    assert PagesManager.uses_pages_directory is False


def test_sidebar_shows_the_run_the_page_just_opened(env, run):
    at = app()
    at.text_input(key="reopen_input").input(str(run.path))
    at.button(key="reopen_button").click().run()
    assert [m.value for m in at.sidebar.metric] == ["9", "9"]


# ---- Inspect -------------------------------------------------------------------------------------------------------
@pytest.fixture
def cam_ready():
    pytest.importorskip("flare_core.gradcam")


def test_inspect_flagged_with_cams_and_decisions(env, run, cam_ready):
    at = app("inspect", run_path=str(run.path), dataset=make_dataset(run), model=tiny_model())
    no_errors(at)
    assert "9 samples" in at.markdown[0].value or any("**9 samples**" in m.value for m in at.markdown)
    assert len(at.pagination) == 1  # 9 flagged, 8 per page
    assert imgs(at) == 2 * 8 + 4  # image + overlay per sample, plus the mean-CAM row
    cards = [m.value for m in at.markdown if m.value.startswith("**#")]
    assert len(cards) == 8
    for card in cards:  # the model's next choice after the label, said where it is not the prediction itself
        label, predicted = re.search(r"\*\*#\d+\*\* · (.+?)  \npredicted \*\*(.+?)\*\*", card).groups()
        assert ("next after the label:" in card) == (label == predicted), card
    radios = [r for r in at.radio if r.key and r.key.startswith("dec_")]
    assert len(radios) == 8
    first = int(radios[0].key.split("_")[1])
    radios[0].set_value("keep").run()
    assert run.decisions() == {first: "keep"}
    at.button(key="inspect_bulk_remove").click().run()
    no_errors(at)
    assert set(run.decisions().values()) == {"remove"} and len(run.decisions()) == 9
    # the widgets show the saved decisions after the bulk action
    assert all(r.value == "remove" for r in at.radio if r.key and r.key.startswith("dec_"))


@pytest.mark.parametrize("changed", ["model", "dataset"])
def test_inspect_refuses_a_model_or_dataset_that_changed_since_the_run(env, changed):
    """Reopened from its run.json, a run whose model file or data changed since the analysis is not shown with
    them: its flags would point at other images, Grad-CAM at another model's attention."""
    from flare_core.data import load_dataset
    from flare_core.hashing import dataset_sha256, file_sha256
    from flare_core.models import build_model, save_checkpoint

    save_checkpoint(build_model("small-cnn", 3, 1, (28, 28)), env / "m.pt", arch="small-cnn", num_classes=3,
                    in_channels=1, image_size=(28, 28))
    x = np.random.default_rng(0).integers(0, 256, (60, 28, 28), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    np.savez(env / "d.npz", x=x, y=y)
    run = make_run(env / "run-changed", data_path=str(env / "d.npz"), model_path=str(env / "m.pt"))
    meta = json.loads((run.path / "run.json").read_text())
    meta["model"]["sha256"] = file_sha256(env / "m.pt")
    loaded = load_dataset(str(env / "d.npz"))
    meta["dataset"]["sha256"] = dataset_sha256(loaded.images, loaded.labels)
    (run.path / "run.json").write_text(json.dumps(meta))
    at = app("inspect", run_path=str(run.path))
    no_errors(at)  # unchanged: shown
    assert at.session_state["model"] is not None and at.session_state["dataset"] is not None
    if changed == "model":
        torch.manual_seed(5)
        save_checkpoint(build_model("small-cnn", 3, 1, (28, 28)), env / "m.pt", arch="small-cnn", num_classes=3,
                        in_channels=1, image_size=(28, 28))
    else:
        y[0] = 1
        np.savez(env / "d.npz", x=x, y=y)
    st.cache_resource.clear()
    at = app("inspect", run_path=str(run.path))
    assert not at.exception and len(at.error) == 1
    assert f"The {changed} at " in at.error[0].value and "changed since this run analysed it" in at.error[0].value
    assert at.session_state["model"] is None and at.session_state["dataset"] is None


def test_inspect_selection_source(env, run, cam_ready):
    at = app("inspect", run_path=str(run.path), dataset=make_dataset(run), model=tiny_model(), selection=[3, 4],
             inspect_source="selection")
    no_errors(at)
    assert len([r for r in at.radio if r.key and r.key.startswith("dec_")]) == 2


def test_inspect_tests_a_selection_as_a_trigger_group_on_request(env, cam_ready):
    """An Explore selection (12 samples of class 'zero') gets the trigger test only when asked; the result is a
    table row for that class; the flagged set has no such button (the run holds its test)."""
    run = make_run(env / "run", per_class=30)
    state = dict(run_path=str(run.path), dataset=make_dataset(run), model=tiny_model(), selection=list(range(12)),
                 inspect_source="selection")
    at = app("inspect", **state)
    no_errors(at)
    assert not any(df.value is not None and "moved in %" in df.value.columns for df in at.dataframe)
    at.button(key="inspect_trigger_test").click().run()
    no_errors(at)
    tables = [df.value for df in at.dataframe if "moved in %" in df.value.columns]
    assert len(tables) == 1 and list(tables[0]["class"]) == ["zero"] and list(tables[0]["samples"]) == [12]
    flagged = app("inspect", **{**state, "inspect_source": "flagged"})
    no_errors(flagged)
    assert not [b for b in flagged.button if b.key == "inspect_trigger_test"]


def test_inspect_highest_scores_lists_the_top_samples_flagged_or_not(env, run, cam_ready):
    at = app("inspect", run_path=str(run.path), dataset=make_dataset(run), model=tiny_model(),
             inspect_source="ranked")
    no_errors(at)
    at.number_input(key="inspect_top_n").set_value(5).run()
    no_errors(at)
    radios = [r for r in at.radio if r.key and r.key.startswith("dec_")]
    shown = [int(r.key.split("_")[1]) for r in radios]
    top = [int(i) for i in np.argsort(-run.scores(), kind="stable")[:5]]
    assert sorted(shown) == sorted(top) and shown[0] == top[0]  # two columns: the widget tree lists column by column
    assert any("highest score first" in c.value for c in at.caption)


def test_inspect_least_fitted_lists_the_highest_losses_in_loss_order(env, cam_ready):
    from test_app_support import make_run

    run = make_run(env / "run-loss", losses=True)
    at = app("inspect", run_path=str(run.path), dataset=make_dataset(run), model=tiny_model(),
             inspect_source="unfitted")
    no_errors(at)
    at.number_input(key="inspect_unfitted_n").set_value(4).run()
    no_errors(at)
    shown = [int(r.key.split("_")[1]) for r in at.radio if r.key and r.key.startswith("dec_")]
    top = [int(i) for i in np.argsort(-run.losses(), kind="stable")[:4]]
    assert sorted(shown) == sorted(top) and shown[0] == top[0]
    assert any("fits worst" in c.value for c in at.caption)
    assert "Least fitted by the model" in at.radio(key="inspect_source").options
    assert sum("· loss " in m.value for m in at.markdown) == 4


def test_inspect_lists_the_likely_mislabelled_least_fitted_first_and_can_remove_them(env, cam_ready):
    import pandas as pd
    from flare_core.run_folder import RunFolder
    from test_app_support import make_run

    run = make_run(env / "run-noise", losses=True, flag=False)
    df = pd.read_csv(run.path / "manifest.csv", keep_default_na=False)
    noise = np.zeros(len(df), int)
    noise[[3, 7, 11, 20]] = 1
    df["label_noise"] = noise
    df.to_csv(run.path / "manifest.csv", index=False)
    run = RunFolder(run.path)
    np.testing.assert_array_equal(run.label_noise(), noise.astype(bool))
    at = app("inspect", run_path=str(run.path), dataset=make_dataset(run), model=tiny_model(),
             inspect_source="label_noise")
    no_errors(at)
    assert "Likely mislabelled" in at.radio(key="inspect_source").options
    shown = [int(r.key.split("_")[1]) for r in at.radio if r.key and r.key.startswith("dec_")]
    want = [3, 7, 11, 20]
    assert sorted(shown) == want and shown[0] == max(want, key=lambda i: run.losses()[i])
    assert any("mislabelled images, not a backdoor's poison" in c.value for c in at.caption)
    at.button(key="inspect_bulk_remove").click().run()
    no_errors(at)
    assert np.flatnonzero(RunFolder(run.path).removal_mask()).tolist() == want


def test_inspect_offers_likely_mislabelled_only_when_the_run_has_some(env, run, cam_ready):
    at = app("inspect", run_path=str(run.path), dataset=make_dataset(run), model=tiny_model())
    no_errors(at)
    assert "Likely mislabelled" not in at.radio(key="inspect_source").options and run.label_noise() is None


def test_inspect_offers_least_fitted_only_when_the_run_has_losses(env, run, cam_ready):
    at = app("inspect", run_path=str(run.path), dataset=make_dataset(run), model=tiny_model())
    no_errors(at)
    assert "Least fitted by the model" not in at.radio(key="inspect_source").options
    assert run.losses() is None and run.next_classes() is None


def test_inspect_dataset_size_mismatch_is_a_readable_error(env, run):
    ds = make_dataset(run).subset(range(10))
    at = app("inspect", run_path=str(run.path), dataset=ds, model=tiny_model())
    assert not at.exception and "analysed 60" in at.error[0].value


# ---- Export --------------------------------------------------------------------------------------------------------
def test_export_writes_purified_and_report(env, run):
    ds = make_dataset(run)
    run.set_decisions([19], "keep")
    at = app("export", run_path=str(run.path), dataset=ds)
    no_errors(at)
    assert [m.value for m in at.metric][:3] == ["60", "52", "8"]
    at.text_input(key="export_path").input(str(env / "out"))
    at.button(key="export_write").click().run()
    no_errors(at)
    from flare_core.data import load_dataset

    out = load_dataset(env / "out")
    assert len(out) == 52 and np.array_equal(out.images, ds.images[~run.removal_mask()])
    assert len(at.download_button) == 1  # manifest
    at.button(key="export_report_build").click().run()
    no_errors(at)
    assert (run.path / "report.html").exists() and len(at.download_button) == 2
    at.button(key="export_zip_prepare").click().run()
    no_errors(at)
    assert len(at.download_button) == 3


def test_export_refuses_output_outside_roots(env, run):
    at = app("export", run_path=str(run.path), dataset=make_dataset(run))
    at.text_input(key="export_path").input("/etc/flare-out")
    at.button(key="export_write").click().run()
    assert not at.exception and "outside the folders" in at.error[0].value


def test_unexpected_error_is_short_message_with_details(env, run, monkeypatch):
    import flare_core.report

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(flare_core.report, "build_report", boom)
    at = app("export", run_path=str(run.path), dataset=make_dataset(run))
    at.button(key="export_report_build").click().run()
    assert not at.exception
    assert "failed unexpectedly: disk on fire" in at.error[0].value
    assert at.expander[-1].label == "Details"


# ---- Evaluate ------------------------------------------------------------------------------------------------------
def test_evaluate_compares_detectors(env, run):
    pytest.importorskip("flare_core.metrics")
    run.set_decisions([59], "keep")  # the false alarm
    at = app("evaluate", run_path=str(run.path))
    no_errors(at)
    values = {m.label: m.value for m in at.metric}
    assert values["F1 after your review"] != values[[k for k in values if k.endswith("F1") and "after" not in k][0]]
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t["name"] for t in bars["data"]] == ["TPR", "FPR", "F1"]
    assert len(at.dataframe) == 2


def _retrain_fixture(env):
    """A run over a lab folder with test sets, its dataset and a small-cnn recording a 1-epoch recipe."""
    from flare_core.data.writers import save_npz
    from flare_core.dataset import ImageDataset
    from flare_core.models import build_model
    from test_app_support import make_images

    lab = env / "lab"
    lab.mkdir()
    r = make_run(env / "run", data_path=str(lab / "train.npz"))
    save_npz(ImageDataset(make_images(30, seed=1), np.arange(30) % 3, r.classes, [f"t{i}" for i in range(30)]),
             lab / "test_clean.npz")
    save_npz(ImageDataset(make_images(20, seed=2), np.zeros(20, dtype=np.int64), r.classes, [f"p{i}" for i in range(20)]),
             lab / "test_poisoned.npz")
    torch.manual_seed(0)
    model = LoadedModel(module=build_model("small-cnn", 3, 1, (8, 8)).eval(), kind="state_dict", num_classes=3,
                        arch="small-cnn", path="m.pt", sha256="m",
                        description={"history": {"config": {"epochs": 1, "batch_size": 16, "seed": 0}}})
    return r, make_dataset(r), model


def test_evaluate_retrains_on_request_and_shows_before_after(env):
    from flare_core import retrain

    r, ds, model = _retrain_fixture(env)
    at = app("evaluate", run_path=str(r.path), dataset=ds, model=model)
    no_errors(at)
    assert at.text_input(key="rt_test").value == str(env / "lab" / "test_clean.npz")  # found next to the data
    assert at.button(key="ev_retrain").label == "Retrain on the purified set"
    assert not (r.path / retrain.RESULT_FILE).exists()  # nothing is retrained until asked
    at.checkbox(key="rt_control").check()
    at.button(key="ev_retrain").click().run()
    no_errors(at)
    stored = retrain.load_result(r)
    assert stored is not None and stored["n_train_after"] == 51 and stored["recipe"]["epochs"] == 1
    assert stored["control"]["n_train"] == 60
    values = {m.label: m.value for m in at.metric}
    assert values["BA of the control"] == f"{100 * stored['control']['benign_accuracy']:.2f} %"
    assert at.button(key="ev_retrain").label == "Retrain again"
    assert values["BA"].endswith("%") and values["ASR after retraining"].endswith("%")
    assert values["BA after retraining"] == f"{100 * stored['after']['benign_accuracy']:.2f} %"
    assert any("saved in the run folder" in s.value for s in at.success)
    # a reload shows the stored result without retraining; a new decision marks it stale
    r.set_decisions([3], "remove")
    at2 = app("evaluate", run_path=str(r.path))
    no_errors(at2)
    assert at2.button(key="ev_retrain").label == "Retrain again"
    assert "changed since this retraining" in at2.warning[0].value
    assert {m.label: m.value for m in at2.metric}["BA after retraining"] == values["BA after retraining"]


def _pets_zip(prefix: str, classes=("cat", "dog", "eel")) -> bytes:
    import io
    import zipfile

    from PIL import Image

    buf, rng = io.BytesIO(), np.random.default_rng(0)
    with zipfile.ZipFile(buf, "w") as z:
        for c in classes:
            for i in range(4):
                png = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(png, format="PNG")
                z.writestr(f"{prefix}{c}/{i}.png", png.getvalue())
    return buf.getvalue()


def _own_form(env) -> AppTest:
    """The Load page with "Use my own model and dataset" on and a 3-class 28x28 model's path typed in."""
    from flare_core.models import build_model, save_checkpoint

    save_checkpoint(build_model("small-cnn", 3, 1, (28, 28)), env / "m.pt", arch="small-cnn", num_classes=3,
                    in_channels=1, image_size=(28, 28))
    at = app()
    at.toggle(key="own_toggle").set_value(True).run()
    at.text_input(key="model_path_input").input(str(env / "m.pt"))
    return at


def test_load_an_uploaded_model_with_its_description_and_a_wrapped_zip(env):
    # The weights alone need an architecture; uploaded with the .json `flare train` wrote beside them, they load
    # with its architecture and classes. The zip wraps its class folders in two folders.
    from flare_core.models import build_model, save_checkpoint

    save_checkpoint(build_model("small-cnn", 3, 1, (28, 28)), env / "m.pt", arch="small-cnn", num_classes=3,
                    in_channels=1, image_size=(28, 28), classes=["cat", "dog", "eel"])
    at = app()
    at.toggle(key="own_toggle").set_value(True).run()
    at.file_uploader(key="data_upload").upload("pets.zip", _pets_zip("outer/pets/"), "application/zip")
    at.file_uploader(key="model_upload").upload("m.pt", (env / "m.pt").read_bytes(), "application/octet-stream")
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    assert "holds only weights" in at.error[0].value and "Architecture box" in at.error[0].value
    at.file_uploader(key="model_upload").set_value([
        ("m.pt", (env / "m.pt").read_bytes(), "application/octet-stream"),
        ("m.json", (env / "m.json").read_bytes(), "application/json")])
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    no_errors(at)
    assert not at.warning  # the model's classes are the data's: no fit warning
    cfg = at.session_state["config"]
    assert Path(cfg.data).name == "pets" and Path(cfg.model).name == "m.pt" and cfg.arch is None
    assert [m.value for m in at.metric][:3] == ["12", "3", "28×28×1"]


def test_load_a_dataset_uploaded_as_a_folder(env):
    import io
    import zipfile

    from flare_core.models import build_model, save_checkpoint

    save_checkpoint(build_model("small-cnn", 3, 1, (28, 28)), env / "m.pt", arch="small-cnn", num_classes=3,
                    in_channels=1, image_size=(28, 28))
    with zipfile.ZipFile(io.BytesIO(_pets_zip("pets/"))) as z:  # the files a browser sends for the folder pets/
        files = [(n, z.read(n), "image/png") for n in z.namelist()]
    at = app()
    at.toggle(key="own_toggle").set_value(True).run()
    at.text_input(key="model_path_input").input(str(env / "m.pt"))
    at.file_uploader(key="folder_upload").set_value(files)
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    no_errors(at)
    cfg = at.session_state["config"]
    assert Path(cfg.data).name == "pets" and (env / "cache" / "uploads") in Path(cfg.data).parents
    assert [m.value for m in at.metric][:3] == ["12", "3", "28×28×1"]
    at.file_uploader(key="data_upload").upload("pets.zip", _pets_zip(""), "application/zip")
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    assert "Give the dataset one way" in at.error[0].value


def test_load_refuses_an_upload_left_in_its_box_beside_a_typed_path(env):
    # The uploader keeps its file until cleared: a path typed later used to lose to it without a word.
    at = _own_form(env)
    at.file_uploader(key="data_upload").upload("pets.zip", _pets_zip(""), "application/zip")
    at.text_input(key="data_path_input").input(str(env))
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    assert "Give the dataset one way" in at.error[0].value and "config" not in at.session_state
    at.file_uploader(key="model_upload").upload("m.pt", (env / "m.pt").read_bytes(), "application/octet-stream")
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    assert "model as a server path or as an upload, not both" in at.error[0].value


def test_load_an_uploaded_lab_folder_brings_its_ground_truth(env):
    from flare_core.cli import main as cli_main
    from flare_core.models import build_model, save_checkpoint
    from flare_core.server_paths import zip_folder

    assert cli_main(["-q", "attack", "badnets", "--data", "builtin:digits", "--rate", "0.05",
                     "--out", str(env / "lab")]) == 0
    save_checkpoint(build_model("small-cnn", 10, 1, (16, 16)), env / "m.pt", arch="small-cnn", num_classes=10,
                    in_channels=1, image_size=(16, 16))
    at = app()
    at.toggle(key="own_toggle").set_value(True).run()
    at.text_input(key="model_path_input").input(str(env / "m.pt"))
    at.file_uploader(key="data_upload").upload("lab.zip", zip_folder(env / "lab"), "application/zip")
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    no_errors(at)
    cfg = at.session_state["config"]
    assert Path(cfg.data).name == "lab" and Path(cfg.ground_truth) == Path(cfg.data) / "ground_truth.json"
    assert [m.value for m in at.metric][:2] == ["1,437", "10"]


def test_load_refuses_an_uploaded_manifest_that_reads_images_outside_the_allowed_folders(env, tmp_path_factory):
    import io
    import zipfile

    from PIL import Image

    from flare_core.models import build_model, save_checkpoint

    outside = tmp_path_factory.mktemp("outside")
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(outside / "private.png")
    save_checkpoint(build_model("small-cnn", 3, 1, (28, 28)), env / "m.pt", arch="small-cnn", num_classes=3,
                    in_channels=1, image_size=(28, 28))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        png = io.BytesIO()
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(png, format="PNG")
        z.writestr("d/imgs/0.png", png.getvalue())
        z.writestr("d/manifest.csv", f"path,label\nimgs/0.png,0\n{outside / 'private.png'},1\n")
    at = app()
    at.toggle(key="own_toggle").set_value(True).run()
    at.text_input(key="model_path_input").input(str(env / "m.pt"))
    at.file_uploader(key="data_upload").upload("d.zip", buf.getvalue(), "application/zip")
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    assert not at.exception
    assert f"The dataset reads {outside / 'private.png'}, which is outside the folders" in at.error[0].value
    assert at.session_state["dataset"] is None if "dataset" in at.session_state else True
    assert not at.get("image")  # nothing of it shown


def test_load_warns_when_the_dataset_holds_a_single_class(env):
    at = _own_form(env)
    at.file_uploader(key="data_upload").upload("cats.zip", _pets_zip("", classes=("cat",)), "application/zip")
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    no_errors(at)
    assert [m.value for m in at.metric][:2] == ["4", "1"]
    assert any("single class, 'cat'" in w.value for w in at.warning)


def test_evaluate_retrain_refuses_test_sets_outside_roots(env):
    r, ds, model = _retrain_fixture(env)
    at = app("evaluate", run_path=str(r.path), dataset=ds, model=model)
    at.text_input(key="rt_test").input("/etc/passwd")
    at.button(key="ev_retrain").click().run()
    assert not at.exception and "outside the folders" in at.error[0].value


def test_load_own_model_path_and_uploaded_zip_dataset(env):
    import io
    import zipfile

    from PIL import Image

    from flare_core.models import build_model, save_checkpoint

    save_checkpoint(build_model("small-cnn", 3, 1, (28, 28)), env / "m.pt", arch="small-cnn", num_classes=3,
                    in_channels=1, image_size=(28, 28))
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buf, "w") as z:
        for c in ("cat", "dog", "eel"):
            for i in range(4):
                png = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(png, format="PNG")
                z.writestr(f"pets/{c}/{i}.png", png.getvalue())
    at = app()
    at.toggle(key="own_toggle").set_value(True).run()
    at.text_input(key="model_path_input").input(str(env / "m.pt"))
    at.file_uploader(key="data_upload").upload("pets.zip", buf.getvalue(), "application/zip")
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    no_errors(at)
    cfg = at.session_state["config"]
    assert Path(cfg.data).name == "pets" and (env / "cache" / "uploads") in Path(cfg.data).parents
    assert [m.value for m in at.metric][:3] == ["12", "3", "28×28×1"]
    assert imgs(at) == 6


def test_load_says_when_the_images_are_kept_on_disk(env, monkeypatch):
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    at = _own_form(env)
    at.file_uploader(key="data_upload").upload("pets.zip", _pets_zip(""), "application/zip")
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    no_errors(at)
    assert any("memory-mapped temporary file" in c.value for c in at.caption)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "100")
    st.cache_resource.clear()
    at2 = _own_form(env)
    at2.file_uploader(key="data_upload").upload("pets.zip", _pets_zip(""), "application/zip")
    at2.button[[b.label for b in at2.button].index("Load model and dataset")].click().run()
    no_errors(at2)
    assert not any("memory-mapped" in c.value for c in at2.caption)


def test_load_says_when_an_npz_is_read_in_place(env, monkeypatch):
    import io

    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(0).integers(0, 256, (12, 28, 28), dtype=np.uint8), y=np.arange(12) % 3)
    monkeypatch.setenv("FLARE_IMAGE_RAM_MB", "0")
    at = _own_form(env)
    at.file_uploader(key="data_upload").upload("pets.npz", buf.getvalue(), "application/octet-stream")
    at.button[[b.label for b in at.button].index("Load model and dataset")].click().run()
    no_errors(at)
    assert [m.value for m in at.metric][:3] == ["12", "3", "28×28×1"]
    assert any("read in place from the `.npz` file" in c.value for c in at.caption)
