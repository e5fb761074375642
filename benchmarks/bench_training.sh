#!/usr/bin/env bash
# kit bench over the demo pipelines: regression (CPU and device augmentation) and heatmap per stride and loss.
# Usage: benchmarks/bench_training.sh DATA_DIR [BATCHES]   (run on a quiet machine; on CUDA it measures the GPU)
set -euo pipefail
DATA=${1:?usage: bench_training.sh DATA_DIR [BATCHES]}
BATCHES=${2:-10}
KIT=${KIT:-.venv/bin/kit}
row() {
  local label=$1; shift
  echo "== $label"
  "$KIT" bench "$@" --data "$DATA" --batches "$BATCHES"
}
row "regression, albumentations on CPU" pipelines/demo_regression.yaml
row "regression, augmentation on the device" pipelines/demo_regression.yaml --set augment.gpu=true
for stride in 4 2 1; do
  row "heatmap stride $stride, L2" pipelines/demo_heatmap.yaml --set model.heatmap.stride=$stride
done
row "heatmap stride 4, Adaptive Wing" pipelines/demo_heatmap.yaml --set model.heatmap.heatmap_loss=adaptive_wing
row "heatmap stride 4, soft-argmax + coordinate MSE" pipelines/demo_heatmap.yaml \
  --set model.heatmap.heatmap_loss=none --set model.heatmap.coord_weight=1 --set model.heatmap.decoder=soft_argmax
