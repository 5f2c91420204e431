#!/usr/bin/env bash
# `make demo`: synthetic faces -> stage 1 -> stage 2 -> stage 3 (and the plain ResNet-18 baseline)
# -> prediction -> a summary table, all on CPU with small sizes. Usage: tools/demo.sh PYTHON DEMO_DIR OUT_DIR
set -euo pipefail
PY=${1:-python3}; DEMO=${2:-demo}; OUT=${3:-$DEMO/output}
FACES=$DEMO/faces
SIZE=${DEMO_INPUT_SIZE:-40}
EPOCHS1=${DEMO_EPOCHS_CONCEPT:-6}
EPOCHS3=${DEMO_EPOCHS_PERCEPT:-6}
COMMON=(--input_size "$SIZE" --batch_size 32 --pretrained none --lr 1e-3 --lr_schedule cosine
        --norm_cache "$OUT/cache" --num_workers 2)
start=$(date +%s)
"$PY" tools/make_synthetic_faces.py --out "$FACES" --seed 0 --size 48 --train_per_class 80 --test_per_class 30
"$PY" main_concept.py --data_path "$FACES/train" --eval_data_path "$FACES/test" --epochs "$EPOCHS1" \
    --focal_alpha auto --output_dir "$OUT/concept" "${COMMON[@]}"
"$PY" high_confidence.py --concept_ckpt "$OUT/concept/checkpoint-best.pth" --data_path "$FACES/train" \
    --output_dir "$OUT/confidence" --num_workers 2 --norm_cache "$OUT/cache"
"$PY" main_percept.py --data_path "$FACES/train" --eval_data_path "$FACES/test" --epochs "$EPOCHS3" \
    --concept_ckpt "$OUT/concept/checkpoint-best.pth" --confidence_dir "$OUT/confidence" \
    --output_dir "$OUT/percept" "${COMMON[@]}"
"$PY" main_percept.py --data_path "$FACES/train" --eval_data_path "$FACES/test" --epochs "$EPOCHS3" \
    --concept_target none --output_dir "$OUT/baseline" "${COMMON[@]}"
"$PY" predict.py --checkpoint "$OUT/percept/checkpoint-best.pth" "$FACES/test/happy" --output "$OUT/predictions.csv" \
    --save_vis "$OUT/vis" --num_workers 0 | tail -n 3
"$PY" tools/demo_summary.py --output "$OUT" --input_size "$SIZE" --seconds $(( $(date +%s) - start ))
