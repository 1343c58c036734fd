"""Evaluate (ground truth known): TPR/FPR/F1 per detector side by side, per-class confusion, and BA/ASR before and
after retraining on the purified set (on request)."""
import time

import streamlit as st

from flare_core import plots, retrain
from flare_core.errors import FlareError
from flare_core.report import detection_table, per_class_confusion
from pages import _shared as shared

shared.require_app_router()  # before anything else: never run as a legacy pages/ page

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

# ---- retraining on the purified set ---------------------------------------------------------------------------------
st.subheader("Retraining on the purified set")
st.caption("Does removing the samples remove the backdoor? A fresh model of the same architecture is trained on the "
           "samples kept (the detector's flags with your decisions), with the recipe the model file records (else the "
           "architecture's defaults), then **BA** (benign accuracy, clean test set) and **ASR** (attack success rate, "
           "triggered test set) are measured before (the analysed model) and after.")
stored = retrain.load_result(run)
found_clean, found_poisoned = retrain.find_test_sets(run)
with st.expander("Retraining settings", expanded=stored is None and found_clean is None):
    r1, r2 = st.columns(2)
    test_txt = r1.text_input("Clean test set (for BA)", value=str(found_clean or ""), key="rt_test",
                             help="Written by `flare attack` as test_clean.npz; any dataset path works.")
    ptest_txt = r2.text_input("Triggered test set (for ASR, optional)", value=str(found_poisoned or ""), key="rt_ptest",
                              help="Written by `flare attack` as test_poisoned.npz.")
    r3, r4 = st.columns(2)
    epochs = r3.number_input("Epochs", min_value=1, value=None, step=1, placeholder="as the model was trained",
                             key="rt_epochs")
    arch_txt = r4.text_input("Architecture (only for TorchScript/.pt2 models)", placeholder="the model's own",
                             key="rt_arch", help="A built-in name (small-cnn, small-cnn-gn, narrow-resnet, "
                                                 "resnet18-cifar) or torchvision:<name>.")
    control = st.checkbox("Also train the same way on the whole set, nothing removed (a like-for-like control; "
                          "twice the time)", key="rt_control",
                          help="The analysed model may have been trained with another recipe or on more data; the "
                               "control shows what the same recipe gives without the purification.")

STAGES = {"retrain-before": "Measuring the analysed model", "train": "Training on the purified set",
          "retrain-after": "Measuring the retrained model", "train-control": "Training the control (whole set)",
          "retrain-control": "Measuring the control"}


class _Bar:
    """One progress bar for the three stages (updated at most every 0.2 s)."""

    def __init__(self, control: bool):
        self.bar, self.last = st.progress(0.0, text="Preparing the retraining…"), 0.0
        self.spans = ({"retrain-before": (0.0, 0.04), "train": (0.04, 0.44), "retrain-after": (0.48, 0.04),
                       "train-control": (0.52, 0.44), "retrain-control": (0.96, 0.04)} if control else
                      {"retrain-before": (0.0, 0.05), "train": (0.05, 0.9), "retrain-after": (0.95, 0.05)})

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.2:
            return
        self.last = now
        base, span = self.spans.get(stage, (0.0, 0.0))
        frac = min(1.0, base + span * (done / total if total else 0.0))
        label = STAGES.get(stage, stage)
        self.bar.progress(frac, text=f"{label} — {done:,}/{total:,}" if stage.startswith("train") and total else label)


n_keep = int((~run.removal_mask()).sum())
if st.button("Retrain on the purified set" if stored is None else "Retrain again", key="ev_retrain",
             type="primary" if stored is None else "secondary", icon=":material/model_training:",
             help=f"Trains on the {n_keep:,} samples kept; minutes on a CPU for the demo."):
    with shared.friendly_errors("Retraining"):
        from flare_core.server_paths import resolve_allowed

        test_path = resolve_allowed(test_txt, must_exist=True) if test_txt.strip() else None
        ptest_path = resolve_allowed(ptest_txt, must_exist=True) if ptest_txt.strip() else None
        if test_path is None:
            raise FlareError("Give a clean test set (for example test_clean.npz from `flare attack`) to measure BA.")
        model, dataset = shared.model_and_data()
        if model is None or dataset is None:
            shared.stop_page()
        bar = _Bar(control)
        done = retrain.retrain_purified(run, dataset, model, test_data=test_path, poisoned_test_data=ptest_path,
                                        arch=arch_txt.strip() or None, epochs=int(epochs) if epochs else None,
                                        control=control, progress=bar)
        st.session_state["rt_message"] = (str(run.path), f"Retrained in {done['seconds']:.0f} s; the result is saved "
                                                         "in the run folder.")
        st.rerun()  # the button and the stored result below show the new state

msg = st.session_state.pop("rt_message", None)
if msg and msg[0] == str(run.path):
    st.success(msg[1], icon=":material/check_circle:")
if stored is not None:
    if not retrain.is_current(stored, run):
        st.warning(f"The samples to remove changed since this retraining ({stored['n_removed']:,} were removed then, "
                   f"{run.n_samples - n_keep:,} now); retrain to update it.", icon=":material/update:")

    def _pct(v):
        return "–" if v is None else f"{100 * v:.2f} %"

    def _delta(a, b):
        return None if a is None or b is None else f"{100 * (b - a):+.2f} pts"

    b, a, ctrl = stored["before"], stored["after"], stored.get("control")
    cols = st.columns(3 if ctrl else 2)
    with cols[0].container(border=True):
        st.markdown("**Before**: the analysed model, as loaded")
        m = st.columns(2)
        m[0].metric("BA", _pct(b["benign_accuracy"]), help="Benign accuracy on the clean test set.")
        m[1].metric("ASR", _pct(b["attack_success_rate"]), help="Attack success rate on the triggered test set.")
    with cols[1].container(border=True):
        st.markdown(f"**After**: retrained on the purified set ({stored['n_train_after']:,} samples)")
        m = st.columns(2)
        m[0].metric("BA after retraining", _pct(a["benign_accuracy"]), delta=_delta(b["benign_accuracy"], a["benign_accuracy"]))
        m[1].metric("ASR after retraining", _pct(a["attack_success_rate"]),
                    delta=_delta(b["attack_success_rate"], a["attack_success_rate"]), delta_color="inverse")
    if ctrl:
        with cols[2].container(border=True):
            st.markdown(f"**Control**: the same recipe on the whole set ({ctrl['n_train']:,} samples)")
            m = st.columns(2)
            m[0].metric("BA of the control", _pct(ctrl["benign_accuracy"]))
            m[1].metric("ASR of the control", _pct(ctrl["attack_success_rate"]))
    recipe = stored.get("recipe") or {}
    st.caption(
        f"{stored['arch']}, {recipe.get('epochs', '?')} epochs ({recipe.get('optimizer', '?')}, lr {recipe.get('lr', '?')}, "
        f"seed {recipe.get('seed', '?')}), trained in {stored['train_seconds']:.0f} s · {stored['n_removed']:,} samples "
        "removed" + (f", of which the ground truth says {stored['poisoned_left']:,} poisoned samples were kept"
                     if stored.get("poisoned_left") is not None else "")
        + f" · test sets: {stored['n_test']:,} clean" + (f", {stored['n_poisoned_test']:,} triggered"
                                                          if stored.get("n_poisoned_test") else "")
        + f" · saved as `{stored.get('model_file')}` in the run folder ({stored['created']}). The analysed model "
          "may have been trained with another recipe or on more data"
        + ("; the control is trained exactly like the purified one." if ctrl else
           " (the control in the settings trains the same recipe without removing anything).")
    )
elif found_clean is None:
    st.caption("No test sets were found next to the data; give their paths in the settings above.")
