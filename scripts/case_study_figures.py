"""Figures and the summary table of the case study (scripts/case_study.sh): for every run, the ranked scale
table's top rows, the findings by kind, the filmstrip of a middle layer (block3_act1, mean map) and the layer-std heat map
normalised to the baseline, written under docs/img/case-study/."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.analysis.diagnose import diagnose, scale_table, thresholds_for  # noqa: E402
from core.analysis.sweep import sweep  # noqa: E402
from core.analysis.trajectory import filmstrip, near_one_weight_of, se_scale  # noqa: E402
from core.engine.engine import RunEngine  # noqa: E402
from core.render import charts as CH  # noqa: E402
from core.render.grids import to_png  # noqa: E402
from core.render.trajectory import filmstrip_image  # noqa: E402
from core.run.runs import Run  # noqa: E402


#: The filmstrip's layer: a middle layer (the original question is about the middle layers).
FILM_LAYER = "block3_act1"


def main(root: str, out: str, names: list[str]) -> None:
    out_dir = Path(out)
    summary = []
    for name in names:
        run = Run(Path(root) / name)
        eng = RunEngine(run)
        res = sweep(run, engine=eng)
        th = thresholds_for(run)
        hist = run.history()
        found = diagnose(res, hist, run.manifest, th)
        table = scale_table(res, hist, run.manifest, th)
        x, _ = run.probes()
        fs = filmstrip(eng, run.checkpoints(), x[0], FILM_LAYER)  # one middle layer in every run: comparable
        if fs is not None:
            img = filmstrip_image(fs.maps, fs.lo, fs.hi, [f"me {m}" for m in fs.mini_epochs], tile=56)
            (out_dir / f"{name}.filmstrip.png").write_bytes(to_png(img, compress_level=9))
        base = int(table["baseline_mini_epoch"].min()) if len(table) else 1
        import vl_convert as vlc

        norm = CH.normalised_to_reference(res.layers, "std", base)
        (out_dir / f"{name}.std-ratio.png").write_bytes(
            vlc.vegalite_to_png(CH.collapse_heatmap(norm, base).to_json(), scale=1))
        se = se_scale(res, eng.se_blocks, k=3, near_one_weight=near_one_weight_of(run.manifest))
        last = hist.iloc[-1] if len(hist) else {}
        top = table.iloc[0] if len(table) else None
        summary.append({
            "run": name, "train_accuracy": float(last.get("accuracy", float("nan"))),
            "val_accuracy": float(last.get("val_accuracy", float("nan"))), "loss": float(last.get("loss", float("nan"))),
            "findings": {s: sorted({f.kind for f in found if f.severity == s}) for s in ("problem", "warning", "info")},
            "top_change": None if top is None else {
                "layer": top["layer"], "change": round(float(top["change"]), 2), "direction": top["direction"],
                "onset": int(top["onset"]), "baseline": int(top["baseline_mini_epoch"])},
            "se_output_max_last": {b: round(float(g.sort_values("mini_epoch")["output_max"].iloc[-1]), 3)
                                   for b, g in se.groupby("block")},
            "se_input_max_last": {b: round(float(g.sort_values("mini_epoch")["input_max"].iloc[-1]), 3)
                                  for b, g in se.groupby("block")},
            "near_one_share_last": (None if se["near_one_loss"].isna().all()
                                    else float(se.sort_values("mini_epoch")["near_one_share"].iloc[-1])),
        })
        print(json.dumps(summary[-1]))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
