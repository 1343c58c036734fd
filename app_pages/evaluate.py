"""Evaluate (ground truth known): TPR/FPR/F1 per detector side by side, per-class confusion."""
import streamlit as st

from flare_core import plots
from flare_core.report import detection_table, per_class_confusion
from app_pages import _shared as shared

run = shared.require_run()
st.title("Evaluate")
if run.ground_truth() is None:
    st.info("This run has no ground truth, so detection quality cannot be measured. Load a ground-truth file "
            "(made by the backdoor lab) with the data and analyse again.", icon=":material/info:")
    shared.stop_page()

gt = run.meta.get("ground_truth") or {}
truth = run.ground_truth()
st.caption(f"Ground truth: {int(truth.sum()):,} poisoned of {run.n_samples:,} samples"
           + (f" · attack {gt.get('attack')}, target class {gt.get('target')}" if gt.get("attack") else ""))

table = detection_table(run)
reviewed = detection_table(run, after_review=True)
main = run.detectors()[0]
labels = {d: shared.detector_label(d, long=True) for d in table.index}
c = st.columns(4)
m = table.loc[main]
short = shared.detector_label(main)
c[0].metric(f"{short} TPR", f"{100 * (m['tpr'] or 0):.1f} %", help="Share of poisoned samples flagged.")
c[1].metric(f"{short} FPR", f"{100 * (m['fpr'] or 0):.2f} %", help="Share of clean samples flagged.")
c[2].metric(f"{short} F1", f"{(m['f1'] or 0):.3f}")
r = reviewed.loc[main]
c[3].metric("F1 after your review", f"{(r['f1'] or 0):.3f}", delta=f"{(r['f1'] or 0) - (m['f1'] or 0):+.3f}",
            help="Using the analyst's keep/remove decisions on top of the detector's flags.")

st.plotly_chart(plots.detection_bars({d: table.loc[d].to_dict() for d in table.index}, labels), theme=None,
                key="ev_bars")
cols = [col for col in ("n_flagged", "tp", "fp", "fn", "tn", "tpr", "fpr", "precision", "f1", "auroc") if col in table.columns]
both = table[cols].rename(index=labels)
both.loc[f"{labels[main]} after review"] = reviewed.loc[main, cols]
st.dataframe(both, column_config={k: st.column_config.NumberColumn(format="%.4f") for k in ("tpr", "fpr", "precision", "f1", "auroc")})

st.subheader("Per class")
det = st.selectbox("Detector", list(table.index), format_func=labels.get, key="ev_detector")
st.dataframe(per_class_confusion(run, det), hide_index=True)
st.caption("TP: poisoned and flagged · FP: clean but flagged · FN: poisoned but missed · TN: clean and not flagged.")
st.caption("Retraining on the purified set and measuring benign accuracy / attack success rate is available from "
           "the command line (`flare train` on the exported data, then `flare evaluate`).")
