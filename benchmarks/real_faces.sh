#!/usr/bin/env bash
# The demo recipes on real photos: 300-W's AFW + HELEN-train faces (1,207, 68 hand-labelled points) imported into
# the competition layout, 3 grouped folds, the real-faces sweep (the demo's regression and KL heatmap recipes, the
# heatmaps at 96 px: 6 fold-train jobs), then a PCA-ridge stack scored by nested CV. Prints every run's and the
# stack's OOF MSE and NME.
#
# Usage: benchmarks/real_faces.sh PHOTOS_DIR OUT_DIR [--jobs N] [--set section.key=value ...]
#   PHOTOS_DIR: a folder holding afw/ and helen/trainset/, e.g. from the research snapshot of 300-W:
#     git --git-dir=<snapshot of github.com/Spinkoo/Face-alignement> archive HEAD afw helen/trainset | tar -x -C DIR
# helen/testset is held out for an independent check: this script never reads it. The photos are research-only:
# keep OUT_DIR outside the repository. Run alone on the machine (its wall times are part of the result).
set -euo pipefail
cd "$(dirname "$0")/.."
PHOTOS=${1:?usage: real_faces.sh PHOTOS_DIR OUT_DIR [--jobs N] [--set section.key=value ...]}
OUT=${2:?OUT_DIR}
shift 2
JOBS=1
SETS=()  # passed on to kit sweep (every run), e.g. a tiny training for a smoke test
while [ $# -gt 0 ]; do
  case $1 in
    --jobs) JOBS=${2:?--jobs N}; shift 2;;
    --set) SETS+=(--set "${2:?--set section.key=value}"); shift 2;;
    *) echo "error: unknown argument $1" >&2; exit 2;;
  esac
done
KIT=${KIT:-.venv/bin/kit}
SOURCES=("$PHOTOS/afw" "$PHOTOS/helen/trainset")
for src in "${SOURCES[@]}"; do
  [ -d "$src" ] || { echo "error: $src: not found (expected afw/ and helen/trainset/ under $PHOTOS)" >&2; exit 2; }
done
mkdir -p "$OUT"
start=$(date +%s)
"$KIT" import pts "${SOURCES[@]}" --out "$OUT/dev" --test-fraction 0.1 --seed 0 --force
"$KIT" check "$OUT/dev"
"$KIT" folds "$OUT/dev" --k 3 --seed 0
"$KIT" weights import efficientnet-lite0
"$KIT" sweep sweeps/real_faces.yaml --data "$OUT/dev" --out "$OUT/runs" --submissions "$OUT/submissions" \
  --jobs "$JOBS" "${SETS[@]}"
"$KIT" stack "$OUT/runs/real_regression" "$OUT/runs/real_heatmap" --data "$OUT/dev" --model pca-ridge --name real_stack \
  --out-dir "$OUT/submissions" --force
echo "== real faces: OOF MSE and NME (inter-ocular) of every run; the stack's nested CV is above =="
COLUMNS=160 "$KIT" runs "$OUT/runs" --data "$OUT/dev"
printf "stack, private test (%s) " "$OUT/dev/private"; "$KIT" score "$OUT/submissions/real_stack.csv" --data "$OUT/dev"
echo "total wall time $(( $(date +%s) - start )) s"
