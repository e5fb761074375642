#!/usr/bin/env bash
# The kit's demo pipelines and blend against the organizers' baseline recipe, given the same total wall time.
# Usage: benchmarks/vs_baseline.sh DATA_DIR [OUT_DIR]   (DATA_DIR: a synth competition with private answers and
# folds.csv; run alone on the machine). Prints both private-test MSEs and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: vs_baseline.sh DATA_DIR [OUT_DIR]}
OUT=${2:-$(mktemp -d)}
KIT=${KIT:-.venv/bin/kit}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
start=$(date +%s)
"$KIT" fold-train pipelines/demo_regression.yaml --data "$DATA" --out "$OUT/runs"
"$KIT" fold-train pipelines/demo_heatmap.yaml --data "$DATA" --out "$OUT/runs"
"$KIT" blend "$OUT/runs/demo_regression" "$OUT/runs/demo_heatmap" --data "$DATA" --method weights --name kit \
  --out-dir "$OUT" --force
seconds=$(( $(date +%s) - start ))
"$PY" benchmarks/baseline_recipe.py "$DATA" --seconds "$seconds" --out "$OUT/baseline.csv"
kit_mse=$("$KIT" score "$OUT/kit.csv" --data "$DATA" | awk '{print $2}')
base_mse=$("$KIT" score "$OUT/baseline.csv" --data "$DATA" | awk '{print $2}')
echo "== same wall time: ${seconds} s each (2 demo pipelines + blend vs the baseline recipe) =="
echo "kit demo blend   private-test MSE ${kit_mse}"
echo "baseline recipe  private-test MSE ${base_mse}"
"$PY" -c "print(f'ratio kit / baseline {float(\"$kit_mse\") / float(\"$base_mse\"):.3f}')"
