"""Train page: start the built-in trainer in its own process and follow the run as it grows."""
from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from core.training import jobs
from core.render.charts import training_curves
from core.training.models import ACTIVATIONS, ArchConfig
from core.run.runs import MANIFEST, RunError, resolve_run_path
from core.training.trainer import OPTIMIZERS, SCHEDULES, TrainConfig
from ui import cache, state, widgets

A, T = ArchConfig(), TrainConfig()


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ValueError(f"{text!r}: expected whole numbers separated by commas, e.g. 24,32,48") from None


def _csv(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _form(root: Path, data_root: Path) -> None:
    st.session_state.setdefault("train_name", time.strftime("run-%Y%m%d-%H%M%S"))
    folders = jobs.list_datasets(data_root)
    with st.form("train_form"):
        st.text_input("Run name", key="train_name", help="folder name under the runs root")
        c_data, c_arch, c_opt = st.columns(3)
        with c_data:
            st.markdown("**Data**")
            st.radio("Data set", ["synthetic", "image folder"], key="train_data_kind", horizontal=True)
            st.selectbox("Image folder (one sub-folder per class)", folders, key="train_folder",
                         disabled=not folders,
                         help=f"folders under the data root `{data_root}` (set ADE_DATA_ROOT to change it)")
            st.number_input("Synthetic training images", 100, 1_000_000, T.train_images, step=1000,
                            key="train_images")
            st.number_input("Validation images", 0, 100_000, T.val_images, key="train_val_images")
            st.number_input("Probe images", 1, 512, T.probe_images, key="train_probe_images")
            st.checkbox("Augmentation", T.augment, key="train_augment")
        with c_arch:
            st.markdown("**Architecture**")
            st.number_input("Input size (px)", 16, 512, A.input_size, key="train_input_size")
            st.number_input("Classes", 2, 1170, A.num_classes, key="train_num_classes")
            st.number_input("Stem width", 1, 1024, A.stem_width, key="train_stem_width")
            st.text_input("Block widths", _csv(A.widths), key="train_widths")
            st.text_input("Convs per block", _csv(A.convs), key="train_convs")
            st.text_input("Residual blocks", _csv(A.residual_blocks), key="train_residual")
            st.checkbox("SE blocks", A.se, key="train_se")
            st.text_input("SE after blocks", _csv(A.se_blocks), key="train_se_blocks")
            st.number_input("SE reduction ratio", 1, 64, A.se_ratio, key="train_se_ratio")
            st.number_input("SE gate bias", -10.0, 10.0, A.se_gate_bias, step=0.5, key="train_se_bias",
                            help="initial bias of the gate logits; -4 starts the gates near 0")
            st.number_input("Near-1 gate regulariser weight", 0.0, 100.0, A.near_one_weight, step=0.01,
                            format="%.4f", key="train_near_one", help="weight × mean((1 − gate)²)")
            st.selectbox("Activation", ACTIVATIONS, key="train_activation")
            st.checkbox("BatchNorm", A.batchnorm, key="train_batchnorm")
            st.text_input("Dense units", _csv(A.dense_units), key="train_dense")
            st.number_input("L2 weight decay", 0.0, 1.0, A.l2, step=1e-4, format="%.5f", key="train_l2")
            st.number_input("Dropout", 0.0, 0.9, A.dropout, step=0.1, key="train_dropout")
        with c_opt:
            st.markdown("**Optimisation**")
            st.selectbox("Optimiser", OPTIMIZERS, key="train_optimizer")
            st.number_input("Learning rate", 1e-7, 10.0, T.learning_rate, format="%.6f", key="train_lr")
            st.number_input("Momentum (SGD)", 0.0, 0.999, T.momentum, key="train_momentum")
            st.selectbox("Schedule", SCHEDULES, key="train_schedule")
            st.number_input("Batch size", 1, 4096, T.batch_size, key="train_batch_size")
            st.number_input("Mini-epoch (images)", 1, 10_000_000, T.mini_epoch_images, step=500,
                            key="train_mini_epoch_images")
            st.number_input("Mini-epochs", 1, 10_000, T.mini_epochs, key="train_mini_epochs")
            st.number_input("Seed", 0, 2**31 - 1, T.seed, key="train_seed")
        submitted = st.form_submit_button("Start training", type="primary", key="train_start")
    if submitted:
        _start(root, data_root)


def _config_from_widgets() -> TrainConfig:
    s = st.session_state
    arch = ArchConfig(input_size=int(s.train_input_size), num_classes=int(s.train_num_classes),
                      stem_width=int(s.train_stem_width), widths=_ints(s.train_widths), convs=_ints(s.train_convs),
                      residual_blocks=_ints(s.train_residual), se=bool(s.train_se), se_blocks=_ints(s.train_se_blocks),
                      se_ratio=int(s.train_se_ratio), se_gate_bias=float(s.train_se_bias),
                      near_one_weight=float(s.train_near_one), activation=s.train_activation,
                      batchnorm=bool(s.train_batchnorm), dense_units=_ints(s.train_dense), l2=float(s.train_l2),
                      dropout=float(s.train_dropout))
    folder = s.train_data_kind == "image folder"
    if folder and not s.get("train_folder"):
        raise ValueError("no image folder chosen (none found under the data root)")
    return TrainConfig(arch=arch, dataset=s.train_folder if folder else "synthetic",
                       train_images=int(s.train_images), val_images=int(s.train_val_images),
                       probe_images=int(s.train_probe_images), optimizer=s.train_optimizer,
                       learning_rate=float(s.train_lr), momentum=float(s.train_momentum),
                       lr_schedule=s.train_schedule, batch_size=int(s.train_batch_size),
                       mini_epoch_images=int(s.train_mini_epoch_images), mini_epochs=int(s.train_mini_epochs),
                       augment=bool(s.train_augment), seed=int(s.train_seed))


def _start(root: Path, data_root: Path) -> None:
    name = st.session_state.train_name.strip()
    try:
        cfg = _config_from_widgets()
        jobs.start(root, name, cfg, data_root=data_root)
    except (ValueError, jobs.JobError) as e:
        st.error(f"Not started: {e}")
        return
    st.session_state["train_follow"] = name
    st.session_state["train_follow_pick"] = name  # the selector below is not drawn yet in this run
    st.success(f"Training **{name}** started in its own process; progress below.")


def _panel(run_dir: Path) -> jobs.JobStatus:
    """Progress, controls and loss curves of the run's job."""
    s = jobs.status(run_dir)
    st.subheader(f"Run {run_dir.name}: {s.state}")
    if s.state == "starting":  # no status from the trainer yet: say what it is doing
        st.progress(0.0, text=f"starting: the training process imports TensorFlow, builds the model and "
                              f"generates or reads the data set before mini-epoch 1 of {s.mini_epochs}…")
    else:
        st.progress(s.fraction, text=f"mini-epoch {s.mini_epoch} of {s.mini_epochs} · "
                                     f"{s.images_done:,} / {s.images_total:,} images")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("State", s.state)
    c2.metric("Images/s", f"{s.images_per_s:,.0f}" if s.images_per_s else "–")
    # the first mini-epoch's rate includes building the training step: no ETA from it
    c3.metric("ETA", _duration(s.eta_s) if s.active and s.mini_epoch >= 1 else "–")
    c4.metric("Elapsed", _duration(s.elapsed_s))
    if s.state == "cancelled" and s.images_done:
        st.info(f"Cancelled after {s.images_done:,} images (mini-epoch {s.mini_epoch} of {s.mini_epochs} "
                f"and {s.images_done - s.mini_epoch * per_me:,} images more). Resume continues after the last "
                f"complete checkpoint, mini-epoch {jobs.complete_mini_epochs(run_dir)}."
                if (per_me := s.images_total // max(1, s.mini_epochs)) else "Cancelled.")
    if s.state in ("failed", "died"):
        st.error(s.error or "the training failed")
        with st.expander("End of the training log"):
            st.code(jobs.log_tail(run_dir) or "(empty)")
    b1, b2, b3 = st.columns([1, 1, 2])
    if b1.button("Cancel", key="train_cancel", disabled=not s.alive,
                 help="stop after the current batch; the last complete checkpoint stays"):
        if jobs.cancel(run_dir):
            now = jobs.status(run_dir)  # the count drawn above may be 2 s old: say where it is now
            st.toast(f"Cancel requested at mini-epoch {now.mini_epoch} · {now.images_done:,} images: "
                     "the training stops after the current batch.")
    # One widget per run: a value typed for another run must not carry over to this one.
    total = b3.number_input("Mini-epochs in total", 1, 10_000, max(1, s.mini_epochs),
                            key=f"train_resume_total:{run_dir.name}",
                            help="Resume trains up to this many mini-epochs in total; it must be more than "
                                 "the complete ones.")
    if b2.button("Resume", key="train_resume", disabled=s.alive or not (s.can_resume or total > s.mini_epochs),
                 help="continue after the last complete checkpoint"):
        try:
            jobs.resume(run_dir, mini_epochs=int(total))
        except jobs.JobError as e:
            st.error(f"Not resumed: {e}")
        else:
            st.rerun()  # follow it live
    if (run_dir / MANIFEST).exists():
        hist, _ = cache.history(str(run_dir), cache.dir_stamp(run_dir))
        st.vega_lite_chart(widgets.padded(training_curves(hist).to_dict()), width="content")
    return s


@st.fragment(run_every=2)
def _live(run_dir: Path) -> None:
    """The panel, redrawn every 2 s while the training process lives."""
    if not _panel(run_dir).alive:
        st.rerun()  # it ended: redraw the page once, without the timer


st.title("Train")
state.read_query_params()
state.route("train")  # also leaves Streamlit's pages-folder mode when /train is a fresh server's first URL
state.keep_run_param()  # the run chosen on the other pages stays in the link
root = state.runs_root()
if isinstance(root, str):  # a URL: runs on object storage are read-only here (docs/distributed.md)
    st.info(f"The runs root `{root}` is on object storage, which this page does not train into. Train with "
            "`python -m core train NAME --runs-root data/runs`, or record a run there from your own script "
            "with `RunRecorder(\"s3://...\")`.")
    st.stop()
data_root = jobs.data_root_from_env()
st.caption(f"Runs are written under `{root}`; training runs in its own process, one at a time, and keeps "
           "going if this page is closed.")
holder = jobs.lock_holder(root)
if holder is not None:
    st.info(f"Training **{holder.run}** is running (pid {holder.pid}).")

with st.expander("New training run", expanded=holder is None):
    _form(root, data_root)

followable = [i.name for i in cache.runs_list(str(root)) if (i.path / jobs.JOB).exists()]
follow = (holder.run if holder is not None else None) or st.session_state.get("train_follow")
if follow and follow not in followable:
    followable.insert(0, follow)  # just started: no manifest yet, so not in the run list
if followable:
    pick = st.selectbox("Follow run", followable, index=followable.index(follow) if follow in followable else 0,
                        key="train_follow_pick")
    try:
        run_dir = resolve_run_path(root, pick)
    except RunError as e:
        st.error(str(e))
    else:
        (_live if jobs.status(run_dir).alive else _panel)(run_dir)
else:
    st.caption("No training started from this page yet.")
