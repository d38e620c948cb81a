#!/usr/bin/env bash
# BENCHMARKS.md §8: train a width-16 UNet at 256x256 on the shared ISBI membrane data (CPU,
# crops of 50-100% of the frame, so it sees native and half scale), then score the test
# split at the original 512x512 resolution plain, with flips and tiled, and time each
# export format.
#   bash tools/membrane_inference.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/segflow_membrane_inference}
python tools/prepare_dataset.py --input=../shared/data/membrane --output="$work/records" --overwrite
python train.py --plan=none --data_dir="$work/records" --model_dir="$work/run" --image_size=256 \
  --base_filters=16 --depth=4 --batch_size=4 --epochs=30 --steps_per_epoch=10 \
  --learning_rate=1e-3 --loss=ce --aug_hflip --aug_vflip --aug_crop=0.5 --dropout=0 \
  --patience=40 --cache --mixed_precision=float32
for options in "" "--tta=hflip" "--tta=hvflip" "--tile=model" "--tile=model --tta=hvflip"; do
  echo "[${options:-plain}]"
  # shellcheck disable=SC2086
  python tools/evaluate.py --model="$work/run/model.keras" --data_dir="$work/records" \
    --split=test --original_size $options --output="$work/eval.json"
done
python tools/benchmark_inference.py --model="$work/run/model.keras" --data_dir="$work/records"
