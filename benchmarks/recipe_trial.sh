#!/usr/bin/env bash
# One recipe trial: fold-train a pipeline with overrides under a new run name, then print and record its OOF MSE and
# NME, private-test MSE (fold-averaged test predictions scored against the synth's private answers) and wall time.
# Usage: benchmarks/recipe_trial.sh DATA_DIR OUT_DIR LABEL PIPELINE [section.key=value ...]
# Rows go to OUT_DIR/trials.tsv (label, OOF MSE, OOF NME %, faces above 10% NME %, private MSE, seconds, overrides).
# Run alone on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: recipe_trial.sh DATA_DIR OUT_DIR LABEL PIPELINE [key=value ...]}
OUT=${2:?OUT_DIR}
LABEL=${3:?LABEL}
PIPELINE=${4:?PIPELINE}
shift 4
KIT=${KIT:-.venv/bin/kit}
PY=${PY:-.venv/bin/python}
sets=(--set "name=$LABEL")
for kv in "$@"; do sets+=(--set "$kv"); done
mkdir -p "$OUT/submissions"
start=$(date +%s)
"$KIT" fold-train "$PIPELINE" --data "$DATA" --out "$OUT/runs" "${sets[@]}"
seconds=$(( $(date +%s) - start ))
"$KIT" blend "$OUT/runs/$LABEL" --data "$DATA" --method mean --name "$LABEL" --out-dir "$OUT/submissions" --force \
  >/dev/null
private=$("$KIT" score "$OUT/submissions/$LABEL.csv" --data "$DATA" | awk '{print $2}')
# OOF MSE, OOF NME (%) and the share of faces above 10% NME, from the run's metrics.json.
read -r oof nme fail < <("$PY" -c "
import json, sys
m = json.load(open(sys.argv[1]))
fmt = lambda v: 'NA' if v is None else f'{v:.2f}'
print(fmt(m['oof_mse']), fmt(m.get('oof_nme')), fmt(m.get('oof_failure_rate')))" "$OUT/runs/$LABEL/metrics.json")
printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$LABEL" "$oof" "$nme" "$fail" "$private" "$seconds" "$*" | tee -a "$OUT/trials.tsv"
