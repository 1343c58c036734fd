"""Figure builders: shapes of traces, selection back-mapping via customdata, downsampling, input unchanged."""
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from flare_core import plots


def _class_data(rng, n=300):
    emb = rng.normal(size=(n, 2)).astype(np.float32)
    clusters = rng.integers(-1, 3, n)
    indices = np.arange(1000, 1000 + n)
    flagged = clusters == 2
    return emb, clusters, indices, flagged


def _points(fig):
    xs = [np.asarray(t.x) for t in fig.data if t.x is not None and t.x[0] is not None]
    return int(sum(len(x) for x in xs))


def test_downsample_keeps_all_flagged_and_is_deterministic():
    keep = np.zeros(1000, bool)
    keep[::50] = True
    a = plots.downsample_indices(1000, 100, keep, seed=3)
    b = plots.downsample_indices(1000, 100, keep, seed=3)
    assert len(a) == 100 and np.array_equal(a, b)
    assert set(np.flatnonzero(keep)) <= set(a.tolist())
    assert np.all(np.diff(a) > 0)


def test_downsample_small_input_untouched_and_too_many_kept():
    assert np.array_equal(plots.downsample_indices(10, 100), np.arange(10))
    keep = np.ones(500, bool)
    assert len(plots.downsample_indices(500, 50, keep)) == 50


def test_downsample_draws_unflagged_points_when_the_flagged_would_fill_the_plot():
    """A class that is half poison (a 10 % all-to-one target class): half the drawn points are unflagged."""
    keep = np.zeros(2000, bool)
    keep[::2] = True
    shown = plots.downsample_indices(2000, 100, keep)
    assert len(shown) == 100 and keep[shown].sum() == 50 == (~keep[shown]).sum()
    flagged = np.zeros(2000, bool)
    flagged[:30] = True  # fewer than half: every one is drawn
    assert flagged[plots.downsample_indices(2000, 100, flagged)].sum() == 30


def test_downsample_rejects_nonpositive():
    with pytest.raises(ValueError):
        plots.downsample_indices(10, 0)


def test_class_scatter_traces_per_cluster_and_legend(rng):
    emb, clusters, indices, flagged = _class_data(rng)
    before = emb.copy()
    fig = plots.class_scatter(emb, clusters, indices, flagged, scores=rng.random(300), title="class 0")
    assert np.array_equal(emb, before)
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert sum(n.startswith("cluster") for n in legend) == 3 and any(n.startswith("noise") for n in legend)
    assert legend[-1].startswith("✕")
    assert _points(fig) == 300


def test_class_scatter_customdata_maps_to_sample_indices_and_flags(rng):
    emb, clusters, indices, flagged = _class_data(rng)
    fig = plots.class_scatter(emb, clusters, indices, flagged, detector_label="FLARE",
                              sources=[f"/data/set/{'a' if i % 2 else 'b'}/{i}.png" for i in indices])
    seen = {}
    for t in fig.data:
        if t.customdata is None:
            continue
        for row in np.asarray(t.customdata):
            seen[int(row[0])] = t.marker.symbol == plots.FLAGGED_SYMBOL
        assert all(txt[:2] in ("a/", "b/") for txt in t.text)  # common folder stripped from the hover text
    assert sorted(seen) == indices.tolist()
    assert {i for i, f in seen.items() if f} == set(indices[flagged].tolist())


def test_class_scatter_noise_is_grey_and_flagged_share_cluster_colour(rng):
    emb, clusters, indices, flagged = _class_data(rng)
    fig = plots.class_scatter(emb, clusters, indices, flagged)
    noise = [t for t in fig.data if t.name.startswith("noise")][0]
    assert noise.marker.color == plots.NOISE_COLOR
    c2 = [t for t in fig.data if t.legendgroup == "cluster 2"]
    assert len(c2) == 1 and c2[0].marker.symbol == plots.FLAGGED_SYMBOL  # cluster 2 is all flagged
    assert c2[0].marker.color == plots.cluster_color(2)


def test_short_sources():
    assert list(plots.short_sources(["/a/b/c.png", "/a/b/d/e.png"])) == ["c.png", "d/e.png"]
    assert list(plots.short_sources(["/x/t.npz#1", "/x/t.npz#2"])) == ["t.npz#1", "t.npz#2"]
    assert list(plots.short_sources(["a.png", "/b.png"])) == ["a.png", "/b.png"]


def test_class_scatter_downsamples_large_views(rng):
    emb, clusters, indices, flagged = _class_data(rng, n=3000)
    fig = plots.class_scatter(emb, clusters, indices, flagged, max_points=500)
    assert _points(fig) == 500
    assert "showing 500 of 3,000" in fig.layout.title.text


def test_drawn_note_says_how_many_flagged_points_are_drawn():
    flagged = np.zeros(1000, bool)
    flagged[:10] = True
    assert plots.drawn_note(np.arange(1000), 1000, flagged) == ""
    assert plots.drawn_note(np.arange(100), 1000, flagged) == "showing 100 of 1,000 points (every flagged one)"
    assert plots.drawn_note(np.arange(5, 105), 1000, flagged) == "showing 100 of 1,000 points (5 of the 10 flagged)"
    assert plots.drawn_note(np.arange(100), 1000, np.zeros(1000, bool)) == "showing 100 of 1,000 points"


def test_class_scatter_notes_go_on_a_second_line_under_the_title(rng):
    emb, clusters, indices, flagged = _class_data(rng, n=3000)
    fig = plots.class_scatter(emb, clusters, indices, flagged, title="Class 0", note="UMAP on 2,000 of 3,000",
                              max_points=500)
    assert fig.layout.title.text == ("Class 0<br><sup>UMAP on 2,000 of 3,000; "
                                     f"showing 500 of 3,000 points (250 of the {flagged.sum():,} flagged)</sup>")
    assert fig.layout.margin.t == 70  # room for the second line
    plain = plots.class_scatter(emb, clusters, indices, flagged, title="Class 0")
    assert plain.layout.title.text == "Class 0" and plain.layout.margin.t == 50


def test_class_scatter_svg_mode(rng):
    emb, clusters, indices, flagged = _class_data(rng, n=50)
    fig = plots.class_scatter(emb, clusters, indices, flagged, webgl=False)
    assert all(isinstance(t, go.Scatter) for t in fig.data)


def test_class_scatter_rejects_bad_shapes(rng):
    emb, clusters, indices, flagged = _class_data(rng, n=20)
    with pytest.raises(ValueError, match="embedding"):
        plots.class_scatter(emb[:, :1], clusters, indices, flagged)
    with pytest.raises(ValueError, match="clusters"):
        plots.class_scatter(emb, clusters[:5], indices, flagged)


def test_global_scatter_colours_by_class_and_serialises(rng):
    n = 2000
    emb = rng.normal(size=(n, 2))
    labels = rng.integers(0, 4, n)
    flagged = rng.random(n) < 0.05
    fig = plots.global_scatter(emb, labels, ["a", "b", "c", "d"], flagged, max_points=1000)
    class_traces = [t for t in fig.data if t.customdata is not None]
    assert len({t.legendgroup for t in class_traces}) == 4
    assert _points(fig) == 1000
    shown = np.concatenate([np.asarray(t.customdata)[:, 0] for t in class_traces]).astype(int)
    assert len(set(shown.tolist())) == 1000 and set(np.flatnonzero(flagged)) <= set(shown.tolist())
    shown_flagged = sum(len(t.x) for t in class_traces if t.marker.symbol == plots.FLAGGED_SYMBOL)
    assert shown_flagged == int(flagged.sum())
    assert len(pio.to_json(fig, validate=False)) > 1000


def test_flagged_bar_values_and_validation():
    fig = plots.flagged_bar(["a", "b"], [100, 50], [5, 0], removal_counts=[4, 1])
    assert list(fig.data[0].y) == [5, 0] and list(fig.data[1].y) == [4, 1]
    assert list(plots.flagged_bar(["a"], [200_000], [100_033]).data[0].text) == ["100,033"]
    with pytest.raises(ValueError):
        plots.flagged_bar(["a"], [1, 2], [0, 0])


def test_detection_bars_three_metrics_per_detector():
    fig = plots.detection_bars({"flare": {"tpr": 1.0, "fpr": 0.01, "f1": 0.9}, "ac": {"tpr": 0.5, "fpr": 0.2, "f1": None}},
                               labels={"flare": "FLARE"})
    assert [t.name for t in fig.data] == ["TPR", "FPR", "F1"]
    assert list(fig.data[0].x) == ["FLARE", "ac"] and list(fig.data[2].y) == [0.9, 0.0]


def test_image_tiles():
    g = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    up = plots.upscale(g, 112)
    assert up.shape == (112, 112, 3) and up.dtype == np.uint8
    assert np.array_equal(up[::4, ::4, 0], g)
    assert plots.to_rgb(np.zeros((4, 4, 1), np.uint8)).shape == (4, 4, 3)
    h = plots.heat_rgb(np.linspace(0, 1, 16).reshape(4, 4))
    assert h.shape == (4, 4, 3) and h.dtype == np.uint8 and not np.array_equal(h[0, 0], h[-1, -1])


def test_selected_indices_maps_event_points_back_through_the_figure(rng):
    emb, clusters, indices, flagged = _class_data(rng)
    fig = plots.class_scatter(emb, clusters, indices, flagged)
    t0 = fig.data[0]
    points = [{"curve_number": 0, "point_index": 2, "customdata": {"0": -1}},  # customdata as a browser may send it
              {"curve_number": 0, "point_number": 0},
              {"curve_number": len(fig.data) - 1, "point_index": 0},  # the legend-only trace: ignored
              {"curve_number": 99, "point_index": 0}]
    got = plots.selected_indices(fig, points)
    assert got == sorted({int(t0.customdata[2][0]), int(t0.customdata[0][0])})
    assert plots.selected_indices(fig, []) == []


def test_class_menu_shows_one_class_and_switches_in_the_browser(rng):
    figs = []
    for k in range(3):
        emb, clusters, indices, flagged = _class_data(np.random.default_rng(k), n=50 + 10 * k)
        figs.append((f"class {k}", plots.class_scatter(emb, clusters, indices + 1000 * k, flagged, title=f"Class {k}")))
    n_traces = [len(f.data) for _, f in figs]
    fig = plots.class_menu(figs, default=1)
    assert len(fig.data) == sum(n_traces)
    assert all(len(f.data) == n for (_, f), n in zip(figs, n_traces))  # the inputs are left alone
    assert [t.meta for t in fig.data] == [j for j, n in enumerate(n_traces) for _ in range(n)]
    assert [t.visible for t in fig.data] == [t.meta == 1 for t in fig.data]
    assert fig.layout.title.text == "Class 1" and fig.layout.meta["menu_labels"] == ["class 0", "class 1", "class 2"]
    menu = fig.layout.updatemenus[0]
    assert menu.active == 1 and [b.label for b in menu.buttons] == ["class 0", "class 1", "class 2"]
    vis, relayout = menu.buttons[2].args
    assert vis["visible"] == [t.meta == 2 for t in fig.data] and relayout["title.text"] == "Class 2"
    assert relayout["selections"] == [] and relayout["xaxis.autorange"] is True
    # legend groups are per class, so a legend click never reaches another class's hidden traces
    groups = {t.legendgroup for t in fig.data}
    assert all(g.split(":", 1)[0] in {"0", "1", "2"} for g in groups)
    # a selection maps back to samples through the merged figure
    t = next(i for i, tr in enumerate(fig.data) if tr.meta == 2 and tr.customdata is not None)
    assert plots.selected_indices(fig, [{"curve_number": t, "point_index": 0}]) == [int(fig.data[t].customdata[0][0])]
    pio.to_json(fig, validate=True)
    with pytest.raises(ValueError):
        plots.class_menu([])
