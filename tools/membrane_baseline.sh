#!/usr/bin/env bash
# The accuracy figure of BENCHMARKS.md: prepare the shared ISBI membrane data and train a
# width-16 UNet at 256x256 on CPU, then print the test metrics.
#   bash tools/membrane_baseline.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/segflow_membrane}
python tools/prepare_dataset.py --input=../shared/data/membrane --output="$work/records" --overwrite
/usr/bin/time -f "wall %e s" python train.py --data_dir="$work/records" --model_dir="$work/run" \
  --image_size=256 --base_filters=16 --depth=4 --batch_size=4 --epochs=14 --steps_per_epoch=10 \
  --learning_rate=1e-3 --loss=ce --aug_vflip --dropout=0 --patience=20 --cache \
  --mixed_precision=float32 --export=false
python -c "import json; m = json.load(open('$work/run/metrics.json')); print({k: m[k] for k in ('per_class_dice', 'dice', 'mean_iou', 'pixel_accuracy', 'best_epoch')})"
