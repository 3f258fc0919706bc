"""Channel grid page: one tile per channel of a layer for the probe image at the chosen checkpoint."""
from __future__ import annotations

import streamlit as st

from core.render import grids
from core.render.grid_view import SCALE_LABELS
from core.run.runs import RunError
from ui import cache, grid_cache, state, trajectory, widgets

SORTS = {"index": "index", "std": "std (high first)", "mean": "mean (high first)"}
TILE_PX = {"small": 56, "medium": 88, "large": 128}
VIEW_PX = 280

st.title("Channel grid")
sel = state.sidebar("grid", checkpoint="fragment")  # the scrubber is drawn by ``checkpoint_view`` below
if sel is None or not sel.ckpts or sel.image is None:
    st.stop()
eng = state.engine(sel.run)
if eng is None:
    st.stop()
widgets.page_findings(sel, "grid")  # only when the probe-set sweep is already done

shapes = {t.name: tuple(int(d) for d in t.shape[1:] if d is not None) for t in eng.extractor.tappable}
kinds = eng.tap_kinds()


def _fmt(name: str) -> str:
    s = shapes.get(name, ())
    return f"{name}  ·  {'×'.join(map(str, s))}  ({kinds.get(name, '?')})"


c1, c2, c3, c4 = st.columns([2.2, 1.6, 1, 1])
layer = state.select_layer(eng.taps, where=c1, format_func=_fmt)
mode = c2.selectbox("Colour scale", list(SCALE_LABELS), format_func=SCALE_LABELS.get,
                    **state.kept("grid_scale", "layer", SCALE_LABELS, url="scale"),
                    help="Fixed uses the layer's min..max over every checkpoint for this image (computed "
                         "once): the mode that makes shrinking activations visible.")
cmap = c3.selectbox("Colormap", list(grids.COLORMAPS), **state.kept("grid_cmap", "viridis", grids.COLORMAPS, url="cmap"),
                    help="coolwarm is diverging: white is exactly 0, the scale is symmetric.")
sort = c4.selectbox("Sort channels by", list(SORTS), format_func=SORTS.get, **state.kept("grid_sort", "index", SORTS, url="sort"))
n_ch = grids.n_channels(shapes.get(layer, ()))

d1, d2, d3, d4 = st.columns([1.4, 1, 1, 1.6])
alpha = d1.slider("Overlay on the image", 0.0, 0.9, step=0.1, **state.kept("grid_alpha", 0.0),
                  help="Blend the probe image under every tile (0 = off).")
size = d2.selectbox("Tile size", list(TILE_PX), **state.kept("grid_tile", "medium", TILE_PX, url="tile"))
per_page = d3.selectbox("Tiles per page", [16, 32, 64, 128], **state.kept("grid_per_page", 64, [16, 32, 64, 128]))
pages = grids.n_pages(n_ch, per_page)
page = d4.number_input(f"Page (of {pages})", 1, pages, disabled=pages == 1,
                       **state.kept("grid_page", 1, range(1, pages + 1))) - 1

fixed = None
result = None
ikey = sel.image.key
if mode == "fixed":
    try:
        result = cache.swept(sel.run, sel.stamp, sel.trust, image_key=ikey, image=sel.image.pixels,
                             label="Fixed colour scale: this image at every checkpoint")
        rows = result.layers[result.layers["layer"].astype(str) == layer]
        fixed = grids.fixed_range(rows["min"], rows["max"])
    except RunError as e:
        st.warning(f"The fixed scale needs every checkpoint: {e}")
    if fixed is None:
        st.warning("No finite values of this layer over the checkpoints: using the per-layer scale.")
        mode = "layer"

head = st.container()  # what depends on the checkpoint is drawn by ``checkpoint_view`` below
shown: dict = st.session_state.setdefault("grid_shown", {})  # the grid ``draw`` made last (the download's content)
st.download_button("Download the grid (PNG)", data=lambda: grid_cache.grid_png(**shown), mime="image/png",
                   file_name=f"{sel.run.path.name}_{layer}.png".replace("/", "_"), on_click="ignore",
                   key="grid_download", help="The colour bar and the grid of the checkpoint shown, with labels.")
st.subheader("One channel")
v1, v2 = st.columns([1, 2])
ch = int(v1.number_input("Channel", 0, max(n_ch - 1, 0), **state.kept("grid_channel", 0, range(max(n_ch, 1)))))
view_box = v1.container()
settings = grid_cache.GridSettings(mode, cmap, fixed, sort, page, per_page, TILE_PX[size], alpha, ch, VIEW_PX)


def draw(ckpt) -> int | None:
    """The grid, its colour bar and the channel view at ``ckpt``: the channel viewed, or None after saying why not."""
    try:
        view = grid_cache.grid(sel.path, cache.arch_mtime(sel.run), cache.ckpt_key(ckpt), ikey, layer, sel.trust,
                               settings, _image=sel.image.pixels)
    except (RunError, ValueError, OSError) as e:
        head.error(f"Mini-epoch {ckpt.mini_epoch} could not be extracted: {e}")
        shown.clear()
        return None
    summary, n = view.summary, len(view.maps)
    marks = grids.channel_marks(summary)
    n_nan, n_zero = marks.count("nonfinite"), marks.count("zero")
    shape_txt = "×".join(map(str, shapes.get(layer, view.maps.shape)))
    info = [f"**{layer}** {shape_txt}", f"mini-epoch **{ckpt.mini_epoch}**", sel.image.label,
            f"{n} channels" + (f" (page {page + 1} of {pages})" if pages > 1 else "")]
    if n_zero:
        info.append(f"{n_zero} all-zero (grey border)")
    if n_nan:
        info.append(f":red[{n_nan} with NaN/Inf (red border, magenta pixels)]")
    head.markdown(" · ".join(info))
    if n_nan:
        head.error(f"{n_nan} of {n} channels of {layer} hold NaN or Inf at mini-epoch {ckpt.mini_epoch}.")
    widgets.html(view.bar_html + view.html, where=head)  # one element
    title = f"{sel.run.path.name} | {layer} | mini-epoch {ckpt.mini_epoch} | {sel.image.label}"
    shown.update(view=view, base=sel.image.pixels, title=title.replace("·", "-"))
    c = view.channel
    if c is None:  # a layer without channels
        return None
    view_box.markdown(
        f"min {grids.fmt(summary['min'][c])} · max {grids.fmt(summary['max'][c])}  \n"
        f"mean {grids.fmt(summary['mean'][c])} · std {grids.fmt(summary['std'][c])}"
        + (f"  \n:red[{int(summary['n_nonfinite'][c])} NaN/Inf values]" if summary["n_nonfinite"][c] else "")
        + ("  \nall zero" if summary["all_zero"][c] else ""))
    widgets.html(view.channel_html, where=view_box)
    return c


@state.timed_fragment("grid")
def checkpoint_view() -> None:
    """Scrubber, grid and channel view: moving the scrubber reruns only this fragment."""
    ckpt = state.scrub(sel)
    viewed = draw(ckpt) if ckpt is not None else None
    state.scrub_widgets(sel)
    if viewed is not None:  # last, so this is drawn first: the next checkpoint's images, in the background
        state.read_ahead_next(sel, grid_cache.ShownGrid(layer, settings))


checkpoint_view()

have = result is not None or cache.is_swept(sel.path, sel.stamp, ikey, sel.trust, "image")
with v2:
    if not have and not st.session_state.get(f"grid_traj:{ikey}"):
        st.caption("The trajectory of a channel over training needs this image at every checkpoint "
                   f"({len(sel.ckpts)} forward passes, cached in the run).")
        st.button("Compute the trajectory", key="grid_traj_btn", on_click=st.session_state.__setitem__,
                  args=(f"grid_traj:{ikey}", True))
    else:
        try:
            result = result or cache.swept(sel.run, sel.stamp, sel.trust, image_key=ikey, image=sel.image.pixels,
                                           label="This image at every checkpoint")
            hist, _ = cache.history(sel.path, cache.dir_stamp(sel.run.path))
            x = state.x_axis()

            def trajectory_chart():
                from core.render.charts import channel_trajectory, with_x

                c = result.channels
                traj = c[(c["layer"].astype(str) == layer) & (c["channel"] == ch)][
                    ["mini_epoch", "min", "max", "mean", "std"]].assign(image=sel.image.label)
                traj = with_x(traj, x, hist, sel.run.manifest.mini_epoch_images)
                return channel_trajectory(traj, x=x, title=f"{layer} channel {ch} over training", width=520), traj

            with st.spinner(f"Drawing channel {ch} of {layer} over {len(sel.ckpts)} checkpoints…"):
                widgets.chart("grid_traj", (sel.path, sel.stamp, ikey, layer, ch, x), trajectory_chart)
        except RunError as e:
            st.warning(f"Trajectory unavailable: {e}")

trajectory.filmstrip_view(sel, eng, layer, ch)
