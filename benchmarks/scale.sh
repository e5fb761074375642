#!/usr/bin/env bash
# Every step of the loop at any size, with wall time and peak memory per step.
#
#   benchmarks/scale.sh N_TRAIN N_TEST [N_TRAIN2 N_TEST2 ...]
#
# For each size: a competition of N_TRAIN training and N_TEST test images is built from a small synthetic one by
# hard links (benchmarks/scale_competition.py: labels copied with each image, so the data is valid), then check,
# folds, prepare, a fold-train that trains one batch per fold but predicts every OOF and test image
# (benchmarks/scale/tiny.yaml), four more runs made from it with seeded noise (benchmarks/scale_runs.py), blends
# (every method) and stacks (both models) of 3 and 5 runs, kit runs over 50 runs, validate, score,
# submit --dry-run, infer on 1,000 images and pseudo's set-up (one fold of kit pseudo) run one after another.
# Each size's table (step, seconds, peak GiB, exit code) is SCALE_OUT/N_TRAIN/steps.tsv; with two sizes or more,
# the growth exponent of time and memory per step is printed (benchmarks/scale_report.py). Stops at the first
# failing step. Results: benchmarks/SCALE.md.
#
# Environment: SCALE_OUT (default /tmp/kit-scale; an existing size folder is rebuilt), SCALE_SOURCE_TRAIN and
# SCALE_SOURCE_TEST (distinct synthetic images, default 3000 and 500), KIT and PY (default .venv/bin/...),
# SCALE_ENSEMBLES (the run counts blended and stacked, default "3 5"), SCALE_DECODE=1 to run kit check --decode
# as well.
set -euo pipefail

if [ $# -lt 2 ] || [ $(($# % 2)) -ne 0 ]; then
    sed -n 4,5p "$0" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
KIT=${KIT:-.venv/bin/kit}
PY=${PY:-.venv/bin/python}
OUT=${SCALE_OUT:-/tmp/kit-scale}
SOURCE_TRAIN=${SCALE_SOURCE_TRAIN:-3000}
SOURCE_TEST=${SCALE_SOURCE_TEST:-500}
PIPELINE=benchmarks/scale/tiny.yaml
export NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$OUT"

# A source competition of distinct images, made once and shared by every size.
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

run_size() {
    local n_train=$1 n_test=$2
    local src_train src_test
    src_train=$(min "$n_train" "$SOURCE_TRAIN")
    src_test=$(min "$n_test" "$SOURCE_TEST")
    local source="$OUT/source-$src_train-$src_test"
    if [ ! -f "$source/train/landmarks.csv" ]; then
        rm -rf "$source"
        "$KIT" synth "$source" --n-train "$src_train" --n-test "$src_test" --seed 0 >/dev/null
    fi
    local dir="$OUT/$n_train"
    rm -rf "$dir"
    mkdir -p "$dir"
    local data="$dir/data" runs="$dir/runs" subs="$dir/submissions" table="$dir/steps.tsv"
    printf 'step\tseconds\tpeak_gib\tanon_gib\texit\n' >"$table"
    step() { "$PY" benchmarks/scale_step.py "$table" "$@"; }

    echo "== size $n_train train + $n_test test (from $src_train + $src_test distinct images) =="
    step build -- "$PY" benchmarks/scale_competition.py "$source" "$data" "$n_train" "$n_test"
    step check -- "$KIT" check "$data" --no-decode
    if [ "${SCALE_DECODE:-0}" = 1 ]; then
        step check_decode -- "$KIT" check "$data" --decode
    fi
    step folds -- "$KIT" folds "$data" --k 3 --seed 0
    step prepare -- "$KIT" prepare "$data" --size 32 --pad 4
    step fold_train -- "$KIT" fold-train "$PIPELINE" --data "$data" --out "$runs"
    local run="$runs/scale_tiny"
    step make_runs -- "$PY" benchmarks/scale_runs.py "$run" 4 --links 45
    local all=("$run" "${run}_n1" "${run}_n2" "${run}_n3" "${run}_n4")
    local n method model
    for n in ${SCALE_ENSEMBLES:-3 5}; do
        for method in mean weights per-point hill-climb; do
            step "blend${n}_$method" -- "$KIT" blend "${all[@]:0:$n}" --data "$data" --method "$method" \
                --name "b${n}_$method" --out-dir "$subs" --force
        done
        for model in ridge pca-ridge; do
            step "stack${n}_$model" -- "$KIT" stack "${all[@]:0:$n}" --data "$data" --model "$model" \
                --name "s${n}_$model" --out-dir "$subs" --force
        done
    done
    COLUMNS=200 step runs_50 -- "$KIT" runs "$runs" --submissions "$subs"
    step validate -- "$KIT" validate "$subs/b${n}_weights.csv" --data "$data"
    step score -- "$KIT" score "$subs/b${n}_weights.csv" --data "$data"
    step submit_dry_run -- "$KIT" submit "$subs/b${n}_weights.csv" --data "$data" \
        --competition made-thousand-facial-landmarks --message "scale benchmark" --dry-run --ledger "$dir"
    local images="$dir/infer_images" n_infer
    n_infer=$(min "$n_test" 1000)
    mkdir -p "$images"
    awk -F'\t' -v n="$n_infer" 'NR > 1 && NR <= n + 1 { print $1 }' "$data/test/test_points.csv" |
        xargs -I{} ln "$data/test/images/{}" "$images/{}"
    step infer_1000 -- "$KIT" infer "$run" --images "$images" --out "$dir/infer.csv"
    step pseudo_fold0 -- "$KIT" pseudo "$PIPELINE" --data "$data" --from "$run" --folds 0 --out "$dir/pseudo"
    "$PY" benchmarks/scale_report.py "$table"
}

tables=()
while [ $# -gt 0 ]; do
    run_size "$1" "$2"
    tables+=("$OUT/$1/steps.tsv")
    shift 2
done
if [ "${#tables[@]}" -gt 1 ]; then
    echo "== growth =="
    "$PY" benchmarks/scale_report.py "${tables[@]}"
fi
