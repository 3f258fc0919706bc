#!/usr/bin/env bash
# Reproduce the seed's experiments on the synthetic data set with the built-in seed-style network
# (docs/case-study.md): train six runs, diagnose them, write an HTML report each and the figures under
# docs/img/case-study/. Budget: about 20 minutes on 2 cores. Not part of the test suite.
#   scripts/case_study.sh [RUNS_ROOT]     (default data/case-study; existing complete runs are reused)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${1:-data/case-study}
OUT=docs/img/case-study
mkdir -p "$ROOT" "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2
# shared: Adam, 8000 training images, 2000-image mini-epochs, 8 mini-epochs, 32 probe images, seed 0
COMMON=(--runs-root "$ROOT" --train-images 8000 --val-images 400 --probe-images 32 --mini-epoch-images 2000
        --mini-epochs 8 --seed 0 --optimizer adam)
declare -A RUNS=(
  [lr5e-4_b64]="--lr 5e-4 --batch-size 64"
  [lr1e-4_b384]="--lr 1e-4 --batch-size 384"
  [lr5e-5_b64]="--lr 5e-5 --batch-size 64"
  [near1_0.01]="--lr 5e-4 --batch-size 64 --near-one 0.01"
  [no_bn]="--lr 5e-4 --batch-size 64 --no-batchnorm"
  [classes250]="--lr 5e-4 --batch-size 64 --num-classes 250"
)
ORDER=(lr5e-4_b64 lr1e-4_b384 lr5e-5_b64 near1_0.01 no_bn classes250)
start=$(date +%s)
for name in "${ORDER[@]}"; do
  if [ ! -f "$ROOT/$name/history.csv" ] || [ "$($PY - "$ROOT/$name" <<'PY'
import sys
from core.run.runs import Run
print(int(max([c.mini_epoch for c in Run(sys.argv[1]).checkpoints()] or [0]) >= 8))
PY
)" != 1 ]; then
    # shellcheck disable=SC2086
    $PY -m core train "$name" "${COMMON[@]}" ${RUNS[$name]} 2>&1 | tail -n 1
  fi
  $PY -m core diagnose "$name" --runs-root "$ROOT" --json > "$OUT/$name.findings.json" 2>/dev/null
  $PY -m core report "$name" --runs-root "$ROOT" --out "$ROOT/$name.report.html" 2>&1 | tail -n 1
  echo "$name done after $(( $(date +%s) - start )) s"
done
$PY scripts/case_study_figures.py "$ROOT" "$OUT" "${ORDER[@]}"
echo "case study finished in $(( $(date +%s) - start )) s"
