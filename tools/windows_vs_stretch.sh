#!/usr/bin/env bash
# Native-resolution windows (--train_crop) against resizing (--image_size) on a synthetic
# 4-class set of small objects in 256 px frames, at one training pixel budget (BENCHMARKS.md
# §12). Every run: classic UNet width 16 + BatchNorm, 400 steps, float32, best checkpoint by
# val_mean_iou; scored by tools/evaluate.py on the test split at the frames' own pixels
# (--original_size), so a model that saw shrunk frames is judged where it is used.
#   bash tools/windows_vs_stretch.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/windows_vs_stretch}
# objects 6-12 px on 256 px frames, 2-6 a frame: ~1% of the pixels each class
python3.11 tools/synthetic_records.py --output="$out" --count=200 --size=256 --num_classes=4 \
  --seed=5 --object_size=0.0234375,0.046875 --objects=2,6
grep -m1 "model name" /proc/cpuinfo; grep -m2 -E "cpu family|^model\s" /proc/cpuinfo | tr '\n' ' '; echo
common=(--plan=none --data_dir="$out/records" --base_filters=16 --batch_norm --steps_per_epoch=50 --epochs=8
        --learning_rate=1e-3 --loss=dice_ce --monitor=val_mean_iou --patience=100 --dropout=0
        --mixed_precision=float32 --noprogress)
# name | flags: each 400 steps x batch x pixels = 5.2e7 training pixels
runs=("stretch_128|--image_size=128 --batch_size=8"
      "whole_256|--image_size=256 --batch_size=2"
      "windows_128|--train_crop=128 --batch_size=8 --aug_scale=0.8,1.25"
      "windows_128_fg|--train_crop=128 --batch_size=8 --aug_scale=0.8,1.25 --crop_foreground=0.5")
for run in "${runs[@]}"; do
  name=${run%%|*}; flags=${run#*|}
  start=$(date +%s)
  # shellcheck disable=SC2086
  python3.11 train.py $flags "${common[@]}" --model_dir="$out/$name" > "$out/$name.log" 2>&1
  wall=$(( $(date +%s) - start ))
  python3.11 tools/evaluate.py --model="$out/$name/model.keras" --data_dir="$out/records" \
    --split=test --original_size --output="$out/$name/eval_test.json" > /dev/null 2>&1
  python3.11 - "$out/$name" "$wall" "$name" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/eval_test.json"))
print(f"{sys.argv[3]:16s} test mIoU {m['mean_iou']:.4f}  per-class IoU "
      f"{[round(v, 3) for v in m['per_class_iou']]}  {sys.argv[2]} s")
PY
done
