"""Plotly figure builders and image tiles for the dashboard and the HTML report (pure: arrays in, figures out).

Scatter plots put the sample's stable index first in ``customdata`` so a lasso/box selection maps back to
samples whatever the trace order. Large point sets are downsampled (every flagged sample is kept) and drawn
with WebGL (``Scattergl``); the report uses SVG (``webgl=False``) so a page with many plots stays light.
"""
from __future__ import annotations

from html import escape as html_escape
from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from flare_core.sampling import sample_keeping

#: Above this many points a scatter plot is downsampled (flagged samples always kept).
MAX_POINTS = 20_000
NOISE_COLOR = "#b0b0b0"
CLUSTER_COLORS = tuple(qualitative.D3 + qualitative.Dark24 + qualitative.Alphabet)
CLASS_COLORS = tuple(qualitative.Plotly + qualitative.Dark24 + qualitative.Alphabet)
FLAGGED_SYMBOL = "x"
FLAGGED_COLOR = "#d62728"


def cluster_color(cluster_id: int) -> str:
    """A stable colour per cluster id (grey for HDBSCAN noise, id -1)."""
    return NOISE_COLOR if cluster_id < 0 else CLUSTER_COLORS[int(cluster_id) % len(CLUSTER_COLORS)]


#: When the flagged points alone would fill more than this share of a downsampled plot, a random subset of them
#: is drawn, so the unflagged points they stand out from are drawn too (a 10 % all-to-one attack's target class is
#: half poison: keeping every flagged point first drew none of its genuine samples).
DRAWN_FLAGGED_SHARE = 0.5


def downsample_indices(n: int, max_points: int, keep: Optional[np.ndarray] = None, seed: int = 0) -> np.ndarray:
    """Sorted positions of at most ``max_points`` of ``n`` points: every ``keep`` point while they fill at most
    ``DRAWN_FLAGGED_SHARE`` of them (a random subset of them past it), the rest at random. Deterministic for a seed.
    """
    if max_points <= 0:
        raise ValueError("max_points must be positive.")
    return sample_keeping(n, max_points, keep, seed, keep_share=DRAWN_FLAGGED_SHARE)


def drawn_note(shown: np.ndarray, n: int, flagged: np.ndarray) -> str:
    """"showing 20,000 of 199,981 points (10,000 of the 100,078 flagged)", or "" when every point is drawn."""
    if len(shown) >= n:
        return ""
    total, drawn = int(flagged.sum()), int(flagged[shown].sum())
    which = ("" if total == 0 else " (every flagged one)" if drawn == total
             else f" ({drawn:,} of the {total:,} flagged)")
    return f"showing {len(shown):,} of {n:,} points{which}"


def _scatter_cls(webgl: bool):
    return go.Scattergl if webgl else go.Scatter


def _marker(color: str, size: float, flagged: bool, opacity: float) -> dict:
    if flagged:
        return dict(color=color, size=size + 4, symbol=FLAGGED_SYMBOL, opacity=1.0, line=dict(width=1.0, color="#222222"))
    return dict(color=color, size=size, symbol="circle", opacity=opacity)


def short_sources(sources: Sequence[str]) -> np.ndarray:
    """Sources without their common folder (hover text stays short: ``cat/img01.png``, ``train.npz#12``)."""
    arr = np.asarray(sources, dtype=object)
    if len(arr) == 0:
        return arr
    import os.path

    try:
        common = os.path.commonpath([str(x) for x in arr[:: max(1, len(arr) // 200)]] + [str(arr[-1])])
    except ValueError:  # mixed absolute/relative
        return arr
    if not common or common == "/" or any(not str(x).startswith(common) for x in arr):
        return arr
    cut = len(common) + (0 if common.endswith("/") else 1)
    return np.array([str(x)[cut:] for x in arr], dtype=object)


def _legend_flagged(scatter, label: str):
    return scatter(
        x=[None], y=[None], mode="markers", name=label, showlegend=True, hoverinfo="skip",
        marker=dict(symbol=FLAGGED_SYMBOL, size=9, color="#444444", line=dict(width=1, color="#222222")),
    )


def _with_notes(title: str, notes: Sequence[str]) -> str:
    """The title, and its notes (how the points were embedded or drawn) in small type on a second line."""
    notes = [x for x in notes if x]
    return f"{title}<br><sup>{'; '.join(notes)}</sup>" if notes else title


def _base_layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left"),
        height=height,
        margin=dict(l=60, r=10, t=70 if "<br>" in title else 50, b=50),
        dragmode="lasso",
        legend=dict(itemsizing="constant", orientation="v"),
        xaxis=dict(title="UMAP 1", showgrid=False, zeroline=False, automargin=True),
        yaxis=dict(title="UMAP 2", showgrid=False, zeroline=False, automargin=True),
        plot_bgcolor="white",
        hovermode="closest",
        uirevision=title,  # zoom/pan survive reruns of the same view, and reset when the view changes
    )
    return fig


def class_scatter(
    embedding: np.ndarray,
    clusters: np.ndarray,
    indices: np.ndarray,
    flagged: np.ndarray,
    *,
    scores: Optional[np.ndarray] = None,
    sources: Optional[Sequence[str]] = None,
    stability: Optional[Mapping[int, float]] = None,
    title: str = "",
    note: str = "",
    detector_label: str = "flagged",
    max_points: int = MAX_POINTS,
    webgl: bool = True,
    seed: int = 0,
    height: int = 540,
) -> go.Figure:
    """One class's 2-D embedding coloured by HDBSCAN cluster; flagged samples drawn as ✕ in their cluster's colour.
    ``note`` (how the class was embedded) and the downsampling, when any, are a second line under the title.

    All arrays are per point of the class (same length). Each cluster has a trace of unflagged points and, when
    any, a trace of flagged ones (same legend group). ``customdata`` per point is the numeric row
    ``[index, cluster, score]`` (so a selection maps back to sample indices); the hover shows the source too.
    """
    emb = np.asarray(embedding, dtype=np.float32)
    n = len(emb)
    clusters = np.asarray(clusters, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    flagged = np.asarray(flagged, dtype=bool)
    if emb.ndim != 2 or emb.shape[1] != 2:
        raise ValueError(f"embedding must be (n, 2), got {emb.shape}.")
    for name, arr in (("clusters", clusters), ("indices", indices), ("flagged", flagged)):
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} entries for {n} points.")
    scores = np.zeros(n) if scores is None else np.asarray(scores, dtype=float)
    hover_src = short_sources(sources) if sources is not None else np.full(n, "", dtype=object)
    shown = downsample_indices(n, max_points, flagged, seed)
    scatter = _scatter_cls(webgl)
    size = 5.0 if n > 3000 else 7.0
    fig = go.Figure()
    ids, counts = np.unique(clusters, return_counts=True)
    for cid in ids[np.argsort(-counts, kind="stable")]:
        total = int(counts[ids == cid][0])
        name = "noise" if cid < 0 else f"cluster {cid}"
        extra = f", stability {stability[int(cid)]:.2f}" if stability and int(cid) in stability else ""
        color = cluster_color(int(cid))
        in_cluster = shown[clusters[shown] == cid]
        first = True
        for is_flagged in (False, True):
            sel = in_cluster[flagged[in_cluster] == is_flagged]
            if len(sel) == 0:
                continue
            custom = np.stack([indices[sel], clusters[sel], np.round(scores[sel], 4)], axis=1).astype(np.float32)
            fig.add_trace(
                scatter(
                    x=emb[sel, 0], y=emb[sel, 1], mode="markers", customdata=custom, text=hover_src[sel],
                    name=f"{name} ({total:,}{extra})",
                    legendgroup=name, showlegend=first,
                    marker=_marker(color, size, is_flagged, 0.8),
                    hovertemplate="index %{customdata[0]}<br>%{text}<br>" + name + "<br>score %{customdata[2]:.3f}"
                                  + (f"<br><b>{detector_label}</b>" if is_flagged else "") + "<extra></extra>",
                )
            )
            first = False
    if flagged.any():
        fig.add_trace(_legend_flagged(scatter, f"✕ {detector_label} ({int(flagged.sum()):,})"))
    return _base_layout(fig, _with_notes(title, [note, drawn_note(shown, n, flagged)]), height)


def global_scatter(
    embedding: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    flagged: np.ndarray,
    *,
    title: str = "All classes",
    detector_label: str = "flagged",
    max_points: int = MAX_POINTS,
    webgl: bool = True,
    seed: int = 0,
    height: int = 600,
) -> go.Figure:
    """The whole dataset's 2-D embedding coloured by class, flagged samples as ✕, downsampled past ``max_points``.

    ``customdata`` per point is ``[index]``; each class has a trace of unflagged and one of flagged points.
    """
    emb = np.asarray(embedding, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    flagged = np.asarray(flagged, dtype=bool)
    n = len(emb)
    if emb.ndim != 2 or emb.shape[1] != 2 or len(labels) != n or len(flagged) != n:
        raise ValueError("embedding must be (N, 2) with one label and one flag per point.")
    shown = downsample_indices(n, max_points, flagged, seed)
    scatter = _scatter_cls(webgl)
    size = 4.0 if len(shown) > 5000 else 6.0
    fig = go.Figure()
    for k in np.unique(labels):
        name = str(classes[k]) if k < len(classes) else str(k)
        in_class = shown[labels[shown] == k]
        first = True
        for is_flagged in (False, True):
            sel = in_class[flagged[in_class] == is_flagged]
            if len(sel) == 0:
                continue
            fig.add_trace(
                scatter(
                    x=emb[sel, 0], y=emb[sel, 1], mode="markers", customdata=sel.astype(np.float32)[:, None],
                    name=f"{k}: {name}",
                    legendgroup=f"class {k}", showlegend=first,
                    marker=_marker(CLASS_COLORS[int(k) % len(CLASS_COLORS)], size, is_flagged, 0.7),
                    hovertemplate="index %{customdata[0]}<br>class " + html_escape(name)
                                  + (f"<br><b>{detector_label}</b>" if is_flagged else "") + "<extra></extra>",
                )
            )
            first = False
    if flagged.any():
        fig.add_trace(_legend_flagged(scatter, f"✕ {detector_label} ({int(flagged.sum()):,})"))
    return _base_layout(fig, _with_notes(title, [drawn_note(shown, n, flagged)]), height)


#: Above this many points (or classes) in all, Explore switches classes on the server instead (see class_menu).
CLASS_MENU_MAX_POINTS = 150_000
CLASS_MENU_MAX_CLASSES = 40


def class_menu(figures: Sequence[tuple], default: int = 0, *, title_prefix: str = "") -> go.Figure:
    """Per-class scatter figures (``(menu label, figure)`` pairs, e.g. from :func:`class_scatter`) merged into
    one figure that shows one class at a time, picked with a dropdown inside the plot.

    The switch happens in the browser (a Plotly ``update`` of trace visibility, title and axis ranges): no
    server round trip, and the plot and its WebGL context are kept, which costs a fraction of drawing a new
    plot. Trace ``meta`` holds the position of its class in ``figures``; legend groups are made unique per
    class; the layout's ``meta`` lists the menu labels. Switching clears a lasso/box selection drawn on the
    previous class.
    """
    if not figures:
        raise ValueError("class_menu needs at least one figure.")
    default = min(max(int(default), 0), len(figures) - 1)
    spans, titles, start = [], [], 0
    for _, f in figures:
        spans.append((start, start + len(f.data)))
        start += len(f.data)
        titles.append(f.layout.title.text or "")
    out = go.Figure(data=[t for _, f in figures for t in f.data], layout=figures[default][1].layout)  # copies
    for j, (a, b) in enumerate(spans):
        for t in out.data[a:b]:
            t.update(visible=j == default, meta=j, legendgroup=f"{j}:{t.legendgroup or t.name}")
    n = len(out.data)
    buttons = [
        dict(label=str(label), method="update",
             args=[{"visible": [a <= i < b for i in range(n)], "selectedpoints": [None] * n},
                   {"title.text": title_prefix + titles[j], "xaxis.autorange": True, "yaxis.autorange": True,
                    "selections": []}])
        for j, ((label, _), (a, b)) in enumerate(zip(figures, spans))
    ]
    top = (out.layout.margin.t or 50) + 44
    out.update_layout(
        # the menu at the top left, the class's title under it (the toolbar keeps the top right)
        title=dict(text=title_prefix + titles[default], x=0.0, xref="paper", xanchor="left", y=1.0, yref="paper",
                   yanchor="bottom",
                   pad=dict(b=8)),
        margin=dict(t=top),
        height=(out.layout.height or 540) + 44,
        uirevision="class-menu",  # zoom/pan survive reruns; a class switch resets the axes itself
        meta={"menu_labels": [str(label) for label, _ in figures]},
        updatemenus=[dict(type="dropdown", buttons=buttons, active=default, showactive=True, x=0.0, xanchor="left",
                          y=1.0, yanchor="bottom", pad=dict(b=40), bgcolor="white",
                          bordercolor="#999999", font=dict(size=13))],
    )
    return out


def selected_indices(fig: go.Figure, points: Sequence[Mapping]) -> list:
    """Sample indices of the points of a plotly selection event (as Streamlit reports it), looked up in the
    figure that was shown: ``customdata[0]`` of point ``point_index`` of trace ``curve_number``."""
    out = set()
    for p in points or []:
        curve = p.get("curve_number", p.get("curveNumber"))
        pos = p.get("point_index", p.get("point_number", p.get("pointIndex")))
        if curve is None or pos is None or not 0 <= int(curve) < len(fig.data):
            continue
        custom = fig.data[int(curve)].customdata
        if custom is None or not 0 <= int(pos) < len(custom):
            continue
        out.add(int(np.asarray(custom[int(pos)]).ravel()[0]))
    return sorted(out)


def flagged_bar(
    classes: Sequence[str],
    counts: Sequence[int],
    flagged_counts: Sequence[int],
    removal_counts: Optional[Sequence[int]] = None,
    *,
    detector_label: str = "flagged",
    height: int = 320,
) -> go.Figure:
    """Per class: how many samples the detector flagged (and, if given, how many will be removed after review)."""
    counts = np.asarray(counts, dtype=np.int64)
    flagged_counts = np.asarray(flagged_counts, dtype=np.int64)
    if not len(classes) == len(counts) == len(flagged_counts):
        raise ValueError("classes, counts and flagged_counts must have one entry per class.")
    names = [f"{k}: {c}" for k, c in enumerate(classes)]
    pct = np.divide(flagged_counts * 100.0, counts, out=np.zeros(len(counts)), where=counts > 0)
    fig = go.Figure(
        go.Bar(
            x=names, y=flagged_counts, name=detector_label, marker_color=FLAGGED_COLOR,
            text=[f"{int(v):,}" for v in flagged_counts], textposition="outside", cliponaxis=False,
            customdata=np.stack([counts, np.round(pct, 1)], axis=1),
            hovertemplate="%{x}<br>%{y:,} of %{customdata[0]:,} samples (%{customdata[1]} %)<extra>" + detector_label + "</extra>",
        )
    )
    if removal_counts is not None:
        fig.add_trace(go.Bar(x=names, y=np.asarray(removal_counts, dtype=np.int64), name="to remove (after review)",
                             marker_color="#7f7f7f"))
    fig.update_layout(
        barmode="group", height=height, margin=dict(l=60, r=10, t=50, b=50),
        title=dict(text="Flagged samples per class", x=0.0), plot_bgcolor="white",
        yaxis=dict(title="samples", automargin=True, gridcolor="#eeeeee"), xaxis=dict(automargin=True),
        legend=dict(orientation="h", y=1.12, x=1, xanchor="right"),
    )
    return fig


def detection_bars(metrics: Mapping[str, Mapping[str, float]], labels: Optional[Mapping[str, str]] = None,
                   *, height: int = 340) -> go.Figure:
    """TPR, FPR and F1 per detector side by side (``metrics``: detector -> dict with 'tpr','fpr','f1')."""
    fig = go.Figure()
    names = [labels.get(d, d) if labels else d for d in metrics]
    for key, color in (("tpr", "#2ca02c"), ("fpr", FLAGGED_COLOR), ("f1", "#1f77b4")):
        vals = [float(m.get(key) or 0.0) for m in metrics.values()]
        fig.add_trace(go.Bar(x=names, y=vals, name=key.upper(), marker_color=color,
                             text=[f"{v:.3f}" for v in vals], textposition="outside", cliponaxis=False))
    fig.update_layout(barmode="group", height=height, yaxis=dict(range=[0, 1.1], title="rate"),
                      margin=dict(l=60, r=10, t=50, b=50), title=dict(text="Detection quality per detector", x=0.0),
                      plot_bgcolor="white")
    return fig


# ---- image tiles ---------------------------------------------------------------------------------------------
def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H,W), (H,W,1) or (H,W,3) -> (H,W,3)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.ascontiguousarray(img.astype(np.uint8, copy=False))


def upscale(image: np.ndarray, min_side: int = 112) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor so the shorter side is at least ``min_side`` (RGB out)."""
    img = to_rgb(image)
    factor = max(1, int(np.ceil(min_side / max(1, min(img.shape[:2])))))
    if factor == 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def heat_rgb(cam: np.ndarray) -> np.ndarray:
    """A [0,1] map -> uint8 RGB with a perceptual colormap (for the mean CAM)."""
    from matplotlib import colormaps

    cam = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    return (colormaps["inferno"](cam)[..., :3] * 255).astype(np.uint8)
