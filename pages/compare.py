"""Compare page: runs overlaid (loss, layer std, dead channels, SE gates), grids side by side, differences."""
from __future__ import annotations

import streamlit as st

from core.analysis import compare as C
from core.render import compare_charts as CC
from core.render import grids
from core.run.images import fit_probe
from core.run.runs import RunError
from ui import cache, state, widgets
from ui import cache_compare as cc

MAX_RUNS = 6
TILE_PX = 48

st.title("Compare runs")
state.read_query_params()
state.route("compare")
state.keep_run_param()  # the run chosen on the other pages stays in the link
root = state.runs_root()
infos = cache.runs_list(str(root))
names = [i.name for i in infos if not i.error]
for i in infos:
    if i.error:
        st.sidebar.caption(f"⚠ {i.name} cannot be opened: {i.error}")
if len(names) < 2:
    st.info(f"Comparing needs at least two runs under `{root}`; found {len(names)}. "
            "Create the demo runs with `make demo`, or train one: `python -m core train my-run`.")
    st.stop()

# ---- which runs (persisted, mirrored in the ``runs`` query parameter) ----
wanted = st.session_state.get("_p_compare_runs")
if wanted is None:
    q = st.query_params.get("runs")
    wanted = [n for n in q.split(",") if n] if q else []
    if not wanted:
        cur = state.current_run()
        wanted = [cur] if cur in names else []
        wanted += [n for n in names if n not in wanted][:2 - len(wanted)]
wanted = [n for n in wanted if n in names][:MAX_RUNS]
st.session_state["_p_compare_runs"] = wanted
st.session_state["w_compare_runs"] = wanted


def _keep_runs() -> None:
    st.session_state["_p_compare_runs"] = list(st.session_state.get("w_compare_runs") or [])


picked = st.sidebar.multiselect("Runs to compare", names, key="w_compare_runs", on_change=_keep_runs,
                                max_selections=MAX_RUNS, help="The first run is the reference for alignment.")
if st.query_params.get("runs") != ",".join(picked):
    st.query_params["runs"] = ",".join(picked)
if len(picked) < 2:
    st.info("Pick at least two runs in the sidebar.")
    st.stop()

# ---- each run's probe-set sweep (computed once, then read from the run's cache) ----
runs, results, histories, sizes = [], [], {}, {}
progress = st.container()
for name in picked:
    try:
        run = cache.run(str(root), name)
        ckpts = run.checkpoints()
        if not ckpts:
            st.warning(f"{name} has no checkpoint yet; left out.")
            continue
        res = cache.swept(run, cache.ckpt_stamp(ckpts), state.trusted(run), where=progress,
                          label=f"Statistics of {name}")
    except (RunError, ValueError, OSError) as e:
        st.error(f"{name} cannot be compared: {e}")
        continue
    except Exception as e:  # e.g. an architecture that needs trust: say so, compare the others
        st.error(f"{name} cannot be compared ({type(e).__name__}: {e})")
        continue
    if not res.mini_epochs:
        st.warning(f"{name}: no checkpoint could be swept; left out. " + " ".join(res.problems[:3]))
        continue
    runs.append(run)
    results.append(res)
    histories[name], _ = cache.history(str(run.path), cache.dir_stamp(run.path))
    sizes[name] = run.manifest.mini_epoch_images
if len(results) < 2:
    st.stop()
order = [str(r.run) for r in results]
key = tuple((str(r.path), cache.ckpt_stamp(r.checkpoints()), cache.dir_stamp(r.path)) for r in runs)

match = cc.layer_match(key, results)
(st.info if match.same_architecture else st.warning)(match.message())

x = state.x_axis()
maps = C.x_maps(results, histories, sizes)

# ---- loss ----
st.subheader("Loss")
hist_all = C.stacked_history(histories)
widgets.chart_with_export(cc.unsquash(CC.loss_overlay(hist_all, order, x)), hist_all, "compare_loss")

# ---- one layer: std and dead channels ----
st.subheader("One layer across runs")
if not match.shared:
    st.warning("These runs share no layer name: only the loss can be compared.")
else:
    c1, c2 = st.columns([3, 1])
    layer = state.select_layer(match.shared, where=c1)
    log = c2.toggle("log scale", **state.kept("compare_log", True))
    ls = C.add_images_seen(C.layer_series(results, [layer], stats=("std",)), maps)
    dead = C.add_images_seen(cc.dead_fractions(key, layer, results), maps)
    a, b = st.columns(2)
    with a:
        chart = CC.overlay_chart(ls, "std", order, x, log=log, title=f"{layer}: std",
                                ytitle="std (mean over probes)", width=420)
        widgets.chart_with_export(cc.unsquash(chart), ls, "compare_std")
    with b:
        chart = CC.overlay_chart(dead, "frac_dead", order, x, title=f"{layer}: dead channels",
                                ytitle="fraction of channels dead", width=420, percent=True)
        widgets.chart_with_export(cc.unsquash(chart), dead, "compare_dead")
    st.caption("Std is the layer's standard deviation averaged over each run's probe set. A channel is dead "
               "when it is exactly zero on every probe image. At mini-epoch 0 BatchNorm moving statistics are "
               "still initial, so deep layers look small in every run.")

# ---- SE gates ----
st.subheader("SE gate saturation")
if match.shared_blocks:
    gs = C.add_images_seen(C.gate_saturation(results, match.shared_blocks), maps)
    widgets.chart_with_export(CC.gate_saturation_chart(gs, order, x), gs, "compare_gates")
else:
    have = {r: len(res.se_blocks) for r, res in zip(order, results)}
    st.info("No SE block is shared by these runs (" + ", ".join(f"{r}: {n} blocks" for r, n in have.items())
            + ").")

# ---- channel grids side by side ----
st.subheader("Channel grids: same image, same checkpoint")
if match.shared:
    g0, g1, g2, g3, g4 = st.columns([0.6, 1.3, 1.2, 1.6, 1.3])
    src_name = g1.selectbox("Probe image from", order, **state.kept("compare_src", order[0], order))
    src = runs[order.index(src_name)]
    try:
        px, py = cache.probe_set(str(src.path), cache.probes_mtime(src))
    except RunError as e:
        px, py = None, None
        st.warning(str(e))
    if px is None or not len(px):
        st.info(f"{src_name} has no probe set.")
    else:
        classes = src.manifest.class_names
        idx = g2.selectbox("Image", list(range(len(px))), **state.kept("compare_img", 0, range(len(px))),
                           format_func=lambda i: f"#{i} · " + (classes[py[i]] if 0 <= py[i] < len(classes)
                                                                else str(py[i])))
        ref_mes = maps[order[0]]["mini_epoch"].tolist()
        me = g3.select_slider(f"Mini-epoch of {order[0]}", ref_mes,
                              **state.kept("compare_me", ref_mes[-1], ref_mes))
        scale = g4.radio("Colour scale", ["shared", "per run"], horizontal=True,
                         **state.kept("compare_scale", "shared", ["shared", "per run"]),
                         help="Shared: one min..max over every run, so a run whose activations are smaller "
                              "looks darker.")
        rgb = px[idx] if px.shape[-1] == 3 else px[idx].repeat(3, -1)
        widgets.png(grids.upscale(rgb, grids.upscale_factor(*rgb.shape[:2], 80)), where=g0)
        matched = C.match_checkpoints(maps, order[0], me, x)
        layer_maps = {}
        for run, res in zip(runs, results):
            name = str(res.run)
            m = matched.get(name)
            if m is None:
                continue
            try:
                ck = run.checkpoint(m)
                pix = fit_probe(px[idx], run.manifest.input_shape)
                ikey = f"compare:{src_name}:{idx}:{'x'.join(map(str, run.manifest.input_shape))}"
                a = cache.image_layer(str(run.path), cache.arch_mtime(run), cache.ckpt_key(ck), ikey, layer,
                                      state.trusted(run), _image=pix)
                layer_maps[name] = grids.channel_maps(a)
            except Exception as e:  # one run failing must not hide the others
                st.warning(f"{name}: {type(e).__name__}: {e}")
        fixed = C.shared_range(list(layer_maps.values())) if scale == "shared" else None
        cols = st.columns(len(order))
        for col, name in zip(cols, order):
            with col:
                st.markdown(f"**{name}**")
                if name not in layer_maps:
                    st.caption(f"No checkpoint matching mini-epoch {me} of {order[0]}.")
                    continue
                mm = layer_maps[name]
                g = grids.grid_image(mm, mode="fixed" if fixed else "layer", fixed=fixed, per_page=64,
                                     cols=8, tile_px=TILE_PX)
                widgets.png(g.pixels)
                seen = maps[name].set_index("mini_epoch")["images_seen"].get(matched[name])
                st.caption(f"mini-epoch {matched[name]}" + (f" · {seen:,.0f} images seen" if seen == seen else "")
                           + f" · {mm.shape[0]} channels" + (" (first 64 shown)" if mm.shape[0] > 64 else ""))

# ---- where they differ most ----
st.subheader("Where they differ most")
diff = cc.differences(key, x, 20, results, histories, sizes)
if diff.empty:
    st.info("No difference found on the shared layers (or no checkpoint aligned from mini-epoch 1 on).")
else:
    num = {r: st.column_config.NumberColumn(r, format="%.4g") for r in order}
    st.dataframe(C.differences_display(diff), hide_index=True, width="stretch", column_config={
        **num, "ratio": st.column_config.NumberColumn("ratio (max/min)", format="%.3g"),
        "difference": st.column_config.NumberColumn("difference (max−min)", format="%.3g"),
        "score": st.column_config.NumberColumn("score", format="%.2f",
                                               help="log10 of the std ratio; 2 × the difference of a fraction"),
        "images_seen": st.column_config.NumberColumn("images seen", format="%d")})
    st.caption("One row per layer and statistic, at the checkpoint where the runs differ most (from mini-epoch 1; "
               f"checkpoints matched by {x.replace('_', ' ')}).")
