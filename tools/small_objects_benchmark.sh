#!/usr/bin/env bash
# UNet vs DeepLabV3+ on a synthetic 4-class set of small objects, at one training pixel
# budget, untuned (BENCHMARKS.md §11). Random initial weights, float32, the same flags for
# every model but its own; prints each model's test scores, time and the CPU.
#   bash tools/small_objects_benchmark.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/small_objects}
# objects 8-16 px on 128 px frames, 3-8 a frame, 3 classes + background
python3.11 tools/synthetic_records.py --output="$out" --count=200 --size=128 --num_classes=4 \
  --seed=3 --object_size=0.0625,0.125 --objects=3,8
grep -m1 "model name" /proc/cpuinfo; grep -m2 -E "cpu family|^model\s" /proc/cpuinfo | tr '\n' ' '; echo
# 400 steps x batch 8 x 128^2 = 5.2e7 training pixels for every model
common=(--plan=none --data_dir="$out/records" --image_size=128 --batch_size=8 --steps_per_epoch=50 --epochs=8
        --learning_rate=1e-3 --loss=dice_ce --monitor=val_mean_iou --patience=100 --dropout=0
        --mixed_precision=float32 --noprogress --export=false)
for model in "unet --base_filters=16 --batch_norm" "unet --encoder=mobilenetv2" \
    "deeplabv3plus --encoder=mobilenetv2" "unet --encoder=resnet50" "deeplabv3plus --encoder=resnet50"; do
  name=$(echo "$model" | sed 's/--encoder=//; s/--base_filters=16 --batch_norm/classic/; s/ /_/g')
  start=$(date +%s)
  # shellcheck disable=SC2086
  python3.11 train.py --model=$model "${common[@]}" --model_dir="$out/$name" > "$out/$name.log" 2>&1
  python3.11 - "$out/$name" "$(( $(date +%s) - start ))" "$model" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/metrics.json"))
print(f"{sys.argv[3]:40s} test mIoU {m['mean_iou']:.4f}  per-class IoU "
      f"{[round(v, 3) for v in m['per_class_iou']]}  best epoch {m['best_epoch']}  {sys.argv[2]} s")
PY
done
