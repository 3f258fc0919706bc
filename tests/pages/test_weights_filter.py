"""Weights page (AppTest): a layer filter and a top-N choice, so a many-layer chart can have a legend."""
from __future__ import annotations

import json

from tests.pages.conftest import open_app, run_ok


def _chart(at):
    return (at.get("vega_lite_chart") or at.get("arrow_vega_lite_chart"))[0]


def _norm_chart(at) -> dict:
    return json.loads(_chart(at).proto.spec)


def _layers_drawn(at) -> set[str]:
    import pyarrow as pa

    proto = _chart(at).proto
    blobs = [d.data.data for d in proto.datasets] or [proto.data.data]
    return {str(v) for b in blobs for v in pa.ipc.open_stream(b).read_pandas()["layer"]}


def test_weights_layer_filter_and_top_n(app_env):
    at = open_app("weights")
    pick = next(m for m in at.multiselect if m.key.startswith("w_w_layers:"))
    everything = list(pick.options)
    assert len(everything) >= 3
    at.number_input(key="w_w_top").set_value(2)
    run_ok(at)
    assert len(_layers_drawn(at)) == 2
    legend = _norm_chart(at)["layer"][0]["encoding"]["color"]["legend"]
    assert legend is not None  # few lines: a legend names them
    pick = next(m for m in at.multiselect if m.key.startswith("w_w_layers:"))
    pick.set_value(everything[:1])
    run_ok(at)
    assert _layers_drawn(at) == {everything[0]}
    assert at.query_params["wlayers"] == everything[0] and at.query_params["wtop"] == "2"


def test_weights_view_from_a_link(app_env):
    """A shared link carries the variable, the top N and the chosen layers; unknown layers are left out, said."""
    first = open_app("weights")
    layers = list(next(m for m in first.multiselect if m.key.startswith("w_w_layers:")).options)
    at = open_app(query={"run": "tiny", "page": "weights", "wvar": "kernel", "wtop": "3",
                         "wlayers": f"{layers[1]},no_such_layer"})
    assert at.title[0].value != "Overview", "the link opens the Weights page"
    assert at.selectbox(key="w_w_var").value == "kernel" and at.number_input(key="w_w_top").value == 3
    assert next(m for m in at.multiselect if m.key.startswith("w_w_layers:")).value == [layers[1]]
    assert _layers_drawn(at) == {layers[1]}
    assert any("no_such_layer" in w.value for w in at.warning)
