#!/usr/bin/env bash
# `make demo`: identity-pretrained stand-ins -> synthetic faces -> stage 1 -> stage 2 -> stage 3 -> the plain
# ResNet-18 baseline (same pretrained weights, CE only) -> prediction -> a summary table, all on CPU with small
# sizes. Usage: tools/demo.sh PYTHON DEMO_DIR OUT_DIR
set -euo pipefail
PY=${1:-python3}; DEMO=${2:-demo}; OUT=${3:-$DEMO/output}
FACES=$DEMO/faces; VAL=$DEMO/faces_val; PRE=$DEMO/pretrained_synthetic
SIZE=${DEMO_INPUT_SIZE:-40}
EPOCHS1=${DEMO_EPOCHS_CONCEPT:-10}
EPOCHS3=${DEMO_EPOCHS_PERCEPT:-6}
# validation and test faces per class: 100 (700 each) puts one standard error near 1.7 points, where 30 gave 3.3
EVAL_PER_CLASS=${DEMO_EVAL_PER_CLASS:-100}
# the demo's recipe (a short fine-tune on CPU): lr 1e-3 with a per-epoch cosine; the paper's is --lr 1e-4
# --lr_schedule reference (see README, "Learning at the pace of a plain network")
# no loader workers in any step: on 2 cores they take CPU from the training threads (an epoch is 15-20 % faster)
WORKERS=(--num_workers 0)
COMMON=(--input_size "$SIZE" --batch_size 32 --lr 1e-3 --lr_schedule cosine --norm_cache "$OUT/cache" "${WORKERS[@]}"
        --data_path "$FACES/train" --eval_data_path "$VAL/test" --test_data_path "$FACES/test")
start=$(date +%s)
# 1. face-identity stand-ins for the VGGFace2 ResNet-50 and the MS-Celeb ResNet-18 (cached by their settings); the
# ResNet-50 then also learns the expressions of 420 other people, so that the teacher knows more than its student can
# learn from the training faces, as the paper's VGGFace2 teacher does; the tool also writes it as it was before that
# (identity only), which the concept model's frozen non-emotion encoder reads (README, "A teacher that knows more,
# cached in its stand-in")
"$PY" tools/pretrain_identity.py --out "$PRE" --arch resnet50 --expression_epochs 4
"$PY" tools/pretrain_identity.py --out "$PRE" --arch resnet18
# 2. the expression data: train/test faces, and validation faces of another seed that choose the best epoch
"$PY" tools/make_synthetic_faces.py --out "$FACES" --seed 0 --size 48 --train_per_class 80 --test_per_class "$EVAL_PER_CLASS"
"$PY" tools/make_synthetic_faces.py --out "$VAL" --seed 1000 --size 48 --train_per_class 1 --test_per_class "$EVAL_PER_CLASS"
# 3. the three stages and the baseline
"$PY" main_concept.py --epochs "$EPOCHS1" --focal_alpha auto --output_dir "$OUT/concept" \
    --pretrained "$PRE/synthetic-identity_resnet50_ft_weight.pkl" \
    --non_emotion_pretrained "$PRE/synthetic-identity-only_resnet50_ft_weight.pkl" "${COMMON[@]}"
"$PY" high_confidence.py --concept_ckpt "$OUT/concept/checkpoint-best.pth" --data_path "$FACES/train" \
    --output_dir "$OUT/confidence" "${WORKERS[@]}"
# CRPN with the pooled concepts of stage 2's bank (no concept forward pass) and the KL target calibrated on the
# training faces (--kl_temperature auto) and weighted 4 (--gamma 4): with a teacher that knows more than its student,
# the best variant on the validation faces over seeds (README, "Results"); the paper's weight is 1
"$PY" main_percept.py --epochs "$EPOCHS3" --concept_ckpt "$OUT/concept/checkpoint-best.pth" \
    --pool_features bank --kl_temperature auto --gamma 4 --confidence_dir "$OUT/confidence" --output_dir "$OUT/percept" \
    --pretrained "$PRE/synthetic-identity_resnet18_msceleb.pth" "${COMMON[@]}"
"$PY" main_percept.py --epochs "$EPOCHS3" --concept_target none --output_dir "$OUT/baseline" \
    --pretrained "$PRE/synthetic-identity_resnet18_msceleb.pth" "${COMMON[@]}"
# 4. prediction with the deployed network, and the table
"$PY" predict.py --checkpoint "$OUT/percept/checkpoint-best.pth" "$FACES/test/happy" --faces none --output "$OUT/predictions.csv" \
    --save_vis "$OUT/vis" "${WORKERS[@]}" | tail -n 3
# 5. what the concepts are: probes, confidence validity, embeddings, pools, saliency (README, "What the concepts are")
"$PY" tools/analyse_concepts.py --concept_ckpt "$OUT/concept/checkpoint-best.pth" --data_path "$FACES/train" \
    --eval_data_path "$VAL/test" --confidence_dir "$OUT/confidence" --output_dir "$OUT/analysis" "${WORKERS[@]}"
"$PY" tools/demo_summary.py --output "$OUT" --input_size "$SIZE" --seconds $(( $(date +%s) - start ))
